"""Session 13: the quiet signs dev set 10 (written by others) showed the rules missing, in new
wordings, not its messages: a death wished through a crash or an illness, disappointment at
waking, preparations kept secret or made to a date, a means question with a second sign (its
innocent purpose denied, a gentle death, the house empty), threats and spiking someone's drink,
pills taken with alcohol, an eating disorder's body alarms, a relapse; and their look-alikes. Also
the classifier-side rules: a rant that ends in a lawful step, and the cascade that lets an
ordinary non-English message skip the multilingual encoder."""

from __future__ import annotations

import pytest
from test_safety_frames import _rules
from test_safety_indirect import _ByText, _FixedScore

from warmline.safety import risk
from warmline.safety.risk import assess_text


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("honestly hoping my train derails on the way to work tomorrow", "passive_ideation"),
        ("i keep wishing i'd get a heart attack in my sleep", "passive_ideation"),
        ("woke up again, unfortunately", "passive_ideation"),
        ("still breathing, sadly. another day of this", "passive_ideation"),
        (
            "gave my guitar to my cousin and said i was just making space. nobody needs to know why",
            "plan",
        ),
        ("passwords are written on the card in my desk for my sister, and i sold my car", "plan"),
        ("booked a cabin in the woods for saturday, won't be checking out", "plan"),
        ("found a spot in the hills where no one would ever find me, to stay for good", "plan"),
        ("got it all figured out, just waiting for the house to be empty on friday", "plan"),
        ("what floor would i have to fall from so it's fatal and not just broken legs", "means"),
        ("does charcoal in a closed bathroom actually kill? everyone's away till monday", "means"),
        ("where do you get nitrogen without the shop asking questions", "means"),
        ("which car park has the highest top deck? not for pictures btw", "means"),
        ("is zopiclone a peaceful death", "means"),
        ("i'm bringing my brother's knife to school monday, they'll all regret laughing", "harm_to_others"),
        ("thinking of putting rat poison in my flatmate's tea", "harm_to_others"),
        ("downed my dad's sleeping pills with whisky, everything is spinning", "imminent"),
        ("ate a whole pizza, need laxatives to get it out of me tonight", "eating_disorder"),
        (
            "haven't had a period since march and my hair is coming out but i want to lose a few more",
            "eating_disorder",
        ),
        ("relapsed after 40 days clean, i'm so disgusting", "self_harm"),
        ("ordered new blades today, i know i shouldn't", "self_harm"),
        ("kinda want to unalive myself but i'm too much of a chicken lmao", "suicidal_ideation"),
        (
            "im such a burden honestly. my parents would be sad for a month and then be better off",
            "suicidal_ideation",
        ),
    ],
)
def test_quiet_signs_are_a_crisis(text, category):
    result = _rules(text)
    assert result.level.is_crisis, result.evidence
    assert category in result.categories, result.categories


@pytest.mark.parametrize(
    "text",
    [
        "if my sister plays that song one more time i'm jumping off the roof lmaooo",
        "flight tomorrow and i really hope the plane doesn't crash lol i hate flying",
        "disappointed i woke up too late for the sunrise",
        "booked the hotel, we're not checking out until sunday",
        "gave my old bike to my nephew, he's been asking for it for ages",
        "is helium safe to keep in the car with the kids? it's for balloons at the party",
        "what floor is the rooftop bar on",
        "does bleach kill mould on grout or do i need something stronger?",
        "my parents are away this weekend so i'm having friends over",
        "bought new razor blades for shaving",
        "my period stopped because i'm pregnant, my goal weight for after is 60 kg",
        "he makes me want to strangle him every time he talks over me in meetings",
        "j'ai trois exams demain, je vais mourir",
        "how should i ask a coworker if they're thinking about suicide?",
    ],
)
def test_their_look_alikes_are_not(text):
    result = _rules(text)
    assert not result.level.is_crisis, result.evidence


def test_a_french_death_with_a_time_of_its_own_still_counts():
    assert _rules("je vais mourir ce soir, j'ai tout prévu").level.is_crisis


def test_plans_and_means_are_not_softened_by_laughter():
    # A hyperbole laughs; a plan or a means question with a laugh is nervous, not a joke.
    assert _rules(
        "got it all figured out lol just waiting for my parents to go on their trip"
    ).level.is_crisis
    assert not _rules("i'm going to kill myself lol this homework").level.is_crisis


RANT = "my neighbour blocks my drive every day. i could slash his tyres, but i'm going to call the council"


def test_a_rant_ending_in_a_lawful_step_softens_an_anger_reading_at_any_score():
    angry = _FixedScore(harm_to_others=0.97)
    assert not assess_text(RANT, classifier=angry, multilingual=angry).level.is_crisis  # type: ignore[arg-type]
    # without the lawful step, the same score is a crisis
    threat = "my neighbour blocks my drive every day. i'm going to slash his tyres and then him"
    assert assess_text(threat, classifier=angry, multilingual=angry).level.is_crisis  # type: ignore[arg-type]


def test_the_lawful_step_never_softens_the_writers_own_risk():
    suicidal = _FixedScore(suicidal=0.97)
    assert assess_text(RANT, classifier=suicidal, multilingual=suicidal).level.is_crisis  # type: ignore[arg-type]


ORDINARY_ES = "mañana voy al mercado con mi hermana a comprar fruta"


def test_an_ordinary_well_glossed_message_skips_the_multilingual_encoder():
    english = _FixedScore()  # MiniLM reads the gloss as ordinary
    multilingual = _FixedScore(suicidal=0.95)  # e5 would have been sure
    result = assess_text(ORDINARY_ES, classifier=english, multilingual=multilingual)  # type: ignore[arg-type]
    assert multilingual.calls == 0
    assert not result.level.is_crisis


def test_the_cascade_still_asks_e5_where_the_gloss_reading_is_not_plainly_ordinary(monkeypatch):
    english = _ByText("x", _FixedScore(), _FixedScore(distress=0.3, suicidal=0.2))
    multilingual = _FixedScore(suicidal=0.95)
    result = assess_text(ORDINARY_ES, classifier=english, multilingual=multilingual)  # type: ignore[arg-type]
    assert multilingual.calls == 1
    assert result.risk_score is not None and result.risk_score > 0.5  # e5's reading counted
    # and with the cascade off, e5 always reads a non-English message
    monkeypatch.setattr(risk, "CASCADE", False)
    multilingual = _FixedScore()
    assess_text(ORDINARY_ES, classifier=_FixedScore(), multilingual=multilingual)  # type: ignore[arg-type]
    assert multilingual.calls == 1


def test_a_lexicon_signal_always_gets_the_multilingual_reading():
    multilingual = _FixedScore()
    assess_text("no aguanto más, todo me sale mal", classifier=_FixedScore(), multilingual=multilingual)  # type: ignore[arg-type]
    assert multilingual.calls >= 1


@pytest.mark.parametrize(
    "text", ["i want to kill myself, nothing will ever change", "no aguanto más, quiero morirme"]
)
def test_the_writers_own_risk_found_by_the_rules_skips_e5_and_still_reads_minilm(text, monkeypatch):
    english = _FixedScore(suicidal=0.5, distress=0.2)  # at DISTRESS_THRESHOLD: the blend would ask e5
    multilingual = _FixedScore(suicidal=0.9)
    result = assess_text(text, classifier=english, multilingual=multilingual)  # type: ignore[arg-type]
    assert result.level.is_crisis
    assert multilingual.calls == 0 and english.calls >= 1
    # with the skip off, e5 reads it as before
    monkeypatch.setattr(risk, "DECIDED_SKIPS_E5", False)
    multilingual = _FixedScore(suicidal=0.9)
    assess_text(text, classifier=_FixedScore(suicidal=0.5, distress=0.2), multilingual=multilingual)  # type: ignore[arg-type]
    assert multilingual.calls >= 1


@pytest.mark.parametrize(
    "text", ["my brother says he wants to kill himself", "i want to die and i want to hurt him too"]
)
def test_anyone_elses_risk_still_gets_e5(text):
    multilingual = _FixedScore(suicidal=0.9)
    assess_text(text, classifier=_FixedScore(suicidal=0.5, distress=0.2), multilingual=multilingual)  # type: ignore[arg-type]
    assert multilingual.calls >= 1


@pytest.mark.parametrize(
    ("text", "crisis"),
    [
        ("my main character wants to kill herself at the end of chapter 3, is that too dark?", False),
        ("i'm writing a story about a girl who wants to die, because i want to die too", True),
        ("the villain in my life, my ex, says he will kill himself if i leave", True),
        (
            "i'm writing a novel but honestly my best friend told me she wants to end her life",
            True,
        ),
    ],
)
def test_a_characters_risk_is_a_characters_unless_a_real_person_or_the_writer_is_in_it(text, crisis):
    assert _rules(text).level.is_crisis is crisis, _rules(text).evidence
