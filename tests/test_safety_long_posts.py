"""Long posts are read a window at a time; the English encoder runs on ONNX Runtime; the other
encoder's agreeing score is a second opinion for the other-directed kinds (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest
from test_safety_indirect import _FixedScore

import warmline.safety.classifier as classifier_module
import warmline.safety.risk as risk
from warmline.safety import assess
from warmline.safety.classifier import (
    WINDOW_WEIGHT,
    WINDOW_WORDS,
    Encoder,
    default_classifier,
    message_windows,
)
from warmline.safety.risk import DISTRESS_THRESHOLD

# A long post about an ordinary week (written for this test), and one sentence of risk at its end,
# well past the encoder's 128-token limit.
ORDINARY_WEEK = (
    "okay so this week has been a lot. monday the boiler broke and the landlord took three days to "
    "send someone, so we were boiling kettles for showers like it was 1950. tuesday my manager moved "
    "the deadline up again and i stayed at the office till nine finishing slides nobody read. "
    "wednesday was my sister's birthday and i forgot to order the cake, so i ended up buying one from "
    "the petrol station and pretending it was a joke. thursday the car failed its inspection. friday "
    "i finally slept ten hours and woke up with a headache anyway. my flatmate keeps leaving dishes in "
    "the sink and i haven't had the energy to bring it up. the cat is fine at least."
)
BURIED_RISK = "i've decided i'm going to kill myself when the month is over."


def test_short_messages_have_no_windows():
    assert message_windows("i feel so alone tonight") == []
    assert message_windows(" ".join(["word"] * WINDOW_WORDS)) == []


def test_windows_cover_every_word_and_stay_short():
    text = ORDINARY_WEEK + " " + BURIED_RISK
    windows = message_windows(text)
    assert len(windows) > 3
    assert all(len(window.split()) <= WINDOW_WORDS for window in windows)
    covered = {word for window in windows for word in window.split()}
    assert set(text.split()) <= covered
    # The last sentence is read with no more than a window of context around it.
    assert any(BURIED_RISK in window for window in windows)


def test_a_run_on_post_without_full_stops_is_cut_into_overlapping_pieces():
    words = [f"w{i}" for i in range(100)]
    windows = message_windows(" ".join(words))
    assert all(len(window.split()) <= WINDOW_WORDS for window in windows)
    assert {word for window in windows for word in window.split()} == set(words)
    # Consecutive pieces overlap by half a window, so no phrase is split at a piece boundary only.
    firsts = [window.split()[0] for window in windows]
    assert firsts[:3] == ["w0", "w15", "w30"]


def test_a_risk_sentence_at_the_end_of_a_long_post_is_read(monkeypatch):
    classifier = default_classifier()
    post = ORDINARY_WEEK + " " + BURIED_RISK
    read = classifier.score(post)
    with_windows = read.risk
    assert read.window in message_windows(post) and BURIED_RISK in read.window  # the window that moved it
    alone = classifier.score(BURIED_RISK).risk  # the last sentence is one of the windows
    # Without the windows the whole post's embedding is all ordinary week (and truncated).
    monkeypatch.setattr(classifier_module, "message_windows", lambda text: [])
    classifier._scores.clear()
    whole = classifier.score(post).risk
    classifier._scores.clear()
    assert whole < DISTRESS_THRESHOLD <= with_windows
    # The riskiest window moves the post's score WINDOW_WEIGHT of the way to its own.
    assert with_windows >= whole + WINDOW_WEIGHT * (alone - whole) - 1e-6
    monkeypatch.undo()
    assert assess(post).level.is_crisis  # the lexicon reads the sentence wherever it is


def test_a_long_ordinary_post_stays_ordinary():
    assert not assess(ORDINARY_WEEK).level.is_crisis


def test_onnx_encoder_gives_torch_embeddings():
    onnx = Encoder(engine="onnx")
    torch = Encoder(engine="torch")
    assert (onnx.engine, torch.engine) == ("onnx", "torch")
    # Different lengths in one batch (padding) and a message past the 128-token limit.
    texts = ["ok", "i can't see a way out of this anymore", ORDINARY_WEEK, "ça va, merci"]
    assert np.abs(onnx.encode(texts) - torch.encode(texts)).max() < 1e-4
    assert onnx.name == torch.name  # the classifier's weights (keyed by the name) fit both


def test_a_failed_export_falls_back_to_torch(monkeypatch, tmp_path):
    import torch

    monkeypatch.setenv("WARMLINE_CACHE", str(tmp_path))  # no exported model to reuse

    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    encoder = Encoder(engine="onnx")
    assert encoder.engine == "torch"
    assert encoder.encode(["hello"]).shape == (1, 384)


def test_safety_engine_variable_chooses_torch(monkeypatch):
    monkeypatch.setenv("WARMLINE_SAFETY_ENGINE", "torch")
    assert Encoder().engine == "torch"


HARM = {"harm_to_others": 0.8}
NOTHING = {"distress": 0.1}
# No lexicon hit: an unusual way to say it, so only the classifiers can read it.
THREAT = "that man at number 12 will regret the day he met me, saturday he finds out"


@pytest.mark.parametrize(("other", "crisis"), [(HARM, True), (NOTHING, False)])
def test_the_other_encoder_agreeing_is_the_second_opinion(monkeypatch, other, crisis):
    # The second opinion alone (the English blend, which also reads e5, is tested below).
    monkeypatch.setattr(risk, "ENGLISH_BLEND", 0.0)
    first, second = _FixedScore(**HARM), _FixedScore(**other)
    monkeypatch.setattr(risk, "default_multilingual_classifier", lambda: second)
    assessment = assess(THREAT, classifier=first)
    assert assessment.level.is_crisis is crisis
    assert second.calls == 1
    if crisis:
        assert "harm_to_others" in assessment.categories
        assert any("second classifier harm_to_others" in line for line in assessment.evidence)


def test_no_second_opinion_for_violence_requests(monkeypatch):
    monkeypatch.setattr(risk, "ENGLISH_BLEND", 0.0)
    request = {"violence_request": 0.8}
    second = _FixedScore(**request)
    monkeypatch.setattr(risk, "default_multilingual_classifier", lambda: second)
    assessment = assess(
        "what is the quietest way to get rid of a pest like him", classifier=_FixedScore(**request)
    )
    assert not assessment.level.is_crisis
    assert second.calls == 0


def test_an_ordinary_english_message_asks_no_second_opinion(monkeypatch):
    def refuse():
        raise AssertionError("the multilingual classifier was asked for an ordinary English message")

    monkeypatch.setattr(risk, "default_multilingual_classifier", refuse)
    assert not assess("we watched a film and ate popcorn last night").level.is_crisis


@pytest.mark.parametrize(
    ("minilm", "e5", "crisis"),
    [
        ({"suicidal": 0.95}, {"none": 1.0}, False),  # MiniLM sure, e5 not: the blend is 0.475
        ({"suicidal": 0.6}, {"suicidal": 0.95}, True),  # MiniLM unsure, e5 sure: 0.775
        ({"suicidal": 0.3}, {"suicidal": 1.0}, False),  # under DISTRESS_THRESHOLD e5 is not asked
    ],
)
def test_an_english_score_is_blended_with_e5_where_minilm_sees_distress(monkeypatch, minilm, e5, crisis):
    first, second = _FixedScore(**minilm), _FixedScore(**e5)
    monkeypatch.setattr(risk, "ENGLISH_BLEND", 0.5)
    monkeypatch.setattr(risk, "default_multilingual_classifier", lambda: second)
    assessment = assess(THREAT, classifier=first)
    assert assessment.level.is_crisis is crisis
    assert second.calls == (0 if minilm["suicidal"] < risk.DISTRESS_THRESHOLD else 1)


# The classifier head: a hidden layer (the English default) or a logistic regression.


def _training_file(tmp_path, lines):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


SMALL = [
    '{"text": "i want to end my life tonight", "label": "suicidal"}',
    '{"text": "i wish i could disappear forever and never wake up", "label": "suicidal"}',
    '{"text": "everyone would be better off if i was gone", "label": "suicidal"}',
    '{"text": "what a lovely sunny day at the beach", "label": "none"}',
    '{"text": "we cooked pasta and watched a film", "label": "none"}',
    '{"text": "my train was late again this morning", "label": "none"}',
]


def test_an_mlp_head_is_a_hidden_layer_cached_under_its_own_name(tmp_path):
    from warmline.safety.classifier import RiskClassifier, load_weights

    encoder = default_classifier().encoder
    training = _training_file(tmp_path, SMALL)
    mlp = RiskClassifier(training, encoder=encoder, weights_dir=tmp_path / "cache", head="mlp")
    linear = RiskClassifier(training, encoder=encoder, weights_dir=tmp_path / "cache")
    assert mlp.weights_name != linear.weights_name
    assert [coef.shape for coef, _ in mlp._layers] == [(256, 384), (2, 256)]  # two classes: two rows
    assert [coef.shape for coef, _ in linear._layers] == [(2, 384)]
    risky, calm = mlp._score_normalised(["i don't want to be alive anymore", "the pasta was lovely"])
    assert risky.probabilities["suicidal"] > 0.5 > calm.probabilities["suicidal"]
    # What was cached is what scores: a second instance loads the same layers.
    classes, layers = load_weights(tmp_path / "cache" / mlp.weights_name)
    assert classes == mlp.classes
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(layers, mlp._layers, strict=True))


def test_weights_of_an_earlier_single_layer_file_still_load(tmp_path):
    from warmline.safety.classifier import load_weights

    path = tmp_path / "old.npz"
    np.savez(path, classes=np.array(["none", "suicidal"]), coef=np.ones((2, 384)), intercept=np.zeros(2))
    classes, layers = load_weights(path)
    assert classes == ["none", "suicidal"] and len(layers) == 1 and layers[0][0].shape == (2, 384)


def test_an_unknown_head_is_refused(tmp_path):
    from warmline.safety.classifier import RiskClassifier

    with pytest.raises(ValueError, match="unknown classifier head"):
        RiskClassifier(_training_file(tmp_path, SMALL), encoder=default_classifier().encoder, head="forest")
