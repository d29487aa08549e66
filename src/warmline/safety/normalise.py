"""Text normalisation for the safety layer: what every rule and the classifier reads.

People write risk the way they write everything else: in capitals, with typos, slang and
emoji, and sometimes deliberately disguised to get past a filter (``su1c1de``, ``s u i c i d e``,
Cyrillic look-alike letters, zero-width spaces, ``unalive``, ``sewerslide``). ``normalise`` undoes
those in a fixed order so that each lexicon rule is written once, in plain words:

1. ``clean_text``: invalid bytes and lone surrogates replaced, control characters dropped,
   very long text cut to its head and tail (the gate boundary uses this alone);
2. Unicode NFKC (full-width and styled letters, ligatures), combining marks and zero-width or
   bidi characters removed, case folded, apostrophes straightened;
3. Cyrillic and Greek look-alike letters mapped to Latin inside words that are written in Latin;
4. letters spaced out (``s u i c i d e``, ``k.i.l.l``) joined;
5. per word: leetspeak (``k!ll``, ``$uicide``) decoded when that gives a known word, repeated
   letters (``diiiie``, ``sooo``) collapsed, and misspellings of risk terms (``sucide``)
   corrected with rapidfuzz, only for words that are not ordinary English words;
6. slang, abbreviations and euphemisms from ``resources/safety/slang.yaml``.

Nothing here raises on any ``str`` (or bytes): every repair is counted in ``Normalised.events``.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rapidfuzz import process
from rapidfuzz.distance import OSA

logger = logging.getLogger(__name__)

MAX_CHARS = 20_000
"""Longer messages keep their first and last MAX_CHARS // 2 characters: what a writer means
most often sits at the start or the end, and the rules' cost grows with the length."""

_REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]+")
# Zero-width, joiners, bidi controls, soft hyphen, word joiner, BOM, invisible operators.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufe00-\ufe0f]"
)
_APOSTROPHES = str.maketrans(
    {"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'", "\u2032": "'"}
)
# Look-alike letters (Unicode confusables for Latin a-z that NFKC leaves alone).
_HOMOGLYPHS = str.maketrans(
    {
        # Cyrillic
        "а": "a",
        "в": "b",
        "е": "e",
        "ё": "e",
        "к": "k",
        "м": "m",
        "н": "h",
        "о": "o",
        "р": "p",
        "с": "c",
        "т": "t",
        "у": "y",
        "х": "x",
        "ѕ": "s",
        "і": "i",
        "ї": "i",
        "ј": "j",
        "ԁ": "d",
        "һ": "h",
        "ӏ": "l",
        "ԛ": "q",
        "ԝ": "w",
        "ү": "y",
        "ɡ": "g",
        "ꞁ": "l",
        # Greek
        "α": "a",
        "β": "b",
        "ε": "e",
        "η": "n",
        "ι": "i",
        "κ": "k",
        "ν": "v",
        "ο": "o",
        "ρ": "p",
        "τ": "t",
        "υ": "u",
        "χ": "x",
        "ϲ": "c",
        "ω": "w",
        "μ": "u",
        "ς": "s",
        "γ": "y",
        # Latin look-alikes outside a-z
        "ı": "i",
        "ł": "l",
        "ø": "o",
        "đ": "d",
        "ħ": "h",
        "ŧ": "t",
        "ɑ": "a",
        "ɩ": "i",
    }
)
_CONFUSABLE_CHARS = frozenset(chr(c) for c in _HOMOGLYPHS)
_WORDLIKE = re.compile(r"[^\s]+")
# Letters spaced out with one consistent separator: "s u i c i d e", "k.i.l.l", "d-i-e".
_SPACED = re.compile(r"(?<![\w@$!])((?:[a-z0-9@$!][ .\-_*·]){2,}[a-z0-9@$!])(?![\w@$])")
_LEET = {
    "0": "o",
    "1": "il",
    "3": "e",
    "4": "a",
    "5": "s",
    "7": "t",
    "@": "a",
    "$": "s",
    "!": "il",
    "|": "li",
    "+": "t",
    "€": "e",
}
_LEET_CHARS = frozenset(_LEET)
_EDGE_PUNCT = "\"'.,;:?()[]{}<>*_~«»“”…"
_REPEATS = re.compile(r"([a-z])\1{2,}")
_INFLECTIONS = ("s", "es", "ed", "d", "ing", "er", "ers", "ly", "y")
_MIN_FUZZY_LENGTH = 5


@dataclass(frozen=True)
class Normalised:
    """A message as the safety rules read it, with what was repaired on the way."""

    text: str
    events: dict[str, int] = field(default_factory=dict)
    """Counts of repairs: invalid_replaced, control_removed, truncated, invisible_removed,
    homoglyphs, spaced_letters, leetspeak, repeats, misspellings, slang."""


def clean(text: Any) -> tuple[str, Counter[str]]:
    """``clean_text`` with the count of each repair it made."""
    events: Counter[str] = Counter()
    if isinstance(text, bytes | bytearray | memoryview):
        raw = bytes(text)
        decoded = raw.decode("utf-8", errors="replace")
        invalid = decoded.count(_REPLACEMENT) - raw.count(_REPLACEMENT.encode())
        if invalid:
            events["invalid_replaced"] += invalid
        text = decoded
    elif not isinstance(text, str):
        text = "" if text is None else str(text)
    if _SURROGATE.search(text):
        text = _repair_surrogates(text, events)
    if len(text) > MAX_CHARS:
        events["truncated"] += 1
        half = MAX_CHARS // 2
        text = text[:half] + "\n…\n" + text[-half:]
    cleaned: list[str] = []
    removed = 0
    for char in text:
        if char in "\n\t" or unicodedata.category(char) != "Cc":
            cleaned.append(char)
        elif char == "\r":
            cleaned.append("\n")
        else:
            removed += 1
            cleaned.append(" ")
    if removed:
        events["control_removed"] += removed
    return "".join(cleaned), events


def clean_text(text: Any) -> str:
    """Text that is safe to assess, log-free and print: never raises.

    Bytes are decoded as UTF-8 with invalid sequences replaced; a ``str`` carrying bytes
    smuggled in by ``surrogateescape`` gets them decoded (or replaced), other lone surrogates
    become U+FFFD; control characters other than newline and tab become spaces; text over
    ``MAX_CHARS`` keeps its head and tail. ``None`` becomes ``""``.
    """
    return clean(text)[0]


def _repair_surrogates(text: str, events: Counter[str]) -> str:
    # Pairs written as two code units (JSON "\ud83d\udc80") become the real character first:
    # the skull emoji is laughter to the lexicon, not an invalid byte.
    text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")

    def from_bytes(match: re.Match[str]) -> str:
        decoded = match.group(0).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        events["invalid_replaced"] += decoded.count(_REPLACEMENT)
        return decoded

    text = _ESCAPED_BYTES.sub(from_bytes, text)
    lone = len(_SURROGATE.findall(text))
    if lone:
        events["invalid_replaced"] += lone
        text = _SURROGATE.sub(_REPLACEMENT, text)
    return text


def normalise(text: Any, *, english: bool = True) -> Normalised:
    """The message as every safety rule and the classifier read it (see the module docstring).

    ``english=False`` stops after step 4: the word fixes and slang are English.
    """
    cleaned, events = clean(text)
    return Normalised(_normalise_clean(cleaned, events, english), dict(events))


def normalise_text(text: Any, *, english: bool = True) -> str:
    """Just the normalised text of ``normalise``."""
    return normalise(text, english=english).text


def _normalise_clean(text: str, events: Counter[str], english: bool = True) -> str:
    text = unicodedata.normalize("NFKC", text)
    if len(text) > MAX_CHARS:  # NFKC can lengthen text ("¼" is three characters after it)
        events["truncated"] += 1
        text = text[: MAX_CHARS // 2] + "\n" + text[-(MAX_CHARS // 2) :]
    invisible = len(_INVISIBLE.findall(text))
    if invisible:
        events["invisible_removed"] += invisible
        text = _INVISIBLE.sub("", text)
    # Combining marks off ("sùïcïdé", zalgo text); the English rules are written without accents.
    decomposed = unicodedata.normalize("NFKD", text)
    if any(unicodedata.combining(c) for c in decomposed):
        text = unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))
    text = text.casefold().translate(_APOSTROPHES)
    if not text.isascii():
        text = _WORDLIKE.sub(lambda m: _unconfuse(m.group(0), events), text)
    text = _SPACED.sub(lambda m: _join_spaced(m, events), text)
    if not english:
        return re.sub(r"[ \t]+", " ", text).strip()
    table = slang_table()
    text = _WORDLIKE.sub(lambda m: _fix_word(m.group(0), table, events), text)
    text = table.rewrite(text, events)
    if len(text) > MAX_CHARS:  # word fixes and slang lengthen text ("kil" -> "kill", "ngl")
        events["truncated"] += 1
        text = text[: MAX_CHARS // 2] + "\n" + text[-(MAX_CHARS // 2) :]
    return re.sub(r"[ \t]+", " ", text).strip()


def _unconfuse(word: str, events: Counter[str]) -> str:
    """Map look-alikes in a word written in Latin letters, or made only of look-alikes."""
    if not any(c in _CONFUSABLE_CHARS for c in word):
        return word
    has_latin = any("a" <= c <= "z" for c in word)
    letters = [c for c in word if c.isalpha()]
    if has_latin or all(c in _CONFUSABLE_CHARS for c in letters):
        events["homoglyphs"] += 1
        return word.translate(_HOMOGLYPHS)
    return word


def _join_spaced(match: re.Match[str], events: Counter[str]) -> str:
    run = match.group(1)
    separators = set(run[1::2])
    letters = run[0::2]
    # One separator throughout and at least one letter other than "a"/"i": "a b c" lists and
    # "I a m" are rare, "s u i c i d e" is deliberate.
    if len(separators) != 1 or not any(c.isalpha() and c not in "ai" for c in letters):
        return run
    events["spaced_letters"] += 1
    return letters


def _fix_word(chunk: str, table: SlangTable, events: Counter[str]) -> str:
    """Leetspeak, repeated letters and misspellings of one whitespace-separated chunk."""
    start = len(chunk) - len(chunk.lstrip(_EDGE_PUNCT))
    core = chunk[start:].rstrip(_EDGE_PUNCT)
    trail = chunk[start + len(core) :]
    # "help!!" and "why!?" end in punctuation, "k!ll" has it inside.
    stripped = core.rstrip("!")
    trail = core[len(stripped) :] + trail
    core = stripped
    if len(core) < 2:
        return chunk
    fixed = core
    if any(c in _LEET_CHARS for c in fixed) and sum(c.isalpha() for c in fixed) >= 2:
        decoded = _decode_leet(fixed, table)
        if decoded is not None:
            events["leetspeak"] += 1
            fixed = decoded
    if fixed.isalpha():
        if _REPEATS.search(fixed):
            collapsed = _collapse_repeats(fixed, table)
            if collapsed != fixed:
                events["repeats"] += 1
                fixed = collapsed
        corrected = table.correct(fixed)
        if corrected != fixed:
            events["misspellings"] += 1
            fixed = corrected
    return chunk[:start] + fixed + trail if fixed != core else chunk


def _decode_leet(word: str, table: SlangTable) -> str | None:
    """The first reading of ``word``'s digits and symbols as letters that is a known word."""
    options = [_LEET.get(c, c) for c in word]
    candidates = [""]
    for option in options:
        candidates = [prefix + letter for prefix in candidates for letter in option][:64]
    for candidate in candidates:
        if candidate in table.risk_terms or table.is_known(candidate):
            return candidate
        if len(candidate) >= _MIN_FUZZY_LENGTH and table.correct(candidate) != candidate:
            return table.correct(candidate)
    return None


def _collapse_repeats(word: str, table: SlangTable) -> str:
    """``diiiie`` -> ``die``, ``killll`` -> ``kill``, ``sooo`` -> ``so``: the known reading wins."""
    double = _REPEATS.sub(r"\1\1", word)
    single = _REPEATS.sub(r"\1", word)
    for candidate in (double, single):
        if candidate in table.risk_terms:
            return candidate
    # Both readings may be words ("goood": good/god, "sooo": soo/so): the more frequent wins.
    known = [c for c in (double, single) if c in table.word_ranks]
    return min(known, key=table.word_ranks.__getitem__) if known else double


@dataclass
class SlangTable:
    """The compiled contents of ``slang.yaml`` and the list of known English words."""

    abbreviations: dict[str, str]
    abbreviation_pattern: re.Pattern[str] | None
    phrases: list[tuple[re.Pattern[str], str]]
    risk_terms: frozenset[str]
    known_words: frozenset[str]
    word_ranks: dict[str, int]
    """Position of each word in the encoder's vocabulary (roughly by frequency)."""

    def is_known(self, word: str) -> bool:
        """An ordinary English word, or a plain inflection of one ("dyeing", "molested")."""
        if word in self.known_words:
            return True
        return any(
            word.endswith(suffix) and word[: -len(suffix)] in self.known_words
            for suffix in _INFLECTIONS
            if len(word) - len(suffix) >= 3
        )

    def correct(self, word: str) -> str:
        """The risk term ``word`` is a misspelling of, or ``word`` itself."""
        return _correct(self, word)

    def rewrite(self, text: str, events: Counter[str]) -> str:
        """Apply the abbreviations and phrase rewrites."""
        if self.abbreviation_pattern is not None:

            def expand(match: re.Match[str]) -> str:
                events["slang"] += 1
                return self.abbreviations[match.group(1)]

            text = self.abbreviation_pattern.sub(expand, text)
        for pattern, replacement in self.phrases:
            text, count = pattern.subn(replacement, text)
            if count:
                events["slang"] += count
        return text

    def __hash__(self) -> int:  # used as an lru_cache key; one table per process
        return id(self)


@lru_cache(maxsize=8192)
def _correct(table: SlangTable, word: str) -> str:
    if word in table.risk_terms or table.is_known(word):
        return word
    if len(word) < _MIN_FUZZY_LENGTH:
        # Too short for edit distance ("kil" is one edit from kill, kid, kit...); only a
        # double letter typed once ("kil", "pils") is undone, as the one typo that is safe here.
        return _single_letter_forms(table).get(word, word) if len(word) >= 3 else word
    # One edit for short words, two from eight letters; the first letter must agree (typos
    # rarely hit it, and it keeps names and rare words from turning into risk terms).
    limit = 1 if len(word) < 8 else 2
    # Sorted: extractOne keeps the first of equally close terms, and a set's order changes with
    # each process's string hashing ("suicida" is one edit from both "suicidal" and "suicide").
    candidates = sorted(
        term for term in table.risk_terms if term[0] == word[0] and abs(len(term) - len(word)) <= limit
    )
    if not candidates:
        return word
    best = process.extractOne(word, candidates, scorer=OSA.distance, score_cutoff=limit)
    return best[0] if best is not None else word


@lru_cache(maxsize=4)
def _single_letter_forms(table: SlangTable) -> dict[str, str]:
    """Risk terms with each doubled letter written once: {"kil": "kill", "pils": "pills"}."""
    forms: dict[str, str] = {}
    for term in sorted(table.risk_terms):
        single = re.sub(r"([a-z])\1", r"\1", term)
        if single != term and len(single) >= 3 and not table.is_known(single):
            forms.setdefault(single, term)
    return forms


def packaged_slang_path() -> Path:
    """Path of the slang and euphemism list shipped with warmline."""
    return Path(str(resources.files("warmline") / "resources" / "safety" / "slang.yaml"))


def _known_english_words() -> dict[str, int]:
    """Whole English words of the packaged encoder's vocabulary with their positions in it
    (roughly by frequency; empty if the encoder is missing)."""
    try:
        from warmline.safety.classifier import encoder_path

        vocabulary = (encoder_path() / "vocab.txt").read_text(encoding="utf-8").split()
    except (RuntimeError, OSError) as error:
        logger.warning("no word list for misspelling correction (%s); fuzzy matching is off", error)
        return {}
    return {word: rank for rank, word in enumerate(vocabulary) if word.isascii() and word.isalpha()}


@lru_cache(maxsize=1)
def slang_table() -> SlangTable:
    """The packaged slang table, compiled once per process."""
    path = packaged_slang_path()
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    abbreviations: dict[str, str] = data.get("abbreviations", {})
    pattern = (
        re.compile(
            r"(?<![\w'/])("
            + "|".join(map(re.escape, sorted(abbreviations, key=len, reverse=True)))
            + r")(?![\w'/])"
        )
        if abbreviations
        else None
    )
    phrases = []
    for entry in data.get("phrases", []):
        try:
            phrases.append((re.compile(entry["pattern"]), entry["replace"]))
        except re.error as error:
            raise ValueError(f"{path}: bad pattern {entry['pattern']!r}: {error}") from error
    vocabulary = _known_english_words()
    # Without a word list every rare word would be a misspelling candidate: correct nothing.
    risk_terms = frozenset(data.get("risk_terms", [])) if vocabulary else frozenset()
    known = frozenset(vocabulary) | frozenset(data.get("known_words", [])) | frozenset(abbreviations)
    return SlangTable(abbreviations, pattern, phrases, risk_terms, known, vocabulary)
