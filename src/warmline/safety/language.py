"""Language identification and the per-language risk lexicons.

The English classifier (MiniLM) only understands English, so a message in another language is
judged by that language's lexicon (``resources/safety/lexicons/{es,fr,de,pt,it}.yaml``, the
same format as the English one), by the English rules on its gloss (``warmline.safety.gloss``)
and by the multilingual classifier (multilingual-e5-small, see ``warmline.safety.risk``).

Routing, per message:

1. ``identify_language`` asks py3langid, restricted to ``LANGUAGES``, for a probability per
   language. Short messages ("ok", "lol", "idk") carry almost no evidence, so a guess below
   ``CONFIDENT`` is not trusted: the message keeps the conversation's language (English at the
   start). Below ``CERTAIN``, the lexicons of the other plausible languages (probability at
   least ``CANDIDATE``) read the message too: "quero morrer" is 0.49 Portuguese, 0.24 Spanish.
2. ``scan_languages`` adds those lexicons' results to the English lexicon's (always run, so
   code-mixed text such as "je n'en peux plus, I want to die" is caught). Neighbouring
   languages share words, so when the routed language's lexicon recognised a benign reading
   (a Portuguese "me mato de estudar"), a neighbour's rule does not overrule it. When only
   another language's lexicon found risk, that language becomes the message's language (the
   crisis reply is written in it).

Non-English lexicons match with accents folded on both sides (patterns and text): people
often type "tengo que matarme", "je suis desesperee", "mude" without diacritics. Distinctive
risk words listed under ``typo_terms`` in a lexicon file are also corrected when a word is
one or two edits away ("suisidarme"), keeping the word's first letter and ending so a
different person ("matarte", kill yourself) never turns into the first person ("matarme").
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from warmline.safety.levels import LANGUAGES, RiskLevel
from warmline.safety.lexicon import Lexicon, LexiconResult, load_yaml

logger = logging.getLogger(__name__)

CONFIDENT = 0.5
"""Probability at or above which langid's guess sets a message's language. Below it (short or
ambiguous text: "ok" scores 0.17 for each of six languages) the conversation's language is
kept."""
CERTAIN = 0.8
"""At or above, only the top language's lexicon (and the English one) reads the message."""
CANDIDATE = 0.1
"""Below ``CERTAIN``, other languages at or above this probability get their lexicon run too."""
SAMPLE_CHARS = 1000
"""Longer messages are identified from their first and last SAMPLE_CHARS // 2 characters."""
MAX_CANDIDATES = 3
"""At most this many non-English lexicons read one message (the latency stays flat)."""

# Characters NFKD does not decompose into a base letter plus a mark.
_FOLD_EXTRA = str.maketrans({"ß": "ss", "œ": "oe", "Œ": "oe", "æ": "ae", "Æ": "ae", "ø": "o", "Ø": "o"})
_WORD = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class LanguageGuess:
    """Where one message is routed."""

    language: str
    """The message's language (ISO 639-1, one of ``LANGUAGES``)."""
    probability: float
    """langid's probability for its top language."""
    confident: bool
    """True when langid's top language reached ``CONFIDENT`` and set ``language``."""
    scanned: tuple[str, ...]
    """Non-English languages whose lexicons read the message (the English one always does)."""


def fold_accents(text: str) -> str:
    """Strip diacritics ("désespérée" -> "desesperee", "müde" -> "mude", "ß" -> "ss")."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_FOLD_EXTRA))
    return "".join(char for char in decomposed if not unicodedata.combining(char))


@lru_cache(maxsize=1)
def _identifier() -> Any:
    """py3langid's model restricted to warmline's languages, loaded once (about 1 s)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(list(LANGUAGES))
    return identifier


def identify_language(text: str, *, fallback: str = "en") -> LanguageGuess:
    """Guess the language of one message; ``fallback`` (the conversation's language) when unsure."""
    # langid's probabilities flatten with length (its softmax temperature grows with the square
    # root of the byte count), and a message's language shows in its first and last lines.
    sample = (
        text if len(text) <= SAMPLE_CHARS else f"{text[: SAMPLE_CHARS // 2]} {text[-SAMPLE_CHARS // 2 :]}"
    )
    ranked: list[tuple[str, float]] = _identifier().rank(sample)
    top, probability = ranked[0]
    confident = probability >= CONFIDENT
    language = top if confident else fallback
    scanned = [language] if language != "en" else []
    if probability < CERTAIN:
        scanned += [lang for lang, prob in ranked if prob >= CANDIDATE and lang not in ("en", language)]
    return LanguageGuess(language, probability, confident, tuple(scanned[:MAX_CANDIDATES]))


def packaged_lexicon_dir() -> Path:
    """Folder of the non-English lexicons shipped with warmline."""
    return Path(str(resources.files("warmline") / "resources" / "safety" / "lexicons"))


def _fold_strings(value: Any) -> Any:
    """Fold the accents of every string in a parsed lexicon file (patterns, fragments, cues)."""
    if isinstance(value, str):
        return fold_accents(value)
    if isinstance(value, list):
        return [_fold_strings(item) for item in value]
    if isinstance(value, dict):
        return {key: _fold_strings(item) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class LanguageLexicon:
    """A non-English lexicon with the preparation its text needs."""

    language: str
    lexicon: Lexicon
    typo_terms: tuple[str, ...]

    def prepare(self, text: str) -> str:
        """Fold accents and correct misspelt risk words, as the lexicon's patterns expect."""
        folded = fold_accents(text)
        if not self.typo_terms:
            return folded
        return _WORD.sub(self._correct, folded)

    def _correct(self, match: re.Match[str]) -> str:
        word = match.group(0)
        lowered = word.lower()
        if len(lowered) < 6 or lowered in self.typo_terms:
            return word
        max_edits = 1 if len(lowered) < 9 else 2
        best = process.extractOne(
            lowered, self.typo_terms, scorer=Levenshtein.distance, score_cutoff=max_edits
        )
        if best is None:
            return word
        term = best[0]
        # Same first letter and ending: a typo inside the word, not another word or person.
        if term[0] != lowered[0] or term[-2:] != lowered[-2:]:
            return word
        return term


def load_language_lexicon(path: str | Path, language: str) -> LanguageLexicon:
    """Load a non-English lexicon file, folding the accents of its patterns."""
    path = Path(path)
    data = _fold_strings(load_yaml(path))
    terms = tuple(dict.fromkeys(term.lower() for term in data.pop("typo_terms", [])))
    return LanguageLexicon(language, Lexicon(data, source=str(path)), terms)


@lru_cache(maxsize=len(LANGUAGES))
def language_lexicon(language: str) -> LanguageLexicon:
    """The packaged lexicon for ``language`` (not English: that is ``default_lexicon()``)."""
    path = packaged_lexicon_dir() / f"{language}.yaml"
    if language == "en" or not path.exists():
        raise ValueError(
            f"no packaged non-English lexicon for {language!r}; languages: {', '.join(LANGUAGES[1:])}"
        )
    lexicon = load_language_lexicon(path, language)
    logger.debug(
        "loaded the %s lexicon: %d masks, %d risk rules",
        language,
        len(lexicon.lexicon.masks),
        len(lexicon.lexicon.rules),
    )
    return lexicon


@lru_cache(maxsize=4096)
def gloss_message(language: str, text: str) -> str | None:
    """The English gloss (``warmline.safety.gloss``) of a message in ``language``, after that
    language's lexicon has blanked its benign idioms; None when there is no glossary."""
    from warmline.safety.gloss import glossary  # gloss imports fold_accents from here

    dictionary = glossary(language)
    if dictionary is None or language == "en":
        return None
    lexicon = language_lexicon(language)
    return dictionary.gloss(lexicon.lexicon.masked(lexicon.prepare(text)))


@lru_cache(maxsize=4096)
def _scan_language(language: str, text: str, context: bool) -> LexiconResult:
    """Memoised: every assessment re-reads the whole conversation, so earlier turns repeat."""
    lexicon = language_lexicon(language)
    return lexicon.lexicon.scan(lexicon.prepare(text), context=context)


def scan_languages(
    text: str,
    guess: LanguageGuess,
    english: LexiconResult,
    *,
    context: bool = False,
    scan: Callable[[str, str, bool], LexiconResult] = _scan_language,
) -> tuple[LexiconResult, str]:
    """Add the non-English lexicons' findings to ``english`` (the English lexicon's result).

    Returns the combined result and the message's language: the routed one (langid's, or the
    conversation's when langid was unsure) unless only another language's lexicon found
    something, then that language (English only when the routed language was a fallback).
    """
    results = {"en": english} | {language: scan(language, text, context) for language in guess.scanned}
    routed = results.get(guess.language, english)
    if routed.masks and not any(hit.level.is_crisis for hit in routed.hits):
        # The routed language read a benign idiom: a neighbouring language's rule on the same
        # words ("me mato de estudar" is Portuguese effort, not Spanish "I kill myself") loses.
        results = {lang: result for lang, result in results.items() if lang in ("en", guess.language)}
    language = guess.language
    if not routed.hits:
        others = [
            lang for lang in guess.scanned if lang != language and results.get(lang) and results[lang].hits
        ]
        if others:
            language = max(others, key=lambda lang: results[lang].level.rank)
        elif not guess.confident and english.hits:
            language = "en"
    return merge_results(list(results.values())), language


def merge_results(results: list[LexiconResult]) -> LexiconResult:
    """One result from several lexicons' results on the same message."""
    if len(results) == 1:
        return results[0]
    imminence = any(result.imminence for result in results)
    level = RiskLevel.highest(*(result.level for result in results))
    if imminence and level.is_crisis:
        level = RiskLevel.IMMINENT
    return LexiconResult(
        level=level,
        hits=[hit for result in results for hit in result.hits],
        discounted=[hit for result in results for hit in result.discounted],
        masks=list(dict.fromkeys(mask for result in results for mask in result.masks)),
        imminence=imminence,
        informational=any(result.informational for result in results),
        history=any(result.history for result in results),
    )
