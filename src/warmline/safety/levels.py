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
    # the writer's own suicide / self-harm risk
    "suicidal_ideation",
    "passive_ideation",
    "plan",
    "means",
    "goodbye",
    "self_harm",
    "imminent",
    # eating-disorder danger: starvation, purging, pro-ED requests
    "eating_disorder",
    # someone else: a friend or family member at risk (what to do, who to call)
    "third_party",
    # danger to the writer from another person (domestic violence, assault, abuse)
    "harm_from_others",
    # a minor disclosing abuse (child-protection lines)
    "child_abuse",
    # the writer intends to hurt a specific person
    "harm_to_others",
    # intrusive, unwanted thoughts of harming a baby or child (perinatal resources, no judgement)
    "intrusive_thoughts",
    # a request for instructions to hurt other people (a calm refusal, never the suicide reply)
    "violence_request",
    "distress",
    "psychosis",
)
# Categories about the writer's own life, as opposed to someone else's or danger from others.
SELF_CATEGORIES: frozenset[str] = frozenset(
    {"suicidal_ideation", "passive_ideation", "plan", "means", "goodbye", "self_harm", "imminent"}
)
# Which fixed reply a crisis gets, most urgent first: the first kind whose categories appear in
# an assessment chooses the reply (replies.py), so a message that is both about the writer's own
# suicide risk and about a partner's violence gets the suicide reply (with the abuse lines).
REPLY_KINDS: tuple[tuple[str, frozenset[str]], ...] = (
    ("suicide", SELF_CATEGORIES),
    ("child_abuse", frozenset({"child_abuse"})),
    ("abuse", frozenset({"harm_from_others"})),
    ("eating_disorder", frozenset({"eating_disorder"})),
    ("intrusive_thoughts", frozenset({"intrusive_thoughts"})),
    ("harm_to_others", frozenset({"harm_to_others"})),
    ("third_party", frozenset({"third_party"})),
    ("violence_request", frozenset({"violence_request"})),
    ("unusual_experiences", frozenset({"psychosis"})),
)
LANGUAGES: tuple[str, ...] = ("en", "es", "fr", "de", "pt", "it")
"""Languages with their own risk lexicon and crisis replies (ISO 639-1)."""


def reply_kind(categories: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """The fixed reply a crisis with these categories gets (None: no category has one)."""
    present = set(categories)
    return next((kind for kind, members in REPLY_KINDS if present & members), None)


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
    language: str = "en"
    """Language of the latest user turn (ISO 639-1, one of ``LANGUAGES``): the crisis reply is
    written in it."""

    @property
    def reply_kind(self) -> str | None:
        """Which fixed reply this assessment gets when it is a crisis (see ``REPLY_KINDS``)."""
        return reply_kind(self.categories)

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
            "language": self.language,
            "reply_kind": self.reply_kind,
        }
