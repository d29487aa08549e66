"""Crisis resources, the fixed crisis replies, and the AI notice.

For elevated and imminent risk the model is not asked: ``crisis_reply`` returns a fixed,
deterministic text that stays warm and non-judgemental, asks directly about safety (asking
does not plant the idea, and it tells the person they can talk about it), and gives the
resources for the configured locale. Distress replies come from the model with
``resources_note`` appended.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from warmline.safety.levels import SELF_CATEGORIES, Assessment, RiskLevel

logger = logging.getLogger(__name__)

RESOURCES_ENV = "WARMLINE_CRISIS_RESOURCES"
DEFAULT_LOCALE = "default"

AI_NOTICE = (
    "warmline is an AI, not a therapist, doctor or crisis service. It can get things wrong and "
    "cannot help in an emergency. If you might act on thoughts of harming yourself or someone "
    "else, contact your local emergency number or a crisis line now."
)
"""Shown persistently in every chat surface (terminal banner, web header)."""


@dataclass(frozen=True)
class Line:
    """One helpline."""

    name: str
    contact: str
    hours: str = ""

    def render(self) -> str:
        """``- Name: contact (hours)``."""
        hours = f" ({self.hours})" if self.hours else ""
        return f"- {self.name}: {self.contact}{hours}"


@dataclass(frozen=True)
class LocaleResources:
    """The resources for one locale."""

    key: str
    name: str
    emergency: str
    crisis: list[Line]
    abuse: list[Line] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)


def packaged_resources_path() -> Path:
    """Path of the crisis resources shipped with warmline."""
    return Path(str(resources.files("warmline") / "resources" / "safety" / "crisis_resources.yaml"))


def load_resources(path: str | Path | None = None) -> dict[str, LocaleResources]:
    """Crisis resources by locale key: the packaged file, extended by a user's file.

    The user's file is ``path`` if given, else ``$WARMLINE_CRISIS_RESOURCES`` if set; its
    locales replace packaged ones with the same key.
    """
    merged = _parse(packaged_resources_path())
    extra = path if path is not None else os.environ.get(RESOURCES_ENV)
    if extra:
        merged.update(_parse(Path(extra)))
    if DEFAULT_LOCALE not in merged:
        raise ValueError(f"crisis resources need a '{DEFAULT_LOCALE}' locale (checked {extra})")
    return merged


def _parse(path: Path) -> dict[str, LocaleResources]:
    try:
        data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"crisis resources file not found: {path} (set {RESOURCES_ENV} or pass a path)"
        ) from error
    out: dict[str, LocaleResources] = {}
    for key, entry in (data.get("locales") or {}).items():
        try:
            out[str(key).lower()] = LocaleResources(
                key=str(key).lower(),
                name=entry.get("name", str(key)),
                emergency=str(entry["emergency"]),
                crisis=[Line(**line) for line in entry["crisis"]],
                abuse=[Line(**line) for line in entry.get("abuse", [])],
                aliases=[str(a).lower() for a in entry.get("aliases", [])],
            )
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"{path}: locale '{key}' is malformed ({error}); each needs emergency and a crisis "
                "list of {{name, contact, hours}}"
            ) from error
    return out


@lru_cache(maxsize=8)
def _cached_resources(path: str | None) -> dict[str, LocaleResources]:
    return load_resources(path)


def resources_for(locale: str, path: str | Path | None = None) -> LocaleResources:
    """Resources for ``locale`` ("us", "en-GB", "ie", ...), falling back to ``default``."""
    table = _cached_resources(str(path) if path is not None else os.environ.get(RESOURCES_ENV))
    wanted = locale.strip().lower()
    candidates = [wanted, wanted.replace("_", "-"), wanted.replace("_", "-").split("-")[-1]]
    for candidate in candidates:
        if candidate in table:
            return table[candidate]
        for entry in table.values():
            if candidate in entry.aliases:
                return entry
    logger.debug("no crisis resources for locale %r; using the default", locale)
    return table[DEFAULT_LOCALE]


def resources_note(locale: str = "us", path: str | Path | None = None) -> str:
    """The short line appended to replies at distress level."""
    found = resources_for(locale, path)
    first = found.crisis[0]
    return (
        f"If things ever feel like too much, you can reach {first.name} ({first.contact}), "
        f"and in an emergency call {found.emergency}."
    )


def crisis_reply(assessment: Assessment, locale: str = "us", path: str | Path | None = None) -> str:
    """The fixed reply for elevated and imminent risk (deterministic for a given input).

    The wording follows who is at risk: the writer, someone they are worried about, or the
    writer in danger from another person; imminent risk leads with the emergency number.
    """
    found = resources_for(locale, path)
    categories = set(assessment.categories)
    imminent = assessment.level == RiskLevel.IMMINENT
    # "imminent" describes urgency, not whose risk it is; the other self categories do.
    writer_at_risk = bool(categories & (SELF_CATEGORIES - {"imminent"}))
    if "psychosis" in categories and not writer_at_risk:
        # Voices or a sense of being pursued: neither confirm nor argue with the belief (the
        # abuse reply would confirm it), focus on safety and on getting seen soon.
        return _unusual_experiences_reply(found, imminent)
    if "harm_from_others" in categories and not writer_at_risk:
        return _harm_from_others_reply(found, imminent)
    if "third_party" in categories and not writer_at_risk:
        return _third_party_reply(found, imminent)
    return _self_reply(found, imminent)


def _crisis_lines(found: LocaleResources) -> str:
    return "\n".join(line.render() for line in found.crisis)


def _self_reply(found: LocaleResources, imminent: bool) -> str:
    if imminent:
        opening = (
            "I'm really worried about your safety right now, and I'm glad you told me. "
            f"If you have already hurt yourself or taken something, or you're about to, please call "
            f"{found.emergency} now or go to the nearest emergency department. If you can, move away "
            "from anything you could use to hurt yourself and let someone near you know."
        )
    else:
        opening = (
            "Thank you for telling me. That took courage, and I'm taking what you said seriously. "
            "I want to ask you directly: are you thinking about ending your life or hurting yourself? "
            "Are you safe right now?"
        )
    return (
        f"{opening}\n\n"
        "You don't have to carry this alone. These people are trained to help, and you can reach them now:\n"
        f"{_crisis_lines(found)}\n"
        f"- Immediate danger: call {found.emergency}\n\n"
        "I'm an AI, not a counsellor, but I'm here and I'll keep listening. "
        "Is there someone you trust who could be with you right now?"
    )


def _third_party_reply(found: LocaleResources, imminent: bool) -> str:
    urgent = (
        f"If they may already have hurt themselves or are about to, call {found.emergency} now "
        "and stay with them if it's safe for you to do so."
        if imminent
        else f"If you think they are in immediate danger, call {found.emergency}."
    )
    return (
        "It sounds like you're really worried about someone, and it matters that you're taking it "
        f"seriously. Is this person safe right now? {urgent}\n\n"
        "Crisis lines also help people who are worried about someone else: they can talk through "
        "what to say and what to do next.\n"
        f"{_crisis_lines(found)}\n\n"
        "It's okay to ask them directly whether they're thinking about suicide; asking doesn't put "
        "the idea in their head. How are you doing with all of this?"
    )


def _harm_from_others_reply(found: LocaleResources, imminent: bool) -> str:
    urgent = (
        f"If you are in danger right now, call {found.emergency} if you can, or get to a safe place "
        "where there are other people."
        if imminent
        else f"If you are ever in immediate danger, call {found.emergency}."
    )
    lines = [line.render() for line in found.abuse + found.crisis]
    return (
        "I'm so sorry this is happening to you. What you're describing is not okay, and it is not "
        f"your fault. Are you safe right now? {urgent}\n\n"
        "People who specialise in this can help you think through options, confidentially:\n"
        + "\n".join(lines)
        + "\n\nI'm an AI and can't step in, but I'm here to listen. What would help you feel safer?"
    )


def _unusual_experiences_reply(found: LocaleResources, imminent: bool) -> str:
    urgent = (
        f"If you feel in danger right now, call {found.emergency}."
        if imminent
        else (f"If you ever feel in immediate danger, call {found.emergency}.")
    )
    return (
        "That sounds really frightening, and I'm glad you told me. I can't help plan how to get "
        "away or hide, but I do want to make sure you're safe. Are you safe right now? "
        f"{urgent}\n\n"
        "When voices or fears like this feel this real and this urgent, it can really help to talk "
        "them through with a doctor or a crisis line today; they won't judge you:\n"
        f"{_crisis_lines(found)}\n\n"
        "Is there someone you trust who could be with you while you reach out?"
    )
