"""Word-by-word English gloss of a Spanish, French, German, Portuguese or Italian message.

The per-language lexicons catch the risk phrasing their authors listed; people write new
indirect phrasing every day ("ya no quiero seguir", "je ne vois plus de sens à tout ça").
English is where the project's detection is broadest (a larger lexicon with negation and idiom
handling, and the MiniLM classifier, which only understands English). No translation model
is available offline, so this module glosses: a hand-written
bilingual dictionary per language (``resources/safety/gloss/{lang}.yaml``) of the few hundred
words and short phrases that carry risk or emotional meaning, plus the function words that
decide what a sentence says (negation, "anymore", "want", pronouns, "everyone", "without"),
and an everyday vocabulary (``{lang}_common.yaml``, 4,000-7,000 inflected word forms: verbs,
nouns, adjectives, chat abbreviations) read after it, so that "wie hoch muss eine Brücke sein,
damit man sicher nicht überlebt" glosses to words, not to a row of unknowns.
The English lexicon and the English classifier then read the gloss, alongside the language's
own lexicon and the multilingual classifier (``warmline.safety.classifier.MultilingualEncoder``),
which reads the message itself; the two classifiers' scores are blended (``risk.GLOSS_WEIGHT``).

Per message, in this order:

1. the text arrives folded (accents stripped, lower case) with the language lexicon's masks
   already applied, so an idiom that lexicon knows ("me muero de hambre", "je suis mort de
   rire") is blank here and never reaches the English rules;
2. ``rewrites`` (regular expressions on the native text) move words into English order where
   a word-by-word gloss would lose the meaning: French "ne ... plus" around a verb, German
   "will nicht mehr" before its infinitive;
3. greedy longest-match over ``phrases`` (up to ``MAX_PHRASE`` words), then ``stems``
   (prefixes for inflected forms; a word ending like an infinitive gets "to" in front:
   "despertar" -> "to wake up");
4. a word the dictionary does not know becomes ``x``: it keeps the word count (English rules
   allow a word or two between their parts) without inventing meaning.

The gloss is meant for pattern matching, not for people to read.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from warmline.safety.language import fold_accents

logger = logging.getLogger(__name__)

MAX_PHRASE = 8
"""Longest dictionary phrase, in words."""
MIN_STEM = 4
"""Shortest stem that may match a longer word (shorter ones would match unrelated words)."""
UNKNOWN = "x"
"""What a word the dictionary does not know becomes."""
COMMON_SUFFIX = "_common.yaml"
"""A language's everyday vocabulary (``{lang}_common.yaml``), read after its main dictionary."""
MEANS_SUFFIX = "_means.yaml"
"""A language's words for means, lethality, concealment, farewells and the body, read after its
main dictionary and before its everyday vocabulary."""
LIFE_SUFFIX = "_life.yaml"
"""Everyday words of the body, the home, places, time and games (read after the means file):
without them a gloss of "mi gira la testa" or "el viernes" is a row of unknowns."""
INTERNATIONAL = "international.yaml"
"""Medicine names shared by every language, read last."""
COMMON_VOCABULARY = True
"""Whether the everyday vocabulary is read: without it most words of an ordinary sentence gloss
to ``x`` and the English classifier reading the gloss sees a few risk words and nothing else."""

# Words (with a French/Italian elided article or pronoun kept on its word: "j'", "m'", "l'"),
# numbers, and the punctuation that ends clauses and sentences.
_MEASURE = re.compile(r"\d+(?:[.,]\d+)?(?:kgs?|kilos?|lbs?|kcals?|cals?|cm|km|mg|ml|m)")
_TOKEN = re.compile(r"[^\W\d_]+'|[^\W_]+|[.,;:!?]")
_SPACES = re.compile(r"\s+")
# "cansada de vivir" -> "tired of to live": English says "tired of living".
_TIRED_OF = re.compile(
    r"\b(tired|sick|exhausted|fed up|weary|point) (?:of |in )?(?:still )?to (live|exist|wake up|go on|be alive|be here|fight)\b"
)
_ADVERB_AFTER = re.compile(r"\b(i|you|he|she|we|they) (want|wanted|would like|need) (just|only|really)\b")
_ADVERB_BEFORE = re.compile(r"\b(just|only|really) (i|you|he|she|we|they) (want|wanted|would like|need)\b")
_DOUBLE_NEGATIVE = re.compile(
    r"\b(i|you|he|she|we|they) (?:don't|do not|can't) (see|have|find|feel) (?:no|any)\b"
)
_GERUNDS = {
    "live": "living",
    "exist": "existing",
    "wake up": "waking up",
    "go on": "going on",
    "be alive": "being alive",
    "be here": "being here",
    "fight": "fighting",
}
# A preposition glossed before an infinitive ("de continuer" -> "of to go on") is the "to".
_DOUBLE_TO = re.compile(r"\b(?:to|of|for|in|by) to\b")
# Languages that drop the subject pronoun put the negation before the verb, and the verb's
# gloss carries the pronoun ("no quiero" -> "not i want"): English order is "i don't want".
_NEGATED_VERB = re.compile(
    r"\b(not|no longer|never|never again) (i|you|he|she|we|they|everyone|nobody) (\w+)\b"
)
# Languages with a subject pronoun put it first: French "je ne veux plus" -> "i no longer want".
_SUBJECT_NEGATION = re.compile(
    r"\b(i|you|he|she|we|they|everyone|nobody) (not|no longer|never|never again) (\w+)\b"
)
_NOT_VERBS = {"to", "x", "a", "the", "that", "this", "it", "me", "myself", "anymore", "more", "even", "again"}
_AUXILIARIES = {"am", "is", "are", "was", "were", "will", "would", "could", "should", "can"}


def _english_negation(match: re.Match[str], subject_first: bool = False) -> str:
    if subject_first:
        subject, negation, verb = match.groups()
    else:
        negation, subject, verb = match.groups()
    if verb in _NOT_VERBS:
        return match.group(0)
    if verb in _AUXILIARIES:
        if negation == "not" and verb == "can":
            return f"{subject} can't"
        return f"{subject} {verb} {negation}"
    if negation == "not":
        does = "doesn't" if subject in {"he", "she", "everyone", "nobody"} else "don't"
        verb = {"wants": "want", "has": "have", "feels": "feel", "sees": "see"}.get(verb, verb)
        return f"{subject} {does} {verb}"
    return f"{subject} {negation} {verb}"


_REFLEXIVE_BODY = re.compile(
    r"\b(cut|burned|burnt|hurt|broke|scratched|injured|twisted|sprained|bruised|hit|bit) myself "
    r"(?:the|a|an|my) (finger|fingers|thumb|hand|hands|foot|feet|knee|leg|arm|head|lip|tongue|toe|"
    r"nail|face|back|ankle|wrist|elbow|shoulder|nose|eye|neck)\b"
)


@dataclass(frozen=True)
class Glossary:
    """One language's bilingual dictionary, compiled."""

    language: str
    phrases: dict[str, str]
    stems: tuple[tuple[str, str], ...]
    """(prefix, English), longest prefix first."""
    infinitive: re.Pattern[str] | None
    rewrites: tuple[tuple[re.Pattern[str], str], ...]
    max_phrase: int

    def gloss(self, text: str) -> str:
        """The English gloss of ``text`` (any case or accents)."""
        folded = fold_accents(text).lower().replace("\u2019", "'")
        for pattern, replacement in self.rewrites:
            folded = pattern.sub(replacement, folded)
        tokens = _TOKEN.findall(folded)
        out: list[str] = []
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if not token[0].isalnum():
                out.append(token)
                i += 1
                continue
            for n in range(min(self.max_phrase, len(tokens) - i), 0, -1):
                key = " ".join(tokens[i : i + n])
                if key in self.phrases:
                    out.append(self.phrases[key])
                    i += n
                    break
            else:
                out.append(self._word(token))
                i += 1
        glossed = _SPACES.sub(" ", " ".join(part for part in out if part)).strip()
        glossed = re.sub(r" ([.,;:!?])", r"\1", glossed)
        glossed = _NEGATED_VERB.sub(_english_negation, glossed)
        glossed = _SUBJECT_NEGATION.sub(lambda match: _english_negation(match, subject_first=True), glossed)
        glossed = _TIRED_OF.sub(lambda m: f"{m.group(1)} of {_GERUNDS[m.group(2)]}", glossed)
        # Adverbs where English puts them: "i want just to sleep" -> "i just want to sleep".
        glossed = _ADVERB_AFTER.sub(r"\1 \3 \2", glossed)
        glossed = _ADVERB_BEFORE.sub(r"\2 \1 \3", glossed)
        # Double negation of Romance languages: "no veo ninguna salida" -> "i see no way out".
        glossed = _DOUBLE_NEGATIVE.sub(r"\1 \2 no", glossed)
        # A reflexive with a body part is the writer's own: "me corté el dedo" -> "i cut my finger".
        glossed = _REFLEXIVE_BODY.sub(r"\1 my \2", glossed)
        while _DOUBLE_TO.search(glossed):
            glossed = _DOUBLE_TO.sub("to", glossed)
        return glossed

    def _word(self, word: str) -> str:
        if word.isdigit() or _MEASURE.fullmatch(word):
            return word  # "45kg", "800kcal": the same in every language
        for stem, english in self.stems:
            if word.startswith(stem):
                if (
                    self.infinitive is not None
                    and self.infinitive.search(word)
                    and not english.startswith("to ")
                ):
                    return f"to {english}"
                return english
        return UNKNOWN


def packaged_gloss_dir() -> Path:
    """Folder of the bilingual dictionaries shipped with warmline."""
    return Path(str(resources.files("warmline") / "resources" / "safety" / "gloss"))


def _fold_key(key: Any) -> str:
    return " ".join(_TOKEN.findall(fold_accents(str(key)).lower().replace("\u2019", "'")))


# libyaml's loader where PyYAML was built with it: the same documents, read about ten times
# faster (the five glossaries are some 30,000 lines; the pure-Python loader took 7 s for them).
_BASE_LOADER = getattr(yaml, "CBaseLoader", yaml.BaseLoader)


def load_glossary(path: str | Path, language: str) -> Glossary:
    """Compile a dictionary file (keys folded like the text, so they may carry accents)."""
    path = Path(path)
    # BaseLoader: every scalar is text, so a bare "no", "si" or "on" is the word, not a boolean.
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_BASE_LOADER) or {}
    phrases: dict[str, str] = {}
    for key, value in (data.get("phrases") or {}).items():
        if not isinstance(key, str) or not isinstance(value, str | None):
            raise ValueError(f"{path}: phrase {key!r}: {value!r} is not text")
        folded = _fold_key(key)
        if not folded:
            raise ValueError(f"{path}: empty phrase key {key!r}")
        english = value or ""
        if phrases.get(folded, english) != english:
            raise ValueError(f"{path}: {key!r} folds to {folded!r}, which already means {phrases[folded]!r}")
        phrases[folded] = english
    stems = []
    for key, value in (data.get("stems") or {}).items():
        folded = fold_accents(str(key)).lower()
        if len(folded) < MIN_STEM:
            raise ValueError(
                f"{path}: stem {key!r} is shorter than {MIN_STEM} letters; list its forms as phrases"
            )
        stems.append((folded, str(value)))
    stems.sort(key=lambda item: -len(item[0]))
    rewrites = []
    for entry in data.get("rewrites") or []:
        try:
            rewrites.append((re.compile(fold_accents(entry["pattern"])), fold_accents(entry["replace"])))
        except (re.error, KeyError) as error:
            raise ValueError(f"{path}: bad rewrite {entry!r}: {error}") from error
    infinitive = re.compile(data["infinitive"]) if data.get("infinitive") else None
    longest = max((len(key.split()) for key in phrases), default=1)
    return Glossary(language, phrases, tuple(stems), infinitive, tuple(rewrites), min(longest, MAX_PHRASE))


def with_common_words(glossary: Glossary, common: Glossary) -> Glossary:
    """``glossary`` with the words and stems of ``common`` it does not list itself (its own
    entries, written for risk and for what decides a sentence's meaning, win)."""
    phrases = {**common.phrases, **glossary.phrases}
    own = {stem for stem, _ in glossary.stems}
    stems = sorted(
        [*glossary.stems, *(item for item in common.stems if item[0] not in own)],
        key=lambda item: -len(item[0]),
    )
    longest = max((len(key.split()) for key in phrases), default=1)
    return replace(glossary, phrases=phrases, stems=tuple(stems), max_phrase=min(longest, MAX_PHRASE))


@lru_cache(maxsize=8)
def glossary(language: str) -> Glossary | None:
    """The packaged dictionary for ``language``, or None when there is none (English)."""
    path = packaged_gloss_dir() / f"{language}.yaml"
    if not path.exists():
        return None
    loaded = load_glossary(path, language)
    # Then, each filling only what the files before it leave out: the language's vocabulary of
    # means, farewells and the body (``{lang}_means.yaml``), of the body, home, places and time
    # (``{lang}_life.yaml``), its everyday words, and the names of
    # medicines, which are the same or nearly in every language (international.yaml).
    extra = [
        packaged_gloss_dir() / f"{language}{MEANS_SUFFIX}",
        packaged_gloss_dir() / f"{language}{LIFE_SUFFIX}",
    ]
    if COMMON_VOCABULARY:
        extra.append(packaged_gloss_dir() / f"{language}{COMMON_SUFFIX}")
    extra.append(packaged_gloss_dir() / INTERNATIONAL)
    for more in extra:
        if more.exists():
            loaded = with_common_words(loaded, load_glossary(more, language))
    logger.debug(
        "loaded the %s glossary: %d phrases, %d stems", language, len(loaded.phrases), len(loaded.stems)
    )
    return loaded
