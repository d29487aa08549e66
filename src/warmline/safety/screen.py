"""Output screen: a model reply that could do harm is replaced by a safe fallback.

Screened for:
- ``method_details``: how to harm oneself (doses that kill, how to tie a noose, heights that
  are fatal, where to buy means, which method is "painless");
- ``diagnosis``: telling the user they have a disorder ("you have bipolar disorder");
- ``medication_dose``: a medication named with a dose ("take 50 mg of sertraline");
- ``role_leak``: chat-template markers or a fabricated next turn ("User:", "<|im_start|>").

When the conversation is already at risk or asked about means (pass its ``assessment``),
the screen is stricter: any list of places, heights, doses or shops in the reply counts as
method details, because the question it answers was the risk ("What bridges are taller than
25 meters?").

Works on partial text too: every rule looks only at what is there, so a streamer can screen
the accumulated reply at each step; ``safe_emit_length`` says how much of it can be shown
without cutting a role marker in half.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Literal

from warmline.safety.levels import Assessment, RiskLevel
from warmline.templates import ANY, LEAK_PATTERN

logger = logging.getLogger(__name__)

ScreenReason = Literal["method_details", "diagnosis", "medication_dose", "role_leak"]

FALLBACK_REPLY = (
    "I'm sorry, I can't help with that part. I'm not able to give diagnoses, medication doses, "
    "or details that could be used to cause harm. I'm still here to listen, though. "
    "Would you like to tell me more about how you're feeling?"
)
ROLE_LEAK_FALLBACK = (
    "Sorry, I lost my train of thought there. Could you tell me a bit more about what's on your mind?"
)

_MEDICATIONS = (
    r"sertraline|zoloft|fluoxetine|prozac|escitalopram|lexapro|citalopram|celexa|paroxetine|paxil|"
    r"venlafaxine|effexor|duloxetine|cymbalta|bupropion|wellbutrin|mirtazapine|remeron|trazodone|"
    r"amitriptyline|nortriptyline|imipramine|lithium|lamotrigine|lamictal|valproate|depakote|"
    r"carbamazepine|quetiapine|seroquel|olanzapine|zyprexa|risperidone|risperdal|aripiprazole|abilify|"
    r"haloperidol|clozapine|alprazolam|xanax|lorazepam|ativan|diazepam|valium|clonazepam|klonopin|"
    r"zolpidem|ambien|zopiclone|melatonin|hydroxyzine|propranolol|gabapentin|pregabalin|lyrica|"
    r"methylphenidate|ritalin|adderall|amphetamine|lisdexamfetamine|vyvanse|atomoxetine|buspirone|"
    r"acetaminophen|paracetamol|tylenol|ibuprofen|advil|aspirin|naproxen|diphenhydramine|benadryl|"
    r"oxycodone|hydrocodone|codeine|tramadol|morphine|fentanyl|methadone|buprenorphine|insulin"
)
_DOSE = (
    r"\d+(?:\.\d+)?\s*(?:mg|milligrams?|mcg|micrograms?|µg|g|grams?|ml|units?|tablets?|pills?|capsules?)\b"
)
_DISORDERS = (
    r"bipolar(?: (?:i|ii|1|2|disorder))?|(?:major |clinical |severe |chronic )?depression|major depressive disorder|"
    r"(?:generali[sz]ed |social )?anxiety disorder|panic disorder|ptsd|c-ptsd|post-traumatic stress disorder|"
    r"ocd|obsessive[- ]compulsive disorder|adhd|add|schizophrenia|schizoaffective disorder|psychosis|"
    r"(?:borderline|narcissistic|antisocial|histrionic|avoidant|dependent|paranoid) personality disorder|bpd|npd|"
    r"(?:a )?personality disorder|autism|asperger'?s|anorexia(?: nervosa)?|bulimia(?: nervosa)?|"
    r"binge[- ]eating disorder|(?:an )?eating disorder|dissociative identity disorder|dementia|"
    r"(?:a |an )?(?:mental|mood|psychiatric) (?:illness|disorder)"
)
_NEGATED_OFFER = re.compile(
    r"\b(?:can't|cannot|won't|will not|not able to|unable to|not going to|don't|do not)\b[^.!?\n]{0,40}$",
    re.IGNORECASE,
)
_HEDGE_BEFORE = re.compile(
    r"\b(?:if|whether|wonder\w*|worried|concerned|afraid|think|feel like|asked)\b[^.!?\n]{0,30}$",
    re.IGNORECASE,
)

_RULES: dict[ScreenReason, list[re.Pattern[str]]] = {
    "method_details": [
        re.compile(p, re.IGNORECASE)
        for p in (
            r"\b(?:lethal|fatal|deadly|toxic) (?:dose|amount|quantity)\b[^.!?\n]{0,40}\b(?:is|are|would be|of|around|about|starts?)\b[^.!?\n]{0,30}\d",
            r"\b\d+\s*(?:pills|tablets|capsules|mg|milligrams|grams|g)\b[^.!?\n]{0,40}\b(?:would|will|could|should) (?:be )?(?:enough|kill|fatal|lethal|do it)",
            r"\b(?:enough|sufficient) (?:to (?:kill|die|be fatal|overdose))\b",
            r"\b(?:tie|tying|make|making) (?:a|the) noose\b|\bnoose\b[^.!?\n]{0,40}\b(?:knot|loop|beam|tie)\b",
            r"\bhang(?:ing)? yourself (?:from|with|by|using)\b",
            r"\b(?:cut|slit|slice)(?:ting)? (?:your )?(?:wrists?|arms?|throat)\b[^.!?\n]{0,40}\b(?:vertical|along|deep|lengthwise|artery|vein)",
            r"\b(?:jump|fall)(?:ing)? from (?:at least |over |more than )?\d+\s*(?:floors|stories|storeys|meters|metres|feet|ft|m)\b",
            r"\b(?:most|more|least) (?:painless|effective|reliable|lethal|certain|quick|peaceful) (?:way|method|means)s?\b[^.!?\n]{0,20}\b(?:to (?:die|kill|end)|of (?:suicide|dying)|is|are|would be)\b",
            r"\b(?:painless|quick|quickest|easiest|surest|peaceful) (?:way|method)s? (?:to (?:die|kill yourself|end (?:your|one's) life)|of (?:dying|suicide))\b",
            r"\bcarbon monoxide\b[^.!?\n]{0,60}\b(?:minutes|hours|garage|seal|hose|exhaust)\b",
            r"\b(?:buy|get|purchase)\b[^.!?\n]{0,30}\b(?:gun|firearm|pistol|handgun)\b[^.!?\n]{0,40}\b(?:without|no|same day|today|private sale)\b",
        )
    ],
    "diagnosis": [
        re.compile(p, re.IGNORECASE)
        for p in (
            rf"\byou (?:definitely |clearly |probably |likely |obviously |certainly |might |may |must |seem to |appear to )?(?:have|suffer from|are suffering from|'ve got|have got|are showing (?:classic |clear )?signs of) (?:a |an )?(?:severe |mild |moderate |classic |clinical )?(?:{_DISORDERS})\b",
            r"\byou(?:'re| are) (?:definitely |clearly |probably |likely |obviously |certainly )?(?:bipolar|schizophrenic|psychotic|a narcissist|narcissistic|autistic|anorexic|bulimic|borderline|clinically depressed|manic)\b",
            r"\b(?:i (?:would |can |could )?diagnose you|my diagnosis is|your diagnosis is|you meet the criteria for|this is (?:definitely |clearly |classic |textbook )(?:a case of )?)",
            rf"\b(?:sounds|looks|seems) like (?:classic |textbook |a clear case of )(?:{_DISORDERS})\b",
        )
    ],
    "medication_dose": [
        re.compile(rf"\b(?:{_MEDICATIONS})\b[^.!?\n]{{0,40}}{_DOSE}", re.IGNORECASE),
        re.compile(rf"{_DOSE}[^.!?\n]{{0,30}}\b(?:of )?(?:{_MEDICATIONS})\b", re.IGNORECASE),
        re.compile(
            rf"\b(?:increase|double|raise|lower|halve|up) (?:your|the) (?:dose|dosage)\b[^.!?\n]{{0,40}}\b(?:{_MEDICATIONS})\b|\b(?:{_MEDICATIONS})\b[^.!?\n]{{0,40}}\b(?:increase|double|raise|halve) (?:your|the) (?:dose|dosage)\b",
            re.IGNORECASE,
        ),
    ],
    # Every chat template family's markup and fabricated turns (warmline.templates).
    "role_leak": [LEAK_PATTERN],
}

# In a conversation that is at risk or asked about means, any concrete list of places,
# heights, doses or shops in the reply is method detail.
_STRICT_RULES: list[re.Pattern[str]] = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\b(?:bridges?|buildings?|towers?|skyscrapers?|cliffs?|garages?|rooftops?|overpass(?:es)?)\b[^.!?\n]{0,80}\b(?:include|such as|like the|tallest|highest|\d+\s*(?:m|meters|metres|feet|ft|floors|stories))\b",
        r"\b(?:the )?(?:tallest|highest)\b[^.!?\n]{0,40}\b(?:bridges?|buildings?|towers?|cliffs?|rooftops?)\b",
        r"\b(?:pesticides?|herbicides?|weed ?killer|rat poison|antifreeze|bleach|insulin|pills?|tablets?|rope|charcoal)\b[^.!?\n]{0,60}\b(?:sold|available|buy|stores?|shops?|pharmac(?:y|ies)|hardware)\b",
        rf"{_DOSE}",
    )
]


@dataclass(frozen=True)
class ScreenResult:
    """The verdict on one model reply."""

    safe: bool
    text: str
    """The reply itself if safe, else the fallback to show instead."""
    reasons: list[ScreenReason] = field(default_factory=list)
    matches: list[str] = field(default_factory=list)
    """The offending snippets (for logs and tests; never shown to the user)."""


def screen_output(text: str, *, assessment: Assessment | None = None) -> ScreenResult:
    """Check a (possibly partial) model reply; return it, or a safe fallback, with the reasons.

    Pass the conversation's ``assessment`` to screen strictly when it is at risk or asked
    about means.
    """
    reasons: list[ScreenReason] = []
    matches: list[str] = []
    for reason, patterns in _RULES.items():
        for pattern in patterns:
            match = _first_unnegated(pattern, text, allow_negation=reason != "role_leak")
            if match is None:
                continue
            if reason == "diagnosis" and _HEDGE_BEFORE.search(text[: match.start()]):
                continue  # "if you're worried you might have depression, a doctor can help"
            reasons.append(reason)
            matches.append(match.group(0))
            break
    if assessment is not None and _strict(assessment) and "method_details" not in reasons:
        for pattern in _STRICT_RULES:
            # No refusal exemption here: "don't take more than 4000 mg" still hands over a number.
            match = _first_unnegated(pattern, text, allow_negation=False)
            if match is not None:
                reasons.append("method_details")
                matches.append(match.group(0))
                break
    if not reasons:
        return ScreenResult(safe=True, text=text)
    logger.info("model reply screened out: %s", ", ".join(reasons))
    fallback = ROLE_LEAK_FALLBACK if reasons == ["role_leak"] else FALLBACK_REPLY
    return ScreenResult(safe=False, text=fallback, reasons=reasons, matches=matches)


def _strict(assessment: Assessment) -> bool:
    return assessment.level.rank >= RiskLevel.DISTRESS.rank or "means" in assessment.categories


def _first_unnegated(pattern: re.Pattern[str], text: str, *, allow_negation: bool) -> re.Match[str] | None:
    """First match not preceded by a refusal ("I can't tell you the lethal dose ...")."""
    for match in pattern.finditer(text):
        line_start = max(text.rfind("\n", 0, match.start()), text.rfind(".", 0, match.start())) + 1
        if allow_negation and _NEGATED_OFFER.search(text[line_start : match.start()]):
            continue
        return match
    return None


# Markers a streamed reply may end with the start of: every family's, but not the line-start
# variants (their newline is text already shown).
_MARKERS = tuple(m for m in ANY.leak_markers if not m.startswith("\n"))


def safe_emit_length(text: str) -> int:
    """How many leading characters of a streamed reply can be shown now.

    Holds back a trailing fragment that could be the start of a role marker ("<|im", "Use"),
    so a marker is never half-shown before the screen sees all of it. Screen the accumulated
    text with ``screen_output`` first; this only decides how much of a safe prefix to release.
    """
    hold = 0
    for marker in _MARKERS:
        for size in range(min(len(marker) - 1, len(text)), hold, -1):
            start = len(text) - size
            # Word markers ("User:") only start at a word boundary; "<|" and "[" anywhere.
            at_boundary = start == 0 or not text[start - 1].isalnum() or not marker[0].isalpha()
            if text.endswith(marker[:size]) and at_boundary:
                hold = size
                break
    return len(text) - hold
