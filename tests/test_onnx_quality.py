"""The ONNX quality gate (serving/onnx_quality.py): its arithmetic on constructed logits with known
answers, and the real gate on a tiny Llama built with onnxruntime-genai's builder."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import _save_tiny

from warmline.data.tokens import IGNORE_INDEX
from warmline.serving import onnx_quality
from warmline.serving.onnx_quality import (
    MAX_LOSS_DELTA,
    MIN_TOP1_AGREEMENT,
    QualityDataError,
    TokenScores,
    compare_scores,
    passes_gate,
    score_reply_tokens,
    score_targets,
)

# ---------------------------------------------------------------------------------------------
# Arithmetic


def test_uniform_logits_cost_log_vocab_and_peaked_logits_cost_nothing():
    vocab = 7
    uniform = score_targets(np.zeros((3, vocab)), np.array([0, 3, 6]))
    assert np.allclose(uniform.nll, math.log(vocab))
    peaked = np.full((2, vocab), -1e4)
    peaked[0, 2] = peaked[1, 5] = 1e4  # huge logits: a naive softmax would overflow
    scores = score_targets(peaked, np.array([2, 5]))
    assert np.allclose(scores.nll, 0.0) and scores.top1.tolist() == [2, 5]


def test_loss_matches_torch_cross_entropy():
    import torch

    rng = np.random.default_rng(0)
    logits, targets = rng.normal(size=(5, 11)) * 3, rng.integers(0, 11, size=5)
    expected = torch.nn.functional.cross_entropy(
        torch.tensor(logits), torch.tensor(targets), reduction="none"
    ).numpy()
    assert np.allclose(score_targets(logits, targets).nll, expected)


def test_only_reply_tokens_count_and_position_t_predicts_token_t_plus_1():
    vocab = 5
    # Tokens 0..5; labels mark tokens 3 and 4 as the reply (predicted at positions 2 and 3).
    labels = [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 1, 4, IGNORE_INDEX]
    logits = np.full((6, vocab), 50.0)  # prompt positions: garbage that would dominate if counted
    logits[2] = np.log(np.array([0.1, 0.6, 0.1, 0.1, 0.1]))  # predicts token 3 (=1) with p 0.6
    logits[3] = np.log(np.array([0.2, 0.2, 0.2, 0.2, 0.2]))  # predicts token 4 (=4) with p 0.2
    scores = score_reply_tokens(logits, labels)
    assert scores.nll.size == 2
    assert np.allclose(scores.nll, [-math.log(0.6), -math.log(0.2)])
    assert scores.top1[0] == 1
    # Logits cut to the predicting positions (seq - 1 rows) score the same.
    assert np.allclose(score_reply_tokens(logits[:-1], labels).nll, scores.nll)


def test_compare_scores_known_delta_and_agreement():
    reference = TokenScores(np.full(100, 2.0), np.arange(100))
    top1 = np.arange(100)
    top1[:4] = -1  # 4 of 100 disagree
    candidate = TokenScores(np.full(100, 2.015), top1)
    verdict = compare_scores(reference, candidate, quant="int8", conversations=3, data="test")
    assert verdict.loss_fp32 == pytest.approx(2.0) and verdict.loss == pytest.approx(2.015)
    assert verdict.loss_delta == pytest.approx(0.015)
    assert verdict.top1_agreement == pytest.approx(0.96)
    assert verdict.reply_tokens == 100 and verdict.conversations == 3
    assert not verdict.ok  # loss is within +0.02, but 96% agreement is below 97%
    top1[3] = 3  # 97 of 100 agree now
    assert compare_scores(
        reference, TokenScores(candidate.nll, top1), quant="int8", conversations=3, data="t"
    ).ok


def test_gate_boundaries_are_inclusive_and_nan_fails():
    assert MAX_LOSS_DELTA == 0.02 and MIN_TOP1_AGREEMENT == 0.97  # set before measuring (issue 15)
    assert passes_gate(0.02, 0.97)
    assert passes_gate(-0.5, 1.0)  # a lower loss than fp32 is fine
    assert not passes_gate(0.0201, 0.99)
    assert not passes_gate(0.0, 0.9699)
    assert not passes_gate(float("nan"), 1.0)
    assert not passes_gate(0.0, float("nan"))


def test_compare_refuses_different_tokens_and_no_tokens():
    a = TokenScores(np.zeros(3), np.zeros(3, dtype=np.int64))
    b = TokenScores(np.zeros(4), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="different tokens"):
        compare_scores(a, b, quant="x", conversations=1, data="t")
    empty = TokenScores.concat([])
    with pytest.raises(QualityDataError, match="no reply tokens"):
        compare_scores(empty, empty, quant="x", conversations=0, data="t")


# ---------------------------------------------------------------------------------------------
# The real gate on a tiny Llama


@pytest.fixture(scope="module")
def tiny_llama64_dir(tmp_path_factory, chatml_tokenizer):
    """A 2-layer Llama with hidden size 64 and head size 16 (ONNX Runtime's CPU attention needs a
    multiple of 16; conftest's tiny Llama has 8)."""
    folder = tmp_path_factory.mktemp("run") / "final"
    return _save_tiny("llama", chatml_tokenizer, folder, hidden_size=64, intermediate_size=128)


def test_validation_examples_prefer_the_models_own_recipe(tmp_path, tiny_llama64_dir):
    model = tmp_path / "final"
    shutil.copytree(tiny_llama64_dir, model)
    data = tmp_path / "chats.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": f"Human: I feel tired today, number {i}.\nAssistant: That sounds hard, {i}."})
            + "\n"
            for i in range(20)
        )
    )
    (model / "recipe.yaml").write_text(
        "name: mine\nbase_model: packaged:smollm2-135m-instruct\nstages:\n"
        f"  - name: chats\n    source: {data}\n    format: human_assistant\n    validation_fraction: 0.25\n"
    )
    examples, source = onnx_quality.validation_examples(model)
    assert str(model) in source
    assert len(examples) == 5  # a quarter of 20 conversations
    for ex in examples:
        labelled = [t for t in ex.labels if t != IGNORE_INDEX]
        assert labelled and len(labelled) < len(ex.input_ids)  # the reply is scored, the prompt is not


@pytest.mark.slow
def test_a_model_without_a_recipe_is_judged_on_the_offline_recipes_validation_split(tiny_llama64_dir):
    from warmline.recipe import load_recipe

    examples, source = onnx_quality.validation_examples(tiny_llama64_dir, max_per_stage=1)
    assert "offline" in source
    assert len(examples) == len(load_recipe(onnx_quality.OFFLINE_RECIPE).stages)  # one from each stage


@pytest.mark.slow
def test_fp32_onnx_build_passes_with_no_loss_change_and_the_verdict_is_cached(tiny_llama64_dir, monkeypatch):
    """fp32 ONNX of a tiny Llama: delta ~0, agreement 100%; the second call reads quality.json."""
    from warmline.serving.onnx_build import build_onnx

    onnx_dir = build_onnx(tiny_llama64_dir, "fp32")
    verdict = onnx_quality.quality_verdict(tiny_llama64_dir, "fp32", max_per_stage=2, refresh=True)
    assert verdict.ok
    assert abs(verdict.loss_delta) < 1e-4
    assert verdict.top1_agreement == 1.0
    assert verdict.reply_tokens > 100 and verdict.conversations >= 3
    saved = json.loads((onnx_dir / onnx_quality.VERDICT_FILE).read_text())
    assert saved["verdict"]["loss_delta"] == verdict.loss_delta

    def no_recompute(*args, **kwargs):
        raise AssertionError("the cached verdict should have been used")

    monkeypatch.setattr(onnx_quality, "onnx_scores", no_recompute)
    assert onnx_quality.quality_verdict(tiny_llama64_dir, "fp32", max_per_stage=2) == verdict
    # The same model named by a relative path (a benchmark) and an absolute one (the chat): one verdict.
    monkeypatch.chdir(tiny_llama64_dir.parent)
    relative = Path(tiny_llama64_dir.name)
    assert onnx_quality.quality_verdict(relative, "fp32", onnx_dir=onnx_dir, max_per_stage=2) == verdict
    # Other settings are another question: not answered from the cache.
    with pytest.raises(AssertionError, match="cached verdict"):
        onnx_quality.quality_verdict(tiny_llama64_dir, "fp32", max_per_stage=1)


@pytest.mark.slow
def test_a_build_that_predicts_differently_fails_the_gate(tiny_llama64_dir, tmp_path):
    """The gate can fail: an fp32 build of different weights (another seed) judged as this model."""
    import torch
    from transformers import AutoModelForCausalLM

    from warmline.serving.onnx_build import build_onnx

    other = tmp_path / "other"
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama64_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(other)
    for f in tiny_llama64_dir.iterdir():  # the tokenizer's files
        if f.is_file() and not (other / f.name).exists():
            shutil.copy(f, other)
    verdict = onnx_quality.quality_verdict(
        tiny_llama64_dir, "fp32", onnx_dir=build_onnx(other, "fp32"), max_per_stage=2, refresh=True
    )
    assert not verdict.ok
    assert verdict.top1_agreement < MIN_TOP1_AGREEMENT or verdict.loss_delta > MAX_LOSS_DELTA
