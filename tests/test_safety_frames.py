"""Frames around risk words, and risk the rules missed, found on a dev set written by others
(session 10; new wordings of the same patterns, not that set's messages): help questions about a
hypothetical person, a frame the writer takes back, an explicit reassurance, and plain risk in
the five other languages. Lexicon only unless a test says otherwise."""

from __future__ import annotations

import pytest
from test_safety_indirect import _FixedScore

from warmline.safety import assess
from warmline.safety.levels import RiskLevel
from warmline.safety.risk import assess_text


def _rules(text: str):
    return assess(text, use_classifier=False)


def _scored(text: str, **probabilities: float):
    fixed = _FixedScore(**probabilities)
    return assess_text(text, classifier=fixed, multilingual=fixed)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        # what to say to someone who might one day say it: nobody here is at risk
        "How should I answer if a friend tells me they want to die?",
        "what do you say when someone says they're thinking about suicide? I run a youth club",
        "how do i respond if a mate says he wants to kill himself",
        # hyperbole about a person, a treat "overdose", burning out
        "i could strangle my flatmate, he ate my leftovers AGAIN",
        "overdosed on espresso before the exam lol, my hands won't stop shaking",
        "how do I look after my sister without burning myself out?",
        # a holiday, not a farewell
        "thanks for everything! could you take care of my cat while I'm in Lisbon next week?",
        "last day at the office, thanks for everything everyone, love you all",
        # grief without an intent
        "my grandad died in march and i keep thinking about him",
    ],
)
def test_frames_are_not_crises(text):
    result = _rules(text)
    assert not result.is_crisis, result.evidence


@pytest.mark.parametrize(
    ("text", "category"),
    [
        # the hypothetical question does not hide the writer's own words in the next sentence
        ("what should I say if a friend tells me they want to die? I want to die too", "suicidal_ideation"),
        (
            "how do you answer someone who says they want to die? asking because i want to die",
            "suicidal_ideation",
        ),
        # a frame taken back
        ("for a story, what's the most painless way to die? (it's not really for a story)", "means"),
        (
            "haha gonna jump off the car park roof after this exam... not really joking actually",
            "suicidal_ideation",
        ),
        # an object left unsaid, a height checked, half a bottle taken, the same means
        ("a year clean and now i'm back to looking up ways again", "means"),
        ("been checking which floors of my building are high enough", "means"),
        ("what happens if you take a whole box of paracetamol, i already took half of it", "imminent"),
        ("i bought the same tablets my brother took", "means"),
        ("last night i sat in the garage with the engine running for an hour", "means"),
        # following someone who died
        ("it's two years since mum died. i've decided i'll go join her on her birthday", "suicidal_ideation"),
        ("my cat was all i had and now she's gone. i keep thinking about joining her", "suicidal_ideation"),
        # a farewell that hands a pet over
        (
            "thank you for everything, you were the best friend i ever had. look after my dog for me",
            "goodbye",
        ),
        # danger from someone else: a threat through a door, a fear, a stalker
        ("he's banging on the door screaming he's going to kill me", "harm_from_others"),
        ("i'm terrified one night my husband will actually kill me", "harm_from_others"),
        ("my ex has been waiting outside my flat every night this week", "harm_from_others"),
    ],
)
def test_risk_around_the_frames_still_counts(text, category):
    result = _rules(text)
    assert result.is_crisis, result.evidence
    assert category in result.categories, result.categories


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("me queme el brazo con el mechero otra vez, es lo unico que me calma", "self_harm"),
        ("tomo laxantes todos los dias, hoy ya van 8", "eating_disorder"),
        ("despues de cada comida voy al baño a vomitar", "eating_disorder"),
        ("tengo miedo de que un dia mi marido me mate", "harm_from_others"),
        ("gracias por todo, fuiste el mejor amigo que tuve. cuida a mi gata porfa", "goodbye"),
        ("queimei a perna com o isqueiro hoje", "self_harm"),
        ("se eu sumir ninguem vai nem perceber", "passive_ideation"),
        ("desde que meu pai morreu so penso em ir junto com ele", "suicidal_ideation"),
        ("mi sono bruciata con la sigaretta di nuovo", "self_harm"),
        ("ho paura che una notte il mio compagno mi ammazzi", "harm_from_others"),
        ("j'ai tellement peur qu'il me tue un jour", "harm_from_others"),
        ("je me suis brulee avec un briquet hier soir", "self_harm"),
        ("ich habe Angst, dass mein Mann mich eines Tages umbringt", "harm_from_others"),
        ("seit Tagen esse ich so gut wie nichts", "eating_disorder"),
        ("Seit Mama tot ist, will ich ihr nur noch nachgehen", "suicidal_ideation"),
    ],
)
def test_plain_risk_in_other_languages(text, category):
    result = _rules(text)
    assert result.is_crisis, (result.language, result.evidence)
    assert category in result.categories, result.categories


def test_a_foreign_idiom_stays_an_idiom():
    assert not _rules("ce boulot va me tuer").is_crisis
    assert not _rules("gracias por todo, ¿puedes cuidar a mi perro este finde?").is_crisis


def test_reassurance_softens_a_classifier_only_score_of_the_writers_own_risk():
    void = "every time I'm on a balcony I think what if I jumped. I'd never, I love my life. is that normal?"
    result = _scored(void, suicidal=0.99)
    assert result.level == RiskLevel.DISTRESS, result.evidence
    assert any("reassurance" in line for line in result.evidence)
    # without the reassurance the same score is a crisis
    assert _scored("every time I'm on a balcony I think what if I jumped", suicidal=0.99).level.is_crisis
    # "I'd never" in a wish is not a reassurance
    assert _scored("I keep wishing I'd never been born", suicidal=0.99).level.is_crisis


def test_reassurance_never_softens_intrusive_thoughts_or_a_rule():
    # unwanted by definition: the reassurance is part of an intrusive-thought disclosure
    intrusive = (
        "I keep seeing myself dropping my baby down the stairs. I'd never, but I can't be alone with her"
    )
    assert _scored(intrusive, intrusive_thoughts=0.95).level.is_crisis
    # the rules' own phrase stands, whatever is said after it
    assert _scored("I want to kill myself. I'd never, but I want to", suicidal=0.7).level.is_crisis


def test_a_retracted_frame_is_not_softened():
    text = "lol jk about wanting to disappear forever. jk but not really"
    assert _scored(text, suicidal=0.75).level.is_crisis
    # and the joke alone still softens a borderline score
    assert (
        _scored("lol I want to disappear under my duvet forever haha", suicidal=0.75).level
        == RiskLevel.DISTRESS
    )
