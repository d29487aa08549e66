"""The indirect-risk training file, the loader that trains on every classifier_train*.jsonl, and
the rules in risk.py that turn a classifier score into a level (issue 13).

The rules are driven through the shipped ``assess_text`` path with the real lexicon and a
classifier stand-in that returns constructed ``ClassifierScore`` values, so each threshold is
tested on the probabilities it reads, without loading the encoder.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

import warmline.safety.risk as risk_module
from warmline.safety.classifier import (
    CLASS_LEVELS,
    ClassifierScore,
    RiskClassifier,
    load_training_files,
    multilingual_training_paths,
    packaged_training_path,
    packaged_training_paths,
    training_cache_key,
)
from warmline.safety.levels import RiskLevel
from warmline.safety.risk import (
    CONFIDENT_THRESHOLD,
    RISK_THRESHOLD,
    SOFTENED_THRESHOLD,
    assess_text,
)

SAFETY = packaged_training_path().parent
INDIRECT = SAFETY / "classifier_train_indirect.jsonl"


def _words(text: str) -> set[str]:
    return set(re.findall(r"[\w']+", text.lower()))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- the training files


def test_every_packaged_training_file_is_trained_on() -> None:
    paths = packaged_training_paths()
    assert packaged_training_path() in paths and INDIRECT in paths
    texts, labels = load_training_files(paths)
    assert len(texts) == sum(len(_rows(path)) for path in paths)
    indirect = _rows(INDIRECT)
    start = sum(len(_rows(path)) for path in paths[: paths.index(INDIRECT)])  # files in name order
    assert texts[start : start + len(indirect)] == [row["text"] for row in indirect]


def test_training_files_are_found_by_name(tmp_path: Path) -> None:
    for name in ("classifier_train.jsonl", "classifier_train_extra.jsonl", "suite.jsonl"):
        (tmp_path / name).write_text(json.dumps({"text": "a b c d", "label": "none"}) + "\n")
    assert [p.name for p in packaged_training_paths(tmp_path)] == [
        "classifier_train.jsonl",
        "classifier_train_extra.jsonl",
    ]
    with pytest.raises(FileNotFoundError, match="classifier_train"):
        packaged_training_paths(tmp_path / "missing")


def test_cache_key_changes_when_any_training_file_changes(tmp_path: Path) -> None:
    first, second = tmp_path / "classifier_train.jsonl", tmp_path / "classifier_train_b.jsonl"
    first.write_text('{"text": "one two three four", "label": "none"}\n')
    second.write_text('{"text": "five six seven eight", "label": "distress"}\n')
    key = training_cache_key([first, second], "enc")
    assert training_cache_key([first, second], "enc") == key
    assert training_cache_key([first], "enc") != key  # a file removed
    assert training_cache_key([first, second], "other-encoder") != key
    second.write_text('{"text": "five six seven nine", "label": "distress"}\n')
    assert training_cache_key([first, second], "enc") != key  # the second file edited
    # The same lines split differently between the files is different training data order.
    both = first.read_text() + second.read_text()
    first.write_text(both)
    second.write_text("")
    assert training_cache_key([first, second], "enc") != key


class _HashEncoder:
    """Deterministic bag-of-words features: enough for the regression to learn the files' labels."""

    model_dir = Path("hash-encoder")
    name = "hash-encoder"

    def encode(self, texts: list[str]) -> np.ndarray:
        features = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _words(text):
                features[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        return features / np.maximum(norms, 1e-9)


def test_classifier_trains_on_both_files_and_retrains_when_one_changes(tmp_path: Path) -> None:
    base, extra = tmp_path / "classifier_train.jsonl", tmp_path / "classifier_train_indirect.jsonl"
    base.write_text(
        "".join(
            json.dumps({"text": t, "label": "none"}) + "\n"
            for t in ("what time is the bus", "cooking pasta tonight", "my cat is asleep", "new shoes today")
        )
        + "".join(
            json.dumps({"text": t, "label": "distress"}) + "\n"
            for t in ("so lonely this week", "work is crushing me", "crying at my desk")
        )
    )
    extra.write_text(
        "".join(
            json.dumps({"text": t, "label": "eating_disorder"}) + "\n"
            for t in ("day five of not eating", "purging after every meal", "under 400 calories again")
        )
    )
    weights = tmp_path / "cache"
    classifier = RiskClassifier([base, extra], encoder=_HashEncoder(), weights_dir=weights)
    assert set(classifier.classes) == {
        "none",
        "distress",
        "eating_disorder",
    }  # the second file's label is learnt
    assert classifier.score("purging after every meal").top_class == "eating_disorder"
    assert len(list(weights.glob("classifier-*.npz"))) == 1
    with extra.open("a") as handle:
        handle.write(json.dumps({"text": "fasting till friday", "label": "eating_disorder"}) + "\n")
    RiskClassifier([base, extra], encoder=_HashEncoder(), weights_dir=weights)
    assert len(list(weights.glob("classifier-*.npz"))) == 2  # a new key, so retrained


def test_indirect_file_is_labelled_sized_and_mostly_indirect() -> None:
    rows = _rows(INDIRECT)
    assert 700 <= len(rows) <= 1000
    assert {row["label"] for row in rows} <= set(CLASS_LEVELS)
    assert {row["label"] for row in rows} == set(CLASS_LEVELS)  # every class has examples
    negatives = [row for row in rows if not CLASS_LEVELS[row["label"]].is_crisis]
    assert len(negatives) >= 0.4 * len(rows)  # hard negatives: hyperbole, recovery, goodbyes at work
    assert all(4 <= len(row["text"].split()) <= 60 for row in rows)
    assert len({row["text"].lower() for row in rows}) == len(rows)
    explicit = re.compile(r"\b(?:suicid\w*|kill (?:myself|me)|die|dying)\b", re.IGNORECASE)
    risk = [row for row in rows if CLASS_LEVELS[row["label"]].is_crisis]
    assert sum(bool(explicit.search(row["text"])) for row in risk) < 0.1 * len(risk)


def _measuring_word_sets() -> list[set[str]]:
    """Word sets of every message and script turn in the measuring sets (the suites)."""
    measuring = [SAFETY / "suite.jsonl", SAFETY / "heldout.jsonl", SAFETY / "benign_relationships.jsonl"]
    measuring += sorted((SAFETY / "eval").glob("*.jsonl"))
    others: list[set[str]] = []
    for path in measuring:
        for row in _rows(path):
            turns = [row["text"]] if "text" in row else row.get("turns", [])
            for turn in turns:
                text = turn if isinstance(turn, str) else turn.get("text") or turn.get("content") or ""
                if _words(text):
                    others.append(_words(text))
    return others


@pytest.mark.parametrize("path", multilingual_training_paths(), ids=lambda path: path.name)
def test_training_file_is_distinct_from_every_measuring_set(path: Path) -> None:
    # The suites measure the classifiers; a near copy in their training data would inflate them.
    # Every training file, English and other languages (both classifiers train on the English ones).
    others = _measuring_word_sets()
    assert others
    index: dict[str, list[int]] = {}
    for number, other in enumerate(others):
        for word in other:
            index.setdefault(word, []).append(number)
    for row in _rows(path):
        mine = _words(row["text"])
        candidates = {number for word in mine for number in index.get(word, ())}
        overlap = max((len(mine & others[n]) / len(mine | others[n]) for n in candidates), default=0.0)
        assert overlap < 0.6, f"near copy of a measuring-set message: {row['text']!r}"


# ---------------------------------------------------------------- how a score becomes a level


class _FixedScore:
    """A classifier stand-in: every message gets the same constructed probabilities."""

    def __init__(self, **probabilities: float) -> None:
        rest = 1.0 - sum(probabilities.values())
        assert rest >= -1e-9
        self._score = ClassifierScore(
            {c: probabilities.get(c, 0.0) for c in CLASS_LEVELS}
            | {"none": probabilities.get("none", 0.0) + rest}
        )
        self.calls = 0

    def score(self, text: str) -> ClassifierScore:
        self.calls += 1
        return self._score


class _ByText:
    """A classifier stand-in that scores one message one way and every other text another."""

    def __init__(self, message: str, on_it: _FixedScore, otherwise: _FixedScore) -> None:
        self.message, self.on_it, self.otherwise = message, on_it, otherwise

    def score(self, text: str) -> ClassifierScore:
        return (self.on_it if text == self.message else self.otherwise).score(text)


def _turn(text: str, **probabilities: float):
    # The same stand-in for both encoders: the English blend and the second opinion read e5.
    fixed = _FixedScore(**probabilities)
    return assess_text(text, classifier=fixed, multilingual=fixed)  # type: ignore[arg-type]


# Messages the lexicon has no risk phrase for: the classifier's score alone decides.
HARM_TO_OTHERS = "found out what time my ex gets off work, i'll be waiting friday with my brothers blade"
INTRUSIVE = "scared to be left alone with my son, my head keeps showing me letting go of him on the stairs"
VIOLENCE = "what would make my neighbour's dog stop barking for good"


def test_the_messages_carry_no_lexicon_crisis() -> None:
    for text in (HARM_TO_OTHERS, INTRUSIVE, VIOLENCE):
        assert not assess_text(text, classifier=None).level.is_crisis, text


@pytest.mark.parametrize(
    ("text", "kind", "category"),
    [
        (HARM_TO_OTHERS, "harm_to_others", "harm_to_others"),
        (INTRUSIVE, "intrusive_thoughts", "intrusive_thoughts"),
    ],
)
def test_a_confident_other_directed_score_reaches_the_crisis_level(
    text: str, kind: str, category: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lexicon alone as the second opinion (the other encoder's is tested in
    # tests/test_safety_long_posts.py).
    monkeypatch.setattr(risk_module, "SECOND_OPINION", False)
    confident = _turn(text, **{kind: 0.8, "suicidal": 0.15})
    assert confident.level == RiskLevel.ELEVATED
    assert category in confident.categories and "suicidal_ideation" not in confident.categories
    # The same kind below CONFIDENT_THRESHOLD still needs the lexicon: resources only.
    share = (CONFIDENT_THRESHOLD + RISK_THRESHOLD) / 2
    borderline = _turn(text, **{kind: share})
    assert borderline.level == RiskLevel.DISTRESS


def test_a_confident_violence_request_alone_is_never_a_refusal() -> None:
    # XSTest's safe look-alikes ("how do I kill a python process") sit on this class.
    assert _turn(VIOLENCE, violence_request=0.97).level == RiskLevel.DISTRESS


def test_laughter_lowers_a_borderline_score_but_not_a_confident_one() -> None:
    serious = "if this zoom call runs another hour i'm going out the window of the 9th floor"
    laughing = serious + " haha"
    borderline = (RISK_THRESHOLD + SOFTENED_THRESHOLD) / 2
    assert _turn(serious, suicidal=borderline).level == RiskLevel.ELEVATED
    assert _turn(laughing, suicidal=borderline).level == RiskLevel.DISTRESS
    assert _turn("lmao " + serious, imminent=borderline).level == RiskLevel.DISTRESS
    assert _turn(laughing, suicidal=0.97).level.is_crisis  # "lol" does not hide a confident score


@pytest.mark.parametrize(
    "text",
    [
        "today is two years self harm free and i treated myself to brunch",
        "my dietitian says i've reached my target weight so we're moving to maintenance",
    ],
)
def test_a_recovery_framing_lowers_a_borderline_score(text: str) -> None:
    borderline = (RISK_THRESHOLD + SOFTENED_THRESHOLD) / 2
    assert not _turn(text, self_harm=borderline).level.is_crisis
    assert not _turn(text, eating_disorder=borderline).level.is_crisis


def test_a_confident_score_overrules_a_benign_reading_by_tense_only() -> None:
    fasting = "five days without food now and honestly i've never felt so in control"
    assert assess_text(fasting, classifier=None).level == RiskLevel.NONE  # the lexicon reads a past
    assert _turn(fasting, eating_disorder=0.9, distress=0.05).level == RiskLevel.ELEVATED
    assert "eating_disorder" in _turn(fasting, eating_disorder=0.9).categories
    assert _turn(fasting, eating_disorder=0.8).level == RiskLevel.NONE
    # A negated risk phrase keeps the lexicon's word however sure the classifier is.
    negated = "i would never kill myself, i just feel flat this week"
    assert not _turn(negated, suicidal=0.97).level.is_crisis
