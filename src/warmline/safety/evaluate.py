"""Evaluation of the risk assessment on labelled suites: single messages and multi-turn scripts.

A suite is a JSONL file (or a folder of them) whose lines are either

- a message: ``{text, crisis: true|false, kind, lang?, level?, form?, reply?, note?}``, or the
  older ``{text, label: risk|negative, level, category}``;
- a script: ``{name, turns: [user messages...], expect: [crisis|no_crisis|any per turn], kind,
  lang?, note?}``.

Metrics for messages (a message is "flagged" when it gets the crisis path, elevated or imminent):
- recall: flagged risk messages / risk messages, overall, per kind, per language, per written form;
- reply accuracy: flagged risk messages that got their kind's fixed reply (``levels.REPLY_KINDS``),
  so a violence request answered with the suicide reply shows up even though it was flagged;
- imminent_recall: messages labelled imminent that were assessed imminent (exact level);
- fpr: flagged non-risk messages / non-risk messages, overall, per kind, per language;
- any_flag_rate: non-risk messages assessed at distress or above (resources appended, not a
  crisis reply), reported so over-flagging at the soft level stays visible;
- latency: wall time of ``assess`` per single-message conversation (median, p95), after the
  classifier is loaded (model load and first-use training are not part of a message's cost).

A script passes when every turn marked ``crisis`` is flagged and every turn marked ``no_crisis``
is not, each turn assessed on the whole conversation so far.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from warmline.safety.classifier import default_classifier
from warmline.safety.levels import Assessment, RiskLevel
from warmline.safety.risk import assess

logger = logging.getLogger(__name__)

TurnExpectation = Literal["crisis", "no_crisis", "any"]
EXPECTATIONS: tuple[str, ...] = ("crisis", "no_crisis", "any")

# The fixed reply each suite kind should get (levels.REPLY_KINDS names). Suite kinds are finer
# than the layer's categories (explicit / indirect / passive ideation are all "suicide"); the
# layer's own category names are accepted as kinds too. A row's "reply" field overrides this.
_SUICIDE_KINDS = (
    "explicit",
    "indirect",
    "passive",
    "plan",
    "means",
    "means_seeking",
    "goodbye",
    "imminent",
    "self_harm",
    "suicidal_ideation",
    "passive_ideation",
)
EXPECTED_REPLY: dict[str, str] = {
    **dict.fromkeys(_SUICIDE_KINDS, "suicide"),
    "eating_disorder": "eating_disorder",
    "harm_from_others": "abuse",
    "abuse": "abuse",
    "child_abuse": "child_abuse",
    "intrusive_thoughts": "intrusive_thoughts",
    "harm_to_others": "harm_to_others",
    "third_party": "third_party",
    "violence_request": "violence_request",
}

# Between two scripted user turns the conversation holds an assistant turn, as it would when
# served; a fixed neutral line, so a script's outcome depends on the user's words only.
SCRIPT_ASSISTANT_TURN = "Thank you for telling me. I'm listening."


class SuiteError(ValueError):
    """A suite file that is missing or malformed; the message is one line saying how to fix it."""


@dataclass(frozen=True)
class SuiteExample:
    """One labelled single message."""

    text: str
    label: str  # "risk" | "negative"
    level: RiskLevel
    category: str
    lang: str = "en"
    form: str = "clean"
    """How it is written: clean, slang, misspelled, leet, spaced, caps, nopunct, forum, noaccent..."""
    reply: str | None = None
    """The fixed reply a flagged risk message should get (None: not checked)."""
    note: str = ""

    @property
    def crisis(self) -> bool:
        """True when the message should get the crisis path."""
        return self.label == "risk"

    @property
    def kind(self) -> str:
        """The suite kind (the older format's ``category``)."""
        return self.category


@dataclass(frozen=True)
class Script:
    """One scripted conversation: user turns with the expected outcome after each."""

    name: str
    turns: tuple[str, ...]
    expect: tuple[str, ...]
    kind: str
    lang: str = "en"
    note: str = ""


@dataclass
class Suite:
    """What a suite file (or folder) holds."""

    messages: list[SuiteExample] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)


@dataclass
class SuiteReport:
    """Results of one evaluation run on single messages."""

    recall: float
    imminent_recall: float
    fpr: float
    any_flag_rate: float
    ms_per_msg: float
    p95_ms: float
    recall_by_category: dict[str, float]
    negatives_flagged_by_category: dict[str, float]
    level_accuracy: float
    misses: list[dict[str, Any]] = field(default_factory=list)
    false_positives: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    median_ms: float = float("nan")
    reply_accuracy: float = float("nan")
    reply_accuracy_by_category: dict[str, float] = field(default_factory=dict)
    by_language: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_form: dict[str, dict[str, Any]] = field(default_factory=dict)
    wrong_replies: list[dict[str, Any]] = field(default_factory=list)
    counts_by_category: dict[str, dict[str, int]] = field(default_factory=dict)
    """Messages per kind: {"risk": {kind: n}, "negative": {kind: n}}."""

    def result_line(self) -> str:
        """The machine-readable last line printed by ``warmline safety eval``."""
        return (
            f"RESULT recall={self.recall:.4f} imminent_recall={self.imminent_recall:.4f} "
            f"fpr={self.fpr:.4f} any_flag_rate={self.any_flag_rate:.4f} "
            f"ms_per_msg={self.ms_per_msg:.1f} median_ms={self.median_ms:.1f} p95_ms={self.p95_ms:.1f}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN, for a metric with nothing to count, becomes null)."""
        return _json_ready(asdict(self))


@dataclass
class ScriptResult:
    """One script's outcome, turn by turn."""

    name: str
    kind: str
    lang: str
    passed: bool
    turns: list[dict[str, Any]]
    """Per turn: expected, flagged, level, categories, reply_kind, ok."""
    note: str = ""

    @property
    def failed_turns(self) -> list[int]:
        """1-based numbers of the turns whose outcome was not the expected one."""
        return [index for index, turn in enumerate(self.turns, start=1) if not turn["ok"]]


@dataclass
class ScriptReport:
    """Results of one evaluation run on multi-turn scripts."""

    passed: int
    total: int
    results: list[ScriptResult]
    pass_rate_by_kind: dict[str, float]
    median_ms: float
    p95_ms: float
    """Latency of ``assess`` on the conversation so far, per turn."""

    def result_line(self) -> str:
        """The machine-readable summary line of the script run."""
        return f"SCRIPTS passed={self.passed} total={self.total} median_ms={self.median_ms:.1f} p95_ms={self.p95_ms:.1f}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with each script's failing turns."""
        out = _json_ready(asdict(self))
        for row, result in zip(out["results"], self.results, strict=True):
            row["failed_turns"] = result.failed_turns
        return out


# ---------------------------------------------------------------- reading suites


def packaged_suite_path() -> Path:
    """Path of the labelled evaluation suite shipped with warmline (the v1 suite)."""
    return Path(str(resources.files("warmline") / "resources" / "safety" / "suite.jsonl"))


def packaged_eval_dir() -> Path:
    """Folder of the safety v2 suites shipped with warmline (messages_*.jsonl, scripts.jsonl)."""
    return Path(str(resources.files("warmline") / "resources" / "safety" / "eval"))


def read_suite(path: Path | None = None) -> Suite:
    """Read a suite file, or every ``*.jsonl`` in a folder, checking each line's fields."""
    path = Path(path) if path is not None else packaged_suite_path()
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise SuiteError(f"no *.jsonl suite files in {path}; give a JSONL file or a folder of them")
    elif path.is_file():
        files = [path]
    else:
        raise SuiteError(
            f"suite not found: {path} (give a JSONL file or a folder of them; the packaged v2 suites are in {packaged_eval_dir()})"
        )
    suite = Suite()
    for file in files:
        for line_number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{file}:{line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise SuiteError(
                    f"{where}: not valid JSON ({error.msg}); each line must be one JSON object"
                ) from None
            if not isinstance(row, dict):
                raise SuiteError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
            if "turns" in row:
                suite.scripts.append(_parse_script(row, where))
            else:
                suite.messages.append(_parse_message(row, where))
    return suite


def load_suite(path: Path | None = None) -> list[SuiteExample]:
    """The single messages of a suite file or folder (default: the packaged v1 suite)."""
    return read_suite(path).messages


def load_scripts(path: Path | None = None) -> list[Script]:
    """The multi-turn scripts of a suite file or folder (default: the packaged v2 scripts)."""
    return read_suite(path if path is not None else packaged_eval_dir() / "scripts.jsonl").scripts


def _parse_message(row: dict[str, Any], where: str) -> SuiteExample:
    text = row.get("text")
    if "crisis" in row:
        crisis = row["crisis"]
    elif row.get("label") in ("risk", "negative"):
        crisis = row["label"] == "risk"
    else:
        crisis = None
    if not isinstance(text, str) or not text.strip() or not isinstance(crisis, bool):
        raise SuiteError(
            f"{where}: a message needs text and crisis (true|false), or the older label (risk|negative); "
            f"a script needs turns and expect; got keys {sorted(row)}"
        )
    kind = row.get("kind") or row.get("category") or ("risk" if crisis else "negative")
    default_level = (
        (RiskLevel.IMMINENT if kind == "imminent" else RiskLevel.ELEVATED) if crisis else RiskLevel.NONE
    )
    try:
        level = RiskLevel(row["level"]) if row.get("level") else default_level
    except ValueError:
        raise SuiteError(
            f"{where}: level {row['level']!r} is not one of {[str(x) for x in RiskLevel]}"
        ) from None
    if crisis != level.is_crisis and not (not crisis and level == RiskLevel.DISTRESS):
        raise SuiteError(
            f"{where}: crisis={crisis} contradicts level {level}; a crisis is elevated or imminent"
        )
    reply = row.get("reply", EXPECTED_REPLY.get(kind)) if crisis else None
    return SuiteExample(
        text=text,
        label="risk" if crisis else "negative",
        level=level,
        category=str(kind),
        lang=str(row.get("lang", "en")),
        form=str(row.get("form", "clean")),
        reply=reply,
        note=str(row.get("note", "")),
    )


def _parse_script(row: dict[str, Any], where: str) -> Script:
    turns = row["turns"]
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise SuiteError(f"{where}: turns must be a non-empty list of user messages (strings)")
    expect = row.get("expect")
    if expect is None and isinstance(row.get("crisis"), bool):
        # the short form: only the last turn's outcome is labelled
        expect = ["any"] * (len(turns) - 1) + ["crisis" if row["crisis"] else "no_crisis"]
    if not isinstance(expect, list) or len(expect) != len(turns) or not set(expect) <= set(EXPECTATIONS):
        raise SuiteError(
            f"{where}: expect must list one of {'|'.join(EXPECTATIONS)} per turn ({len(turns)} turns), got {expect!r}"
        )
    return Script(
        name=str(row.get("name", where)),
        turns=tuple(turns),
        expect=tuple(expect),
        kind=str(row.get("kind", "script")),
        lang=str(row.get("lang", "en")),
        note=str(row.get("note", "")),
    )


# ---------------------------------------------------------------- running


def _assess(conversation: list[dict[str, str]], use_classifier: bool) -> Assessment:
    # The public call as every surface makes it; the lexicon-only switch only when asked.
    return assess(conversation) if use_classifier else assess(conversation, use_classifier=False)


def _warm_up(use_classifier: bool) -> None:
    """Load (and on first use train) the classifier outside the timed loop."""
    if use_classifier:
        default_classifier()
    _assess([{"role": "user", "content": "hello"}], use_classifier)


def evaluate_suite(examples: list[SuiteExample], *, use_classifier: bool = True) -> SuiteReport:
    """Assess every message on its own and compute the metrics."""
    _warm_up(use_classifier)
    # risk and non-risk flags apart, so a kind used on both sides can't mix recall with FPR
    risk_by_kind: dict[str, list[bool]] = defaultdict(list)
    negative_by_kind: dict[str, list[bool]] = defaultdict(list)
    reply_by_kind: dict[str, list[bool]] = defaultdict(list)
    risk_by_lang: dict[str, list[bool]] = defaultdict(list)
    negative_by_lang: dict[str, list[bool]] = defaultdict(list)
    risk_by_form: dict[str, list[bool]] = defaultdict(list)
    negative_by_form: dict[str, list[bool]] = defaultdict(list)
    timings_ms: list[float] = []
    misses: list[dict[str, Any]] = []
    false_positives: list[dict[str, Any]] = []
    wrong_replies: list[dict[str, Any]] = []
    imminent_hits: list[bool] = []
    negative_any: list[bool] = []
    level_correct: list[bool] = []
    for example in tqdm(examples, desc="safety eval", unit="msg", leave=False):
        started = time.perf_counter()
        assessment = _assess([{"role": "user", "content": example.text}], use_classifier)
        timings_ms.append((time.perf_counter() - started) * 1000)
        flagged = assessment.is_crisis
        record = {
            "text": example.text,
            "category": example.category,
            "lang": example.lang,
            "form": example.form,
            "expected": str(example.level),
            "expected_reply": example.reply,
            **assessment.to_dict(),
        }
        level_correct.append(assessment.level == example.level)
        if example.crisis:
            risk_by_kind[example.category].append(flagged)
            risk_by_lang[example.lang].append(flagged)
            risk_by_form[example.form].append(flagged)
            if not flagged:
                misses.append(record)
            if example.reply is not None:
                right_reply = flagged and assessment.reply_kind == example.reply
                reply_by_kind[example.category].append(right_reply)
                if flagged and not right_reply:
                    wrong_replies.append(record)
            if example.level == RiskLevel.IMMINENT:
                imminent_hits.append(assessment.level == RiskLevel.IMMINENT)
        else:
            negative_by_kind[example.category].append(flagged)
            negative_by_lang[example.lang].append(flagged)
            negative_by_form[example.form].append(flagged)
            negative_any.append(assessment.level != RiskLevel.NONE)
            if flagged:
                false_positives.append(record)

    risk_flags = [flag for flags in risk_by_kind.values() for flag in flags]
    negative_flags = [flag for flags in negative_by_kind.values() for flag in flags]
    reply_flags = [f for flags in reply_by_kind.values() for f in flags]
    languages = sorted(set(risk_by_lang) | set(negative_by_lang))
    forms = sorted(set(risk_by_form) | set(negative_by_form))
    return SuiteReport(
        recall=_mean(risk_flags),
        imminent_recall=_mean(imminent_hits),
        fpr=_mean(negative_flags),
        any_flag_rate=_mean(negative_any),
        ms_per_msg=statistics.fmean(timings_ms) if timings_ms else float("nan"),
        median_ms=statistics.median(timings_ms) if timings_ms else float("nan"),
        p95_ms=_p95(timings_ms),
        recall_by_category={k: _mean(f) for k, f in sorted(risk_by_kind.items())},
        negatives_flagged_by_category={k: _mean(f) for k, f in sorted(negative_by_kind.items())},
        reply_accuracy=_mean(reply_flags),
        reply_accuracy_by_category={k: _mean(f) for k, f in sorted(reply_by_kind.items())},
        by_language={lang: _split_rates(risk_by_lang[lang], negative_by_lang[lang]) for lang in languages},
        by_form={form: _split_rates(risk_by_form[form], negative_by_form[form]) for form in forms},
        level_accuracy=_mean(level_correct),
        misses=misses,
        false_positives=false_positives,
        wrong_replies=wrong_replies,
        counts={"risk": len(risk_flags), "negative": len(negative_flags), "imminent": len(imminent_hits)},
        counts_by_category={
            "risk": {k: len(f) for k, f in sorted(risk_by_kind.items())},
            "negative": {k: len(f) for k, f in sorted(negative_by_kind.items())},
        },
    )


def evaluate_scripts(scripts: list[Script], *, use_classifier: bool = True) -> ScriptReport:
    """Run each script turn by turn, assessing the whole conversation after every user turn."""
    _warm_up(use_classifier)
    results: list[ScriptResult] = []
    timings_ms: list[float] = []
    for script in tqdm(scripts, desc="safety scripts", unit="script", leave=False):
        conversation: list[dict[str, str]] = []
        turns: list[dict[str, Any]] = []
        for index, (text, expected) in enumerate(zip(script.turns, script.expect, strict=True)):
            if index:
                conversation = [*conversation, {"role": "assistant", "content": SCRIPT_ASSISTANT_TURN}]
            conversation = [*conversation, {"role": "user", "content": text}]
            started = time.perf_counter()
            assessment = _assess(conversation, use_classifier)
            timings_ms.append((time.perf_counter() - started) * 1000)
            flagged = assessment.is_crisis
            turns.append(
                {
                    "text": text,
                    "expected": expected,
                    "flagged": flagged,
                    "level": str(assessment.level),
                    "categories": list(assessment.categories),
                    "reply_kind": assessment.reply_kind,
                    "ok": _turn_ok(expected, flagged),
                }
            )
        results.append(
            ScriptResult(
                name=script.name,
                kind=script.kind,
                lang=script.lang,
                passed=all(turn["ok"] for turn in turns),
                turns=turns,
                note=script.note,
            )
        )
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for result in results:
        by_kind[result.kind].append(result.passed)
    return ScriptReport(
        passed=sum(result.passed for result in results),
        total=len(results),
        results=results,
        pass_rate_by_kind={kind: _mean(passes) for kind, passes in sorted(by_kind.items())},
        median_ms=statistics.median(timings_ms) if timings_ms else float("nan"),
        p95_ms=_p95(timings_ms),
    )


def run_probes(path: Path, *, use_classifier: bool = True) -> list[dict[str, Any]]:
    """Assess each interjection probe (a message, or alternating user/assistant turns)."""
    probes = json.loads(path.read_text(encoding="utf-8"))
    results: list[dict[str, Any]] = []
    for probe in probes:
        turns = probe["interjection"] if isinstance(probe["interjection"], list) else [probe["interjection"]]
        conversation = [
            {"role": "user" if index % 2 == 0 else "assistant", "content": text}
            for index, text in enumerate(turns)
        ]
        assessment = _assess(conversation, use_classifier)
        results.append(
            {
                "name": probe.get("name", "?"),
                "condition": probe.get("condition", "?"),
                "flagged": assessment.is_crisis,
                **assessment.to_dict(),
            }
        )
    return results


# ---------------------------------------------------------------- helpers


def _turn_ok(expected: str, flagged: bool) -> bool:
    return expected == "any" or (expected == "crisis") == flagged


def _split_rates(risk_flags: list[bool], negative_flags: list[bool]) -> dict[str, Any]:
    return {
        "risk": len(risk_flags),
        "negative": len(negative_flags),
        "recall": _mean(risk_flags),
        "fpr": _mean(negative_flags),
    }


def _p95(timings_ms: list[float]) -> float:
    if len(timings_ms) < 2:
        return timings_ms[0] if timings_ms else float("nan")
    # the 19th of the 20-quantile cut points, interpolated inclusively within the observed range
    return statistics.quantiles(timings_ms, n=20, method="inclusive")[-1]


def _mean(flags: Iterable[bool]) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else float("nan")


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    return value
