"""SafetyGate and the one gate flow every surface runs for a turn.

    gate = SafetyGate(locale="uk")
    result = TurnResult()
    for piece in gate.stream(conversation, lambda: engine_texts(conversation), result=result):
        show(piece)                           # the pieces add up to what the user sees
    result.text                               # what to keep in the history

`turn` (which `SafetyGate.stream` runs) is the flow, in this order and nowhere else:

1. ``check_input``: assess the whole conversation;
2. ``reply_for``: at elevated or imminent risk, the fixed crisis reply, and the model is never
   called (``reply`` is not even invoked);
3. otherwise stream the model's text through a `TextReleaser` that releases whole sentences,
   each after ``screen`` accepted all the text up to it; a rejected reply stops the engine and
   the screen's fallback follows what was already shown;
4. ``note_for``: the resources note after the reply (at distress level).

``reply`` is any engine's text: a callable returning an iterable of the whole reply so far, one
item per step (the streaming `Generator`, an ONNX engine, an HTTP API; an engine that yields
deltas can pass ``itertools.accumulate(deltas)``). The terminal chat, the web app and evaluation
reach this flow through ``Generator.stream(conversation, gate=...)``; ``respond`` is the same
flow for a non-streaming ``generate`` function.

The gate holds no conversation state (one gate serves every web session); persistence
comes from ``assess`` reading the whole conversation each turn.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmline.safety.levels import Assessment, RiskLevel
from warmline.safety.replies import crisis_reply, resources_note
from warmline.safety.risk import assess
from warmline.safety.screen import ScreenResult, screen_output

logger = logging.getLogger(__name__)


@dataclass
class TurnResult:
    """What the gate flow leaves behind once a turn is finished (`GenerationResult` adds timings)."""

    text: str = ""
    """The reply as it should be shown and kept in the history: the model's reply (with the
    resources note at distress level), the fixed crisis reply, or the screen's safe fallback."""
    stop_reason: str = ""
    """eos | max_new_tokens (set by the engine) | stop_string | crisis | screened (set by the flow)."""
    assessment: dict[str, Any] | None = None
    """The safety gate's assessment of the conversation (None without a gate)."""
    screen_reasons: list[str] = field(default_factory=list)


def turn(
    conversation: Sequence[Mapping[str, str]],
    reply: Callable[[], Iterable[str]],
    *,
    gate: SafetyGate | None,
    stop_strings: Iterable[str] = (),
    result: TurnResult | None = None,
) -> Iterator[str]:
    """One turn: assess -> crisis reply, or the engine's text released sentence by sentence after
    screening -> resources note. Yields what to show; `result` receives the text to keep.

    Without a gate (evaluation of the bare model, the warm-up) only the text layer runs: stop
    strings, hold-back, control characters, released as it comes.
    """
    from warmline.serving.release import TextReleaser, release

    out = result if result is not None else TurnResult()
    assessment = None
    screen = None
    if gate is not None:
        assessment = gate.check_input(conversation)
        out.assessment = assessment.to_dict()
        crisis = gate.reply_for(assessment)
        if crisis is not None:  # the model is not asked
            out.text, out.stop_reason = crisis, "crisis"
            yield crisis
            return

        def screen(text: str) -> bool:
            verdict = gate.screen(text, assessment)
            if not verdict.safe:
                out.text, out.stop_reason, out.screen_reasons = (
                    verdict.text,
                    "screened",
                    list(verdict.reasons),
                )
            return verdict.safe

    releaser = TextReleaser(stop_strings, screen=screen)
    released_any = False
    for piece in release(reply(), releaser):
        released_any = True
        yield piece
    if releaser.rejected:
        # Only screened-safe sentences were released; the fallback follows them.
        yield ("\n\n" if released_any else "") + out.text
        return
    out.text = releaser.text
    if releaser.stopped:
        out.stop_reason = "stop_string"
    if gate is not None:
        note = gate.note_for(assessment)
        if note:
            out.text = f"{out.text}\n\n{note}" if out.text else note
            yield ("\n\n" if released_any else "") + note


class SafetyGate:
    """Input assessment, crisis replies, output screening and event counters."""

    def __init__(
        self,
        locale: str | None = "us",
        use_classifier: bool = True,
        resources_path: str | Path | None = None,
    ) -> None:
        self.locale = locale
        self.use_classifier = use_classifier
        self.resources_path = resources_path
        self.counters: dict[str, int] = Counter()
        """Event counts, never text: assessments, level:<level>, crisis_replies,
        crisis_replies:<level>, crisis_kind:<reply kind>, crisis_category:<category>,
        crisis_language:<language>, distress_notes, screened_outputs and
        screened_outputs:<reason>. ``snapshot`` copies them; ``warmline safety report`` reads them."""
        self._lock = threading.Lock()  # counters are shared by a web server's threads

    def check_input(self, conversation: Sequence[Mapping[str, str]]) -> Assessment:
        """Assess the conversation's user turns (call before generating each reply)."""
        assessment = assess(conversation, use_classifier=self.use_classifier)
        self._count("assessments", f"level:{assessment.level}")
        if assessment.is_crisis:
            # Categories only, never the user's words: logs outlive conversations.
            logger.info(
                "crisis flagged: level=%s categories=%s", assessment.level, ",".join(assessment.categories)
            )
        return assessment

    def reply_for(self, assessment: Assessment) -> str | None:
        """The fixed crisis reply for elevated or imminent risk, else None (ask the model)."""
        if not assessment.is_crisis:
            return None
        self._count(
            "crisis_replies",
            f"crisis_replies:{assessment.level}",
            f"crisis_kind:{assessment.reply_kind or 'suicide'}",
            f"crisis_language:{assessment.language}",
            *(f"crisis_category:{category}" for category in assessment.categories),
        )
        return crisis_reply(assessment, self.locale, self.resources_path)

    def screen(self, text: str, assessment: Assessment | None = None) -> ScreenResult:
        """Screen a (possibly partial) model reply; pass the turn's assessment to be stricter at risk."""
        result = screen_output(text, assessment=assessment)
        if not result.safe:
            self._count("screened_outputs", *(f"screened_outputs:{reason}" for reason in result.reasons))
        return result

    def respond(
        self,
        conversation: Sequence[Mapping[str, str]],
        generate: Callable[[Sequence[Mapping[str, str]]], str],
    ) -> str:
        """The whole non-streaming turn (the `turn` flow): a crisis reply or a screened model reply.

        ``generate`` is called only below elevated risk.
        """
        result = TurnResult()
        for _ in self.stream(conversation, lambda: [generate(conversation)], result=result):
            pass
        return result.text

    def stream(
        self,
        conversation: Sequence[Mapping[str, str]],
        reply: Callable[[], Iterable[str]],
        *,
        stop_strings: Iterable[str] = (),
        result: TurnResult | None = None,
    ) -> Iterator[str]:
        """This gate's turn over any engine's text stream (see `turn` and the module docstring)."""
        return turn(conversation, reply, gate=self, stop_strings=stop_strings, result=result)

    def finish(self, reply: str, assessment: Assessment) -> str:
        """The reply to show: with the resources note appended at distress level."""
        note = self.note_for(assessment)
        return f"{reply.rstrip()}\n\n{note}" if note else reply

    def note_for(self, assessment: Assessment) -> str | None:
        """The resources line for a distress-level reply (None at other levels)."""
        if assessment.level != RiskLevel.DISTRESS:
            return None
        self._count("distress_notes")
        return resources_note(self.locale, self.resources_path, language=assessment.language)

    def count_repairs(self, events: Mapping[str, int]) -> None:
        """Count what ``clean`` repaired in text at a surface's boundary (invalid bytes, lone
        surrogates, control characters, truncation) as ``input_repaired:<event>``; counts only."""
        with self._lock:
            for event, n in events.items():
                if n:
                    self.counters[f"input_repaired:{event}"] += n

    def snapshot(self) -> dict[str, int]:
        """A copy of the event counters, sorted by key (safe to take while serving)."""
        with self._lock:
            return dict(sorted(self.counters.items()))

    def _count(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self.counters[key] += 1
