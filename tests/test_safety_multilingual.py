"""The English gloss of non-English messages (warmline.safety.gloss) and the general English
constructions it relies on: what the gloss says, which indirect risk it catches in each
language, and which negated or idiomatic look-alikes it leaves alone.

The sentences are written for these tests, not taken from the evaluation suites.
"""

from __future__ import annotations

import pytest

from warmline.safety import RiskLevel, assess
from warmline.safety.gloss import glossary, load_glossary
from warmline.safety.language import LANGUAGES, gloss_message
from warmline.safety.lexicon import default_lexicon
from warmline.safety.risk import assess_text


def _assess(text: str):
    return assess([{"role": "user", "content": text}])


@pytest.mark.parametrize("language", [lang for lang in LANGUAGES if lang != "en"])
def test_every_packaged_glossary_loads(language):
    dictionary = glossary(language)
    assert dictionary is not None
    assert len(dictionary.phrases) > 250  # function words plus the risk vocabulary
    assert glossary("en") is None


@pytest.mark.parametrize(
    ("language", "text", "expected"),
    [
        # pronoun-dropping negation in English order
        ("es", "ya no quiero seguir", "i no longer want to go on"),
        ("pt", "não quero mais viver", "i no longer want to live"),
        # French ne ... plus around a verb and its pronoun
        ("fr", "je ne veux plus vivre comme ça", "i no longer want to live like this"),
        (
            "fr",
            "je voudrais m'endormir et ne plus jamais me réveiller",
            "i would like to fall asleep and never wake up",
        ),
        # German negation moved before the verb, verb-second inversion undone
        ("de", "ich will einfach nicht mehr aufwachen", "i no longer want to wake up"),
        ("de", "heute Nacht springe ich von der Brücke", "tonight i jump from the bridge"),
        # Italian non ... più
        ("it", "non ho più la forza di andare avanti", "i no longer have the strength to go on"),
        # time: five years ago / for two years
        ("es", "Hace cinco años lo intenté", "five years ago it i tried"),
        # tired of living, not "tired to live"
        ("pt", "to cansada de viver", "i am tired of living"),
        # someone else's verb with the writer as object is "kill me", never "kill myself"
        ("es", "mi novio quiere matarme", "my boyfriend wants to kill me"),
        ("fr", "il veut me tuer", "he wants to kill me"),
    ],
)
def test_gloss_reads_in_english_order(language, text, expected):
    assert glossary(language).gloss(text) == expected


def test_gloss_after_masks_never_sees_a_known_idiom():
    # The Spanish lexicon's mask blanks "me muero de hambre": the English rules never read it.
    glossed = gloss_message("es", "me muero de hambre, pedimos pizza?")
    assert "dying" not in glossed and "die" not in glossed


INDIRECT_RISK = [
    ("es", "ya no tengo fuerzas para seguir"),
    ("es", "todos estarían mejor si yo no existiera"),
    ("es", "no aguanto más esta vida"),
    ("fr", "je ne vois plus de sens à tout ça"),
    ("fr", "je n'ai plus la force de continuer"),
    ("fr", "je suis un fardeau pour ma famille"),
    ("de", "ich will einfach nicht mehr aufwachen"),
    ("de", "ich halte dieses Leben nicht mehr aus"),
    ("de", "ich sehe keinen Sinn mehr in allem"),
    ("pt", "não tenho mais forças para continuar"),
    ("pt", "sou um peso para a minha família"),
    ("pt", "não vejo mais sentido em nada"),
    ("it", "non ce la faccio più a vivere"),
    ("it", "non sopporto più questa vita"),
    ("it", "sono un peso per tutti"),
]


@pytest.mark.parametrize(("language", "text"), INDIRECT_RISK)
def test_indirect_risk_in_other_languages_is_a_crisis_in_that_language(language, text):
    result = _assess(text)
    assert result.level.is_crisis, result.evidence
    assert result.language == language
    assert not set(result.categories) & {"violence_request", "harm_to_others"}


LOOK_ALIKES = [
    # idioms and hyperbole
    ("es", "me muero de hambre, ¿pedimos pizza?"),
    ("fr", "je suis mort de rire"),
    ("de", "ich sterbe vor Langeweile"),
    ("pt", "tô morrendo de fome"),
    ("it", "muoio di fame"),
    # not going on with an ordinary thing
    ("es", "ya no quiero seguir con este trabajo, voy a buscar otro"),
    ("es", "no quiero seguir viendo esa serie, es aburridísima"),
    ("it", "non voglio più andare avanti con questo progetto"),
    # goodbyes to colleagues and old things
    ("es", "mañana me despido de mis compañeros porque me mudo a Madrid"),
    ("de", "morgen verabschiede ich mich von meinen Kollegen, ich wechsle die Firma"),
    ("pt", "vou me despedir dos colegas, mudo de emprego"),
    # everyday tiredness and dose questions
    ("es", "estoy cansado, me voy a dormir"),
    ("pt", "tô cansado, vou dormir"),
    ("it", "quante pastiglie di tachipirina posso prendere al giorno?"),
    # recovery milestones: the language's own lexicon reads the negation and the time
    ("it", "Sono tre anni che non mi taglio, sono fiera di me."),
    ("pt", "Faz três anos que não me corto, queria contar."),
]


@pytest.mark.parametrize(("language", "text"), LOOK_ALIKES)
def test_look_alikes_in_other_languages_are_not_a_crisis(language, text):
    result = _assess(text)
    assert not result.level.is_crisis, result.evidence


def test_gloss_hits_are_labelled_as_such_in_the_evidence():
    result = _assess("je n'ai plus la force de continuer")
    assert any("gloss:" in line for line in result.evidence)


def test_gloss_classifier_never_makes_a_crisis_alone():
    # Without any lexicon hit, the classifier does not read the gloss at all.
    turn = assess_text("hoy fui al mercado y compré tomates para la cena de mañana")
    assert turn.level is RiskLevel.NONE
    assert turn.risk_score is None


def test_a_threat_in_french_is_not_the_suicide_reply():
    result = _assess("il a dit qu'il va me tuer si je pars")
    assert "suicidal_ideation" not in result.categories


ENGLISH_CONSTRUCTIONS = [
    "i don't have the strength to go on anymore",
    "i have no energy left to keep living",
    "i'm just a burden to my family",
    "i can't stand this life anymore",
    "i can't bear being alive",
    "life has no meaning anymore",
    "i no longer see any point in anything",
    "i can't take it anymore, i just want to disappear",
]


@pytest.mark.parametrize("text", ENGLISH_CONSTRUCTIONS)
def test_general_english_constructions(text):
    assert _assess(text).level.is_crisis, text


ENGLISH_LOOK_ALIKES = [
    "i don't want to go on with this job",
    "i don't want to continue watching that show",
    "i want to disappear under my duvet all weekend",
    "tomorrow i say goodbye to my colleagues because i'm moving to madrid",
    "saying goodbye to my old car today",
]


@pytest.mark.parametrize("text", ENGLISH_LOOK_ALIKES)
def test_english_look_alikes(text):
    result = _assess(text)
    assert not result.level.is_crisis, result.evidence


def test_a_negated_burden_is_a_known_false_positive_of_the_classifiers():
    # Known false positive since the English blend (session 7): both encoders read the topic,
    # not the "not" (MiniLM 0.64, e5 0.85 suicidal; the blend 0.75). The lexicon, which reads
    # negation, finds nothing to count or discount. The blend was kept for what it measured on
    # the dev sets (benchmarks/RESULTS.md): false positives on long family messages 8.3% -> 1.7%.
    text = "i'm not a burden to my family"
    assert not assess(text, use_classifier=False).level.is_crisis
    result = _assess(text)
    assert result.level.is_crisis and all("classifier" in line for line in result.evidence), result.evidence


def test_no_strength_rule_leaves_ordinary_plans_alone():
    # The lexicon alone (the classifier is judged elsewhere): going on a run is not going on.
    lexicon = default_lexicon()
    assert not lexicon.scan("i have no energy to go on a run today").level.is_crisis
    assert lexicon.scan("i have no energy to go on").level.is_crisis


def test_goodbye_to_colleagues_for_the_last_time_still_counts():
    assert _assess(
        "i said goodbye to my colleagues for the last time, i won't be here next week"
    ).level.is_crisis


def test_glossary_file_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "xx.yaml"
    bad.write_text("phrases:\n  si: if\n  sí: yes\n", encoding="utf-8")
    with pytest.raises(ValueError, match="folds to 'si'"):
        load_glossary(bad, "xx")
    short = tmp_path / "yy.yaml"
    short.write_text("stems:\n  ab: something\n", encoding="utf-8")
    with pytest.raises(ValueError, match="shorter than"):
        load_glossary(short, "yy")


def test_bare_yaml_booleans_are_words(tmp_path):
    # YAML 1.1 reads no/on/y as booleans; the glossary reads every scalar as text.
    path = tmp_path / "zz.yaml"
    path.write_text("phrases:\n  no: not\n  'on': we\n  y: and\n", encoding="utf-8")
    loaded = load_glossary(path, "zz")
    assert loaded.gloss("no y on") == "not and we"
