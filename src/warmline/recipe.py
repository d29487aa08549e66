"""Recipes: typed dataclasses that YAML files in `recipes/` fill with values.

Precedence is defaults < YAML < command-line overrides (`--set stages.0.epochs=1`). Unknown or
misspelled keys fail loudly with the key, the file and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Format = Literal["auto", "counseling", "alpaca", "human_assistant", "messages"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]

# Short on purpose: it is part of every training example, so every token of it costs compute.
DEFAULT_SYSTEM_PROMPT = (
    "You are warmline, a warm, supportive listener. You are an AI, not a therapist. Validate "
    "feelings, ask one open question, suggest one small step. Never diagnose or advise on medication."
)


class RecipeError(ValueError):
    """A recipe that does not validate; the message names the file, the key and a fix."""


@dataclass
class StageConfig:
    """One fine-tuning stage: a dataset and how to train on it."""

    name: str
    """Short name, used in folder names (`stage-01-<name>`)."""
    source: str
    """Hugging Face hub id, local file (.json/.jsonl/.csv/.parquet) or folder of such files."""
    format: Format = "auto"
    """How rows become conversations; `auto` detects it from the columns."""
    columns: dict[str, str] = field(default_factory=dict)
    """Map a format's expected column to the source's column, e.g. {Context: question}."""
    split: str = "train"
    """Split to read from a hub dataset (local files have one split)."""
    subset: str | None = None
    """Hub dataset configuration name, when it has several."""
    validation_fraction: float = 0.1
    """Share of prompt groups held out for validation (grouped by user prompt)."""
    max_rows: int | None = None
    """Train on at most this many conversations (sampled with the seed after the split, so the
    validation split stays the same); None uses all."""
    epochs: float = 1.0
    """Passes over this stage's training split."""
    learning_rate: float = 5e-5
    """Peak learning rate of this stage's fresh schedule."""
    max_length: int = 512
    """Longest tokenised example, in tokens; longer ones are truncated and counted."""
    replay_fraction: float = 0.0
    """Extra rows from earlier stages' training data, as a fraction of this stage's training rows."""
    system_prompt: str | None = None
    """System turn for this stage's conversations; None uses the recipe's."""


@dataclass
class LoraSettings:
    """Low-rank adapters (PEFT) instead of full fine-tuning, for big models."""

    enabled: bool = False
    """Train LoRA adapters; merged into the weights at the end of each stage."""
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Adapter scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: str | list[str] = "all-linear"
    """Modules to adapt (PEFT names, or `all-linear`)."""


@dataclass
class TrainingConfig:
    """Options shared by every stage."""

    precision: Precision = "auto"
    """auto: bf16 on CPUs with AMX/AVX-512-bf16 and bf16 GPUs, fp16 on older GPUs, else fp32."""
    micro_batch_size: int = 8
    """Examples per forward pass (packed sequences when packing)."""
    global_batch_size: int = 16
    """Examples per optimizer step; gradient accumulation makes up the difference."""
    packing: bool = True
    """Pack short examples together with per-example position ids (no cross-example attention)."""
    seed: int = 42
    """Seed for data shuffling, splits and initialisation."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA settings."""
    trainable_layers: int | None = None
    """Train only the top N transformer blocks (+ final norm; embeddings frozen); None trains all.
    Backpropagation then stops N blocks down: on a 2-core CPU, about 2x faster per token."""
    warmup_ratio: float = 0.05
    """Share of each stage's steps spent warming the learning rate up."""
    lr_scheduler: str = "cosine"
    """transformers scheduler name for each stage's fresh schedule."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    logging_steps: int = 5
    """Log loss, learning rate and tokens/s every this many optimizer steps."""
    save_steps: int = 50
    """Checkpoint every this many optimizer steps within a stage (for --resume)."""
    eval_replies: int = 0
    """Sample replies printed at the end of the run (the CLI's --samples overrides)."""
    num_threads: int | None = None
    """torch intra-op threads; None uses the physical cores."""


@dataclass
class Recipe:
    """A sequential fine-tuning recipe: a base model and an ordered list of stages."""

    name: str
    """Run name; outputs go to `<output_dir>/<name>/`."""
    base_model: str
    """Hugging Face hub id, local folder, or `packaged:smollm2-135m-instruct`."""
    stages: list[StageConfig]
    """Stages in training order; each starts from the previous stage's weights."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Options shared by every stage."""
    output_dir: str = "runs"
    """Folder that holds run folders."""
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    """System turn added to every training conversation (None for none)."""
    baseline_prototype: bool = False
    """Train the way the replaced prototype did (pad to 512, loss on all tokens, no EOS), for comparison."""

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with helpful errors


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(value: Any, tp: Any, where: str, source: str) -> Any:
    """Check (and gently coerce) a YAML value against a dataclass field type."""
    if value is None:
        allowed = typing.get_args(tp)
        if type(None) in allowed or tp is Any:
            return None
        raise RecipeError(f"{source}: '{where}' must not be empty")
    base = _strip_optional(tp)
    origin = typing.get_origin(base)
    if dataclasses.is_dataclass(base):
        return _build(base, value, where, source)
    if origin is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RecipeError(f"{source}: '{where}' is '{value}', expected one of {list(choices)}{hint}")
        return value
    if origin in (typing.Union, types.UnionType):  # e.g. str | list[str]
        for option in typing.get_args(base):
            try:
                return _coerce(value, option, where, source)
            except RecipeError:
                continue
        raise RecipeError(f"{source}: '{where}' has an unsupported value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{source}: '{where}' must be a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(base)
        return [_coerce(v, item_tp, f"{where}.{i}", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{source}: '{where}' must be a mapping, got {type(value).__name__}")
        return {str(k): str(v) for k, v in value.items()}
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "on", "off", "1", "0"}:
            return value.lower() in {"true", "yes", "on", "1"}
        raise RecipeError(f"{source}: '{where}' must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int | str | float):
            raise RecipeError(f"{source}: '{where}' must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError as err:
            raise RecipeError(f"{source}: '{where}' must be an integer, got {value!r}") from err
        if not as_float.is_integer():
            raise RecipeError(f"{source}: '{where}' must be an integer, got {value!r}")
        return int(as_float)
    if base is float:
        if isinstance(value, bool):
            raise RecipeError(f"{source}: '{where}' must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"{source}: '{where}' must be a number, got {value!r}") from err
    if base is str:
        if isinstance(value, dict | list):
            raise RecipeError(f"{source}: '{where}' must be text, got {type(value).__name__}")
        return str(value)
    return value


def _build(cls: type, data: Any, where: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: '{where or 'recipe'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise RecipeError(f"{source}: unknown key '{path}'{hint}")
        kwargs[key] = _coerce(value, hints[key], path, source)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise RecipeError(f"{source}: '{where or 'recipe'}' is missing required key(s): {', '.join(missing)}")
    return cls(**kwargs)


def _apply_override(data: dict, assignment: str, source: str) -> None:
    """Apply one `dotted.path=value` override to a nested dict (lists indexed by number)."""
    if "=" not in assignment:
        raise RecipeError(f"override '{assignment}' must look like key.path=value")
    path, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or err
        raise RecipeError(f"override '{assignment}': value is not valid YAML ({problem})") from err
    keys = path.strip().split(".")
    node: Any = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise RecipeError(f"{source}: override '{path}': '{key}' is not a valid index (0..{len(node) - 1})")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        else:
            if not isinstance(node, dict):
                parent = ".".join(keys[:i])
                raise RecipeError(f"{source}: override '{path}': '{parent}' is not a mapping (no key '{key}')")
            if last:
                node[key] = value
            else:
                if node.get(key) is None:  # absent, or an empty section (`training:`)
                    node[key] = {}
                node = node[key]


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe YAML file, then apply `key.path=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping with base_model and stages")
    for assignment in overrides or []:
        _apply_override(data, assignment, str(path))
    recipe = _build(Recipe, data, "", str(path))
    _check(recipe, str(path))
    return recipe


def _check(recipe: Recipe, source: str) -> None:
    if not recipe.stages:
        raise RecipeError(f"{source}: 'stages' must list at least one stage")
    names = [s.name for s in recipe.stages]
    if len(set(names)) != len(names):
        raise RecipeError(f"{source}: stage names must be unique, got {names}")
    for i, stage in enumerate(recipe.stages):
        if not 0.0 <= stage.validation_fraction < 1.0:
            raise RecipeError(f"{source}: 'stages.{i}.validation_fraction' must be in [0, 1)")
        if not 0.0 <= stage.replay_fraction <= 1.0:
            raise RecipeError(f"{source}: 'stages.{i}.replay_fraction' must be in [0, 1]")
        if stage.epochs <= 0 or stage.learning_rate <= 0 or stage.max_length < 16:
            raise RecipeError(f"{source}: stage '{stage.name}' needs epochs > 0, learning_rate > 0, max_length >= 16")
    t = recipe.training
    if t.micro_batch_size < 1 or t.global_batch_size < t.micro_batch_size:
        raise RecipeError(f"{source}: training needs 1 <= micro_batch_size <= global_batch_size")
    if t.trainable_layers is not None and t.trainable_layers < 1:
        raise RecipeError(f"{source}: training.trainable_layers must be >= 1 (or null for all layers)")
    if t.global_batch_size % t.micro_batch_size:
        raise RecipeError(f"{source}: training.global_batch_size must be a multiple of micro_batch_size")


def recipe_to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain data (for writing next to every artifact)."""
    return dataclasses.asdict(recipe)


def resolve_source_path(recipe_path: str | Path, source: str) -> str:
    """Local sources in a recipe are relative to the working directory, else to the recipe file."""
    p = Path(source)
    if p.is_absolute() or p.exists():
        return source
    candidate = Path(recipe_path).parent / source
    return str(candidate) if candidate.exists() else source
