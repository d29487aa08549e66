"""The `warmline` command line: help for every command, the command map, `data inspect`, and
one-line errors (exit code 2, no traceback) for the mistakes users make."""

from __future__ import annotations

import importlib
import json
import re
import statistics
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from warmline.cli import COMMANDS, app
from warmline.data.tokens import tokenize_conversation

runner = CliRunner()


def registered_commands() -> dict:
    """Every leaf command of the app, by its full name ("data inspect")."""
    found: dict = {}

    def walk(group, prefix: str) -> None:
        for name, command in group.commands.items():
            full = f"{prefix} {name}".strip()
            if hasattr(command, "commands"):  # a sub-app (typer vendors its own click classes)
                walk(command, full)
            else:
                found[full] = command

    walk(typer.main.get_command(app), "")
    return found


def plain(text: str) -> str:
    """Help text without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def invoke(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(result) -> str:
    """The command failed the friendly way: exit 2, one `error:` line, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


# --- the command map ------------------------------------------------------------------------


def test_the_command_map_is_exactly_the_registered_commands():
    assert set(registered_commands()) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_mapped_module_of_each_command_imports(command):
    module = importlib.import_module(COMMANDS[command])
    assert module.__doc__, f"{COMMANDS[command]} needs a module docstring"


# --- help -----------------------------------------------------------------------------------


def test_top_level_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    text = plain(result.output)
    assert "Usage:" in text and "Sequentially fine-tune small language models" in text
    for group in {c.split()[0] for c in registered_commands()}:
        assert re.search(rf"\b{group}\b", text), group


def test_no_arguments_shows_help():
    result = invoke()
    assert "Usage:" in result.output
    assert result.exit_code in (0, 2)  # click >= 8.2 exits 2 for no_args_is_help


@pytest.mark.parametrize("command", sorted(COMMANDS) + ["data", "eval", "safety"])
def test_help_of_every_command(command):
    registered = registered_commands()
    result = invoke(*command.split(), "--help")
    assert result.exit_code == 0, result.output
    text = plain(result.output)
    assert "Usage:" in text and command.split()[-1] in text
    if command in registered:
        # --help comes from the command's docstring.
        summary = plain(registered[command].help or "").split(". ")[0]
        assert summary and summary in text, f"`{command} --help` lacks its docstring"


# --- data inspect ---------------------------------------------------------------------------


ROWS = [
    {
        "Context": "I feel anxious before exams.",
        "Response": "That sounds stressful. What helps you calm down?",
    },
    {
        "Context": "I feel anxious before exams.",
        "Response": "That sounds stressful. What helps you calm down?",
    },
    {"Context": "I feel anxious before exams.", "Response": "Many people do. Breathing slowly can help."},
    {
        "Context": "My best friend stopped talking to me.",
        "Response": "That hurts. Would it help to write down "
        "what you miss about the friendship, and what you would like to say to them if you could?",
    },
    {
        "Context": "Work stress keeps me awake at night.",
        "Response": "Try putting your phone in another room.",
    },
    {"Context": "   ", "Response": "An empty question."},
    {"Context": "I failed my exam.", "Response": "It makes sense to feel low after that."},
]


def write_recipe(tmp_path: Path, base_model: str, source: str, extra: str = "") -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: tiny\nbase_model: {base_model}\nsystem_prompt: null\n"
        f"stages:\n  - name: counsel\n    source: {source}\n    format: auto\n"
        f"    max_length: 32\n    validation_fraction: 0.25\n{extra}",
        encoding="utf-8",
    )
    return recipe


@pytest.fixture
def inspect_recipe_path(tmp_path, tiny_llama_dir) -> Path:
    data = tmp_path / "counsel.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    # The source is relative to the recipe file, as recipes in recipes/ are.
    return write_recipe(tmp_path, str(tiny_llama_dir), "counsel.jsonl")


def parse_table(output: str) -> dict[str, str]:
    lines = [line for line in output.splitlines() if line.strip()]
    header_at = next(i for i, line in enumerate(lines) if line.split()[:3] == ["stage", "format", "read"])
    header = lines[header_at].split()
    assert set(lines[header_at + 1]) <= {"-", " "}
    row = re.split(r"\s{2,}", lines[header_at + 2].strip())
    return dict(zip(header, row, strict=True))


def test_data_inspect_prints_the_table(inspect_recipe_path, tiny_llama_dir, monkeypatch, tmp_path):
    from transformers import AutoTokenizer

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = invoke("data", "inspect", str(inspect_recipe_path))
    assert result.exit_code == 0, result.output
    table = parse_table(result.stdout)
    assert list(table)[:2] == ["stage", "format"]
    assert ["read", "dropped", "dup", "kept", "train", "val", "p50", "p95", "max", "trunc"] == list(table)[2:]
    assert table["stage"] == "counsel" and table["format"] == "counseling"
    assert table["read"] == "7"
    assert table["dropped"] == "1"  # the whitespace-only question
    assert table["dup"] == "1"  # the exact repeat
    assert table["kept"] == "5"
    assert int(table["train"]) + int(table["val"]) == 5 and int(table["val"]) >= 1
    # Token lengths are the real tokenised lengths (no system prompt in this recipe).
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    convs = [
        [{"role": "user", "content": r["Context"]}, {"role": "assistant", "content": r["Response"]}]
        for r in ROWS[:1] + ROWS[2:5] + ROWS[6:]
    ]
    lengths = sorted(len(tokenize_conversation(tokenizer, c, 10**6).input_ids) for c in convs)
    assert len(lengths) == 5
    assert int(table["max"]) == lengths[-1]
    assert int(table["p50"]) == int(statistics.median(lengths))
    assert int(table["p50"]) <= int(table["p95"]) <= int(table["max"])
    assert table["trunc"] == f"{sum(n > 32 for n in lengths)} (>32)"
    assert sum(n > 32 for n in lengths) >= 1, "fixture should have a conversation over max_length"
    assert "dropped by reason {'empty_turn': 1}" in result.stdout


def test_data_inspect_json_matches_the_table(inspect_recipe_path):
    result = invoke("data", "inspect", str(inspect_recipe_path), "--json", "--set", "stages.0.max_length=512")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["rows_read"] == 7 and row["duplicates"] == 1 and row["kept"] == 5
    assert row["dropped"] == {"empty_turn": 1}
    assert row["max_length"] == 512 and row["would_truncate"] == 0  # the override took effect


# --- errors ---------------------------------------------------------------------------------


def test_missing_recipe_file(tmp_path):
    error = one_line_error(invoke("data", "inspect", str(tmp_path / "nope.yaml")))
    assert "recipe file not found" in error and "nope.yaml" in error


def test_unknown_recipe_key(tmp_path, tiny_llama_dir):
    recipe = write_recipe(tmp_path, str(tiny_llama_dir), "x.jsonl", extra="    learnin_rate: 1.0e-4\n")
    error = one_line_error(invoke("data", "inspect", str(recipe)))
    assert (
        "unknown key 'stages.0.learnin_rate'" in error and "learning_rate" in error and str(recipe) in error
    )


def test_bad_override(inspect_recipe_path):
    error = one_line_error(invoke("data", "inspect", str(inspect_recipe_path), "--set", "stages.3.epochs=1"))
    assert "'3' is not a valid index" in error


def test_offline_hub_dataset(tmp_path, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = write_recipe(tmp_path, str(tiny_llama_dir), "Amod/mental_health_counseling_conversations")
    error = one_line_error(invoke("data", "inspect", str(recipe)))
    assert "Amod/mental_health_counseling_conversations" in error and "offline" in error


def test_offline_hub_model(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # nothing cached
    recipe = write_recipe(tmp_path, "gpt2", "x.jsonl")
    error = one_line_error(invoke("data", "inspect", str(recipe)))
    assert "'gpt2'" in error and "packaged:smollm2-135m-instruct" in error


def test_missing_column_in_data(tmp_path, tiny_llama_dir):
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"question": "a", "answer": "b"}) + "\n", encoding="utf-8")
    recipe = write_recipe(tmp_path, str(tiny_llama_dir), str(data), extra="")
    recipe.write_text(recipe.read_text().replace("format: auto", "format: counseling"), encoding="utf-8")
    error = one_line_error(invoke("data", "inspect", str(recipe)))
    assert "column 'Context' not found" in error and "found: question, answer" in error
