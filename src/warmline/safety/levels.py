"""Risk levels and the assessment record shared by every part of the safety layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RiskLevel(StrEnum):
    """How urgently a conversation needs a human: ordered none < distress < elevated < imminent.

    A StrEnum so that ``assessment.level == "elevated"`` and JSON output work without
    conversion.
    """

    NONE = "none"
    DISTRESS = "distress"
    ELEVATED = "elevated"
    IMMINENT = "imminent"

    @property
    def rank(self) -> int:
        """Position in the order none (0) .. imminent (3)."""
        return _RANKS[self]

    @property
    def is_crisis(self) -> bool:
        """True for the levels that bypass the model and get the fixed crisis reply."""
        return self.rank >= _RANKS[RiskLevel.ELEVATED]

    @classmethod
    def highest(cls, *levels: RiskLevel) -> RiskLevel:
        """The most severe of ``levels`` (``NONE`` when given nothing)."""
        return max(levels, key=lambda level: level.rank, default=cls.NONE)


_RANKS = {RiskLevel.NONE: 0, RiskLevel.DISTRESS: 1, RiskLevel.ELEVATED: 2, RiskLevel.IMMINENT: 3}

# Categories the layer reports. Lexicon rules and classifier classes both map onto these.
CATEGORIES: tuple[str, ...] = (
    "suicidal_ideation",
    "passive_ideation",
    "plan",
    "means",
    "goodbye",
    "self_harm",
    "imminent",
    "third_party",
    "harm_from_others",
    "distress",
    "psychosis",
)
# Categories about the writer's own life, as opposed to someone else's or danger from others.
SELF_CATEGORIES: frozenset[str] = frozenset(
    {"suicidal_ideation", "passive_ideation", "plan", "means", "goodbye", "self_harm", "imminent"}
)


@dataclass
class Assessment:
    """The safety layer's judgement of a conversation's user turns."""

    level: RiskLevel
    """Overall level; never below ``elevated`` once an earlier turn reached it."""
    categories: list[str] = field(default_factory=list)
    """What kind of risk, from ``CATEGORIES``; current turn first, then persisted ones."""
    evidence: list[str] = field(default_factory=list)
    """Human-readable reasons: matched phrases, classifier scores, persistence notes."""
    persisted: bool = False
    """True when the level comes from an earlier turn rather than the latest one."""
    risk_score: float | None = None
    """Classifier probability that the latest user turn carries risk (None without it)."""

    @property
    def is_crisis(self) -> bool:
        """True when the fixed crisis reply replaces the model (elevated or imminent)."""
        return self.level.is_crisis

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``level`` as its plain string)."""
        return {
            "level": str(self.level),
            "categories": list(self.categories),
            "evidence": list(self.evidence),
            "persisted": self.persisted,
            "risk_score": None if self.risk_score is None else round(self.risk_score, 4),
        }
