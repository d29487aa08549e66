"""benchmarks/decoding_sweep.py: the scoring and the pick rule (the sweep's timings and figures
live in benchmarks/RESULTS.md); the sweep itself runs on a tiny finished run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import decoding_sweep as sweep  # noqa: E402


def row(name: str, **scores) -> dict:
    temperature, top_p, penalty = sweep.SETTINGS[name]
    base = {
        "name": name,
        "temperature": temperature,
        "top_p": top_p,
        "repetition_penalty": penalty,
        "eos_stop_rate": 1.0,
        "leak_rate": 0.0,
        "repetition_rate": 0.0,
        "semantic_similarity": 0.5,
        "similarity_per_seed": {0: 0.5},
    }
    return base | scores


def test_question_rate_reads_the_last_character():
    texts = ["How are you?", "Fine.", 'What did she say?"  ', "Is it? No."]
    assert sweep.question_rate(texts) == 0.5
    assert sweep.question_rate([]) is None


def test_pick_takes_the_most_similar_setting_that_stops_and_does_not_repeat():
    rows = [
        row("default", semantic_similarity=0.50),
        row("t0.5", semantic_similarity=0.56),
        row("t1.0", semantic_similarity=0.70, eos_stop_rate=0.90),  # stops too rarely
        row("r1.0", semantic_similarity=0.68, repetition_rate=0.05),  # repeats itself
        row("greedy", semantic_similarity=0.69, leak_rate=0.1),  # wrote a role marker
    ]
    assert sweep.pick(rows)["name"] == "t0.5"


def test_pick_prefers_the_default_within_the_similarity_tie():
    rows = [row("default", semantic_similarity=0.560), row("t0.5", semantic_similarity=0.563)]
    assert sweep.pick(rows)["name"] == "default"
    assert sweep.pick([row("t0.5", eos_stop_rate=0.5)]) is None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama_dir) -> Path:
    from warmline.recipe import load_recipe
    from warmline.training.train import train_recipe

    tmp = tmp_path_factory.mktemp("sweep-run")
    rows = [
        {"text": f"Human: I feel low today, day {i}.\nAssistant: That is hard. What helps you?"}
        for i in range(12)
    ]
    (tmp / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp / "r.yaml").write_text(
        f"name: tiny\nbase_model: {tiny_llama_dir}\noutput_dir: {tmp / 'runs'}\n"
        "system_prompt: Be kind.\n"
        f"stages:\n  - {{name: only, source: {tmp / 'd.jsonl'}, validation_fraction: 0.25, max_length: 64}}\n"
        "training: {micro_batch_size: 4, global_batch_size: 4, precision: fp32, save_steps: 100}\n"
    )
    train_recipe(load_recipe(tmp / "r.yaml"))
    return tmp / "runs" / "tiny"


def test_the_sweep_scores_every_prompt_with_every_seed(tiny_run):
    from warmline.serving.generator import Generator

    pairs = sweep.held_out_pairs(tiny_run, None)
    assert len(pairs) == 3 and all(stage == "only" and ref for stage, _, ref in pairs)
    generator = Generator.from_pretrained(str(tiny_run / "final"))
    sampled = sweep.run_setting(generator, pairs, "default", [0, 1], max_new_tokens=6)
    assert sampled["n"] == 6 and sampled["seeds"] == [0, 1]
    stops = [r["stop_reason"] for r in sampled["replies"]]
    assert sampled["eos_stop_rate"] == stops.count("eos") / 6
    assert all(r["new_tokens"] <= 6 for r in sampled["replies"])
    greedy = sweep.run_setting(generator, pairs, "greedy", [0, 1], max_new_tokens=6)
    assert greedy["n"] == 3 and greedy["seeds"] == [0]  # greedy decoding ignores the seed
    again = sweep.run_setting(generator, pairs, "greedy", [5], max_new_tokens=6)
    assert [r["text"] for r in again["replies"]] == [r["text"] for r in greedy["replies"]]
