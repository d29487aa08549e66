"""Recipes: every shipped YAML validates, typos and wrong types fail loudly, overrides win."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

from warmline.recipe import (
    DEFAULT_SYSTEM_PROMPT,
    Recipe,
    RecipeError,
    StageConfig,
    TrainingConfig,
    load_recipe,
    recipe_to_dict,
)

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))

MINIMAL = """\
name: tiny
base_model: some/model
stages:
  - name: counseling
    source: data/samples/counseling.jsonl
    format: counseling
    epochs: 3
  - name: psychology
    source: data/samples/psychology.json
    format: alpaca
training:
  micro_batch_size: 2
  global_batch_size: 4
  seed: 7
"""


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_recipes_folder_is_not_empty():
    assert RECIPES, f"no recipes found in {REPO / 'recipes'}"


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_loads_against_the_schema(path: Path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.name and recipe.base_model
    assert recipe.stages and all(isinstance(s, StageConfig) for s in recipe.stages)
    assert isinstance(recipe.training, TrainingConfig)
    assert len({s.name for s in recipe.stages}) == len(recipe.stages)
    # The resolved recipe is plain data that round-trips into the same recipe.
    as_dict = recipe_to_dict(recipe)
    assert [s["name"] for s in as_dict["stages"]] == [s.name for s in recipe.stages]


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_local_sources_exist(path: Path):
    """A local `source` in a shipped recipe must point at a file in the repository."""
    recipe = load_recipe(path)
    for stage in recipe.stages:
        if Path(stage.source).suffix in {".json", ".jsonl", ".csv", ".parquet"}:
            assert (REPO / stage.source).exists(), (
                f"{path.name}: stage '{stage.name}' source {stage.source} missing"
            )


def test_minimal_recipe_fills_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL))
    first, second = recipe.stages
    assert first.epochs == 3.0 and isinstance(first.epochs, float)
    assert second.epochs == 1.0  # default
    assert second.format == "alpaca"
    assert first.validation_fraction == 0.1
    assert recipe.training.packing is True  # default
    assert recipe.training.lora.enabled is False
    assert recipe.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert recipe.run_dir == Path("runs") / "tiny"


# --- unknown keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "bad_key", "suggestion"),
    [
        (
            MINIMAL.replace("    epochs: 3\n", "    learnin_rate: 1.0e-4\n"),
            "stages.0.learnin_rate",
            "learning_rate",
        ),
        (
            MINIMAL.replace("  micro_batch_size: 2\n", "  micro_batch_sise: 2\n"),
            "training.micro_batch_sise",
            "micro_batch_size",
        ),
        (MINIMAL.replace("base_model:", "base_modle:"), "base_modle", "base_model"),
        (MINIMAL + "  lora:\n    enabeld: true\n", "training.lora.enabeld", "enabled"),
    ],
)
def test_unknown_key_names_key_file_and_closest_valid_key(tmp_path, yaml_text, bad_key, suggestion):
    path = write(tmp_path, yaml_text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert f"'{bad_key}'" in message
    assert str(path) in message
    assert f"did you mean '{suggestion}'" in message


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    path = write(tmp_path, MINIMAL + "zzzzzz: 1\n")
    with pytest.raises(RecipeError, match=r"unknown key 'zzzzzz'; valid keys: name, base_model, stages"):
        load_recipe(path)


def test_missing_required_key_is_named(tmp_path):
    path = write(tmp_path, MINIMAL.replace("base_model: some/model\n", ""))
    with pytest.raises(RecipeError, match=r"missing required key\(s\): base_model"):
        load_recipe(path)


# --- wrong types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    epochs: 3\n", "    epochs: three\n", r"'stages\.0\.epochs' must be a number, got 'three'"),
        (
            "  micro_batch_size: 2\n",
            "  micro_batch_size: 2.5\n",
            r"'training\.micro_batch_size' must be an integer, got 2\.5",
        ),
        ("  seed: 7\n", "  seed: true\n", r"'training\.seed' must be an integer, got True"),
        (
            "  seed: 7\n",
            "  seed: 7\n  packing: maybe\n",
            r"'training\.packing' must be true or false, got 'maybe'",
        ),
        (
            "    format: alpaca\n",
            "    format: alpacca\n",
            r"'stages\.1\.format' is 'alpacca', expected one of .*did you mean 'alpaca'",
        ),
        ("name: tiny\n", "name: [a, b]\n", r"'name' must be text, got list"),
        ("  seed: 7\n", "  seed: 7\n  precision: fp8\n", r"'training\.precision' is 'fp8'"),
        ("training:\n", "training: 3\nx:\n", r"'training' must be a mapping, got int"),
        (
            "    format: counseling\n",
            "    format: counseling\n    columns: [Context]\n",
            r"'stages\.0\.columns' must be a mapping, got list",
        ),
        ("name: tiny\n", "name:\n", r"'name' must not be empty"),
    ],
)
def test_wrong_types_fail_clearly(tmp_path, old, new, expected):
    assert old in MINIMAL
    path = write(tmp_path, MINIMAL.replace(old, new, 1))
    with pytest.raises(RecipeError, match=expected) as err:
        load_recipe(path)
    assert str(path) in str(err.value)


def test_stages_must_be_a_list(tmp_path):
    path = write(tmp_path, "name: x\nbase_model: m\nstages:\n  name: a\n  source: b.jsonl\n")
    with pytest.raises(RecipeError, match=r"'stages' must be a list, got dict"):
        load_recipe(path)


def test_strings_that_look_like_numbers_are_coerced(tmp_path):
    path = write(tmp_path, MINIMAL.replace("    epochs: 3\n", "    epochs: '2'\n    learning_rate: '1e-4'\n"))
    stage = load_recipe(path).stages[0]
    assert stage.epochs == 2.0 and stage.learning_rate == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("extra", "key", "valid"),
    [
        ("    validation_fraction: 1.0\n", "stages.0.validation_fraction", "(0, 0.5]"),
        ("    validation_fraction: 0.99\n", "stages.0.validation_fraction", "(0, 0.5]"),
        ("    validation_fraction: 0\n", "stages.0.validation_fraction", "(0, 0.5]"),
        ("    replay_fraction: 1.5\n", "stages.0.replay_fraction", "[0, 1]"),
        ("    max_length: 8\n", "stages.0.max_length", "[16, 1.04858e+06]"),
        ("    max_rows: -3\n", "stages.0.max_rows", "[1, 1e+09]"),
        ("    max_rows: 0\n", "stages.0.max_rows", "[1, 1e+09]"),
        ("    learning_rate: .nan\n", "stages.0.learning_rate", "(0, 0.1]"),
        ("    learning_rate: 1.0e6\n", "stages.0.learning_rate", "(0, 0.1]"),
        ("    learning_rate: -1.0e-4\n", "stages.0.learning_rate", "(0, 0.1]"),
    ],
)
def test_out_of_range_stage_values_fail(tmp_path, extra, key, valid):
    path = write(tmp_path, MINIMAL.replace("    epochs: 3\n", "" + extra))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert f"'{key}'" in message and str(path) in message and valid in message and "\n" not in message


@pytest.mark.parametrize(
    ("override", "key", "valid"),
    [
        ("stages.0.epochs=.inf", "stages.0.epochs", "(0, 100]"),
        ("stages.0.epochs=0", "stages.0.epochs", "(0, 100]"),
        ("stages.0.epochs=-1", "stages.0.epochs", "(0, 100]"),
        ("training.warmup_ratio=-0.5", "training.warmup_ratio", "[0, 1)"),
        ("training.warmup_ratio=5", "training.warmup_ratio", "[0, 1)"),
        ("training.warmup_ratio=1", "training.warmup_ratio", "[0, 1)"),
        ("training.num_threads=0", "training.num_threads", "[1, 4096]"),
        ("training.save_steps=0", "training.save_steps", "[1, 1e+09]"),
        ("training.logging_steps=0", "training.logging_steps", "[1, 1e+09]"),
        ("training.seed=-1", "training.seed", "[0, 4.29497e+09]"),
        ("training.weight_decay=.nan", "training.weight_decay", "[0, 1]"),
        ("training.max_grad_norm=-1", "training.max_grad_norm", "[0, 10000]"),
        ("training.trainable_layers=0", "training.trainable_layers", "[1, 10000]"),
        ("training.micro_batch_size=0", "training.micro_batch_size", "[1, 4096]"),
        ("training.lora.r=0", "training.lora.r", "[1, 4096]"),
        ("training.lora.dropout=1.0", "training.lora.dropout", "[0, 1)"),
    ],
)
def test_out_of_range_values_fail_naming_key_file_and_range(tmp_path, override, key, valid):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(RecipeError) as err:
        load_recipe(path, [override])
    message = str(err.value)
    assert f"'{key}'" in message and str(path) in message and valid in message and "\n" not in message


def test_warmup_ratio_in_range_is_a_ratio(tmp_path):
    assert load_recipe(write(tmp_path, MINIMAL), ["training.warmup_ratio=0.5"]).training.warmup_ratio == 0.5


@pytest.mark.parametrize("scheduler", ["cosin", "reduce_lr_on_plateau", "cosine_with_min_lr"])
def test_scheduler_names_come_from_the_installed_transformers(tmp_path, scheduler):
    from transformers import SchedulerType

    path = write(tmp_path, MINIMAL)
    with pytest.raises(RecipeError) as err:
        load_recipe(path, [f"training.lr_scheduler={scheduler}"])
    message = str(err.value)
    assert "'training.lr_scheduler'" in message and str(path) in message and "'cosine'" in message
    if scheduler == "cosin":
        assert "did you mean 'cosine'" in message
    else:  # a real transformers scheduler that can't work with how warmline trains
        assert scheduler in {s.value for s in SchedulerType} and "can't be used" in message
    for name in ("linear", "cosine", "constant_with_warmup"):
        assert load_recipe(path, [f"training.lr_scheduler={name}"]).training.lr_scheduler == name


@pytest.mark.parametrize(
    "name", ["x/../../victim", "../victim", "a/b", "..", ".hidden", "with space", "", "x" * 65, "tab\there"]
)
def test_stage_and_run_names_must_be_safe_slugs(tmp_path, name):
    path = write(tmp_path, MINIMAL)
    for key in ("stages.0.name", "name"):
        with pytest.raises(RecipeError) as err:
            load_recipe(path, [f"{key}={json.dumps(name)}"])
        assert f"'{key}'" in str(err.value) and "letters, digits" in str(err.value)
    assert load_recipe(path, ["stages.0.name=counseling-v2.1_b"]).stages[0].name == "counseling-v2.1_b"


def test_relative_sources_are_resolved_once_against_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "data.jsonl").write_text("{}\n", encoding="utf-8")
    text = "name: x\nbase_model: m\nstages:\n  - {name: a, source: data.jsonl}\n  - {name: b, source: org/dataset}\n"
    path = write(folder, text)
    monkeypatch.chdir(tmp_path)  # the working directory has no data.jsonl
    a, b = load_recipe(path).stages
    assert Path(a.source) == folder / "data.jsonl"
    assert b.source == "org/dataset"  # a hub id stays as it is


def test_eval_replies_is_gone(tmp_path):
    with pytest.raises(RecipeError, match="unknown key 'training.eval_replies'"):
        load_recipe(write(tmp_path, MINIMAL), ["training.eval_replies=2"])


def test_batch_sizes_must_divide(tmp_path):
    path = write(tmp_path, MINIMAL.replace("global_batch_size: 4", "global_batch_size: 5"))
    with pytest.raises(RecipeError, match="multiple of micro_batch_size"):
        load_recipe(path)


def test_duplicate_stage_names_fail(tmp_path):
    path = write(tmp_path, MINIMAL.replace("name: psychology", "name: counseling"))
    with pytest.raises(RecipeError, match="stage names must be unique"):
        load_recipe(path)


def test_missing_file_and_invalid_yaml_fail_clearly(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(write(tmp_path, "- just\n- a list\n", "list.yaml"))


# --- overrides and precedence --------------------------------------------------------------


def test_overrides_beat_yaml(tmp_path):
    path = write(tmp_path, MINIMAL)
    recipe = load_recipe(path, ["stages.0.epochs=1", "training.lora.enabled=true", "stages.1.max_length=64"])
    assert recipe.stages[0].epochs == 1.0
    assert recipe.training.lora.enabled is True
    assert recipe.stages[1].max_length == 64
    # Untouched values keep the YAML's.
    assert recipe.training.micro_batch_size == 2
    # The YAML file itself is not changed by overrides.
    assert load_recipe(path).stages[0].epochs == 3.0


def test_override_types_are_checked(tmp_path):
    path = write(tmp_path, MINIMAL)
    recipe = load_recipe(path, ["training.packing=false", "system_prompt=null", "name=my-run"])
    assert recipe.training.packing is False
    assert recipe.system_prompt is None
    assert recipe.name == "my-run"
    with pytest.raises(RecipeError, match=r"'stages\.0\.epochs' must be a number"):
        load_recipe(path, ["stages.0.epochs=lots"])


def test_precedence_defaults_then_yaml_then_overrides(tmp_path):
    path = write(tmp_path, MINIMAL)
    assert TrainingConfig().seed == 42  # default
    assert TrainingConfig().warmup_ratio == 0.05
    recipe = load_recipe(path)
    assert recipe.training.seed == 7  # YAML beats the default
    assert recipe.training.warmup_ratio == 0.05  # default where YAML is silent
    recipe = load_recipe(path, ["training.seed=9", "training.warmup_ratio=0.2"])
    assert recipe.training.seed == 9  # override beats YAML
    assert recipe.training.warmup_ratio == 0.2  # override beats the default


def test_override_can_add_a_nested_section(tmp_path):
    path = write(tmp_path, "name: x\nbase_model: m\nstages:\n  - {name: a, source: a.jsonl}\n")
    recipe = load_recipe(path, ["training.lora.r=4", "training.lora.enabled=yes"])
    assert recipe.training.lora.r == 4 and recipe.training.lora.enabled is True


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("stages.5.epochs=1", r"'5' is not a valid index \(0\.\.1\)"),
        ("stages.first.epochs=1", r"'first' is not a valid index"),
        ("stages.-1.epochs=1", r"'-1' is not a valid index"),
        ("stages.0.epocs=1", r"unknown key 'stages\.0\.epocs'; did you mean 'epochs'"),
        (
            "training.micro_batch_sise=2",
            r"unknown key 'training\.micro_batch_sise'; did you mean 'micro_batch_size'",
        ),
        ("stages.0.epochs", r"must look like key\.path=value"),
    ],
)
def test_bad_overrides_fail_clearly(tmp_path, override, expected):
    with pytest.raises(RecipeError, match=expected):
        load_recipe(write(tmp_path, MINIMAL), [override])


@pytest.mark.parametrize("override", ["name.first=x", "stages.0.epochs.value=1"])
def test_override_into_a_plain_value_fails_clearly(tmp_path, override):
    with pytest.raises(RecipeError, match="is not a mapping"):
        load_recipe(write(tmp_path, MINIMAL), [override])


def test_override_value_that_is_not_yaml_fails_clearly(tmp_path):
    with pytest.raises(RecipeError, match=r"override 'name=\[oops': value is not valid YAML"):
        load_recipe(write(tmp_path, MINIMAL), ["name=[oops"])


def test_override_fills_an_empty_yaml_section(tmp_path):
    path = write(tmp_path, "name: x\nbase_model: m\nstages:\n  - {name: a, source: a.jsonl}\ntraining:\n")
    assert load_recipe(path, ["training.seed=3"]).training.seed == 3
