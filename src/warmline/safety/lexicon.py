"""Tiered phrase lexicon: fast, explainable detection of risk language in one message.

The rules live in ``resources/safety/lexicon.yaml``. Matching runs on normalised text in four
passes, so that a benign use of a risk word never reaches the risk rules:

1. masks remove hyperbole, idioms, technical and accidental uses ("this homework is killing
   me", "kill -9", "dying to see", "cut myself chopping onions");
2. risk rules match what is left;
3. each hit is checked in its clause and sentence: a negation just before it ("I would never
   kill myself") or a distant-past, recovered frame ("I used to self-harm, clean for four
   years") discounts it, and laughter downgrades a hyperbolic self-statement to distress.
   Discounted hits are kept as evidence but do not raise the level.
4. combinations: some phrases are ordinary alone but a warning sign together ("I gave my
   guitar to my nephew" + "what's the point"). Each ``signal`` is matched on the masked text
   and judged like a hit (negation, recovered history); a ``combination`` fires when its
   signals all occur in the same message, and counts as one hit with its own category and
   level. A signal may also count alone at ``distress``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from warmline.safety.levels import SELF_CATEGORIES, RiskLevel
from warmline.safety.normalise import normalise_text

logger = logging.getLogger(__name__)


def load_yaml(path: str | Path) -> Any:
    """A YAML data file, read with libyaml's safe loader where PyYAML was built with it (the same
    documents as ``yaml.safe_load``, several times faster: the lexicons are read at start-up)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=loader)


MaskKind = Literal["hyperbole", "idiom", "technical", "accidental", "breakup"]
_CRYING = "\N{LOUDLY CRYING FACE}"

Discount = Literal["negated", "history", "joking", "framing"]

# Categories whose hits a fiction, game, teaching or research frame discounts (cues.framing):
# never the writer's own risk statements.
_FRAMEABLE: frozenset[str] = frozenset({"violence_request", "means", "harm_to_others"})
# Categories a laughing tone softens to distress: hyperbole about oneself or about a sibling.
# Not plans and means: "got the whole thing planned lol" and "lmao which bridge has no fence" laugh
# nervously; nobody jokes in the shape of a plan (and a means question without distress already
# needs context, ``context: true``).
_JOKEABLE: frozenset[str] = (SELF_CATEGORIES - {"plan", "means"}) | {"harm_to_others"}
# Categories whose topic words ("domestic violence", "self-harm") a question of fact may name.
_TOPIC_FRAMEABLE: frozenset[str] = frozenset(
    {"harm_from_others", "child_abuse", "third_party", "eating_disorder", "self_harm"}
)

# A death dated in the past ("my wife died two years ago", "seit meine Frau vor zwei Jahren
# gestorben ist") is a loss, not a recovered past: its date says nothing of the writer's risk
# being behind them (the history reading and the native recovery softener skip its sentence).
BEREAVED = re.compile(
    r"\b(?:died|passed away|passed on|funeral|gestorben|verstorben|gegangen ist|starb|tod"
    r"|murio|fallecio|falleci\w*|mort|morte|decede\w*|nous a quitte\w*|morreu|faleceu|falecimento"
    r"|morto|morta|scomparso|scomparsa|venut[oa] a mancare|mancat[oa])\b"
)

# The writer saying a character's risk is theirs too: no story frame discounts it.
_ECHOED = re.compile(
    r"\b(?:so do i|so am i|me too|same here|i do too|i am too|i'm the same|just like me|like i do|i feel the same"
    r"|(?:it's|it is|she's|he's|they're) (?:really |basically |actually )?(?:me|about me|based on me))\b"
)
# The writer as the subject just before a phrase ("... because I want to die too").
_WRITER_BEFORE = re.compile(r"\b(?:i|i'm|i am|i've|i have|i'd|i would|i'll|i will|me|myself)\b[^.!?,]*$")
# A real person named in the sentence ("my friend told me she wants to die"): not a character.
_REAL_PERSON = re.compile(
    r"\bmy (?:best |little |big |older |younger )?(?:friend|friends|sister|brother|mom|mum|mother|dad|father|son"
    r"|daughter|husband|wife|partner|boyfriend|girlfriend|cousin|roommate|flatmate|classmate|coworker"
    r"|colleague|student|kid|child|aunt|uncle|grandma|grandpa|niece|nephew|neighbou?r|teammate|ex|bf|gf"
    r"|bestie|mate|fiance|fiancee|stepdad|stepmom|stepmum|boss|teacher|coach)\b"
)
_SENTENCE_END = re.compile(r"[.!?;\n]+")
# A clause ends at punctuation; the negation window never crosses one.
_CLAUSE_PUNCT = re.compile(r"[,:;.!?\n]")
_NEGATION_WINDOW_WORDS = 5


def normalise(text: str, *, english: bool = True) -> str:
    """The text the rules match: ``warmline.safety.normalise`` (case, Unicode look-alikes,
    leetspeak, spacing, repeats, misspellings, slang). ``english=False`` keeps only the
    language-neutral steps (for the other languages' lexicons)."""
    return normalise_text(text, english=english)


@dataclass(frozen=True)
class Rule:
    """One compiled risk rule from the lexicon file."""

    rule_id: str
    category: str
    level: RiskLevel
    pattern: re.Pattern[str]
    context: bool = False
    """Only elevated when the conversation also shows distress; otherwise distress."""
    negatable: bool = True
    past_ok: bool = False
    """The pattern itself names a past event as the reason for a present intent ("a year since
    he died ... I'll go join him"): the recovered-history discount does not apply."""
    none_of: tuple[str, ...] = ()
    """Signals that, found anywhere in the message, discount the rule's hits as framed: an
    ordinary reason given ("goodbye emails to everyone, it's my last week at the company")."""


@dataclass(frozen=True)
class Signal:
    """A phrase that is not risk on its own, only as part of a combination."""

    signal_id: str
    pattern: re.Pattern[str]
    negatable: bool = True
    alone: RiskLevel | None = None
    """Level the signal counts at by itself (``distress`` or None: only in combinations)."""


@dataclass(frozen=True)
class Combination:
    """Signals that are risk when they co-occur in one message."""

    combination_id: str
    category: str
    level: RiskLevel
    all_of: tuple[str, ...]
    any_of: tuple[str, ...] = ()
    """At least one of these must match too (empty: no extra condition)."""
    none_of: tuple[str, ...] = ()
    """None of these may match: an ordinary reason said in the message ("we fly to Peru next
    month") explains preparations that are risk without one."""
    context: bool = False
    """As for rules: only elevated when the conversation also shows distress."""
    serious: bool = False
    """Laughter does not soften it (a plan or a method question laughed around is nervous)."""


@dataclass(frozen=True)
class Mask:
    """A benign use of a risk word, blanked out before the risk rules run."""

    mask_id: str
    kind: MaskKind
    pattern: re.Pattern[str]
    unless: re.Pattern[str] | None = None


@dataclass(frozen=True)
class Hit:
    """A risk rule that matched, with how it was judged in context."""

    rule_id: str
    category: str
    level: RiskLevel
    phrase: str
    discount: Discount | None = None
    """Why the hit does not count at its nominal level (None: it counts)."""
    start: int = 0
    """Offset of the match in the normalised message."""
    needs_context: bool = False
    """A context-only rule (a height or dose question) demoted because nothing earlier in the
    conversation showed distress."""

    def describe(self) -> str:
        """Evidence line, e.g. ``lexicon kill_myself: "kill myself"``."""
        note = f" ({self.discount})" if self.discount else ""
        return f'lexicon {self.rule_id}: "{self.phrase}"{note}'


@dataclass(frozen=True)
class LexiconResult:
    """Everything the lexicon found in one message."""

    level: RiskLevel
    hits: list[Hit] = field(default_factory=list)
    """Hits that count towards ``level``."""
    discounted: list[Hit] = field(default_factory=list)
    """Hits cancelled by negation, a recovered history, or a joking tone."""
    masks: list[str] = field(default_factory=list)
    """Ids of the benign uses that were blanked out."""
    imminence: bool = False
    informational: bool = False
    history: bool = False
    """The message is framed as a past, recovered experience ("used to", "clean for a year")."""

    @property
    def categories(self) -> list[str]:
        """Categories of the counting hits, most severe first, without repeats."""
        ordered = sorted(self.hits, key=lambda hit: -hit.level.rank)
        return list(dict.fromkeys(hit.category for hit in ordered))

    @property
    def benign_signals(self) -> bool:
        """True when the message showed a benign reading of risk words and no counting risk."""
        no_risk = not any(hit.level.is_crisis for hit in self.hits)
        return no_risk and bool(self.masks or self.discounted or self.informational or self.history)

    def evidence(self) -> list[str]:
        """Evidence lines for the counting and discounted hits and the masks."""
        lines = [hit.describe() for hit in self.hits + self.discounted]
        lines += [f"benign use: {mask_id}" for mask_id in self.masks]
        return lines


class Lexicon:
    """Compiled rules from a lexicon YAML file (the packaged one by default)."""

    def __init__(self, data: dict[str, Any], source: str = "<dict>") -> None:
        fragments: dict[str, str] = data.get("fragments", {})
        self.source = source
        self.language: str = data.get("language", "en")

        def compile_pattern(pattern: str, where: str) -> re.Pattern[str]:
            expanded = re.sub(r"\{([A-Z0-9_]+)\}", lambda m: f"(?:{fragments[m.group(1)]})", pattern)
            try:
                return re.compile(expanded, re.IGNORECASE)
            except re.error as error:  # name the rule so the YAML can be fixed
                raise ValueError(f"{source}: bad pattern in {where}: {error}") from error

        self.masks = [
            Mask(
                mask_id=entry["id"],
                kind=entry["kind"],
                pattern=compile_pattern(entry["pattern"], entry["id"]),
                unless=compile_pattern(entry["unless"], entry["id"]) if "unless" in entry else None,
            )
            for entry in data.get("masks", [])
        ]
        self.rules = [
            Rule(
                rule_id=entry["id"],
                category=entry["category"],
                level=RiskLevel(entry["level"]),
                pattern=compile_pattern(entry["pattern"], entry["id"]),
                context=bool(entry.get("context", False)),
                negatable=bool(entry.get("negatable", True)),
                past_ok=bool(entry.get("past_ok", False)),
                none_of=tuple(entry.get("none", ())),
            )
            for entry in data.get("risk", [])
        ]
        self.signals = {
            entry["id"]: Signal(
                signal_id=entry["id"],
                pattern=compile_pattern(entry["pattern"], entry["id"]),
                negatable=bool(entry.get("negatable", True)),
                alone=RiskLevel(entry["alone"]) if "alone" in entry else None,
            )
            for entry in data.get("signals", [])
        }
        self.combinations = [
            Combination(
                combination_id=entry["id"],
                category=entry["category"],
                level=RiskLevel(entry["level"]),
                all_of=tuple(entry["all"]),
                any_of=tuple(entry.get("any", ())),
                none_of=tuple(entry.get("none", ())),
                context=bool(entry.get("context", False)),
                serious=bool(entry.get("serious", False)),
            )
            for entry in data.get("combinations", [])
        ]
        for rule in self.rules:
            if set(rule.none_of) - self.signals.keys():
                raise ValueError(
                    f"{source}: rule {rule.rule_id} names unknown signals {sorted(set(rule.none_of) - self.signals.keys())}"
                )
        for combination in self.combinations:
            unknown = set(combination.all_of + combination.any_of + combination.none_of) - self.signals.keys()
            if unknown:
                raise ValueError(
                    f"{source}: combination {combination.combination_id} names unknown signals {sorted(unknown)}"
                )
        self._context_rules = {rule.rule_id for rule in self.rules if rule.context} | {
            combination.combination_id for combination in self.combinations if combination.context
        }
        self._third_party_rules = [rule for rule in self.rules if rule.category == "third_party"]
        self._distress_rules = [rule for rule in self.rules if rule.category == "distress"]
        self._rules_by_id = {rule.rule_id: rule for rule in self.rules}
        cues: dict[str, str] = data["cues"]
        self.negation = compile_pattern(cues["negation"], "cues.negation")
        self.negation_breakers = compile_pattern(cues["negation_breakers"], "cues.negation_breakers")
        self.distant_past = compile_pattern(cues["distant_past"], "cues.distant_past")
        self.present_again = compile_pattern(cues["present_again"], "cues.present_again")
        self.laughter = compile_pattern(cues["laughter"], "cues.laughter")
        self.imminence = compile_pattern(cues["imminence"], "cues.imminence")
        self.informational = compile_pattern(cues["informational"], "cues.informational")

        # Optional cues (the other languages' lexicons may not have them).
        def optional(name: str) -> re.Pattern[str] | None:
            return compile_pattern(cues[name], f"cues.{name}") if name in cues else None

        self.framing = optional("framing")
        self.minor = optional("minor")
        self.reported_speech = optional("reported_speech")
        # Someone unnamed at risk in a question about spotting or teaching the signs is a
        # hypothetical ("how do I run a lesson on spotting when a friend might be suicidal").
        self.hypothetical_subject = optional("hypothetical_subject")
        self.spotting_question = optional("spotting_question")
        self.venting = optional("venting")
        self.explained = optional("explained")
        self.accidental = optional("accidental")
        self.deflection = optional("deflection")
        # "if a friend tells me", "when someone says": what follows is the hypothetical person's words
        self._hypothetical_telling = compile_pattern(
            r"\b(?:if|when|whenever|once) (?:"
            + cues.get("hypothetical_subject", "(?!)")
            + r")(?: [\w']+){0,2}? "
            r"(?:tells?|says?|said|told|admits?|confides?|mentions?|texts?|messages?|writes?|comes to)\b"
            r"(?: (?:to )?(?:me|us)\b)?",
            "cues.hypothetical_subject (telling)",
        )
        self.reassured = optional("reassured")
        self.recourse = optional("recourse")
        self.fiction = optional("fiction")
        # a farewell letter or note named in a hit, and one the writer calls their own
        self.story = optional("story")
        self.letter = optional("letter")
        self.own_letter = optional("own_letter")
        self.frame_retracted = optional("frame_retracted")
        self.animal_patient = optional("animal_patient")
        self.in_game = optional("in_game")
        # normalise + masks, once per message: scan() and masked() (the softener's cues) share it
        self._prepared = lru_cache(maxsize=1024)(self._prepare)

    @classmethod
    def from_file(cls, path: str | Path) -> Lexicon:
        """Load and compile a lexicon YAML file."""
        path = Path(path)
        return cls(load_yaml(path), source=str(path))

    def scan(self, text: str, *, context: bool = False) -> LexiconResult:
        """Find risk language in one message.

        ``context`` says the conversation already showed distress; rules marked
        ``context: true`` (height or dose questions) only count as elevated with it, or with
        distress in this same message.
        """
        masked, mask_ids = self._prepared(text)
        hits: list[Hit] = []
        discounted: list[Hit] = []
        reasons: dict[str, bool] = {}  # the signals rules' ``none`` name, each searched once

        def reason_given(name: str) -> bool:
            if name not in reasons:
                reasons[name] = bool(self.signals[name].pattern.search(masked))
            return reasons[name]

        for rule in self.rules:
            first_discounted: Hit | None = None
            explained = any(reason_given(name) for name in rule.none_of)
            for match in rule.pattern.finditer(masked):
                phrase = match.group(0).strip()
                if not phrase:
                    continue
                discount = (
                    "framing" if explained else self._discount(rule, masked, match.start(), context=context)
                )
                hit = Hit(rule.rule_id, rule.category, rule.level, phrase, discount, match.start())
                if discount is None:
                    hits.append(hit)
                    first_discounted = None
                    break  # one counting hit per rule is enough evidence
                if discount == "joking":
                    # A laughing hyperbole still gets resources appended, just not the crisis
                    # script: count it, but as distress (a later serious match may still count).
                    hit = replace(hit, level=RiskLevel.DISTRESS)
                first_discounted = first_discounted or hit
            if first_discounted is not None:
                (hits if first_discounted.discount == "joking" else discounted).append(first_discounted)

        hits += self._combinations(masked)

        # "How much rat poison would it take to kill a grown man?": the amount asked for someone
        # else's death is a request for violence, not the writer's means (same words, same start).
        violence_starts = {hit.start for hit in hits if hit.category == "violence_request"}
        hits = [hit for hit in hits if not (hit.category == "means" and hit.start in violence_starts)]
        hits = self._attribute_third_party(hits, masked)
        hits, characters = self._fictional_others(hits, masked)
        discounted += characters
        # The same words read as self-injury and as an eating disorder ("punish myself by not
        # eating") are the eating disorder: its reply and resources are the specific ones.
        eating_starts = {hit.start for hit in hits if hit.category == "eating_disorder"}
        hits = [hit for hit in hits if not (hit.category == "self_harm" and hit.start in eating_starts)]
        hits = self._attribute_child_abuse(hits, masked)
        distress_here = any(hit.level == RiskLevel.DISTRESS for hit in hits)
        # A height or dose question waved off ("asking for no reason", "don't ask why") carries its
        # own context: the deflection is the tell.
        has_context = context or distress_here
        if (
            not has_context
            and self.deflection is not None
            and any(h.rule_id in self._context_rules for h in hits)
        ):
            has_context = bool(self.deflection.search(masked))
        hits = [self._resolve_context(hit, has_context) for hit in hits]
        imminence = bool(self.imminence.search(masked))
        level = RiskLevel.highest(*(hit.level for hit in hits))
        if imminence and level.is_crisis:
            level = RiskLevel.IMMINENT
        return LexiconResult(
            level=level,
            hits=hits,
            discounted=discounted,
            masks=list(mask_ids),
            imminence=imminence,
            informational=bool(self.informational.search(masked))
            and not (self.frame_retracted is not None and self.frame_retracted.search(masked)),
            history=self._recovered_history(masked),
        )

    def _recovered_history(self, text: str) -> bool:
        """Whether ``text`` is told as a recovered past: a distant-past cue outside the sentence of
        a death, and no word of the present."""
        if self.present_again.search(text):
            return False
        return any(
            not BEREAVED.search(_sentence_of(text, m.start())) for m in self.distant_past.finditer(text)
        )

    def masked(self, text: str) -> str:
        """``text`` as the risk rules see it: normalised, with the benign uses blanked out
        (what ``warmline.safety.gloss`` translates, so a known idiom never reaches English)."""
        return self._prepared(text)[0]

    def _prepare(self, text: str) -> tuple[str, tuple[str, ...]]:
        """The masked text and the ids of the masks that blanked something (cached per lexicon
        as ``_prepared``)."""
        masked, mask_ids = self._apply_masks(normalise(text, english=self.language == "en"))
        return masked, tuple(mask_ids)

    def _apply_masks(self, text: str) -> tuple[str, list[str]]:
        """Blank out benign uses (same length, so offsets and sentence bounds stay put)."""
        found: list[str] = []
        for mask in self.masks:

            def blank(match: re.Match[str], mask: Mask = mask, text: str = text) -> str:
                if mask.unless is not None and mask.unless.search(_sentence_of(text, match.start())):
                    return match.group(0)
                found.append(mask.mask_id)
                return " " * len(match.group(0))

            text = mask.pattern.sub(blank, text)
        return text, list(dict.fromkeys(found))

    def _combinations(self, text: str) -> list[Hit]:
        """Hits for the signals that count alone and for the combinations that fire."""
        found: dict[str, Hit] = {}
        for signal in self.signals.values():
            # Judged like a rule's hit (negation, recovered history). The "distress" category
            # skips the laughter check here; laughter is judged for the combination below.
            pseudo = Rule(
                signal.signal_id, "distress", RiskLevel.DISTRESS, signal.pattern, negatable=signal.negatable
            )
            for match in signal.pattern.finditer(text):
                phrase = match.group(0).strip()
                if not phrase:
                    continue
                discount = self._discount(pseudo, text, match.start())
                if discount is None:
                    found[signal.signal_id] = Hit(
                        signal.signal_id, "distress", RiskLevel.DISTRESS, phrase, None, match.start()
                    )
                    break
        hits = [
            replace(found[signal.signal_id], level=signal.alone)
            for signal in self.signals.values()
            if signal.alone is not None and signal.signal_id in found
        ]
        for combination in self.combinations:
            if not all(name in found for name in combination.all_of):
                continue
            extra = [found[name] for name in combination.any_of if name in found]
            if combination.any_of and not extra:
                continue
            if any(name in found for name in combination.none_of):
                continue
            parts = [found[name] for name in combination.all_of] + extra
            hit = Hit(
                combination.combination_id,
                combination.category,
                combination.level,
                '" + "'.join(part.phrase for part in parts),  # describe() adds the outer quotes
                None,
                min(part.start for part in parts),
            )
            joking = any(
                self._laughing(_sentence_of(text, part.start))
                and not self.imminence.search(_sentence_of(text, part.start))
                for part in parts
            )
            if (
                joking
                and not combination.serious
                and combination.category in SELF_CATEGORIES
                and combination.level.is_crisis
            ):
                hit = replace(hit, level=RiskLevel.DISTRESS, discount="joking")
            hits.append(hit)
        return hits

    def _discount(self, rule: Rule, text: str, start: int, *, context: bool = False) -> Discount | None:
        """Why a hit should not count, judged from its clause and sentence.

        ``context`` (the conversation showed distress) keeps a framed method question counting:
        "for a story, how many would it take" after hopelessness is means-seeking.
        """
        sentence = _sentence_of(text, start)
        if rule.negatable and self._negated(text, start):
            return "negated"
        if self.frame_retracted is not None and self.frame_retracted.search(text):
            # "For a school project, what's the most painless way to die? (it's not really for a
            # project)": a frame the writer takes back discounts nothing.
            return None
        if (
            not rule.past_ok
            and self.distant_past.search(sentence)
            and not self.present_again.search(sentence)
        ):
            return "history"
        if (
            self.framing is not None
            and rule.category in _FRAMEABLE
            and not (context and rule.category == "means")
            and self.framing.search(text)
        ):
            return "framing"
        if (
            rule.category == "third_party"
            and self.hypothetical_subject is not None
            and (
                self.hypothetical_subject.match(text, start) or self._after_hypothetical_telling(text, start)
            )
            and self._asks_for_help_or_facts(sentence)
        ):
            return "framing"
        if rule.category in SELF_CATEGORIES and self._in_hypothetical_help_question(text, start):
            # "What should I say if a friend tells me they want to die?": the first-person rule's
            # words are the hypothetical friend's, inside a help question; nobody is at risk.
            return "framing"
        if rule.category in SELF_CATEGORIES and self._in_game(text, start):
            # "uninstalling and killing myself (in game, respawn in 5)": a game character's death.
            return "framing"
        if rule.category == "means" and self.animal_patient is not None and self.animal_patient.search(text):
            # "My dog ate half a bar of chocolate, is that a toxic amount?": a vet's question.
            return "framing"
        if (
            rule.category in _TOPIC_FRAMEABLE
            and self.informational.search(sentence)
            and not _FIRST_PERSON.search(text[start : start + 80].split(".")[0])
            and not _FIRST_PERSON.search(sentence)
        ):
            # "What percentage of domestic violence victims are men?": the topic named in a
            # question of fact, with no one in the sentence saying it happens to them. The window
            # after the hit runs to a full stop, past a question mark: "any statistics on domestic
            # violence? I live with it every day" is the writer's own.
            return "framing"
        if (
            rule.category in _JOKEABLE
            and rule.level == RiskLevel.ELEVATED
            and self._laughing(sentence)
            and not self.imminence.search(sentence)
        ):
            return "joking"
        return None

    def _laughing(self, sentence: str) -> bool:
        """Whether the sentence laughs. 😭 is laughter online as often as it is crying: alone, it
        laughs only where the sentence carries no distress of its own ("i hate myself so much i
        want to die 😭" is crying; "that plot twist, i want to die 😭" is not)."""
        marks = {match.group(0) for match in self.laughter.finditer(sentence)}
        if not marks:
            return False
        if marks == {_CRYING}:
            return not any(rule.pattern.search(sentence) for rule in self._distress_rules)
        return True

    def _in_hypothetical_help_question(self, text: str, start: int) -> bool:
        """Whether ``start`` lies inside a third-party phrase about a hypothetical person ("a
        friend", "someone") in a sentence that asks how to help or spot it."""
        if self.hypothetical_subject is None:
            return False
        sentence_start, sentence_end = _sentence_span(text, start)
        if not self._asks_for_help_or_facts(text[sentence_start:sentence_end]):
            return False
        if self._after_hypothetical_telling(text, start):
            return True  # "...if someone tells me they're thinking about suicide?"
        for rule in self._third_party_rules:
            for match in rule.pattern.finditer(text, sentence_start, sentence_end):
                if match.start() <= start < match.end() and self.hypothetical_subject.match(
                    text, match.start()
                ):
                    return True
        return False

    def _asks_for_help_or_facts(self, sentence: str) -> bool:
        """A question of fact, or one about how to help, spot or answer someone."""
        return bool(
            self.informational.search(sentence)
            or (self.spotting_question is not None and self.spotting_question.search(sentence))
        )

    def _after_hypothetical_telling(self, text: str, start: int) -> bool:
        """Whether ``start`` follows "if someone tells me" / "when a friend says" in its sentence,
        with no first-person word between (the words are the hypothetical person's)."""
        sentence_start = _sentence_span(text, start)[0]
        tellings = list(self._hypothetical_telling.finditer(text, sentence_start, start))
        return bool(tellings) and not _FIRST_PERSON.search(text[tellings[-1].end() : start])

    def explains(self, text: str) -> bool:
        """Whether ``text`` gives an ordinary reason (cues.explained) that it does not deny ("não é
        mudança", "it's not a move")."""
        if self.explained is None:
            return False
        # The three words before the reason, not _negated's clause: "não é mudança" has "e" (is),
        # which reads as a clause breaker ("and") there.
        return any(
            not self.negation.search(" ".join(text[: match.start()].split()[-3:]))
            for match in self.explained.finditer(text)
        )

    def _negated(self, text: str, start: int) -> bool:
        """A negation cue within a few words before ``start``, in the same clause."""
        words = _clause_before(text, start).split()[-_NEGATION_WINDOW_WORDS:]
        window = " ".join(words)
        cues = list(self.negation.finditer(window))
        if not cues:
            return False
        after_cue = window[cues[-1].end() :]
        if self.negation_breakers.search(after_cue) or self.negation_breakers.match(text, start):
            # Nor does it reach a phrase that opens a clause of its own: "so my family doesn't
            # blame themselves after i'm gone".
            return False
        # Text without punctuation (or in capitals, typed fast) runs clauses together: "im not ok
        # i want to die". A new first-person subject after the cue ends its scope, unless a verb
        # of saying or thinking hands the negation on ("i don't think i want to").
        return not (self.language == "en" and _NEW_FIRST_PERSON_CLAUSE.search(after_cue))

    def _in_game(self, text: str, start: int) -> bool:
        """Whether a game qualifier (cues.in_game: "in game", "no minecraft", "respawn") follows the
        phrase at ``start`` within its sentence (a bracket included)."""
        if self.in_game is None:
            return False
        _, end = _sentence_span(text, start)
        return bool(self.in_game.search(text[start : min(end, start + 100)]))

    def _fictional_others(self, hits: list[Hit], text: str) -> tuple[list[Hit], list[Hit]]:
        """Someone else's risk in a story the writer is writing ("my main character wants to jump
        from the tower in chapter 3, does that work?") is a character's: its third-party hits are
        discounted as framed (the writer's own risk phrases, outside the character's sentences,
        still count; a frame the writer takes back discounts nothing). So is a farewell letter
        written for a story (``_story_letters``)."""
        fiction = self.fiction is not None and bool(self.fiction.search(text))
        story = self.story is not None and bool(self.story.search(text))
        if not (fiction or story):
            return hits, []
        if self.frame_retracted is not None and self.frame_retracted.search(text):
            return hits, []
        if _ECHOED.search(text):
            return hits, []  # "my character wants to die and honestly so do i"

        def characters(hit: Hit) -> bool:
            sentence = _sentence_of(text, hit.start)
            own = _WRITER_BEFORE.search(text[max(0, hit.start - 16) : hit.start])
            return (
                fiction
                and hit.category == "third_party"
                and hit.level.is_crisis
                and not _REAL_PERSON.search(sentence)
                and not own
            )

        kept: list[Hit] = []
        framed: list[Hit] = []
        for hit in hits:
            if characters(hit):
                framed.append(replace(hit, discount="framing"))
            else:
                kept.append(hit)
        letters = self._story_letters(kept, text) if story else []
        if letters:
            framed += [replace(hit, discount="framing") for hit in letters]
            kept = [hit for hit in kept if hit not in letters]
        return kept, framed

    def _story_letters(self, hits: list[Hit], text: str) -> list[Hit]:
        """The farewell letters of a story (cues.story: a novel, a screenplay, a character, a
        writing workshop): goodbye or plan hits naming a letter or note (cues.letter) that the
        writer does not call their own in its sentence (cues.own_letter: "my goodbye letter"),
        when they are the only crisis the message names ("I'm writing a goodbye letter for my
        novel's heroine"; "la lettre d'adieu d'un soldat de 1916, pour mon atelier d'écriture")."""
        if self.letter is None:
            return []
        letters = [
            hit
            for hit in hits
            if hit.category in ("goodbye", "plan")
            and self.letter.search(hit.phrase)
            and not (self.own_letter is not None and self.own_letter.search(_sentence_of(text, hit.start)))
        ]
        if any(hit.level.is_crisis and hit not in letters for hit in hits):
            return []
        return letters

    def _attribute_third_party(self, hits: list[Hit], text: str) -> list[Hit]:
        """Self-risk phrases in a sentence about someone else belong to them, not the writer.

        "My friend keeps saying she doesn't want to be alive" matches the first-person
        "don't want to be alive" rule too; the third-party rule in the same sentence says whose
        risk it is.
        """
        third_party_sentences = {
            _sentence_span(text, hit.start) for hit in hits if hit.category == "third_party"
        }
        out: list[Hit] = []
        for hit in hits:
            if hit.category in SELF_CATEGORIES and (
                (
                    _sentence_span(text, hit.start) in third_party_sentences
                    and not _FIRST_PERSON.search(hit.phrase)
                )
                or self._reported(text, hit.start)
                or (
                    self.language == "en"
                    and _third_person_subject(text, hit.start)
                    and not _FIRST_PERSON.search(hit.phrase)
                )
            ):
                own = self._own_match(hit, text, third_party_sentences)
                if own is not None:
                    out.append(own)  # "...when someone says they want to die? because i want to die"
                hit = replace(hit, category="third_party")
            out.append(hit)
        return out

    def _own_match(self, hit: Hit, text: str, third_party_sentences: set[tuple[int, int]]) -> Hit | None:
        """A later match of ``hit``'s rule in a sentence that is not about someone else (the
        scan keeps one hit per rule, and the first may be the other person's words)."""
        rule = self._rules_by_id.get(hit.rule_id)
        if rule is None:
            return None
        for match in rule.pattern.finditer(text, hit.start + 1):
            phrase = match.group(0).strip()
            span = _sentence_span(text, match.start())
            if not phrase or span in third_party_sentences or self._reported(text, match.start()):
                continue
            if self._discount(rule, text, match.start()) is None:
                return Hit(rule.rule_id, rule.category, rule.level, phrase, None, match.start())
        return None

    def _reported(self, text: str, start: int) -> bool:
        """Someone else's words quoted just before ``start``: "my bf keeps saying kms" is his
        risk, told by the writer, even though the quoted words are in the first person."""
        if self.reported_speech is None:
            return False
        sentence_start = _sentence_span(text, start)[0]
        return bool(self.reported_speech.search(text[sentence_start:start].rstrip() + " "))

    def _attribute_child_abuse(self, hits: list[Hit], text: str) -> list[Hit]:
        """Abuse disclosed by a writer who says they are a child is child abuse.

        "I'm 13 and my stepdad hits me" matches the harm_from_others rules; the age (or a school
        frame) says whose lines the reply needs: child protection, not adult domestic abuse.
        """
        if self.minor is None or not self.minor.search(text):
            return hits
        out = list(hits)
        for hit in hits:
            if hit.category == "harm_from_others" and hit.level.is_crisis:
                out.append(replace(hit, rule_id=f"{hit.rule_id}+minor", category="child_abuse"))
        return out

    def _resolve_context(self, hit: Hit, context: bool) -> Hit:
        """Demote a context-only rule to distress when the conversation shows no distress."""
        if hit.rule_id in self._context_rules and not context and hit.level.is_crisis:
            return replace(hit, level=RiskLevel.DISTRESS, needs_context=True)
        return hit


_NEW_FIRST_PERSON_CLAUSE = re.compile(
    r"(?<!think )(?<!thought )(?<!believe )(?<!feel )(?<!felt )(?<!say )(?<!said )(?<!saying )(?<!mean )"
    r"(?<!sure )(?<!like )(?<!that )(?<!guess )(?<!suppose )(?<!if )(?<!wish )(?<!hope )"
    r"(?<!pretend )(?<!admit )(?<!claim )(?<!reckon )(?<!expect )(?<!want )(?<!care if )\bi(?:'m|'ve)?\b"
)
_FIRST_PERSON = re.compile(r"\b(?:i|me|my|mine|myself|i'm|i've|i'd|i'll)\b")
_THIRD_SUBJECT_BEFORE = re.compile(
    r"\b(?:he|she|they|he's|she's|they're|hes|shes|theyre)(?: (?:is|are|was|were|has|have|had|keeps?|kept|might|may|could|would|will))?"
    r"((?: [\w']+){0,2}) ?$"
)


def _third_person_subject(text: str, start: int) -> bool:
    """Whether the words just before ``start``, in its clause, are a third-person subject ("how do
    i ask him if he's thinking about suicide"): a first-person rule's words then tell someone
    else's risk. A first-person word between them ("he makes me want to die") keeps it the writer's."""
    match = _THIRD_SUBJECT_BEFORE.search(_clause_before(text, start).rstrip())
    return match is not None and not _FIRST_PERSON.search(match.group(1) or "")


def _clause_before(text: str, start: int) -> str:
    """The text of ``start``'s clause before it (from the last clause punctuation)."""
    before = text[:start]
    clause_start = max((m.end() for m in _CLAUSE_PUNCT.finditer(before)), default=0)
    return before[clause_start:]


def _sentence_span(text: str, position: int) -> tuple[int, int]:
    """Start and end offsets of the sentence of ``text`` that contains ``position``."""
    start = max((m.end() for m in _SENTENCE_END.finditer(text, 0, position)), default=0)
    end_match = _SENTENCE_END.search(text, position)
    return start, end_match.start() if end_match else len(text)


def _sentence_of(text: str, position: int) -> str:
    """The sentence of ``text`` that contains ``position``."""
    start, end = _sentence_span(text, position)
    return text[start:end]


sentence_of = _sentence_of


def packaged_lexicon_path() -> Path:
    """Path of the lexicon shipped with warmline."""
    return Path(str(resources.files("warmline") / "resources" / "safety" / "lexicon.yaml"))


@lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    """The packaged lexicon, compiled once per process."""
    lexicon = Lexicon.from_file(packaged_lexicon_path())
    logger.debug("loaded %d masks and %d risk rules", len(lexicon.masks), len(lexicon.rules))
    return lexicon
