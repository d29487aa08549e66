"""Safe messages that look like risk, and risk the rules missed, found on a dev set written by
others (session 9; these are new wordings of the same patterns, not its messages). Lexicon only
unless a test says otherwise: each test reads the rules."""

from __future__ import annotations

import pytest
from test_safety_indirect import _FixedScore

from warmline.safety import assess
from warmline.safety.levels import RiskLevel
from warmline.safety.risk import assess_text


def _rules(text: str):
    return assess(text, use_classifier=False)


@pytest.mark.parametrize(
    "text",
    [
        # an anniversary told on the night itself, with the present beside it
        "Two years ago tonight I tried to take my own life. Tonight I'm at my sister's wedding.",
        # a past read back from an old diary or from a named age
        "Found my old diary from when I wanted to die. I barely recognise her now.",
        "when i was 15 i wanted to die every single day. i'm 30 now and i'm okay",
        # a pet's dose, a vet's question
        "our cat licked some ibuprofen gel, what's a toxic dose for cats?",
        # an accident, bleeding included
        "nasty paper cut on my finger, so dramatic for something so small",
        # a topic named in a question of fact
        "how common is self-harm among university students? need sources for an essay",
        "what percentage of child abuse cases are reported to police?",
        # how to answer someone who might one day say it: a hypothetical friend
        "best way to support someone who is self harming, asking for a training course",
        # a queue, not a life
        "two hours in this queue at the post office. losing the will to live",
    ],
)
def test_lookalikes_are_not_crises(text):
    result = _rules(text)
    assert not result.is_crisis, result.evidence


@pytest.mark.parametrize(
    ("text", "category"),
    [
        # the anniversary's night does not hide a present act or a relapse
        ("a year ago tonight I tried to end my life and tonight I want to again", "suicidal_ideation"),
        ("I cut myself again tonight, first time in a year", "self_harm"),
        # a person's dose, not a pet's
        ("what's a lethal dose of my sleeping pills", "means"),
        # a threat screamed through a door is not the hyperbole "mum's gonna kill me"
        # euphemism with the short spelling of "are"
        ("sewerslide thoughts r back", "suicidal_ideation"),
        # domestic violence said of oneself, a self-harm wound that won't stop
        ("I'm living with domestic violence and I'm scared to go home", "harm_from_others"),
        ("i cut too deep on my arm and it won't stop bleeding", "self_harm"),
        # a question of fact answered by the writer's own words in the next sentence
        ("any statistics on domestic violence? I live with it every day", "harm_from_others"),
        # losing the will to live, with despair beside it
        ("I'm losing the will to live, everything is hopeless", "suicidal_ideation"),
    ],
)
def test_risk_beside_the_lookalike_wordings_still_counts(text, category):
    result = _rules(text)
    assert result.is_crisis, result.evidence
    assert category in result.categories, result.categories


def test_a_mothers_hyperbole_stays_hyperbole():
    assert not _rules("my mum is going to kill me if I fail maths").is_crisis


def test_a_rant_called_a_rant_softens_a_borderline_score_only():
    rant = (
        "my landlord raised the rent again and the boiler is broken and I'm so done with all of it. "
        "sorry, just needed to vent somewhere"
    )
    borderline = assess_text(
        rant, classifier=_FixedScore(suicidal=0.75), multilingual=_FixedScore(suicidal=0.75)
    )
    assert borderline.level == RiskLevel.DISTRESS, borderline.evidence
    assert any("venting" in line for line in borderline.evidence)
    confident = assess_text(
        rant, classifier=_FixedScore(suicidal=0.97), multilingual=_FixedScore(suicidal=0.97)
    )
    assert confident.level.is_crisis
    # the rules' own risk phrase is never softened by the frame
    said = "I want to kill myself. sorry, just needed to vent"
    assert assess_text(
        said, classifier=_FixedScore(suicidal=0.75), multilingual=_FixedScore(suicidal=0.75)
    ).level.is_crisis


def test_an_ordinary_plan_for_tonight_is_a_venting_frame():
    text = "worst week at work ever, I'm done. tonight I'm making pizza and watching films with my flatmate"
    result = assess_text(text, classifier=_FixedScore(suicidal=0.7), multilingual=_FixedScore(suicidal=0.7))
    assert result.level == RiskLevel.DISTRESS, result.evidence
