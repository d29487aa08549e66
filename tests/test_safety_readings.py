"""How the readings of one message combine into its level: a non-English message's own reading
beside its gloss, classes of the same kind, a child writing in their own language, and what
counts as an informational question. Stand-in classifiers: every score is constructed."""

from __future__ import annotations

import pytest
from test_safety_indirect import _FixedScore

import warmline.safety.risk as risk
from warmline.safety import assess
from warmline.safety.classifier import ClassifierScore
from warmline.safety.levels import RiskLevel
from warmline.safety.risk import _confident, _native_minor


def _score(**probabilities: float) -> ClassifierScore:
    return _FixedScore(**probabilities).score("")


# ---------------------------------------------------------------- kinds of the same risk


def test_a_score_split_between_harm_and_intrusive_thoughts_is_sure_of_its_kind() -> None:
    assert _confident(_score(intrusive_thoughts=0.5, harm_to_others=0.45))
    # Split between two different kinds, the same total is not confident.
    assert not _confident(_score(intrusive_thoughts=0.5, suicidal=0.45))
    assert not _confident(_score(intrusive_thoughts=0.4, harm_to_others=0.4))  # 0.8 < CONFIDENT_THRESHOLD


# ---------------------------------------------------------------- a message's own reading

# Not in any lexicon: the classifiers alone can read these.
FRENCH_INTRUSIVE = "quand le petit pleure la nuit j'ai des images de le secouer fort qui me viennent"
SPANISH_ABUSE = "mi novio me revisa el cel todos los dias y la semana pasada me estampo contra la pared"


def _non_english(text: str, own: dict[str, float], gloss: dict[str, float]):
    return assess(text, classifier=_FixedScore(**gloss), multilingual=_FixedScore(**own))


@pytest.mark.parametrize(
    ("text", "kind", "category"),
    [
        (FRENCH_INTRUSIVE, "intrusive_thoughts", "intrusive_thoughts"),
        (SPANISH_ABUSE, "harm_from_others", "harm_from_others"),
    ],
)
def test_a_confident_own_reading_stands_when_the_gloss_blurs_it(
    monkeypatch: pytest.MonkeyPatch, text: str, kind: str, category: str
) -> None:
    # The gloss of the message reads another kind (it dropped the words that say whom): the
    # blend is split, but e5 read the message itself and is sure.
    monkeypatch.setattr(risk, "SECOND_OPINION", False)
    assert not assess(text, use_classifier=False).is_crisis, "the premise: no lexicon crisis"
    sure = _non_english(text, {kind: 0.97}, {"suicidal": 0.9})
    assert sure.is_crisis, sure.evidence
    assert category in sure.categories and "suicidal_ideation" not in sure.categories
    # e5 short of confident, the gloss agreeing: the kind still needs a second opinion (the
    # lexicon's or the other encoder's), so resources only.
    unsure = _non_english(text, {kind: 0.8}, {kind: 0.75})
    assert unsure.level == RiskLevel.DISTRESS, unsure.evidence


def test_an_english_blend_gives_no_single_reading_a_veto_or_a_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # English: MiniLM sure of harm to others, e5 reading something else; neither reads a gloss,
    # so MiniLM's own score does not stand alone.
    monkeypatch.setattr(risk, "SECOND_OPINION", False)
    text = "that man at number 12 will regret the day he met me, saturday he finds out"
    assert not assess(text, use_classifier=False).is_crisis, "the premise: no lexicon crisis"
    monkeypatch.setattr(risk, "default_multilingual_classifier", lambda: _FixedScore(suicidal=0.9))
    assessment = assess(text, classifier=_FixedScore(harm_to_others=0.97))
    assert assessment.level == RiskLevel.DISTRESS, assessment.evidence


# ---------------------------------------------------------------- a child writing


@pytest.mark.parametrize(
    ("language", "text", "minor"),
    [
        ("es", "tengo 12 anos y en casa me pegan", True),
        ("es", "tengo 15 anos de casada", False),
        ("fr", "j'ai 10 ans et il me fait peur", True),
        ("fr", "j'ai 15 ans d'experience", False),
        ("de", "bin 13 und mein vater schlaegt mich", True),
        ("de", "ich bin 12 stunden am tag auf der arbeit", False),
        ("pt", "tenho 14 anos e meu padrasto", True),
        ("it", "ho 11 anni e mio zio", True),
        ("it", "ho 16 anni di esperienza", False),
        ("en", "i'm 12", False),  # English is the English lexicon's to read
    ],
)
def test_a_minor_is_read_in_their_own_language(language: str, text: str, minor: bool) -> None:
    assert _native_minor(language, text) is minor


def test_violence_against_a_child_read_by_the_classifier_gets_the_child_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(risk, "SECOND_OPINION", False)
    text = "mon oncle me fait des trucs bizarres quand je dors chez lui et il dit de rien dire. j'ai 10 ans"
    adult = text.removesuffix(". j'ai 10 ans")
    sure = {"harm_from_others": 0.97}
    child = _non_english(text, sure, sure)
    assert child.is_crisis and "child_abuse" in child.categories, child.evidence
    grown = _non_english(adult, sure, sure)
    assert grown.is_crisis and "child_abuse" not in grown.categories, grown.evidence


# ---------------------------------------------------------------- informational questions


@pytest.mark.parametrize(
    ("text", "informational"),
    [
        ("What is suicide?", True),
        ("ok so what are the warning signs", True),
        ("i'm on the bridge. what is the point of this", False),  # hopelessness, not a question of fact
        ("¿Qué es la depresión?", True),
        ("mi novio dice que es porque me quiere", False),  # "que es" inside a sentence
        ("Was ist eine Depression?", True),
        ("was ist los mit mir", False),
        ("lange geschichte kurz: ich kann nicht mehr", False),
    ],
)
def test_an_informational_question_is_asked_not_mentioned(text: str, informational: bool) -> None:
    from warmline.safety.lexicon import default_lexicon
    from warmline.safety.normalise import clean

    # The rules' reading a turn uses: the English lexicon, the message's own, and its gloss.
    found, _language, _gloss = risk._read_rules(default_lexicon(), clean(text)[0], False, "en")
    assert found.informational is informational


# ---------------------------------------------------------------- a long post's windows

IDIOM_POST = (
    "honestly this commute is killing me, two hours each way on the northern line. "
    "work is fine i guess, my manager is decent and the team is nice to me. "
    "i got the rope from the hardware shop on saturday and i know which beam in the garage will hold"
)


def test_a_benign_reading_elsewhere_in_a_long_post_does_not_veto_its_riskiest_window() -> None:
    from dataclasses import replace

    from warmline.safety.lexicon import default_lexicon

    found = default_lexicon().scan(IDIOM_POST)
    assert found.benign_signals, "the premise: the idiom gives the post a benign reading"
    window = "i got the rope from the hardware shop on saturday and i know which beam in the garage will hold"
    score = replace(_score(suicidal=0.95), window=window)

    def combine(score: ClassifierScore, benign: bool):
        return risk._combine(
            found,
            score,
            found.level,
            found.categories,
            found.evidence(),
            text=IDIOM_POST,
            benign_in=lambda piece: benign,
        )[0]

    assert combine(score, benign=False).is_crisis  # the window that moved the score reads no idiom
    assert not combine(score, benign=True).is_crisis  # the benign reading is in that window
    assert not combine(replace(score, window=None), benign=False).is_crisis  # a whole-post score


# ---------------------------------------------------------------- recovery told as an anniversary


@pytest.mark.parametrize(
    ("text", "crisis"),
    [
        ("Today marks 10 years since I attempted suicide at 19.", False),
        ("Getting a tattoo over my old self-harm scars on Saturday!", False),
        ("I haven't cut in over five years and I'm proud of that", False),
        ("faz 6 anos hoje que eu saí da internação depois de tentar me matar.", False),
        ("i attempted suicide last night", True),
        ("I cut myself again, my old scars opened up", True),
        ("hoje eu quero me matar", True),
    ],
)
def test_an_anniversary_of_a_past_crisis_is_history(text: str, crisis: bool) -> None:
    assert assess(text, use_classifier=False).is_crisis is crisis
