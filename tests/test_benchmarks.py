"""The benchmarks' accounting (FLOPs, useful tokens, RESULT lines); the timings themselves are never asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _common  # noqa: E402
import train_throughput as tt  # noqa: E402

from warmline.data.tokens import tokenize_conversation, tokenize_prototype  # noqa: E402

ARCH = tt.Arch(layers=4, block_matmul_params=1000, head_params=500, attention_dim=8)
CONV = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "I feel lonely."},
    {"role": "assistant", "content": "That sounds hard. What has your week been like?"},
    {"role": "user", "content": "Work stress keeps me awake."},
    {"role": "assistant", "content": "Try putting your phone in another room tonight."},
]


def test_full_training_is_three_forward_passes_and_six_flops_per_weight():
    length = 64
    assert tt.train_flops(length, ARCH, None) == pytest.approx(3 * tt.forward_flops(length, ARCH))
    no_attention = tt.Arch(ARCH.layers, ARCH.block_matmul_params, ARCH.head_params, attention_dim=0)
    n_params = ARCH.layers * ARCH.block_matmul_params + ARCH.head_params
    assert tt.train_flops(length, no_attention, None) == pytest.approx(6 * n_params * length)


def test_frozen_lower_blocks_skip_their_backward_and_the_head_weight_gradient():
    length = 64
    every_block = tt.train_flops(length, ARCH, ARCH.layers)
    # Training every block with a frozen head saves only the head's weight gradient.
    assert every_block == pytest.approx(tt.train_flops(length, ARCH, None) - 2 * length * ARCH.head_params)
    assert tt.train_flops(length, ARCH, 1) < tt.train_flops(length, ARCH, 2) < every_block


def test_executed_flops_count_padding_and_the_full_score_matrix():
    exact = tt.train_flops(100, ARCH, None)
    executed = tt.executed_train_flops(100, 1, ARCH, None)
    assert executed > exact  # masked SDPA computes both halves of the scores
    assert tt.executed_train_flops(128, 2, ARCH, None) > 2 * tt.executed_train_flops(100, 1, ARCH, None)


def test_useful_tokens_count_reply_content_only(chatml_tokenizer):
    ours = tokenize_conversation(chatml_tokenizer, CONV, 512)
    eos = chatml_tokenizer.eos_token_id
    labelled = sum(label != -100 for label in ours.labels)
    assert tt.warmline_useful_tokens(ours.labels, eos) == labelled - 2  # one trained EOS per reply

    ids, useful = tt.prototype_useful_tokens(chatml_tokenizer, CONV, 512)
    assert ids == tokenize_prototype(chatml_tokenizer, CONV, 512).input_ids
    replies = [t["content"] for t in CONV if t["role"] == "assistant"]
    content_tokens = sum(len(chatml_tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies)
    assert abs(useful - content_tokens) <= 2 * len(replies)  # token boundaries differ in context
    assert useful < len(ids)  # the prompt text is trained on, but not useful


def test_prototype_useful_tokens_respect_truncation(chatml_tokenizer):
    first_user_tokens = len(chatml_tokenizer("Human: I feel lonely.", add_special_tokens=False)["input_ids"])
    ids, useful = tt.prototype_useful_tokens(chatml_tokenizer, CONV, first_user_tokens)
    assert len(ids) == first_user_tokens and useful == 0


def test_result_line_has_plain_numbers():
    line = _common.result_line(train_ratio=1.23456, ttft_ms=1234.5, name="x")
    assert line == "RESULT train_ratio=1.23 ttft_ms=1234 name=x"


def test_benchmark_probe_and_step_marks_ride_on_the_real_stage_trainer(tmp_path, tiny_llama_dir):
    """The benchmark times the trainer `warmline train` builds (no patched SFTTrainer): its probe
    sees every trained conversation and its step marks stop the Trainer after the last window."""
    from transformers import AutoConfig

    from warmline.recipe import load_recipe
    from warmline.training.train import build_stage_trainer, load_training_tokenizer, prepare_stages

    rows = [
        {"Context": f"I feel tired on day {i}.", "Response": f"Rest matters, day {i}."} for i in range(24)
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(
        f"name: bench\nbase_model: {tiny_llama_dir}\noutput_dir: {tmp_path / 'runs'}\nsystem_prompt: null\n"
        f"stages:\n  - {{name: s, source: {data}, max_length: 64}}\n"
        "training: {micro_batch_size: 1, global_batch_size: 2, precision: fp32, save_steps: 1000}\n",
        encoding="utf-8",
    )
    recipe = load_recipe(recipe_path)
    tokenizer = load_training_tokenizer(recipe)
    (stage,) = prepare_stages(recipe, tokenizer)
    lookup = {tuple(e.input_ids): (i, 1) for i, e in enumerate(stage.train)}
    probe = tt._BatchProbe(lookup, tt.Arch.from_config(AutoConfig.from_pretrained(tiny_llama_dir)), None)
    marks: list[dict] = []
    built = build_stage_trainer(
        recipe,
        stage,
        [stage],
        recipe.base_model,
        tokenizer,
        "fp32",
        recipe.run_dir,
        callbacks=(tt._step_marks(probe, 1, 2, marks),),
    )
    built.trainer.model.register_forward_pre_hook(probe, with_kwargs=True)
    built.trainer.train()
    assert [m["step"] for m in marks] == [1, 2, 3]  # 1 warm-up + 2 timed steps, then stopped
    assert probe.totals["micro_batches"] == 6 and probe.totals["unmatched"] == 0
    assert len(set(probe.conversations)) == 6  # each trained conversation found in the pool


@pytest.mark.slow  # starting `warmline serve` (imports, classifier) takes 30-90 s on 2 shared cores
def test_serve_load_runs_sessions_and_crisis_probes_against_a_real_server(tiny_llama_dir, tmp_path):
    """benchmarks/serve_load.py, small: 2 sessions for a few seconds against `warmline serve` on
    a tiny model. The figures are counted, never timed."""
    import serve_load

    out = tmp_path / "serve_load.json"
    figures = serve_load.main(
        [
            str(tiny_llama_dir),
            "--sessions",
            "2",
            "--duration-s",
            "4",
            "--max-requests",
            "6",
            "--max-new-tokens",
            "16",
            "--crisis-after-s",
            "0.5",
            "--crisis-every-s",
            "0.5",
            "--json",
            str(out),
        ]
    )
    assert figures["errors"] == 0, figures["error_samples"]
    assert 1 <= figures["replies"] <= 6 and figures["reply_s"]["n"] == figures["replies"]
    assert figures["crisis_reply_s"]["n"] >= 1
    assert figures["crisis_replies_with_resources"] == figures["crisis_reply_s"]["n"]
    assert figures["server_rss_mb"]["max"] > 0
    assert json.loads(out.read_text())["sessions"] == 2
