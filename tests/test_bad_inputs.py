"""Bad recipe values and bad data files through the real CLI: one `error:` line (key or file, and
what is valid), exit 2, no traceback, and nothing written: every check runs before any weights
load and before the run folder is made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from warmline.cli import app

ROWS = [
    {"Context": f"I feel {w} at work, day {i}.", "Response": f"Feeling {w} is hard. What helps?"}
    for i, w in enumerate(["tired", "sad", "lonely", "anxious", "stuck", "numb", "lost", "angry"] * 2)
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def recipe(tmp_path, tiny_llama_dir) -> Path:
    _write_jsonl(tmp_path / "good.jsonl", ROWS)
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"name: tiny\nbase_model: {tiny_llama_dir}\noutput_dir: {tmp_path / 'runs'}\nsystem_prompt: null\n"
        "stages:\n  - {name: counsel, source: good.jsonl, format: counseling, max_length: 64}\n"
        "training: {micro_batch_size: 1, global_batch_size: 2, precision: fp32}\n",
        encoding="utf-8",
    )
    return path


def one_line_error(result) -> str:
    """Failed the friendly way: exit 2, exactly one `error:` line, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


# (--set overrides, substrings the error must hold). Ranges are printed as the recipe checks them.
BAD_RECIPE_VALUES = [
    (["stages.0.max_rows=-3"], ["'stages.0.max_rows'", "[1, 1e+09]"]),
    (["stages.0.max_rows=0"], ["'stages.0.max_rows'", "[1, 1e+09]"]),
    (["stages.0.validation_fraction=0.99"], ["'stages.0.validation_fraction'", "(0, 0.5]"]),
    (["stages.0.validation_fraction=0"], ["'stages.0.validation_fraction'", "(0, 0.5]"]),
    (["stages.0.epochs=.inf"], ["'stages.0.epochs'", "(0, 100]"]),
    (["stages.0.epochs=0.0001"], ["'stages.0'", "less than one optimizer step", "'stages.0.epochs'"]),
    (["stages.0.learning_rate=.nan"], ["'stages.0.learning_rate'", "(0, 0.1]"]),
    (["stages.0.learning_rate=1e6"], ["'stages.0.learning_rate'", "(0, 0.1]"]),
    (["stages.0.learning_rate=lots"], ["'stages.0.learning_rate' must be a number"]),
    (["stages.0.max_length=8"], ["'stages.0.max_length'", "[16, "]),
    (["stages.0.max_length=100000"], ["'stages.0.max_length'", "reads at most 1024 tokens"]),
    (["training.warmup_ratio=-0.5"], ["'training.warmup_ratio'", "[0, 1)"]),
    (["training.warmup_ratio=5"], ["'training.warmup_ratio'", "[0, 1)"]),
    (["training.lr_scheduler=cosin"], ["'training.lr_scheduler'", "did you mean 'cosine'"]),
    (["training.lr_scheduler=reduce_lr_on_plateau"], ["'training.lr_scheduler'", "can't be used"]),
    (
        ["training.lora.enabled=true", "training.lora.target_modules=[q_projx]"],
        ["'training.lora.target_modules'", "'q_projx'", "q_proj"],
    ),
    (
        ["training.lora.enabled=true", "training.lora.target_modules=nothing_matches.*"],
        ["'training.lora.target_modules'", "matches no adaptable module"],
    ),
    (["training.num_threads=0"], ["'training.num_threads'", "[1, 4096]"]),
    (["training.save_steps=0"], ["'training.save_steps'", "[1, 1e+09]"]),
    (["training.trainable_layers=99"], ["'training.trainable_layers'", "has 2 blocks"]),
    (["training.micro_batch_size=2", "training.global_batch_size=3"], ["multiple of micro_batch_size"]),
    (["training.seed=-1"], ["'training.seed'"]),
    (["training.precision=fp8"], ["'training.precision' is 'fp8'"]),
    (["stages.0.epocs=1"], ["unknown key 'stages.0.epocs'", "did you mean 'epochs'"]),
    (["stages.0.name=x/../../victim"], ["'stages.0.name'", "letters, digits"]),
    (["name=../escape"], ["'name'", "letters, digits"]),
    (["stages.0.source=data/missing"], ["data source not found", "data/missing"]),
    (["base_model=data/missing-model"], ["model folder not found: data/missing-model"]),
]


@pytest.mark.parametrize(
    ("overrides", "expected"), BAD_RECIPE_VALUES, ids=[" ".join(o) for o, _ in BAD_RECIPE_VALUES]
)
def test_bad_recipe_values_fail_in_one_line_before_anything_is_written(
    recipe, tmp_path, monkeypatch, overrides, expected
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    sets = [arg for o in overrides for arg in ("--set", o)]
    error = one_line_error(CliRunner().invoke(app, ["train", str(recipe), *sets]))
    for part in expected:
        assert part in error, error
    if not any(kind in error for kind in ("data source not found", "model folder not found")):
        assert str(recipe) in error  # a recipe value: the error names the file (and the key, above)
    assert not (tmp_path / "runs").exists(), "nothing may be written before the recipe is checked"
    assert not (tmp_path.parent / "victim").exists()


def _stage_file(tmp_path: Path, name: str, content: bytes | str | None) -> Path:
    path = tmp_path / name
    if content is None:
        path.mkdir()
        (path / "notes.txt").write_text("Human: hi\nAssistant: hello\n", encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


PRETTY = "\n".join(json.dumps(r, indent=2) for r in ROWS[:3])
BAD_DATA_FILES = [
    ("pretty.jsonl", PRETTY, ["pretty-printed JSON, not JSON Lines"]),
    (
        "utf16.jsonl",
        "".join(json.dumps(r) + "\n" for r in ROWS).encode("utf-16-le"),
        ["UTF-16", "save it as UTF-8"],
    ),
    ("notes.jsonl", "Context: hi\nResponse: hello\n", ["no line is valid JSON", "line 1"]),
    ("txt-only", None, ["holds no data files", "1 .txt files"]),
    ("bad.json", '[{"Context": "a", "Response": "b"},\n {"Context": oops}]', ["not valid JSON", "line 2"]),
    ("empty.jsonl", "", ["empty file"]),
    (
        "columns.jsonl",
        json.dumps({"question": "a", "answer": "b"}) + "\n",
        ["column 'Context' not found", "found: question, answer"],
    ),
    ("notes.txt", "Human: hi\nAssistant: hello\n", ["unsupported file type '.txt'"]),
    ("broken.parquet", b"PAR1 not parquet", ["not a readable Parquet file"]),
    ("empty.csv", "", ["empty"]),
]


@pytest.mark.parametrize("command", ["train", "data inspect"])
@pytest.mark.parametrize(
    ("name", "content", "expected"), BAD_DATA_FILES, ids=[n for n, _, _ in BAD_DATA_FILES]
)
def test_bad_data_files_fail_in_one_line_naming_the_file(recipe, tmp_path, command, name, content, expected):
    path = _stage_file(tmp_path, name, content)
    error = one_line_error(
        CliRunner().invoke(app, [*command.split(), str(recipe), "--set", f"stages.0.source={path}"])
    )
    assert str(path) in error
    for part in expected:
        assert part in error, error
    assert not (tmp_path / "runs").exists()


NOT_ENOUGH_DATA = [
    # One prompt asked many times: a single prompt group, so nothing can be held out.
    (
        "one-prompt.jsonl",
        [{"Context": "I feel tired.", "Response": f"Answer {i}."} for i in range(8)],
        ["no validation rows", "'stages.0.validation_fraction'"],
    ),
    (
        "all-empty.jsonl",
        [{"Context": "  ", "Response": "x"}, {"Context": "y", "Response": ""}],
        ["all 2 rows", "were dropped", "empty_turn: 2"],
    ),
]


@pytest.mark.parametrize(
    ("name", "rows", "expected"), NOT_ENOUGH_DATA, ids=[n for n, _, _ in NOT_ENOUGH_DATA]
)
def test_stages_with_too_little_data_fail_before_training(recipe, tmp_path, name, rows, expected):
    path = _write_jsonl(tmp_path / name, rows)
    error = one_line_error(
        CliRunner().invoke(app, ["train", str(recipe), "--set", f"stages.0.source={path}"])
    )
    assert str(recipe) in error and str(path) in error
    for part in expected:
        assert part in error, error
    assert not (tmp_path / "runs").exists(), "no NaN row may reach forgetting.json: nothing is written"


def test_data_inspect_warns_about_what_would_stop_training(recipe, tmp_path):
    path = _write_jsonl(tmp_path / "one.jsonl", NOT_ENOUGH_DATA[0][1])
    result = CliRunner().invoke(app, ["data", "inspect", str(recipe), "--set", f"stages.0.source={path}"])
    assert result.exit_code == 0, result.output
    assert "warning: 'stages.0' (counsel): no validation rows" in result.stdout


def test_path_traversal_stage_name_is_refused_by_the_installed_command(recipe, tmp_path):
    """As a user types it: a real `warmline` process, nothing written outside (or inside) the run folder."""
    victim = tmp_path / "victim"
    result = subprocess.run(
        [sys.executable, "-m", "warmline", "train", str(recipe), "--set", "stages.0.name=x/../../victim"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'stages.0.name'" in errors[0]
    assert not victim.exists() and not (tmp_path / "runs").exists()
