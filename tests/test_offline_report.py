"""The offline report shows the base model's sample replies beside every stage's, and evaluates
every held-out prompt unless told a limit (docs/offline-report/ is made this way)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import warmline.evaluation.evaluate as ev
from warmline.evaluation.report import render_comparison, render_report
from warmline.safety import SafetyGate


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama_dir) -> Path:
    from warmline.recipe import load_recipe
    from warmline.training.train import train_recipe

    tmp = tmp_path_factory.mktemp("report-run")
    rows = [
        {"text": f"Human: I feel low today, day {i}.\nAssistant: That is hard. What helps you?"}
        for i in range(12)
    ]
    (tmp / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp / "r.yaml").write_text(
        f"name: tiny\nbase_model: {tiny_llama_dir}\noutput_dir: {tmp / 'runs'}\nsystem_prompt: Be kind.\n"
        f"stages:\n  - {{name: only, source: {tmp / 'd.jsonl'}, validation_fraction: 0.25, max_length: 64}}\n"
        "training: {micro_batch_size: 4, global_batch_size: 4, precision: fp32, save_steps: 100}\n"
    )
    train_recipe(load_recipe(tmp / "r.yaml"))
    return tmp / "runs" / "tiny"


@pytest.fixture(scope="module")
def metrics(tiny_run) -> dict:
    settings = ev.EvalSettings(limit=None, max_new_tokens=4)
    return ev.evaluate_run(tiny_run, settings, gate=SafetyGate(use_classifier=False))


def test_every_held_out_prompt_is_evaluated_without_a_limit(metrics):
    assert metrics["settings"]["limit"] is None
    assert metrics["quality"]["only"]["n"] == 3 == len(metrics["replies"])  # 12 rows, 0.25 held out


def test_base_model_replies_are_recorded_and_shown_beside_the_stages(tiny_run, metrics, tmp_path):
    from warmline.serving.generator import Generator

    base = metrics["base_samples"]
    assert [s["prompt"] for s in base] == metrics["sample_prompts"]
    # They are the base model's own replies: the same prompt, settings and seed give the same text.
    generator = Generator.from_pretrained(metrics["base_model"])
    first = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": base[0]["prompt"]}]
    assert generator.generate(first, seed=0, max_new_tokens=4).text == base[0]["text"]
    report = render_report(metrics, tmp_path / "one").read_text().split("## Sample replies")[1]
    assert report.count("| 0 base |") == len(base) and report.count("| 1 only |") == len(base)
    comparison = render_comparison(metrics, {**metrics, "run": "other"}, tmp_path / "two").read_text()
    header = next(line for line in comparison.splitlines() if line.startswith("| prompt |"))
    assert header == f"| prompt | base: {metrics['base_model']} | A: tiny | B: other |"


def test_reports_without_base_replies_still_render(metrics, tmp_path):
    """metrics.json written before base replies were recorded re-renders as it did."""
    old = {k: v for k, v in metrics.items() if k != "base_samples"}
    report = render_report(old, tmp_path / "old").read_text().split("## Sample replies")[1]
    assert "| 0 base |" not in report and "| 1 only |" in report
