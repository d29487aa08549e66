"""Evaluation of the risk assessment on the labelled suite and on interjection probes.

Metrics (a message is "flagged" when it gets the crisis path, i.e. elevated or imminent):
- recall: flagged risk messages / risk messages, overall and per suite category;
- imminent_recall: messages labelled imminent that were assessed imminent (exact level);
- fpr: flagged negative messages / negative messages;
- any_flag_rate: negatives assessed at distress or above (resources appended, not a
  crisis reply), reported so over-flagging at the soft level stays visible;
- latency: wall time of ``assess`` per single-message conversation, after the classifier is
  loaded (model load and first-use training are not part of a message's cost).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tqdm import tqdm

from warmline.safety.classifier import default_classifier
from warmline.safety.levels import RiskLevel
from warmline.safety.risk import assess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteExample:
    """One labelled message of the evaluation suite."""

    text: str
    label: str  # "risk" | "negative"
    level: RiskLevel
    category: str


@dataclass
class SuiteReport:
    """Results of one evaluation run."""

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

    def result_line(self) -> str:
        """The machine-readable last line printed by ``warmline safety eval``."""
        return (
            f"RESULT recall={self.recall:.4f} imminent_recall={self.imminent_recall:.4f} "
            f"fpr={self.fpr:.4f} any_flag_rate={self.any_flag_rate:.4f} "
            f"ms_per_msg={self.ms_per_msg:.1f} p95_ms={self.p95_ms:.1f}"
        )


def packaged_suite_path() -> Path:
    """Path of the labelled evaluation suite shipped with warmline."""
    return Path(str(resources.files("warmline") / "resources" / "safety" / "suite.jsonl"))


def load_suite(path: Path | None = None) -> list[SuiteExample]:
    """Read the suite, checking each line's fields."""
    path = path or packaged_suite_path()
    examples: list[SuiteExample] = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"text", "label", "level", "category"} - row.keys()
        if missing or row["label"] not in ("risk", "negative"):
            raise ValueError(
                f"{path}:{line_number}: need text, label (risk|negative), level, category; got {sorted(row)}"
            )
        examples.append(SuiteExample(row["text"], row["label"], RiskLevel(row["level"]), row["category"]))
    return examples


def evaluate_suite(examples: list[SuiteExample], *, use_classifier: bool = True) -> SuiteReport:
    """Assess every suite message on its own and compute the metrics."""
    if use_classifier:
        default_classifier()  # load (and train on first use) outside the timed loop
    hits_by_category: dict[str, list[bool]] = defaultdict(list)
    timings_ms: list[float] = []
    misses: list[dict[str, Any]] = []
    false_positives: list[dict[str, Any]] = []
    imminent_hits: list[bool] = []
    negative_any: list[bool] = []
    level_correct: list[bool] = []
    for example in tqdm(examples, desc="safety eval", unit="msg", leave=False):
        started = time.perf_counter()
        assessment = assess([{"role": "user", "content": example.text}], use_classifier=use_classifier)
        timings_ms.append((time.perf_counter() - started) * 1000)
        flagged = assessment.is_crisis
        record = {
            "text": example.text,
            "category": example.category,
            "expected": str(example.level),
            **assessment.to_dict(),
        }
        level_correct.append(assessment.level == example.level)
        if example.label == "risk":
            hits_by_category[example.category].append(flagged)
            if not flagged:
                misses.append(record)
            if example.level == RiskLevel.IMMINENT:
                imminent_hits.append(assessment.level == RiskLevel.IMMINENT)
        else:
            hits_by_category[example.category].append(flagged)
            negative_any.append(assessment.level != RiskLevel.NONE)
            if flagged:
                false_positives.append(record)

    risk_categories = {e.category for e in examples if e.label == "risk"}
    risk_flags = [f for c in risk_categories for f in hits_by_category[c]]
    negative_flags = [f for c, flags in hits_by_category.items() if c not in risk_categories for f in flags]
    return SuiteReport(
        recall=_mean(risk_flags),
        imminent_recall=_mean(imminent_hits),
        fpr=_mean(negative_flags),
        any_flag_rate=_mean(negative_any),
        ms_per_msg=statistics.fmean(timings_ms),
        p95_ms=sorted(timings_ms)[int(0.95 * (len(timings_ms) - 1))],
        recall_by_category={c: _mean(hits_by_category[c]) for c in sorted(risk_categories)},
        negatives_flagged_by_category={
            c: _mean(f) for c, f in sorted(hits_by_category.items()) if c not in risk_categories
        },
        level_accuracy=_mean(level_correct),
        misses=misses,
        false_positives=false_positives,
        counts={"risk": len(risk_flags), "negative": len(negative_flags), "imminent": len(imminent_hits)},
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
        assessment = assess(conversation, use_classifier=use_classifier)
        results.append(
            {
                "name": probe.get("name", "?"),
                "condition": probe.get("condition", "?"),
                "flagged": assessment.is_crisis,
                **assessment.to_dict(),
            }
        )
    return results


def _mean(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")
