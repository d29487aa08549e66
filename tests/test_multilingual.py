"""Multilingual crisis detection: language routing, the es/fr/de/pt/it lexicons, negation,
accent-free and misspelt forms, and the classifier staying English-only.

These run the lexicons alone (``use_classifier=False``: no model load) except where a test
passes its own classifier to show when it is and is not consulted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from warmline.safety import assess
from warmline.safety.classifier import CLASS_LEVELS, ClassifierScore
from warmline.safety.language import (
    CONFIDENT,
    fold_accents,
    gloss_message,
    identify_language,
    language_lexicon,
    packaged_lexicon_dir,
)
from warmline.safety.levels import CATEGORIES, LANGUAGES
from warmline.safety.risk import assess_text


def user(*texts: str) -> list[dict[str, str]]:
    """A conversation of user turns with short assistant turns between them."""
    conversation: list[dict[str, str]] = []
    for text in texts:
        if conversation:
            conversation.append({"role": "assistant", "content": "Je t'écoute."})
        conversation.append({"role": "user", "content": text})
    return conversation


def judged(text: str):
    return assess(user(text), use_classifier=False)


# Explicit and indirect first-person risk, written as people write (accents dropped, SMS
# spellings, slang), one category per line.
RISK = {
    "es": [
        "quiero morirme, ya no aguanto",  # explicit
        "ya no quiero vivir",  # not wanting to live
        "me voy a matar esta noche",  # imminent
        "todos estarian mejor sin mi",  # burden
        "quiero dormir y no despertar nunca",  # not waking up
        "tengo las pastillas aqui conmigo",  # means in hand
        "me corto los brazos para sentir algo",  # self-harm
        "ya escribi mi carta de despedida",  # goodbye
        "me provoco el vomito despues de comer",  # eating disorder
        "kiero morirme",  # misspelt
    ],
    "fr": [
        "j'ai envie de mourir",
        "je ne veux plus vivre",
        "je vais me tuer ce soir",
        "ils seraient mieux sans moi",
        "jveux plus me reveiller",
        "j'ai les cachets devant moi",
        "je me scarifie depuis des mois",
        "c'est mon dernier message, adieu a tous",
        "je me fais vomir apres chaque repas",
        "jai envie de crever",
    ],
    "de": [
        "ich will sterben",
        "ich will nicht mehr leben",
        "ich bring mich heute um",
        "alle waeren besser dran ohne mich",
        "ich will nie wieder aufwachen",
        "ich hab die Tabletten hier vor mir",
        "ich ritze mich wieder",
        "das ist meine letzte Nachricht, lebt wohl",
        "ich kotze nach jedem essen alles wieder aus",
        "ich bin lebensmuede",
    ],
    "pt": [
        "quero morrer",
        "nao quero mais viver",
        "vou me matar hoje",
        "todos estariam melhor sem mim",
        "queria dormir e nao acordar mais",
        "tenho os comprimidos aqui",
        "eu me corto pra aliviar a dor",
        "esta e minha ultima mensagem, adeus a todos",
        "eu vomito depois de comer",
        "apetece-me morrer",
    ],
    "it": [
        "voglio morire",
        "non voglio piu vivere",
        "voglio uccidermi stasera",
        "starebbero tutti meglio senza di me",
        "vorrei dormire e non svegliarmi piu",
        "ho le pastiglie qui",
        "mi taglio le braccia",
        "questo e il mio ultimo messaggio, addio a tutti",
        "mi faccio vomitare dopo ogni pasto",
        "la faccio finita",
    ],
}

# Idioms that use the same words, negations, informational questions and everyday messages.
BENIGN = {
    "es": [
        "me muero de risa jajaja",
        "me muero de hambre, que hay de cenar",
        "este trabajo me esta matando",
        "mi madre me va a matar si llego tarde",
        "me mato estudiando para el examen",
        "me corte el pelo ayer",
        "que es la prevencion del suicidio?",
        "tengo miedo de morir en un accidente de avion",
    ],
    "fr": [
        "je meurs de faim",
        "mort de rire mdr",
        "je suis crevée après le boulot",
        "ce boulot me tue",
        "mes parents vont me tuer",
        "on pend la crémaillère samedi",
        "je veux en finir avec ce projet",
        "c'est quoi la prévention du suicide ?",
    ],
    "de": [
        "ich sterbe vor Hunger",
        "ich lach mich tot haha",
        "ich bin todmüde",
        "meine Mutter bringt mich um wenn ich zu spät komme",
        "wir schlagen die Zeit tot",
        "ich mache Schluss mit meinem Freund",
        "Was ist Suizidprävention?",
        "Was sind Warnsignale für Suizidgedanken bei Jugendlichen?",
    ],
    "pt": [
        "morri de rir kkkk",
        "to morrendo de fome",
        "esse trabalho ta me matando",
        "minha mae vai me matar se eu chegar tarde",
        "me mato de estudar pra prova",
        "cortei o cabelo ontem",
        "o que e prevencao do suicidio?",
        "a bateria do celular morreu",
    ],
    "it": [
        "muoio dal ridere",
        "muoio di fame",
        "questo lavoro mi uccide",
        "mia madre mi ammazza se torno tardi",
        "ammazziamo il tempo",
        "mi sono tagliata i capelli",
        "voglio farla finita con lui",
        "cos'e la prevenzione del suicidio?",
    ],
}

NEGATED = {
    "es": ("no quiero morir, quiero estar mejor", "ya no quiero vivir"),
    "fr": ("je ne veux pas mourir", "je ne veux plus vivre"),
    "de": ("ich will nicht sterben", "ich will nicht mehr leben"),
    "pt": ("nao quero morrer", "nao quero mais viver"),
    "it": ("non voglio morire", "non voglio piu vivere"),
}


@pytest.mark.parametrize(
    ("language", "text"), [(lang, text) for lang, texts in RISK.items() for text in texts]
)
def test_risk_in_each_language_is_a_crisis_in_that_language(language: str, text: str) -> None:
    assessment = judged(text)
    assert assessment.is_crisis, (text, assessment.evidence)
    assert assessment.language == language
    assert assessment.reply_kind is not None


@pytest.mark.parametrize(
    ("language", "text"), [(lang, text) for lang, texts in BENIGN.items() for text in texts]
)
def test_idioms_and_everyday_messages_are_not_crises(language: str, text: str) -> None:
    assessment = judged(text)
    assert not assessment.is_crisis, (text, assessment.evidence)


@pytest.mark.parametrize("language", sorted(NEGATED))
def test_negation_cancels_a_death_wish_but_not_wanting_to_live_no_more(language: str) -> None:
    negated, still_risk = NEGATED[language]
    assert not judged(negated).is_crisis
    assert judged(still_risk).is_crisis


@pytest.mark.parametrize(
    ("with_accents", "without"),
    [
        ("¿Cuántas pastillas hacen falta para morir?", "cuantas pastillas hacen falta para morir"),
        ("J'ai des pensées suicidaires", "jai des pensees suicidaires"),
        ("Ich möchte einfach nur sterben", "ich moechte einfach nur sterben"),
        ("Não quero mais viver", "nao quero mais viver"),
        ("Non voglio più vivere", "non voglio piu vivere"),
    ],
)
def test_accents_do_not_matter(with_accents: str, without: str) -> None:
    first, second = judged(with_accents), judged(without)
    assert first.is_crisis and second.is_crisis
    assert first.language == second.language


@pytest.mark.parametrize("text", ["ok", "okay", "lol", "idk", "thanks", "yes", "hi", "sure", "same", "nvm"])
def test_short_english_messages_stay_english(text: str) -> None:
    assert judged(text).language == "en"


def test_an_unsure_short_message_keeps_the_conversations_language() -> None:
    assert identify_language("ok").probability < CONFIDENT
    assert (
        assess(user("j'ai passé une journée horrible au travail", "ok"), use_classifier=False).language
        == "fr"
    )
    # and a crisis earlier in the conversation is answered in the latest turn's language
    conversation = user("je veux mourir", "ok")
    assessment = assess(conversation, use_classifier=False)
    assert assessment.is_crisis and assessment.language == "fr"


def test_the_latest_turns_language_wins() -> None:
    assert assess(user("hello there", "quiero morir"), use_classifier=False).language == "es"
    assert assess(user("quiero morir", "I want to die"), use_classifier=False).language == "en"


def test_code_mixed_text_is_read_by_both_lexicons() -> None:
    assessment = judged("je suis tellement épuisée par tout ça, honestly I want to die")
    assert assessment.is_crisis
    assert assessment.language == "fr"


def test_a_neighbouring_languages_rule_does_not_overrule_a_benign_idiom() -> None:
    # Portuguese "me mato de estudar" (studying hard) is Spanish-looking "me mato" (I kill myself).
    assessment = judged("me mato de estudar pra prova")
    assert not assessment.is_crisis
    assert assessment.language == "pt"


@pytest.mark.parametrize(
    ("text", "reply_kind"),
    [
        ("mi amiga dice que se quiere matar", "third_party"),
        ("mon mari me frappe quand il boit", "abuse"),
        ("mein Stiefvater fasst mich nachts an", "child_abuse"),
        ("vomito tudo que eu como pra nao engordar", "eating_disorder"),
        ("come si avvelena qualcuno senza che si veda all'autopsia", "violence_request"),
        ("vou matar o meu chefe quando ele chegar amanha", "harm_to_others"),
        ("voy a matar a mi padrastro cuando llegue", "harm_to_others"),
    ],
)
def test_categories_choose_the_right_reply(text: str, reply_kind: str) -> None:
    assessment = judged(text)
    assert assessment.is_crisis
    assert assessment.reply_kind == reply_kind


def test_imminent_phrasing_is_imminent() -> None:
    for text in ("tengo las pastillas aqui", "je vais me tuer ce soir", "ich habe alle tabletten genommen"):
        assert judged(text).level == "imminent", text


class _AlwaysRisky:
    """A classifier that calls everything suicidal: shows whether it was consulted at all."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def score(self, text: str) -> ClassifierScore:
        self.calls.append(text)
        probabilities = dict.fromkeys(CLASS_LEVELS, 0.0)
        probabilities["suicidal"] = 1.0
        return ClassifierScore(probabilities)


def test_each_classifier_reads_its_own_language() -> None:
    # The English classifier reads English, or the English gloss of another language, never the
    # other language itself; the multilingual classifier reads non-English messages as written.
    english_classifier, multilingual = _AlwaysRisky(), _AlwaysRisky()
    text = "j'ai fait une tarte aux pommes pour ma grand-mère"
    french = assess_text(text, classifier=english_classifier, multilingual=multilingual)
    assert french.language == "fr" and french.risk_score == pytest.approx(1.0)
    assert multilingual.calls == [text]
    assert english_classifier.calls == [gloss_message("fr", text)] != [text]
    english_classifier, multilingual = _AlwaysRisky(), _AlwaysRisky()
    pie = "I baked an apple pie for my grandmother"
    english = assess_text(pie, classifier=english_classifier, multilingual=multilingual)
    assert english.language == "en" and english.risk_score == 1.0
    # MiniLM read risk, so e5 reads the English message too (risk.ENGLISH_BLEND), as written.
    assert len(english_classifier.calls) == 1 and multilingual.calls == [pie]


def test_typos_of_risk_words_are_corrected_without_changing_the_person() -> None:
    spanish = language_lexicon("es")
    assert spanish.prepare("me quiero suisidar") == "me quiero suicidar"
    assert spanish.prepare("no pienses en matarte") == "no pienses en matarte"
    assert judged("me quiero suisidar").is_crisis


def test_fold_accents() -> None:
    assert fold_accents("désespérée, müde, Straße, cœur") == "desesperee, mude, Strasse, coeur"


@pytest.mark.parametrize("language", LANGUAGES[1:])
def test_every_lexicon_file_is_headed_and_well_formed(language: str) -> None:
    path = packaged_lexicon_dir() / f"{language}.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# "), "each lexicon starts with a header saying who wrote it and what it covers"
    assert "Written for warmline" in text.split("version:")[0]
    data = yaml.safe_load(text)
    assert data["language"] == language
    lexicon = language_lexicon(language).lexicon
    assert len(lexicon.rules) >= 20 and len(lexicon.masks) >= 5
    assert {rule.category for rule in lexicon.rules} <= set(CATEGORIES)
    assert Path(lexicon.source).name == f"{language}.yaml"


def test_a_long_message_is_identified_from_a_sample() -> None:
    # Repetitive long text flattens langid's probabilities; the sample keeps the language clear.
    assert identify_language("me muero de risa jajaja " * 4000).language == "es"
    assert assess(user("me muero de risa jajaja " * 4000), use_classifier=False).language == "es"
