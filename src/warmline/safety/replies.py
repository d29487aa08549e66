"""Crisis resources, the fixed crisis replies, and the AI notice.

For elevated and imminent risk the model is not asked: ``crisis_reply`` returns a fixed,
deterministic text, chosen by the assessment's reply kind (``levels.REPLY_KINDS``) and written
in the language of the user's message (``levels.LANGUAGES``). The texts live in
``resources/safety/replies.yaml`` and the helplines in ``resources/safety/crisis_resources.yaml``;
this module only puts them together. Distress replies come from the model with
``resources_note`` appended.

Which helplines: a known locale wins (``--locale fr``, ``fr-ca``, ``pt-BR``: that country's
lines). When the country is not known (no locale, ``default``, or one not in the file), the
reply never gives one country's number as if it were the user's: it points to
findahelpline.com first, then lists one line per country where the message's language is
most spoken ("España: Línea 024 ...", "México: Línea de la Vida ...").
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from warmline.safety.levels import LANGUAGES, REPLY_KINDS, Assessment, RiskLevel

logger = logging.getLogger(__name__)

RESOURCES_ENV = "WARMLINE_CRISIS_RESOURCES"
DEFAULT_LOCALE = "default"
UNKNOWN_LOCALES = frozenset({"", "auto", DEFAULT_LOCALE})
"""Locale values that mean "the country is not known": the message's language chooses."""

AI_NOTICE = (
    "You are talking to warmline, an AI: not a person, and not a therapist, doctor or crisis "
    "service. It can get things wrong and cannot help in an emergency. If you might act on "
    "thoughts of harming yourself or someone else, contact your local emergency number or a "
    "crisis line now."
)
"""Shown at the start of every session and again every 3 hours (``notice.py``), and
persistently in the web header. The one copy of this text: every surface imports it."""

LineGroup = Literal["crisis", "abuse", "child", "eating_disorder", "perinatal"]
LINE_GROUPS: tuple[LineGroup, ...] = ("crisis", "abuse", "child", "eating_disorder", "perinatal")

# Which helplines each reply kind lists, in order. A locale without lines of a group skips it,
# so every kind ends with the crisis lines at least (and findahelpline.com).
KIND_LINES: dict[str, tuple[LineGroup, ...]] = {
    "suicide": ("crisis",),
    "child_abuse": ("child", "crisis"),
    "abuse": ("abuse", "crisis"),
    "eating_disorder": ("eating_disorder", "crisis"),
    "intrusive_thoughts": ("perinatal", "crisis"),
    "harm_to_others": ("crisis",),
    "third_party": ("crisis",),
    # A refusal offers one line, as support for the person, not as a suicide referral.
    "violence_request": ("crisis",),
    "unusual_experiences": ("crisis",),
}
_MAX_LINES = {"violence_request": 1}
# ... and, when the country is not known, only findahelpline.com: a list of countries' suicide
# lines would read as a suicide referral.
_MAX_COUNTRIES = {"violence_request": 0}
# A suicide reply to a message that also discloses abuse lists the abuse lines as well.
_EXTRA_GROUPS: dict[str, LineGroup] = {"harm_from_others": "abuse", "child_abuse": "child"}


@dataclass(frozen=True)
class Line:
    """One helpline."""

    name: str
    contact: str
    hours: str = ""
    source: str = ""
    """The service's official URL: where a deployer checks the number."""
    verified: bool = False
    """True only once a deployer has checked the line against ``source``."""

    def render(self) -> str:
        """``- Name: contact (hours)``."""
        return f"- {self.text()}"

    def text(self) -> str:
        """``Name: contact (hours)``."""
        hours = f" ({self.hours})" if self.hours else ""
        return f"{self.name}: {self.contact}{hours}"


@dataclass(frozen=True)
class LocaleResources:
    """The resources for one locale (a country)."""

    key: str
    name: str
    emergency: str
    crisis: list[Line]
    abuse: list[Line] = field(default_factory=list)
    child: list[Line] = field(default_factory=list)
    eating_disorder: list[Line] = field(default_factory=list)
    perinatal: list[Line] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    """The country's name in other languages, where it differs from ``name``."""

    def name_in(self, language: str) -> str:
        """The country's name as a reply in ``language`` writes it."""
        return self.names.get(language, self.name)

    def lines(self, *groups: LineGroup) -> list[Line]:
        """The lines of ``groups``, in order, without repeats."""
        out: list[Line] = []
        for group in groups:
            out += [line for line in getattr(self, group) if line not in out]
        return out

    def all_lines(self) -> list[Line]:
        """Every line of the locale."""
        return self.lines(*LINE_GROUPS)


@dataclass(frozen=True)
class ResourceTable:
    """Every locale, and which countries to list per language when the country is unknown."""

    locales: dict[str, LocaleResources]
    languages: dict[str, list[str]]

    def find(self, locale: str | None) -> LocaleResources | None:
        """The locale's resources, or None when the locale is not known (see ``UNKNOWN_LOCALES``)."""
        wanted = (locale or "").strip().lower().replace("_", "-")
        if wanted in UNKNOWN_LOCALES:
            return None
        # "fr-CA" -> "fr-ca" (an alias of ca) before "ca"; "en-GB" -> alias; "ie" -> key.
        for candidate in (wanted, wanted.split("-")[-1]):
            if candidate in self.locales and candidate != DEFAULT_LOCALE:
                return self.locales[candidate]
            for entry in self.locales.values():
                if candidate in entry.aliases and entry.key != DEFAULT_LOCALE:
                    return entry
        logger.debug("no crisis resources for locale %r; choosing by language", locale)
        return None

    def countries_for(self, language: str) -> list[LocaleResources]:
        """The countries listed for ``language`` when the user's country is unknown."""
        keys = self.languages.get(language) or self.languages.get("en") or []
        return [self.locales[key] for key in keys if key in self.locales]


def packaged_resources_path() -> Path:
    """Path of the crisis resources shipped with warmline."""
    return _packaged("crisis_resources.yaml")


def packaged_replies_path() -> Path:
    """Path of the fixed reply texts shipped with warmline."""
    return _packaged("replies.yaml")


def _packaged(name: str) -> Path:
    return Path(str(resources.files("warmline") / "resources" / "safety" / name))


def load_resources(path: str | Path | None = None) -> dict[str, LocaleResources]:
    """Crisis resources by locale key: the packaged file, extended by a user's file.

    The user's file is ``path`` if given, else ``$WARMLINE_CRISIS_RESOURCES`` if set; its
    locales replace packaged ones with the same key.
    """
    return load_table(path).locales


def load_table(path: str | Path | None = None) -> ResourceTable:
    """Like ``load_resources``, with the per-language country lists as well."""
    locales, languages = _parse(packaged_resources_path())
    extra = path if path is not None else os.environ.get(RESOURCES_ENV)
    if extra:
        extra_locales, extra_languages = _parse(Path(extra))
        locales.update(extra_locales)
        languages.update(extra_languages)
    if DEFAULT_LOCALE not in locales:
        raise ValueError(f"crisis resources need a '{DEFAULT_LOCALE}' locale (checked {extra})")
    return ResourceTable(locales=locales, languages=languages)


def _parse(path: Path) -> tuple[dict[str, LocaleResources], dict[str, list[str]]]:
    try:
        data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"crisis resources file not found: {path} (set {RESOURCES_ENV} or pass a path)"
        ) from error
    out: dict[str, LocaleResources] = {}
    for key, entry in (data.get("locales") or {}).items():
        try:
            groups = {group: [Line(**line) for line in entry.get(group) or []] for group in LINE_GROUPS}
            if not groups["crisis"]:
                raise KeyError("crisis")
            out[str(key).lower()] = LocaleResources(
                key=str(key).lower(),
                name=entry.get("name", str(key)),
                emergency=str(entry["emergency"]),
                aliases=[str(a).lower() for a in entry.get("aliases", [])],
                names={str(k): str(v) for k, v in (entry.get("names") or {}).items()},
                **groups,
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(
                f"{path}: locale '{key}' is malformed ({error}); each needs emergency and a crisis "
                "list of {name, contact, hours, source}"
            ) from error
    languages = {
        str(lang): [str(k).lower() for k in keys] for lang, keys in (data.get("languages") or {}).items()
    }
    return out, languages


@lru_cache(maxsize=8)
def _cached_table(path: str | None) -> ResourceTable:
    return load_table(path)


def _table(path: str | Path | None) -> ResourceTable:
    return _cached_table(str(path) if path is not None else os.environ.get(RESOURCES_ENV))


@lru_cache(maxsize=2)
def load_replies(path: str | None = None) -> dict[str, Any]:
    """The reply texts by language (``replies.yaml``), checked for every kind and language."""
    source = Path(path) if path else packaged_replies_path()
    data: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    kinds = [kind for kind, _ in REPLY_KINDS]
    for language in LANGUAGES:
        texts = data.get(language) or {}
        missing = [
            f"{language}.{k}"
            for k in ("emergency_line", "elsewhere", "unknown_first", "unknown_emergency", "note")
            if k not in texts
        ]
        missing += [
            f"{language}.kinds.{kind}.{part}"
            for kind in kinds
            for part in ("opening", "intro", "closing")
            if part not in (texts.get("kinds") or {}).get(kind, {})
        ]
        if missing:
            raise ValueError(
                f"{source}: missing reply texts {', '.join(missing)}; add them (see the file header)"
            )
    return data


def resources_for(locale: str | None, path: str | Path | None = None) -> LocaleResources:
    """Resources for ``locale`` ("us", "en-GB", "fr-ca", ...), falling back to ``default``."""
    table = _table(path)
    return table.find(locale) or table.locales[DEFAULT_LOCALE]


def reply_language(language: str | None) -> str:
    """The language the reply is written in: ``language`` if warmline has replies in it, else English."""
    return language if language in LANGUAGES else "en"


def resources_note(locale: str | None = "us", path: str | Path | None = None, language: str = "en") -> str:
    """The short line appended to replies at distress level, in ``language``."""
    table = _table(path)
    language = reply_language(language)
    texts = load_replies()[language]
    found = table.find(locale)
    if found is None:
        line, emergency = (
            "findahelpline.com",
            _unknown_emergency(texts, table.countries_for(language), language),
        )
    else:
        first = found.crisis[0]
        line, emergency = f"{first.name} ({first.contact})", found.emergency
    return texts["note"].format(line=line, emergency=emergency)


def crisis_reply(
    assessment: Assessment,
    locale: str | None = None,
    path: str | Path | None = None,
) -> str:
    """The fixed reply for elevated and imminent risk (deterministic for a given input).

    The kind (``assessment.reply_kind``: suicide, abuse, third party, a violence request, ...)
    chooses the wording and the helplines; ``assessment.language`` the language; imminent risk
    gets the wording that leads with the emergency number. ``locale`` None (or unknown): see
    the module docstring.
    """
    kind = assessment.reply_kind or "suicide"  # a crisis without a category: the writer's own risk
    language = reply_language(assessment.language)
    texts = load_replies()[language]
    parts = texts["kinds"][kind]
    opening = (
        parts.get("imminent", parts["opening"])
        if assessment.level == RiskLevel.IMMINENT
        else parts["opening"]
    )
    table = _table(path)
    found = table.find(locale)
    if found is not None:
        emergency = found.emergency
        lines = [line.render() for line in _kind_lines(found, kind, assessment.categories)]
    else:
        countries = table.countries_for(language)
        emergency = _unknown_emergency(texts, countries, language)
        lines = [f"- {texts['unknown_first']}"] + [
            f"- {country.name_in(language)}: {line.text()}"
            for country in countries[: _MAX_COUNTRIES.get(kind, len(countries))]
            for line in _kind_lines(country, kind, assessment.categories)[:1]
        ]
    # The emergency number gets its own line unless the reply's text already names it.
    if "{emergency}" not in opening + parts["closing"]:
        lines.append(f"- {texts['emergency_line']}")
    if found is not None:
        lines.append(f"- {texts['elsewhere']}")
    body = "\n".join([parts["intro"], *lines])
    return f"{opening}\n\n{body}\n\n{parts['closing']}".replace("{emergency}", emergency)


def _kind_lines(found: LocaleResources, kind: str, categories: list[str]) -> list[Line]:
    groups = list(KIND_LINES[kind])
    if kind == "suicide":
        groups += [group for category, group in _EXTRA_GROUPS.items() if category in categories]
    lines = found.lines(*groups)
    return lines[: _MAX_LINES.get(kind, len(lines))]


def _unknown_emergency(texts: dict[str, Any], countries: list[LocaleResources], language: str) -> str:
    numbers = ", ".join(f"{country.name_in(language)} {country.emergency}" for country in countries)
    return f"{texts['unknown_emergency']} ({numbers})" if numbers else texts["unknown_emergency"]
