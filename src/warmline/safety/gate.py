"""SafetyGate: the one object the chat surfaces talk to, before and after the model.

    gate = SafetyGate(locale="uk")
    reply = gate.respond(conversation, generate)  # all of the below, when not streaming

    assessment = gate.check_input(conversation)
    reply = gate.reply_for(assessment)        # fixed crisis reply, or None
    if reply is None:
        text = generate(conversation)         # the model only runs below elevated
        text = gate.screen(text, assessment).text
        text = gate.finish(text, assessment)  # resources appended for distress

The gate holds no conversation state (one gate serves every web session); persistence
comes from ``assess`` reading the whole conversation each turn.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from warmline.safety.levels import Assessment, RiskLevel
from warmline.safety.replies import crisis_reply, resources_note
from warmline.safety.risk import assess
from warmline.safety.screen import ScreenResult, screen_output

logger = logging.getLogger(__name__)


class SafetyGate:
    """Input assessment, crisis replies, output screening and event counters."""

    def __init__(
        self,
        locale: str = "us",
        use_classifier: bool = True,
        resources_path: str | Path | None = None,
    ) -> None:
        self.locale = locale
        self.use_classifier = use_classifier
        self.resources_path = resources_path
        self.counters: dict[str, int] = Counter()
        """Event counts: assessments, level:<level>, crisis_replies, distress_notes,
        screened_outputs and screened_outputs:<reason>."""
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
        self._count("crisis_replies", f"crisis_replies:{assessment.level}")
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
        """The whole non-streaming turn: assess, then a crisis reply or a screened model reply.

        ``generate`` is called only below elevated risk.
        """
        assessment = self.check_input(conversation)
        crisis = self.reply_for(assessment)
        if crisis is not None:
            return crisis
        screened = self.screen(generate(conversation), assessment)
        return self.finish(screened.text, assessment)

    def finish(self, reply: str, assessment: Assessment) -> str:
        """The reply to show: with the resources note appended at distress level."""
        note = self.note_for(assessment)
        return f"{reply.rstrip()}\n\n{note}" if note else reply

    def note_for(self, assessment: Assessment) -> str | None:
        """The resources line for a distress-level reply (None at other levels)."""
        if assessment.level != RiskLevel.DISTRESS:
            return None
        self._count("distress_notes")
        return resources_note(self.locale, self.resources_path)

    def _count(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self.counters[key] += 1
