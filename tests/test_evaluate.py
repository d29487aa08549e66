"""`warmline eval`: the forgetting matrix, text metrics on fixed strings, the report and --compare,
on a 2-stage run of a tiny Llama trained once for the module."""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

import warmline.evaluation.evaluate as ev
from warmline.cli import app
from warmline.data.cleaning import prepare_stage
from warmline.data.tokens import tokenize_conversation
from warmline.recipe import load_recipe
from warmline.safety import SafetyGate

# Two held-out prompts per stage (and two crisis prompts), replies of at most 8 tokens.
QUICK = ("--limit", "2", "--max-new-tokens", "8")
# The safety gate on its lexicon alone: the embedding classifier is tested in test_safety.py, and
# training it on first use would double this file's run time.
LEXICON_ONLY = functools.partial(SafetyGate, use_classifier=False)
FEELINGS = ["lonely", "tired", "anxious", "sad", "stressed", "angry", "lost", "numb"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_stage_data(folder: Path, name: str, n: int, offset: int) -> Path:
    rows = [
        {
            "text": f"Human: I feel {FEELINGS[(i + offset) % 8]} today, day {i + offset}.\n"
            f"Assistant: Feeling {FEELINGS[(i + offset) % 8]} is hard. What helps you?"
        }
        for i in range(n)
    ]
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    """A finished 2-stage run (alpha, beta) of the tiny Llama, evaluated once into run/report/."""
    from warmline.training.train import train_recipe

    tmp = tmp_path_factory.mktemp("eval-run")
    a, b = _write_stage_data(tmp, "alpha", 16, 0), _write_stage_data(tmp, "beta", 16, 100)
    stage = "validation_fraction: 0.25, epochs: 2, learning_rate: 3.0e-3, max_length: 64"
    (tmp / "tiny.yaml").write_text(
        f"name: tiny\nbase_model: {tiny_llama_dir}\noutput_dir: {tmp / 'runs'}\nsystem_prompt: Be kind.\n"
        "stages:\n"
        f"  - {{name: alpha, source: {a}, {stage}}}\n  - {{name: beta, source: {b}, {stage}}}\n"
        "training: {micro_batch_size: 4, global_batch_size: 4, save_steps: 100, logging_steps: 1, "
        "precision: fp32, warmup_ratio: 0.0}\n"
    )
    train_recipe(load_recipe(tmp / "tiny.yaml"))
    run = tmp / "runs" / "tiny"
    result = eval_cli(str(run), *QUICK)
    assert result.stdout.strip() == str(run / "report" / "report.md")
    return run


def eval_cli(*args: str):
    """`warmline eval ARGS`, with the lexicon-only safety gate; fails the test unless it succeeds."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("warmline.safety.SafetyGate", LEXICON_ONLY)
        result = CliRunner().invoke(app, ["eval", *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def metrics(run_dir) -> dict:
    return json.loads((run_dir / "report" / "metrics.json").read_text())


# --- the forgetting matrix -------------------------------------------------------------------


def test_forgetting_matrix_is_stages_plus_one_by_stages(metrics):
    forgetting = metrics["forgetting"]
    assert forgetting["rows"] == ["base", "alpha", "beta"] and forgetting["columns"] == ["alpha", "beta"]
    for key in ("loss", "perplexity"):
        assert [len(row) for row in forgetting[key]] == [2, 2, 2]
    assert forgetting["source"] == "training"


def test_perplexity_is_exp_of_the_mean_token_loss(run_dir, metrics):
    """Recomputed here, one example at a time with plain transformers: exp(sum of token losses / tokens)."""
    recipe = load_recipe(run_dir / "final" / "recipe.yaml")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final")
    model = AutoModelForCausalLM.from_pretrained(run_dir / "stage-02-beta").eval()
    for column, cfg in enumerate(recipe.stages):
        validation = prepare_stage(
            cfg, seed=recipe.training.seed, system_prompt=recipe.system_prompt
        ).validation
        total, count = 0.0, 0
        with torch.no_grad():
            for conv in validation:
                ex = tokenize_conversation(tokenizer, conv, cfg.max_length)
                logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1]
                labels = torch.tensor(ex.labels[1:])
                total += torch.nn.functional.cross_entropy(
                    logits, labels, ignore_index=-100, reduction="sum"
                ).item()
                count += int((labels != -100).sum())
        assert metrics["forgetting"]["tokens"][column] == count
        assert metrics["forgetting"]["perplexity"][2][column] == pytest.approx(
            math.exp(total / count), rel=1e-4
        )


def test_backward_transfer_by_hand():
    matrix = ev.ForgettingMatrix(
        rows=["base", "a", "b", "c"],
        columns=["a", "b", "c"],
        tokens=[1, 1, 1],
        source="test",
        loss=[[3.0, 3.0, 3.0], [1.0, 2.5, 2.9], [1.5, 1.0, 2.8], [2.0, 1.2, 0.9]],
        perplexity=[
            [math.exp(v) for v in row]
            for row in [[3.0, 3.0, 3.0], [1.0, 2.5, 2.9], [1.5, 1.0, 2.8], [2.0, 1.2, 0.9]]
        ],
    )
    result = ev.backward_transfer(matrix)
    assert result["bwt_loss"] == pytest.approx(((2.0 - 1.0) + (1.2 - 1.0)) / 2)
    assert result["per_stage"]["a"]["forgetting_loss"] == pytest.approx(2.0 - 1.0)  # best after stage a or b
    assert result["per_stage"]["b"]["forgetting_loss"] == pytest.approx(1.2 - 1.0)
    assert result["per_stage"]["c"]["forgetting_loss"] is None


# --- text metrics on fixed strings -----------------------------------------------------------


def test_distinct_n_and_repetition_rate():
    assert ev.distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert ev.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert ev.distinct_n(["I feel sad.", "I feel fine"], 1) == pytest.approx(4 / 6)  # pooled, lower-cased
    assert ev.distinct_n(["one"], 2) is None
    assert ev.repetition_rate("i feel sad i feel sad") == pytest.approx(1 / 4)  # 4 trigrams, 1 repeats
    assert ev.repetition_rate("that sounds really hard today") == 0.0
    assert ev.repetition_rate("too short") == 0.0


def test_reference_metrics_for_identical_and_disjoint_pairs():
    reference = "It sounds like you have been carrying a lot on your own lately."
    assert ev.rouge_l([reference], [reference]) == pytest.approx(1.0)
    assert ev.bleu([reference], [reference]) == pytest.approx(100.0)
    assert ev.chrf([reference], [reference]) == pytest.approx(100.0)
    disjoint = "zzz qqq xxx 123 999 0808"  # no shared word and no shared character
    assert ev.rouge_l([disjoint], [reference]) == 0.0
    assert ev.bleu([disjoint], [reference]) == 0.0
    assert ev.chrf([disjoint], [reference]) == 0.0
    assert ev.rouge_l([], []) is None


def test_role_marker_leaks_and_eos_stop_rate():
    for leak in (
        "Sure.\nHuman: and then",
        "ok User: hi",
        "text <|im_start|>assistant",
        "\nassistant: hi",
        "fine [INST] more",
        "### Response: x",
    ):
        assert ev.has_role_marker(leak), leak
    for clean in (
        "I am here to help you.",
        "The user of this app: you.",
        "a human being",
        "As an assistant, I",
    ):
        assert not ev.has_role_marker(clean), clean
    assert ev.eos_stop_rate(["eos", "max_new_tokens", "stop_string", "eos"]) == 0.5
    assert ev.eos_stop_rate([]) is None
    cut = ev.Reply("s", [], "ref", "Fine.", "stop_string", 3)  # the generator cut a "Human:" off
    assert cut.leaked and not ev.Reply("s", [], "ref", "Fine.", "eos", 3).leaked


def test_semantic_similarity_uses_the_packaged_encoder():
    same = ev.semantic_similarity(["I feel lonely at night."], ["I feel lonely at night."])
    other = ev.semantic_similarity(["I feel lonely at night."], ["The invoice is due on Friday."])
    assert same == pytest.approx(1.0, abs=1e-4) and other < 0.5


def test_crisis_prompts_are_risk_messages_spread_over_categories():
    prompts = ev.crisis_prompts(5)
    assert len(prompts) == 5 and len({p.category for p in prompts}) == 5
    assert all(p.label == "risk" and p.level in ("elevated", "imminent") for p in ev.crisis_prompts(None))


# --- the report ------------------------------------------------------------------------------


def test_reply_quality_and_safety_were_measured(metrics, run_dir):
    for stage in ("alpha", "beta", "all"):
        q = metrics["quality"][stage]
        assert q["n"] == (2 if stage != "all" else 4)
        assert sum(q["stop_reasons"].values()) == q["n"]
        for key in ("rouge_l", "eos_stop_rate", "leak_rate", "repetition_rate", "semantic_similarity"):
            assert 0.0 <= q[key] <= 1.0 + 1e-6, key
    replies = [json.loads(line) for line in (run_dir / "report" / "replies.jsonl").read_text().splitlines()]
    assert len(replies) == 4 and all(r["prompt"][-1]["role"] == "user" and r["reference"] for r in replies)
    assert all(r["prompt"][0] == {"role": "system", "content": "Be kind."} for r in replies)
    gate = LEXICON_ONLY()
    flagged = [
        gate.check_input([{"role": "user", "content": p.text}]).is_crisis for p in ev.crisis_prompts(2)
    ]
    assert metrics["safety"]["prompts"] == 2
    assert metrics["safety"]["crisis_reply_rate"] == sum(flagged) / 2 and len(
        metrics["safety"]["missed"]
    ) == 2 - sum(flagged)
    assert set(metrics["samples"]) == {"alpha", "beta"}
    assert "I feel lonely." in metrics["sample_prompts"]
    curves = {c["stage"]: c for c in metrics["curves"]}
    assert curves["beta"]["start_epoch"] == 2.0 and curves["alpha"]["train"]
    # Before the stage, after its first epoch, at its end.
    assert [x for x, _ in curves["beta"]["validation"]] == pytest.approx([2.0, 3.0, 4.0])


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 5000, path


def test_report_renders_with_its_plots(run_dir):
    report = (run_dir / "report" / "report.md").read_text()
    for png in ("forgetting.png", "training_curves.png"):
        _assert_png(run_dir / "report" / png)
        assert f"]({png})" in report
    for heading in (
        "## Forgetting",
        "## Training curves",
        "## Reply quality",
        "## Safety",
        "## Sample replies",
    ):
        assert heading in report
    assert "BWT" in report and "I feel lonely." in report
    assert "NaN" not in (run_dir / "report" / "metrics.json").read_text()


def test_missing_forgetting_rows_are_recomputed_as_training_computed_them(run_dir, metrics):
    recipe = load_recipe(run_dir / "final" / "recipe.yaml")
    data = [
        prepare_stage(s, seed=recipe.training.seed, system_prompt=recipe.system_prompt) for s in recipe.stages
    ]
    rows = ev.recompute_forgetting(run_dir, recipe, data, {"beta": str(run_dir / "stage-02-beta")}, "fp32")
    trained = json.loads((run_dir / "forgetting.json").read_text())["beta"]
    for stage in ("alpha", "beta"):
        assert rows["beta"][stage]["tokens"] == trained[stage]["tokens"]
        assert rows["beta"][stage]["loss"] == pytest.approx(trained[stage]["loss"], rel=1e-5)


def test_compare_renders(run_dir, metrics, tmp_path, caplog):
    """Run B is a copy of the run (report included): both evaluations are reused, nothing is generated."""
    other = tmp_path / "tiny-copy"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("report-compare-*"))
    with caplog.at_level("INFO", logger="warmline.evaluation.evaluate"):
        result = eval_cli("--compare", str(run_dir), str(other), *QUICK)
    assert caplog.text.count("reusing") == 2
    report = run_dir / "report-compare-tiny-copy" / "report.md"
    assert result.stdout.strip() == str(report)
    text = report.read_text()
    for png in ("compare_forgetting.png", "compare.png"):
        _assert_png(report.parent / png)
        assert f"]({png})" in text
    for heading in (
        "## Forgetting",
        "## Final validation perplexity per stage",
        "## Reply quality",
        "## EOS stop rate and role-marker leaks",
        "## Safety",
        "## Sample replies (final models)",
    ):
        assert heading in text
    assert "A: tiny" in text and "B: tiny-copy" in text and "I feel lonely." in text
    pair = json.loads((report.parent / "metrics.json").read_text())
    assert pair["a"]["forgetting"] == pair["b"]["forgetting"] == metrics["forgetting"]


def test_cli_eval_usage_errors(tmp_path):
    runner = CliRunner()
    wrong = runner.invoke(app, ["eval", "--compare", str(tmp_path)])
    assert wrong.exit_code == 2 and "expected --compare RUN_A RUN_B" in wrong.output
    missing = runner.invoke(app, ["eval", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "a finished run folder" in missing.stderr


def test_safety_evaluation_runs_the_serving_gate_flow(tiny_llama_dir):
    """Evaluation passes its gate per call to the serving generator (no copy, no swapped gate):
    every crisis prompt goes through the same turn as chat and serve."""
    from warmline.serving.generator import Generator

    gate = LEXICON_ONLY()
    steps: list[str] = []
    for name in ("check_input", "reply_for", "screen", "note_for"):
        method = getattr(gate, name)
        setattr(gate, name, lambda *a, _m=method, _n=name, **k: steps.append(_n) or _m(*a, **k))
    generator = Generator.from_pretrained(str(tiny_llama_dir))
    forwards = []
    hook = generator.model.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        safety = ev.evaluate_safety(generator, gate, ev.EvalSettings(limit=3, max_new_tokens=4))
    finally:
        hook.remove()
    assert generator.gate is None  # the gate was never attached to the generator
    crisis = safety["stop_reasons"].get("crisis", 0)
    assert safety["prompts"] == 3 and steps.count("check_input") == 3 and steps.count("reply_for") == 3
    turns = "|".join(steps).replace("|check_input", "\ncheck_input").splitlines()
    assert sum(t == "check_input|reply_for" for t in turns) == crisis  # the crisis ones: nothing else ran
    assert bool(forwards) == (crisis < 3)  # the model read a prompt only for a message it was asked
    assert len(safety["missed"]) == 3 - crisis
