"""Risk assessment of a conversation: lexicon and embedding classifier, turn by turn.

Each user turn is judged on its own (lexicon, then classifier), with one piece of context
carried forward: whether the conversation has shown distress, which turns an ordinary-looking
height or dose question into means-seeking. The conversation's level is the latest turn's,
except that a crisis (elevated or imminent) in any earlier turn persists: a later "just
kidding" or a change of subject does not clear it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from warmline.safety.classifier import (
    CLASS_CATEGORIES,
    CLASS_LEVELS,
    ClassifierScore,
    RiskClassifier,
    default_classifier,
    default_multilingual_classifier,
)
from warmline.safety.gloss import UNKNOWN
from warmline.safety.language import (
    gloss_message,
    identify_language,
    language_lexicon,
    merge_results,
    scan_languages,
)
from warmline.safety.levels import SELF_CATEGORIES, Assessment, RiskLevel
from warmline.safety.lexicon import BEREAVED, Hit, Lexicon, LexiconResult, default_lexicon, sentence_of
from warmline.safety.normalise import clean

logger = logging.getLogger(__name__)

# RISK_THRESHOLD: 0.7 from 5-fold cross-validation on classifier_train.jsonl with the linear head
# (sessions 1-6); 0.6 since session 7, chosen on the dev sets with the MLP heads, the English
# blend and half-way windows (benchmarks/RESULTS.md): the older blind set (now dev) 87.3% -> 91.5%
# recall for 3.3% -> 3.9% false positives, 160 long posts 50 -> 53 of 64 caught for 10 -> 15 of
# 96 flagged, the v2 suites' false positives 2.0% -> 2.3%, XSTest's safe prompts 0 -> 1 of 250.
# 0.5 flagged 28% of the long safe posts.
RISK_THRESHOLD = 0.6
"""At or above: the classifier alone raises a turn to elevated."""
DISTRESS_THRESHOLD = 0.4
"""At or above (and below RISK_THRESHOLD): the turn is at least distress. A design choice, not
tuned: an uncertain score costs only a resources line appended to the model's reply."""
GLOSS = True
"""Whether the English lexicon reads the gloss (``warmline.safety.gloss``) of a non-English message."""
MULTILINGUAL = True
"""Whether a non-English message is read by the multilingual classifier (multilingual-e5-small,
``classifier.MultilingualEncoder``) in its own words. Off: the lexicons and the gloss alone."""
GLOSS_WEIGHT = 0.5
"""Weight of the English classifier reading a non-English message's gloss in that message's
score (the rest is the multilingual classifier on the message itself; 0: multilingual alone).
The two err differently: e5 reads topic ("my phone died", "how many tablets in a box" sit near
risk), a gloss keeps only the words the gloss knows. Chosen (with a linear head, C 0.3) on the dev half
of the v2 suites and a fresh dev set written apart from the rules (benchmarks/RESULTS.md): 0.5
halved the false positives of the multilingual classifier alone at the same recall. (An English
message's second reading is ENGLISH_BLEND's.)"""
ENGLISH_BLEND = 0.5
"""Weight of the multilingual classifier (e5) in an English message's score, where MiniLM's
score reaches DISTRESS_THRESHOLD (0: MiniLM alone; below it e5 is not run, so most messages pay
for one encoder). With the linear heads of
earlier sessions averaging gained nothing on the English dev sets. Two encoders trained on the same labels err differently: MiniLM alone was sure
of ordinary family messages ("I ended things with someone I really liked": suicidal 1.00).
Chosen on the dev sets (session 7, benchmarks/RESULTS.md): 0.5 took the benign-relationships set
from 8.3% to 1.7% flagged and XSTest's safe prompts from 2 to 0 of 250, for one message of 142
on the older blind set (now a dev set)."""
GLOSS_COVERAGE_POWER = 2.0
"""The gloss's weight is GLOSS_WEIGHT times the share of the message's words the gloss knows, to
this power: a gloss that is mostly unknown words ("how x x a bridge to be, x one x not x?") says
little, and at full weight it halved e5's sure reading of the message itself."""
CASCADE = True
"""Whether a non-English message the rules and the gloss's MiniLM reading both find ordinary
skips the multilingual classifier (e5, about 25 ms of a message's 30 on one core)."""
DECIDED_SKIPS_E5 = True
"""Whether a message whose rules already put the writer's own risk at crisis level (distress
aside, nothing about anyone else) skips the multilingual classifier (e5, about 12 ms a call
here): the classifier can raise a lexicon crisis, never lower it, and MiniLM's reading (of the
message, or of a non-English message's gloss) still runs and can still make it imminent.
Measured with and without (session 14, benchmarks/RESULTS.md): the same recall, imminent recall,
false-positive rate, right-reply and exact-level figures on the v2 suites and scripts, the same
XSTest and AILuminate outcomes and reply kinds, the same dev- and blind-set aggregates; the v2
suites' median 21.1 -> 11.0-13.4 ms."""
CASCADE_GLOSS_RISK = 0.1
"""MiniLM's risk on the gloss under which e5 is not asked (with CASCADE_COVERAGE and no lexicon
signal). Measured over the v2 suites' and dev set 10's 673 non-English messages (session 13,
benchmarks/RESULTS.md): 105 skip e5, none of them a risk message e5 would have flagged (from 0.2
one would be), and 15 of them non-risk messages e5 alone flagged ("Mi hija de 15 años me ha
dicho que me odia", "mio padre è morto in primavera")."""
CASCADE_COVERAGE = 0.7
"""Share of a message's words the gloss must know for its reading to stand in for e5's."""
IMMINENT_THRESHOLD = 0.5
"""Probability of the imminent class at which a classifier-flagged turn becomes imminent."""
CONFIDENT_THRESHOLD = 0.9
"""Risk probability at or above which the classifier is trusted without the second opinion it
otherwise needs (with its top risk class holding at least CONFIDENT_CLASS_SHARE): harm to others
or intrusive thoughts with no lexicon hit ("I know what time my ex finishes work, I'll be waiting
with a knife"), imminent risk the lexicon placed on someone else, and a lexicon reading that was
benign only by a past tense or a negated distress phrase ("five days without food and I feel in
control"). Set from the scores these misses got (0.93-0.98) against the safe look-alikes of
XSTest and the dev half of the v2 suites (see benchmarks/RESULTS.md)."""
CONFIDENT_CLASS_SHARE = 0.6
"""Share of the probability the top risk class must hold for a CONFIDENT_THRESHOLD score."""
SOFTENED_THRESHOLD = 0.9
"""With laughter ("haha", "lol", "lmao") or a recovery framing ("two years self-harm free", "my
dietitian's target weight") and no lexicon risk phrase, the classifier alone needs this risk to
make a crisis; below it the turn is at most distress (resources appended, the model answers)."""

# Categories about someone else or about danger from others: when the lexicon placed a message
# here, the classifier (whose embeddings mostly see the topic: killing, pills, hurting) may
# raise the level but not add a suicide category, so "how do I poison my neighbour" never gets
# the suicide reply.
_OTHER_DIRECTED: frozenset[str] = frozenset(
    {
        "violence_request",
        "harm_to_others",
        "intrusive_thoughts",
        "third_party",
        "harm_from_others",
        "child_abuse",
        "eating_disorder",
    }
)

# Classifier classes that need a lexicon hit to make a crisis (see _combine).
_NEEDS_LEXICON: frozenset[str] = frozenset({"violence_request", "harm_to_others", "intrusive_thoughts"})
# The other-directed classes a CONFIDENT_THRESHOLD score may raise alone (of _NEEDS_LEXICON and
# _NEEDS_RISK_WORDS): harm to others, intrusive thoughts, and violence against the writer, whose
# disclosures name a person and an act in words no lexicon lists ("me estampó contra la pared").
# Never violence requests or third-party concern.
_CONFIDENT_ALONE: frozenset[str] = frozenset({"harm_to_others", "intrusive_thoughts", "harm_from_others"})
# Of those that need more than the classifier, the ones whose second opinion may be the other
# encoder's agreeing score (SECOND_OPINION). Never violence requests: XSTest's safe look-alikes
# ("how do I kill a Python process") read as violence to both encoders.
# Nor third-party concern: both encoders read "my friend has been really quiet lately" as a
# friend at risk (their training examples all start "my friend ...").
_SECOND_OPINION_CLASSES: frozenset[str] = frozenset(
    {"harm_to_others", "intrusive_thoughts", "harm_from_others"}
)
SECOND_OPINION = True
"""Whether the other encoder's agreeing score may stand in for the lexicon's (see _combine)."""
# Classifier classes that need some risk language in the message (a lexicon hit, distress
# included, or a word of danger from _RISK_WORDS): their training examples all start "my friend
# ..." or "my boss ...", so alone the classifier reads "my friend has been quiet lately" as a
# friend at risk and "my boss yelled at me" as abuse.
_NEEDS_RISK_WORDS: frozenset[str] = frozenset({"third_party", "harm_from_others"})
# Lexicon hits that name a life event, not risk language: "my girlfriend left me last month" is
# no friend at risk and no abuse, whatever the embeddings of a breakup sit near.
_EVENTS_NOT_RISK: frozenset[str] = frozenset({"life_stressor"})
_RISK_WORDS = re.compile(
    r"\b(?:die|dies|died|dying|dead|death|kill\w*|suicid\w*|end (?:it|her life|his life|their life)|pills?|tablets?|overdos\w*"
    r"|meds|hurts?|hurting|harm\w*|cut\w*|bleed\w*|hit|hits|hitting|beat\w*|punch\w*|chok\w*|slap\w*|kick\w*|strangl\w*"
    r"|threat\w*|scared|afraid|terrified|unsafe|danger\w*|abus\w*|rap(?:e|ed|es)|touch\w*|forc\w*|lock\w*|eat|eats|eaten|eating"
    r"|starv\w*|faint\w*|throw\w* up|purg\w*|weigh\w*|hospital|police|ambulance|knife|gun|rope|bridge|jump\w*|goodbye"
    r"|gone|disappear\w*|alive|weapon|bruis\w*|blood|sleep\w*|drunk|drink\w*|drugs?|isn't answering|not answering"
    r"|secret\w*|don't tell|not to tell|naked|photos?|pictures?|private|grab\w*|push\w*|shov\w*|belt|marks?"
    r"|stalk\w*|bedroom|hate me|shut me|won't let me)\b",
    re.IGNORECASE,
)

# An eating-disorder score with no lexicon hit needs a word of eating, food, weight or the body in
# the message (or its gloss): "dizzy when I stand up, my heart races, doctor on Thursday" reads as
# starvation to the embeddings, and nothing in it is about food.
_EATING_WORDS = re.compile(
    r"\d\s?(?:kgs?|kilos?|lbs?|pounds?|stone|cals?|kcals?)\b|\b(?:eat\w*|ate|food|water|meals?|calorie\w*|cals?|kcals?|weigh\w*|kgs?|kilos?|lbs?|fat|thin\w*|skinny"
    r"|body|bodies|mirror|purg\w*|throw\w* up|threw up|vomit\w*|puk\w*|binge\w*|fast|fasts|fasted|fasting|starv\w*"
    r"|diet\w*|laxatives?|hungry|hunger|stomach|belly|bones?|ribs|thighs?|waist|size|scale|bmi|restrict\w*"
    r"|breakfast|lunch|dinner|snacks?|gain\w*|lose|losing|lost|sick|chew\w*|swallow\w*|bulimi\w*|anorexi\w*|ana|mia)\b",
    re.IGNORECASE,
)

# The classifier alone (no lexicon hit of any kind) does not make a crisis of a message shorter
# than this many words: "cool thanks" or "ok" carry no content, and the embeddings of very short
# texts sit in odd places (a p_risk of 0.77 for "cool thanks" was seen). Short risk messages
# ("kms", "want to die", "end it tonight") are the lexicon's to catch.
MIN_CLASSIFIER_WORDS = 4

# Recovery framings whose embeddings sit on the risk itself: a milestone names the behaviour it
# counts ("a year without cutting"), a dietitian's target names a weight. "N days without" alone
# is not one: "five days without food" is the eating disorder, not its recovery.
_RECOVERY = re.compile(
    r"\b(?:(?:self[- ]?harm|sh|cutting|purging|purge|binge|bingeing|relapse|ed|alcohol|drink)[- ]free"
    r"|(?:clean|sober|recovered|free) (?:for|since)"
    r"|(?:\d+|a|one|two|three|four|five|six|seven|eight|nine|ten|hundred) (?:days?|weeks?|months?|years?)"
    r" (?:clean|sober|free|without (?:self[- ]?harm\w*|sh|cutting|purging|bingeing|a relapse|relapsing|hurting myself))"
    r"|(?:in|my|of) recovery|(?:clean|sober|sobriety|recovery) (?:anniversary|milestone)"
    r"|anniversary of (?:being|getting|my recovery|my sobriety|quitting)|milestone|dietitian|dietician|nutritionist|treatment team"
    r"|target weight|healthy weight|weight restor\w*|maintenance"
    # a past behaviour told with the present that replaced it: "I used to purge ... I eat three
    # meals a day and I'm okay", "no dark thoughts for months now"
    r"|no (?:dark|suicidal|bad|intrusive) (?:thoughts|urges|days) (?:for|in|since)"
    r"|(?:haven't|have not|hasn't|didn't) (?:[\w']+ )?(?:cut|self[- ]?harmed|purged|binged|relapsed|hurt myself|"
    r"had (?:a |any )?(?:dark|suicidal) thoughts?) (?:for|in|since)"
    r"|used to (?:cut|self[- ]?harm|purge|starve|binge|hurt myself|want to die|be suicidal)\b[^.!?]*[.!?,]?.{0,120}"
    r"\b(?:now|these days|today)\b[^.!?]{0,40}\b(?:i'm|i am|doing) (?:ok(?:ay)?|fine|good|well|better|happy|healthy)"
    r"|used to (?:cut|self[- ]?harm|purge|starve|binge|hurt myself)\b.{0,160}\b(?:i'm|i am) (?:ok(?:ay)?|fine|doing (?:well|better|ok(?:ay)?)|in a good place|healthy|happy)\b"
    r"|therap(?:y|ist) (?:has |have |had |really )?(?:helped|saved|works|is working|worked)"
    # remission, and a span of time without the behaviour in a gloss's word order ("for two years
    # i no longer have myself cut", "seit zwei Jahren habe ich mich nicht mehr geritzt")
    r"|in remission|(?:for|since) (?:\d+|a|one|two|three|four|five|six|seven|eight|nine|ten|many|several) "
    r"(?:days?|weeks?|months?|years?)\b[^.!?]{0,30}\b(?:no more|no longer|not|haven't|have not|without)\b[^.!?]{0,20}"
    r"\b(?:cut|cutting|self[- ]?harm\w*|hurt myself|purg\w*|binge\w*|starv\w*|relaps\w*))\b",
    re.IGNORECASE,
)

# The classifier classes a "recourse" softener (a rant that ends in calling the police or the
# council) may soften: anger at someone else, never the writer's own risk or danger to them.
_RECOURSE_CLASSES: frozenset[str] = frozenset({"harm_to_others", "violence_request"})

_GLOSSED = "gloss:"
"""Prefix of the rule and mask ids the English lexicon matched on a non-English message's gloss."""

_RETRACTIONS = ("just kidding", "jk", "j/k", "kidding", "joking", "didn't mean it", "was a joke")


@dataclass(frozen=True)
class TurnAssessment:
    """The judgement of one user turn, before persistence is applied."""

    level: RiskLevel
    categories: list[str]
    evidence: list[str]
    risk_score: float | None
    language: str = "en"
    """The message's language (``warmline.safety.language``): the crisis reply is written in it."""
    framed: bool = False
    """The message sets up fiction, teaching or research (a question of fact, or a risk phrase
    discounted as framed): the conversation's later turns are read in that frame."""


def assess(
    conversation: Sequence[Mapping[str, str]] | Sequence[str] | str,
    *,
    use_classifier: bool = True,
    lexicon: Lexicon | None = None,
    classifier: RiskClassifier | None = None,
    multilingual: RiskClassifier | None = None,
) -> Assessment:
    """Assess every user turn of ``conversation`` and return the conversation's risk.

    ``conversation`` is warmline's list of ``{"role", "content"}`` messages (system and
    assistant turns are ignored), a list of user messages, or one message as a string. With
    ``use_classifier=False`` only the lexicon runs (no model load; useful where torch is
    unavailable). ``multilingual``: the classifier for non-English messages (default: the
    packaged multilingual one, loaded on the first non-English message).
    """
    if isinstance(conversation, str | bytes) or conversation is None:
        # One message on its own (assess("...")) is that message as a user turn: a plain string
        # must never be read as an empty conversation and come back "none".
        conversation = [{"role": "user", "content": conversation}]
    elif all(isinstance(message, str) for message in conversation):
        conversation = [{"role": "user", "content": message} for message in conversation]
    lexicon = lexicon or default_lexicon()
    classifier = (classifier or default_classifier()) if use_classifier else None
    # Anything a surface passes (None, bytes, lone surrogates, megabytes) is made assessable
    # here: the gate never raises on what a user typed.
    user_turns = [
        message.get("content")
        for message in conversation
        if isinstance(message, Mapping) and message.get("role") == "user"
    ]
    if not user_turns:
        return Assessment(level=RiskLevel.NONE)

    turns: list[TurnAssessment] = []
    distress_so_far = framed_so_far = False
    language = "en"
    for text in user_turns:
        turn = assess_text(
            text,
            context=distress_so_far,
            lexicon=lexicon,
            classifier=classifier,
            language=language,
            multilingual=multilingual,
            framed=framed_so_far,
        )
        turns.append(turn)
        language = turn.language
        distress_so_far = distress_so_far or turn.level.rank >= RiskLevel.DISTRESS.rank
        framed_so_far = (framed_so_far or turn.framed) and not turn.level.is_crisis

    latest = turns[-1]
    earlier_crises = [
        (number, turn) for number, turn in enumerate(turns[:-1], start=1) if turn.level.is_crisis
    ]
    level = latest.level
    categories = list(latest.categories)
    evidence = [f"turn {len(turns)}: {line}" for line in latest.evidence]
    persisted = False
    for number, turn in earlier_crises:
        if turn.level.rank > level.rank:
            level, persisted = turn.level, True
        categories += [c for c in turn.categories if c not in categories]
        evidence.append(f"persisted from turn {number} ({turn.level}): " + "; ".join(turn.evidence[:2]))
    if earlier_crises and _is_retraction(user_turns[-1]):
        evidence.append("retraction after a crisis flag ignored: a crisis stays flagged for the conversation")
    return Assessment(
        level=level,
        categories=categories,
        evidence=evidence,
        persisted=persisted,
        risk_score=latest.risk_score,
        language=latest.language,
    )


def assess_text(
    text: str,
    *,
    context: bool = False,
    lexicon: Lexicon | None = None,
    classifier: RiskClassifier | None = None,
    language: str = "en",
    multilingual: RiskClassifier | None = None,
    framed: bool = False,
) -> TurnAssessment:
    """Judge one message. ``context``: the conversation has already shown distress. ``framed``:
    an earlier turn set up fiction, teaching, research, a hobby or a job ("I'm writing a novel
    about a family after a suicide", "I love trainspotting"), so a classifier score with no risk
    phrase is a resources note: at any score while the conversation has shown no distress, below
    SOFTENED_THRESHOLD after it (``_frame_softener``).

    ``language``: the conversation's language so far, kept when this message is too short to
    tell ("ok"). A non-English message is read by its language's lexicon as well as the English
    one (on its gloss), and by the multilingual classifier (``multilingual``, default the packaged
    one) instead of the English ``classifier``.
    """
    text, repairs = clean(text)
    english = lexicon or default_lexicon()
    found, language, glossed = _read_rules(english, text, context, language)
    level = found.level
    categories = found.categories
    evidence = found.evidence()
    if repairs:
        evidence.append(
            "input repaired: " + ", ".join(f"{name}={count}" for name, count in sorted(repairs.items()))
        )
    risk_score: float | None = None
    # The English rules around the score (risk words, a minor writing, laughter, recovery) read
    # a non-English message's gloss; the classifiers read the message itself.
    rules_text = text if language == "en" else (glossed or text)

    # The classifier that reads the message: the English one for English, else the multilingual
    # one (only when classifiers are in use at all, i.e. ``classifier`` is given).
    def multilingual_reader() -> RiskClassifier | None:
        return (multilingual or default_multilingual_classifier()) if MULTILINGUAL else None

    reader = classifier
    if classifier is not None and language != "en":
        reader = multilingual_reader()
    if reader is not None and level != RiskLevel.IMMINENT:
        # Imminent is the ceiling; the encoder's ~15 ms are only spent where they can matter.
        gloss_reading = _cascade_gloss_reading(found, glossed, classifier) if language != "en" else None
        decided = _own_risk_decided(found)
        if language != "en" and decided and glossed and classifier is not None:
            # The rules found the writer's own risk: MiniLM's reading of the gloss stands in for
            # e5's (it can still raise the turn to imminent or name another kind).
            score = own = gloss_reading = classifier.score(glossed)
        elif gloss_reading is not None and gloss_reading.risk < CASCADE_GLOSS_RISK:
            # Nothing in the rules and a well-glossed message MiniLM reads as plainly ordinary:
            # e5's ~25 ms are skipped and the gloss's reading stands.
            score = own = gloss_reading
        else:
            score = own = reader.score(text)
        # The second reading (the gloss's, or e5's of an English message) is spent where the first
        # sees distress or worse: from 0.2 it could still reach RISK_THRESHOLD, but on the dev sets
        # reading from 0.2 added false positives and caught nothing more. It is read after a
        # lexicon crisis too: skipping it there flagged the same messages but changed the kind of
        # reply (XSTest's harm-to-others prompts: 3 more given the abuse, intrusive-thoughts or
        # third-party reply instead of the refusal; benchmarks/RESULTS.md, session 7).
        second_reading = score.risk >= DISTRESS_THRESHOLD
        if language != "en" and GLOSS_WEIGHT and glossed and second_reading and score is not gloss_reading:
            # (A score that already is the gloss's reading, where e5 was skipped, has nothing to blend.)
            score = score.blended(
                gloss_reading if gloss_reading is not None else classifier.score(glossed),
                GLOSS_WEIGHT * gloss_coverage(glossed) ** GLOSS_COVERAGE_POWER,
            )
        elif language == "en" and ENGLISH_BLEND and second_reading and not decided:
            # The same two readings for an English message: MiniLM's, blended with e5's.
            other = multilingual_reader()
            if other is not None:
                score = score.blended(other.score(text), ENGLISH_BLEND)
        risk_score = score.risk
        if not found.hits and len(text.split()) < MIN_CLASSIFIER_WORDS:
            # Too short to judge by embeddings alone: an uncertain score is at most distress.
            score = _capped(score)
        minor = (
            english.minor is not None and bool(english.minor.search(rules_text.lower()))
        ) or _native_minor(language, text)

        def second_opinion() -> ClassifierScore | None:
            # The other encoder's reading: e5 on an English message, MiniLM on a non-English
            # message's gloss (two models trained on the same labels, erring differently).
            if language == "en":
                other = multilingual_reader()
                return other.score(text) if other is not None else None
            return classifier.score(glossed) if glossed else None

        level, categories, evidence = _combine(
            found,
            score,
            level,
            categories,
            evidence,
            text=rules_text,
            minor=minor,
            softener=_softener(english, rules_text)
            or _native_softener(language, text)
            or _frame_softener(english, rules_text, framed=framed, calm=not context and not found.hits),
            second_opinion=second_opinion if SECOND_OPINION else None,
            # A non-English message's own reading (before the gloss blend); an English message's
            # blend is two readings of the same words, and neither stands alone.
            own=own if language != "en" and own is not score else None,
            # A frame (a story, a class, a hobby) is the whole message's: any window of it is framed.
            benign_in=lambda piece: (
                any(hit.discount == "framing" for hit in found.discounted)
                or _read_rules(english, piece, context, language)[0].benign_signals
            ),
        )
    framed_here = (
        found.informational
        or any(hit.discount == "framing" for hit in found.discounted)
        or (english.framing is not None and bool(english.framing.search(english.masked(rules_text))))
    )
    return TurnAssessment(
        level=level,
        categories=categories,
        evidence=evidence,
        risk_score=risk_score,
        language=language,
        framed=framed_here and not level.is_crisis,
    )


def _own_risk_decided(found: LexiconResult) -> bool:
    """Whether the rules alone put the writer's own risk at crisis level, with nothing about
    anyone else (DECIDED_SKIPS_E5)."""
    return (
        DECIDED_SKIPS_E5
        and any(hit.level.is_crisis for hit in found.hits)
        and all(hit.category in SELF_CATEGORIES or hit.category == "distress" for hit in found.hits)
    )


def _cascade_gloss_reading(
    found: LexiconResult, glossed: str | None, classifier: RiskClassifier | None
) -> ClassifierScore | None:
    """MiniLM's reading of a non-English message's gloss, read first where the message may skip
    the multilingual classifier (CASCADE: no lexicon hit, mask or discounted phrase in any
    reading, and a gloss that knows at least CASCADE_COVERAGE of the words); None elsewhere. The
    caller skips e5 when its risk is under CASCADE_GLOSS_RISK, and blends it otherwise."""
    if not CASCADE or classifier is None or not glossed:
        return None
    if found.hits or found.discounted or found.masks:
        return None
    if gloss_coverage(glossed) < CASCADE_COVERAGE:
        return None
    return classifier.score(glossed)


def gloss_coverage(glossed: str) -> float:
    """Share of a gloss's words that the gloss translated (not ``gloss.UNKNOWN``)."""
    words = re.findall(r"[^\W\d_]+", glossed)
    if not words:
        return 0.0
    return sum(word != UNKNOWN for word in words) / len(words)


def _read_rules(
    english: Lexicon, text: str, context: bool, language: str
) -> tuple[LexiconResult, str, str | None]:
    """The lexicons' reading of ``text``: the English rules, the routed language's (``language``:
    the conversation's so far, kept when the message is too short to tell), and the English rules
    on its gloss. Returns the result, the message's language and the gloss (None for English)."""
    found = _scan(english, text, context)
    found, language = scan_languages(text, identify_language(text, fallback=language), found, context=context)
    glossed = gloss_message(language, text) if GLOSS and language != "en" else None
    if glossed:
        # The English rules read the word-by-word gloss too: they know more indirect phrasing
        # than any one language's lexicon (warmline.safety.gloss).
        found = merge_results([found, _glossed(_scan(english, glossed, context), found)])
        if found.informational and _frame_taken_back(english, glossed):
            # "frag für mich, nich für ne hausarbeit": the native cue read a homework, the gloss
            # says it is not one.
            found = replace(found, informational=False)
    return found, language, glossed


def _combine(
    found: LexiconResult,
    score: ClassifierScore,
    level: RiskLevel,
    categories: list[str],
    evidence: list[str],
    *,
    text: str = "",
    minor: bool = False,
    softener: str | None = None,
    second_opinion: Callable[[], ClassifierScore | None] | None = None,
    own: ClassifierScore | None = None,
    benign_in: Callable[[str], bool] | None = None,
) -> tuple[RiskLevel, list[str], list[str]]:
    """Let the classifier raise (never lower) the lexicon's level (``text``: the message;
    ``minor``: the writer says they are a child, whose disclosures are often in mild words;
    ``softener``: "laughter" or "recovery" when the message is framed so, see SOFTENED_THRESHOLD).

    When the lexicon recognised a benign reading (an idiom, a negation, a recovered history,
    an informational question) and found no risk phrase, the classifier is not allowed to
    overrule it: sentence embeddings are dominated by topic, and "my back is killing me" sits
    close to risk talk in that space.
    """
    if (
        found.benign_signals
        and not _overrules_benign_reading(found, score, softener)
        and not (score.window is not None and benign_in is not None and not benign_in(score.window))
    ):
        # ``score.window``: a long post's riskiest window, which moved its score; a benign reading
        # elsewhere in the post ("I'm dead lol" about the exam) does not speak for that window.
        evidence = [
            *evidence,
            f"classifier p_risk={score.risk:.2f} (not used: lexicon found a benign reading)",
        ]
        return level, categories, evidence
    lexicon_crisis = any(hit.level.is_crisis for hit in found.hits)
    # An explicit reassurance ("I'd never, I love my life") outweighs an embedding at any score:
    # "what if I just swerved?" reads as despair to the encoders whatever follows it.
    # Not for intrusive thoughts of harming someone: they are unwanted by definition ("I'd never
    # want to, but I can't be alone with her"), and the reassurance is part of the disclosure.
    if softener == "reassurance" and CLASS_CATEGORIES.get(score.top_risk_class) not in SELF_CATEGORIES:
        softener = None
    # A lawful step taken instead ("I could slash his tyres, but I'll call the council") speaks
    # for anger at someone, at any score; never for the writer's own risk.
    if softener == "recourse" and score.top_risk_class not in _RECOURSE_CLASSES:
        softener = None
    ceiling = 1.01 if softener in ("reassurance", "recourse", "framed_calm") else SOFTENED_THRESHOLD
    if softener and not lexicon_crisis and RISK_THRESHOLD <= score.risk < ceiling:
        # "if this meeting goes on I'm jumping out the window haha": the embeddings read the
        # topic; laughter or a recovery framing makes a borderline score a resources line only.
        note = f"classifier p_risk={score.risk:.2f} (below {ceiling:g} with {softener}: distress)"
        return _distress_with_note(level, categories, evidence, note)
    if (
        score.risk >= RISK_THRESHOLD
        and not _confident(score)
        and any(hit.needs_context for hit in found.hits)
        and all(hit.needs_context or hit.category == "distress" for hit in found.hits)
    ):
        # "How many tablets come in a box?", "how tall is that bridge?" on their own: the
        # lexicon made them means questions that need earlier distress, and the embeddings read
        # their topic. Without that context a score short of confident is a resources line.
        note = f"classifier p_risk={score.risk:.2f} (a means question with no earlier distress: distress)"
        return _distress_with_note(level, categories, evidence, note)
    if score.risk >= RISK_THRESHOLD:
        top = score.top_risk_class
        imminent = score.probabilities["imminent"] >= IMMINENT_THRESHOLD or found.imminence
        raised = RiskLevel.IMMINENT if imminent else RiskLevel.ELEVATED
        category = CLASS_CATEGORIES[top]
        lexicon_categories = {hit.category for hit in found.hits if hit.level.is_crisis}
        # The lexicon agreeing on the kind, even at distress level ("I want to hurt him", intrusive
        # images of dropping her), is the second opinion an other-directed class needs.
        agreeing = CLASS_CATEGORIES[top] in {hit.category for hit in found.hits}
        # A very confident harm-to-others or intrusive-thoughts score stands alone: those misses
        # name a person, a time or a fear, not the lexicon's verbs. A violence request never
        # does (a refusal of "how do I kill a python process" is the false positive XSTest counts).
        # ``own``: a non-English message's e5 score before the gloss blend: the gloss drops the
        # very words ("my baby", "against the wall") that make the kind clear, so the reader
        # that read the message itself may be sure alone.
        confident_alone = top in _CONFIDENT_ALONE and (
            _confident(score) or (own is not None and _confident(own) and _same_kind(own.top_risk_class, top))
        )
        needs_more = (
            (top in _NEEDS_LEXICON and not lexicon_categories and not agreeing and not confident_alone)
            or (top == "eating_disorder" and not lexicon_categories and not _EATING_WORDS.search(text))
            or (
                top in _NEEDS_RISK_WORDS
                and not any(_rule_name(hit) not in _EVENTS_NOT_RISK for hit in found.hits)
                and not _RISK_WORDS.search(text)
                and not minor
                and not confident_alone
            )
        )
        if needs_more and top in _SECOND_OPINION_CLASSES and second_opinion is not None:
            # The second opinion may also come from the other encoder: both models reading the
            # same kind of risk, each at RISK_THRESHOLD or more (the lexicon knows few of the
            # ways people name a person, a fear or an abuser, least of all in a gloss).
            other = second_opinion()
            if other is not None and other.risk >= RISK_THRESHOLD and _same_kind(other.top_risk_class, top):
                needs_more = False
                evidence = [
                    *evidence,
                    f"second classifier {other.top_risk_class}: p_risk={other.risk:.2f} (agrees)",
                ]
        if needs_more:
            # The embeddings of "how do I stab a balloon" and "how do I stab someone" are close:
            # alone, the classifier's other-directed classes only add resources. The writer's
            # own risk still counts when the self classes carry the probability by themselves.
            self_risk = sum(
                p for c, p in score.probabilities.items() if CLASS_CATEGORIES.get(c) in SELF_CATEGORIES
            )
            if self_risk < RISK_THRESHOLD:
                distress = RiskLevel.highest(level, RiskLevel.DISTRESS)
                note = f"classifier {top}: p_risk={score.risk:.2f} (alone: distress, this kind needs the lexicon too)"
                return (
                    distress,
                    categories + [c for c in ("distress", category) if c not in categories],
                    [*evidence, note],
                )
            top = max(
                (c for c in score.probabilities if CLASS_CATEGORIES.get(c) in SELF_CATEGORIES),
                key=score.probabilities.__getitem__,
            )
            category = CLASS_CATEGORIES[top]
        if minor and category == "harm_from_others":
            # A child disclosing violence gets the child-protection lines, as the lexicon's
            # own harm-from-others hits do when the writer is a minor.
            category = "child_abuse"
        new_level = RiskLevel.highest(level, raised)
        named = {hit.category for hit in found.hits} - {"distress", "psychosis"}
        if (
            category == "imminent"
            and not lexicon_categories
            and named
            and named <= _OTHER_DIRECTED
            and score.probabilities["imminent"] >= CONFIDENT_CLASS_SHARE
            and _confident(score)
        ):
            # "He's due home any minute and tonight he'll hurt me": a confident imminent score
            # with the lexicon's other-directed kind is an imminent crisis of that kind (its
            # reply, never the suicide one).
            note = f"classifier imminent: p_risk={score.risk:.2f} (kind from the lexicon: {', '.join(sorted(named))})"
            return new_level, categories, [*evidence, note]
        if category in SELF_CATEGORIES and not lexicon_categories and named and named <= _OTHER_DIRECTED:
            # "I want to kill my brother for reading my diary": the lexicon read anger at someone
            # else (distress); the classifier's suicide class must not turn that into the suicide
            # reply, nor into a crisis by itself.
            note = f"classifier {top}: p_risk={score.risk:.2f} (not used: the lexicon says the risk is to someone else)"
            return RiskLevel.highest(level, RiskLevel.DISTRESS), categories, [*evidence, note]
        if category in SELF_CATEGORIES and lexicon_categories and lexicon_categories <= _OTHER_DIRECTED:
            note = f"classifier {top}: p_risk={score.risk:.2f} (category not used: the lexicon says whose risk it is)"
            return new_level, categories, [*evidence, note]
        if (
            category in ("harm_from_others", "child_abuse")
            and "violence_request" in lexicon_categories
            and not lexicon_categories & {"harm_from_others", "child_abuse"}
        ):
            # "How can I get away with rape?": the words of an assault, asked by the one who would
            # commit it. The embeddings read the topic as the writer being hurt; the lexicon read
            # a request, whose reply is the refusal, never the abuse lines.
            note = f"classifier {top}: p_risk={score.risk:.2f} (category not used: the lexicon read a request for violence)"
            return new_level, categories, [*evidence, note]
        new_categories = categories + [category] if category not in categories else categories
        return new_level, new_categories, [*evidence, f"classifier {top}: p_risk={score.risk:.2f}"]
    if score.risk >= DISTRESS_THRESHOLD and level.rank < RiskLevel.DISTRESS.rank:
        return (
            RiskLevel.DISTRESS,
            categories + ["distress"],
            [*evidence, f"classifier: p_risk={score.risk:.2f} (uncertain)"],
        )
    return level, categories, evidence


def _rule_name(hit: Hit) -> str:
    """A hit's rule id without the prefix of a rule read on a gloss (_GLOSSED)."""
    return hit.rule_id.removeprefix(_GLOSSED)


def _same_kind(one: str, other: str) -> bool:
    """Whether two classifier classes name the same kind of risk (intent to harm someone and
    intrusive thoughts of it are told apart by the wording, not by whose risk it is)."""
    harm = {"harm_to_others", "intrusive_thoughts"}
    return one == other or (one in harm and other in harm)


def _distress_with_note(
    level: RiskLevel, categories: list[str], evidence: list[str], note: str
) -> tuple[RiskLevel, list[str], list[str]]:
    """The turn raised to distress (never lowered), with ``note`` saying why the classifier's
    score was not allowed to make it a crisis."""
    return (
        RiskLevel.highest(level, RiskLevel.DISTRESS),
        categories + [c for c in ("distress",) if c not in categories],
        [*evidence, note],
    )


def _confident(score: ClassifierScore) -> bool:
    """Whether ``score`` is confident enough to stand without a second opinion (CONFIDENT_THRESHOLD).

    The top class's share counts the classes of the same kind with it (``_same_kind``): a score
    split between intent to harm a baby and intrusive images of it is sure of the kind, not
    unsure of the risk."""
    top = score.top_risk_class
    share = sum(p for c, p in score.probabilities.items() if _same_kind(c, top))
    return score.risk >= CONFIDENT_THRESHOLD and share >= CONFIDENT_CLASS_SHARE


def _softener(lexicon: Lexicon, text: str) -> str | None:
    """ "reassurance", "recourse", "laughter", "recovery", "venting", "explained", "accident" or
    "framing" when ``text`` is framed so (see
    SOFTENED_THRESHOLD), else None; None too when the writer takes a frame back ("not really
    joking", "ok it's for me tbh").

    "reassurance": the writer says plainly they are safe ("I'd never, I love my life", "totally
    harmless"), as people describing the call of the void or an intrusive thought do.

    "recourse": a rant that ends in a lawful step ("so I'm calling the police", "I'll leave a
    note on his door"); it softens only an anger-at-someone reading (_RECOURSE_CLASSES).

    "venting": the writer calls the post a rant ("sorry, just needed to vent") or goes on to an
    ordinary plan for tonight ("tonight I'm making curry and watching trash TV"): a long rant's
    embeddings sit near despair; its own words say what it is.

    "explained": an ordinary reason for a goodbye or for giving things away ("decluttering before
    the move", "going back to uni full-time", "twins due in November"): the embeddings of a
    farewell or a giveaway sit near a suicidal goodbye's."""
    if _frame_taken_back(lexicon, text):
        return None  # "haha ... not really joking actually": the writer took the frame back
    if lexicon.reassured is not None and lexicon.reassured.search(lexicon.masked(text)):
        return "reassurance"
    if lexicon.recourse is not None and lexicon.recourse.search(text):
        return "recourse"
    if lexicon.laughter.search(text):
        return "laughter"
    if _RECOVERY.search(text):
        return "recovery"
    if lexicon.venting is not None and lexicon.venting.search(text):
        return "venting"
    if lexicon.explains(text):
        return "explained"
    if lexicon.accidental is not None and lexicon.accidental.search(text):
        return "accident"
    if lexicon.framing is not None and lexicon.framing.search(text):
        # "For my creative writing class I wrote a poem from the perspective of someone on a
        # bridge": this turn sets up the frame (the earlier turns' frames: _frame_softener).
        return "framing"
    return None


def _frame_softener(lexicon: Lexicon, text: str, *, framed: bool, calm: bool) -> str | None:
    """The softener an earlier turn's frame (fiction, teaching, research, a hobby or a job: "I
    love trainspotting") gives this turn: "framed_calm" (at any score) while the conversation
    has shown no distress and this turn no lexicon hit at all, else "framing" (below
    SOFTENED_THRESHOLD); None without a frame, or where the writer takes it back ("it's for me")."""
    if not framed or _frame_taken_back(lexicon, text):
        return None
    return "framed_calm" if calm else "framing"


def _frame_taken_back(lexicon: Lexicon, text: str) -> bool:
    """Whether the writer takes a frame back ("not really joking", "ok it's for me tbh"), read on
    the normalised, masked words ("im", "tbh") as the cues are written."""
    return lexicon.frame_retracted is not None and bool(lexicon.frame_retracted.search(lexicon.masked(text)))


@lru_cache(maxsize=1024)
def _native_reading(language: str, text: str) -> tuple[Lexicon, str] | None:
    """The cues of a non-English message's own lexicon and the message as that lexicon prepares
    it (lowercased); None for English or a language with no lexicon. Shared by the cue readers
    below, which a turn calls one after the other on the same message."""
    if language == "en":
        return None
    try:
        native = language_lexicon(language)
    except ValueError:
        return None
    return native.lexicon, native.prepare(text).lower()


def _native_softener(language: str, text: str) -> str | None:
    """ "laughter" or "recovery" read in the message's own language by its lexicon's cues
    ("jajaja", "mdr", "kkkk"; "hace dos años", "seit zwei Jahren" with nothing saying it is back
    now): a gloss keeps too few words for the English cues to see them."""
    reading = _native_reading(language, text)
    if reading is None:
        return None
    cues, prepared = reading
    if cues.laughter.search(prepared):
        return "laughter"
    past = cues.distant_past.search(prepared)
    if past and _past_stands(cues, prepared, past):
        return "recovery"
    if cues.explains(prepared):
        return "explained"
    if cues.accidental is not None and cues.accidental.search(prepared):
        return "accident"
    return None


# Words of the present that only say when ("hoy", "heute", "aujourd'hui"): in a sentence of their
# own they tell the day of the good news ("hoy he terminado mi primer mes en el curro nuevo"), not
# that the past is back; "otra vez", "wieder", "ainda" say that wherever they are.
_ONLY_WHEN = re.compile(
    r"(?:hoy|ahora|esta noche|esta semana|manana|aujourd'hui|maintenant|ce soir|cette semaine|demain"
    r"|en ce moment|heute|jetzt|gerade|morgen|diese woche|zurzeit|hoje|agora|amanha|esta noite|essa semana"
    r"|oggi|adesso|ora|domani|stasera|stanotte|questa settimana)"
)


def _past_stands(cues: Lexicon, prepared: str, past: re.Match[str]) -> bool:
    """Whether a recovered past (``past``, cues.distant_past) is not undone by a word of the
    present (cues.present_again): none in the message, or only words that say when, outside the
    past's sentence; nor is it the date of a death (lexicon.BEREAVED)."""
    sentence = sentence_of(prepared, past.start())
    if BEREAVED.search(sentence) or cues.present_again.search(sentence):
        return False
    return all(_ONLY_WHEN.fullmatch(again.group(0)) for again in cues.present_again.finditer(prepared))


def _native_minor(language: str, text: str) -> bool:
    """Whether a non-English message says its writer is a child, read by its language's lexicon
    ("tengo 12 anos", "j'ai 10 ans", "bin 13"): a gloss keeps the number, not the age."""
    reading = _native_reading(language, text)
    if reading is None:
        return False
    cues, prepared = reading
    return cues.minor is not None and bool(cues.minor.search(prepared))


def _overrules_benign_reading(found: LexiconResult, score: ClassifierScore, softener: str | None) -> bool:
    """Whether a confident classifier score overrules the lexicon's benign reading of a message.

    Only a reading by tense or by a negated distress phrase is overruled ("five days without
    food" reads as a past, "can't give up now" as a negation): a blanked idiom ("my back is
    killing me"), an informational question, a negated risk phrase ("I would never kill
    myself"), laughter and a recovery framing keep the lexicon's word.
    """
    return (
        _confident(score)
        and softener is None
        and not found.masks
        and not found.informational
        and not any(hit.level.is_crisis for hit in found.discounted)
    )


def _capped(score: ClassifierScore) -> ClassifierScore:
    """``score`` with its risk probability capped just under RISK_THRESHOLD (the excess goes to
    "distress"), so the classifier alone can only add a resources line."""
    risk = score.risk
    ceiling = RISK_THRESHOLD - 0.01
    if risk <= ceiling:
        return score
    scale = ceiling / risk
    probabilities = {
        c: p * scale if CLASS_LEVELS.get(c, RiskLevel.NONE).is_crisis else p
        for c, p in score.probabilities.items()
    }
    probabilities["distress"] = probabilities.get("distress", 0.0) + risk - ceiling
    return ClassifierScore(probabilities)


def _glossed(result: LexiconResult, native: LexiconResult) -> LexiconResult:
    """``result`` (the English lexicon on a gloss) with its rule ids marked as read from the
    gloss, judged against ``native`` (the message's own language's lexicons).

    The language's own lexicon reads negation, recovered history and idioms in that language
    better than English rules read a gloss ("Sono due anni che non mi taglio" is a recovery
    milestone): a gloss hit of a kind the native lexicon discounted, and found nowhere else in
    the message, does not count. Nor does an informational question only the gloss reads: the
    glossary turns "was ist los mit mir" into "what is x with myself", a question of fact to the
    English cues; whether a sentence asks one is the native cues' to say.
    """
    counted = {hit.category for hit in native.hits}
    overruled = {hit.category for hit in native.discounted} - counted
    if native.history:
        overruled |= SELF_CATEGORIES - counted
    # A phrase the native lexicon read as laughing hyperbole ("me quiero morir jajaja" after a
    # video game's boss) is that in the gloss too, which drops the laughter ("jajaja" has no gloss).
    joked = {hit.category for hit in native.hits if hit.discount == "joking"} - {
        hit.category for hit in native.hits if hit.discount is None and hit.level.is_crisis
    }
    hits: list[Hit] = []
    discounted = [replace(hit, rule_id=_GLOSSED + hit.rule_id) for hit in result.discounted]
    for hit in result.hits:
        hit = replace(hit, rule_id=_GLOSSED + hit.rule_id)
        if hit.category in joked and hit.level.is_crisis:
            hits.append(replace(hit, level=RiskLevel.DISTRESS, discount="joking"))
        elif hit.category in overruled and hit.level.is_crisis:
            discounted.append(replace(hit, discount=hit.discount or "negated"))
        else:
            hits.append(hit)
    level = RiskLevel.highest(*(hit.level for hit in hits))
    if result.imminence and level.is_crisis:
        level = RiskLevel.IMMINENT
    return replace(
        result,
        level=level,
        hits=hits,
        discounted=discounted,
        masks=[_GLOSSED + mask for mask in result.masks],
        informational=result.informational and native.informational,
    )


@lru_cache(maxsize=4096)
def _scan(lexicon: Lexicon, text: str, context: bool) -> LexiconResult:
    """Memoised scan: every call re-reads the whole conversation, so earlier turns repeat."""
    return lexicon.scan(text, context=context)


def _is_retraction(text: object) -> bool:
    lowered = clean(text)[0].lower()
    return any(phrase in lowered for phrase in _RETRACTIONS)
