"""Session 11: what the frames around risk words did wrong on a new dev set written by others
(new wordings of the same patterns, not that set's messages). A denial followed by "but" is a
hedge; "seriously", "genuinely", "no joke" take a joking frame back; a history that "is back"
is the present; a negation does not reach into a clause of its own ("... after I'm gone"); a
first-person phrase after "he's" or "she's" is someone else's; a gloss that is mostly unknown
words weighs little against the multilingual reading of the message itself."""

from __future__ import annotations

import pytest
from test_safety_frames import _rules, _scored

from warmline.safety import risk
from warmline.safety.gloss import UNKNOWN, glossary
from warmline.safety.levels import RiskLevel
from warmline.safety.lexicon import default_lexicon
from warmline.safety.risk import gloss_coverage


def test_a_denial_followed_by_but_is_a_hedge_not_a_reassurance():
    hedge = "i'm not suicidal or anything, but honestly if i got hit by a bus tomorrow i'd be ok with it"
    assert _scored(hedge, suicidal=0.95).level.is_crisis
    # the reassurance itself still softens
    plain = "sometimes on high bridges I picture falling. I'm not suicidal at all, it just pops up"
    assert _scored(plain, suicidal=0.95).level == RiskLevel.DISTRESS


@pytest.mark.parametrize(
    "text",
    [
        "lol not a big deal but i'm seriously thinking about ending it all",
        "haha i want to kill myself, no joke",
        "lmao i'm going to end it all this weekend, i'm dead serious",
    ],
)
def test_sincerity_takes_a_joking_frame_back(text):
    result = _rules(text)
    assert result.is_crisis, result.evidence


def test_laughter_alone_still_softens_hyperbole():
    assert not _rules("lol this meeting makes me want to kill myself").is_crisis


@pytest.mark.parametrize(
    "text",
    [
        "three months clean and the urge to cut is back, i've got the blade out",
        "i used to purge years ago and it came back this week",
    ],
)
def test_a_history_that_is_back_is_the_present(text):
    assert not default_lexicon().scan(text).history


def test_a_history_without_return_is_still_history():
    assert default_lexicon().scan("i used to cut years ago, i'm fine now").history


@pytest.mark.parametrize(
    "text",
    [
        "i'm writing letters so my kids won't feel guilty after i'm gone",
        "please make sure nobody cries too much once i'm gone",
    ],
)
def test_a_negation_does_not_reach_into_a_clause_of_its_own(text):
    result = _rules(text)
    assert result.is_crisis, result.evidence
    assert "goodbye" in result.categories


@pytest.mark.parametrize("text", ["I don't want to die", "i would never kill myself"])
def test_plain_negations_still_hold(text):
    assert not _rules(text).is_crisis


def test_a_first_person_phrase_after_he_or_she_is_theirs():
    result = _rules("my daughter is 15, how do i ask her if she's thinking about suicide")
    assert "suicidal_ideation" not in result.categories, result.categories
    assert "third_party" in result.categories


@pytest.mark.parametrize("text", ["my boyfriend makes me want to die", "he makes me want to die"])
def test_someone_who_makes_the_writer_want_to_die_leaves_it_the_writers(text):
    result = _rules(text)
    assert result.is_crisis
    assert "suicidal_ideation" in result.categories, result.categories
    assert "third_party" not in result.categories, result.categories


def test_planning_to_disguise_someones_death_is_intent_to_harm():
    result = _rules(
        "my landlord keeps screwing me over and i've been working out how to make it look like an accident"
    )
    assert result.is_crisis and "harm_to_others" in result.categories, result.evidence


def test_providing_for_a_pet_if_something_happens_is_a_farewell_unless_it_is_a_trip():
    farewell = _rules("in case something happens to me, please take care of my dog, he likes long walks")
    assert farewell.is_crisis and "goodbye" in farewell.categories, farewell.evidence
    trip = _rules("if anything happens to me while i'm travelling, my mum will take care of my dog")
    assert not trip.is_crisis, trip.evidence


def test_gloss_coverage_counts_the_words_the_gloss_knows():
    assert gloss_coverage(f"i {UNKNOWN} the {UNKNOWN}") == pytest.approx(0.5)
    assert gloss_coverage("i want to sleep") == 1.0
    assert gloss_coverage("") == 0.0


def test_a_gloss_of_unknown_words_weighs_little_against_the_message_itself(monkeypatch):
    from test_safety_indirect import _ByText, _FixedScore

    # The blend itself (the stand-in's "none" on the gloss would otherwise let the message skip
    # e5 altogether: risk.CASCADE, tested in test_safety_quiet_signs)
    monkeypatch.setattr(risk, "CASCADE", False)

    # made-up names the gloss cannot know, in an otherwise ordinary German question
    message = "Wie hoch muss der Quorbelturm in Zwimmelstadt sein, damit man den Sturz sicher nicht überlebt?"
    # e5 sure of risk on the message, MiniLM sure of none on its gloss
    fake = _ByText(message, on_it=_FixedScore(suicidal=0.95), otherwise=_FixedScore(none=1.0))
    glossed = risk._read_rules(default_lexicon(), risk.clean(message)[0], False, "en")[2]
    full = risk.GLOSS_WEIGHT
    weight = full * gloss_coverage(glossed) ** risk.GLOSS_COVERAGE_POWER
    assert 0 < weight < full
    result = risk.assess_text(message, classifier=fake, multilingual=fake)  # type: ignore[arg-type]
    assert result.risk_score == pytest.approx(0.95 * (1 - weight), abs=1e-6)


def test_the_everyday_vocabulary_fills_in_words_the_risk_dictionary_lacks():
    for language in ("es", "fr", "de", "pt", "it"):
        dictionary = glossary(language)
        assert len(dictionary.phrases) > 1000, language
    # an ordinary German sentence now glosses into English words, not unknowns
    glossed = glossary("de").gloss("Hab die Tabletten gezählt, sind 40 Stück. Reicht das?")
    assert gloss_coverage(glossed) == 1.0, glossed
    assert "counted" in glossed and "enough" in glossed, glossed


@pytest.mark.parametrize(
    "text",
    [
        "which floor of the multi-storey car park is the highest? no reason",
        "how many sleeping tablets come in a box? don't ask why",
    ],
)
def test_a_waved_off_height_or_dose_question_is_means_seeking(text):
    result = _rules(text)
    assert result.is_crisis and "means" in result.categories, result.evidence


def test_the_same_question_plainly_asked_is_not_a_crisis_on_its_own():
    assert not _rules("how many sleeping tablets come in a box?").is_crisis
