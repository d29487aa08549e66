"""Recipes: typed dataclasses that YAML files in `recipes/` fill with values.

Precedence is defaults < YAML < command-line overrides (`--set stages.0.epochs=1`). Unknown or
misspelled keys fail loudly with the key, the file and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Format = Literal[
    "auto", "counseling", "alpaca", "human_assistant", "messages", "preference", "chosen_rejected", "ratings"
]
Method = Literal["sft", "dpo"]
# TRL 1.16's DPO losses (trl/trainer/dpo_trainer.py, `_compute_loss`).
DpoLoss = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
]
Precision = Literal["auto", "bf16", "fp16", "fp32"]

# Short on purpose: it is part of every training example, so every token of it costs compute.
DEFAULT_SYSTEM_PROMPT = (
    "You are warmline, a warm, supportive listener. You are an AI, not a therapist. Validate "
    "feelings, ask one open question, suggest one small step. Never diagnose or advise on medication."
)


class RecipeError(ValueError):
    """A recipe that does not validate; the message names the file, the key and a fix."""


@dataclass
class DpoSettings:
    """Direct preference optimisation (TRL's DPOTrainer) for a stage with `method: dpo`."""

    beta: float = 0.1
    """How far the policy may move from the reference (the previous stage): higher stays closer."""
    loss_type: DpoLoss = "sigmoid"
    """TRL's DPO loss: sigmoid is the DPO paper's; ipo, hinge, robust, ... are variants."""
    label_smoothing: float = 0.0
    """Share of preference labels assumed flipped (robust, exo_pair), in [0, 0.5)."""
    sft_loss_weight: float = 0.0
    """Weight of an added SFT loss on the chosen reply (RPO): keeps its likelihood from falling."""


@dataclass
class StageConfig:
    """One fine-tuning stage: a dataset and how to train on it."""

    name: str
    """Short name, used in folder names (`stage-01-<name>`): letters, digits, `.`, `_`, `-`."""
    source: str
    """Hugging Face hub id, local file (.json/.jsonl/.csv/.parquet) or folder of such files."""
    method: Method = "sft"
    """sft: imitate the replies; dpo: prefer `chosen` over `rejected` replies (preference pairs),
    with the previous stage's weights as the reference model."""
    format: Format = "auto"
    """How rows become conversations (sft) or preference pairs (dpo: preference, chosen_rejected,
    ratings); `auto` detects it from the columns."""
    dpo: DpoSettings = field(default_factory=DpoSettings)
    """DPO settings (used by `method: dpo` stages only)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Map a format's expected column to the source's column, e.g. {Context: question}."""
    split: str = "train"
    """Split to read from a hub dataset (local files have one split)."""
    subset: str | None = None
    """Hub dataset configuration name, when it has several."""
    validation_fraction: float = 0.1
    """Share of prompt groups held out for validation (grouped by user prompt), in (0, 0.5]."""
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
    max_reply_sentences: int | None = None
    """Keep only the first N sentences of every assistant turn in this stage's training rows (a
    length target: long replies teach long replies); validation rows stay whole. None keeps all."""
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
    quantize: Literal["4bit"] | None = None
    """QLoRA: `4bit` loads the frozen base in 4-bit (bitsandbytes NF4, double quantisation, bf16
    compute; needs CUDA); each stage still merges into a full-precision copy. None: full precision."""


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
    """Share of each stage's optimizer steps spent warming the learning rate up, in [0, 1)."""
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
    num_threads: int | None = None
    """torch intra-op threads; None uses the physical cores."""


@dataclass
class Recipe:
    """A sequential fine-tuning recipe: a base model and an ordered list of stages."""

    name: str
    """Run name; outputs go to `<output_dir>/<name>/` (letters, digits, `.`, `_`, `-`)."""
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
                raise RecipeError(
                    f"{source}: override '{path}': '{key}' is not a valid index (0..{len(node) - 1})"
                )
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        else:
            if not isinstance(node, dict):
                parent = ".".join(keys[:i])
                raise RecipeError(
                    f"{source}: override '{path}': '{parent}' is not a mapping (no key '{key}')"
                )
            if last:
                node[key] = value
            else:
                if node.get(key) is None:  # absent, or an empty section (`training:`)
                    node[key] = {}
                node = node[key]


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe YAML file, then apply `key.path=value` overrides.

    Every value is checked here (types, ranges, finiteness, names, scheduler), and relative local
    sources are resolved once: against the working directory, else against the recipe's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping with base_model and stages")
    for assignment in overrides or []:
        _apply_override(data, assignment, str(path))
    recipe = _build(Recipe, data, "", str(path))
    _check(recipe, str(path))
    for stage in recipe.stages:
        stage.source = resolve_source_path(path, stage.source)
    return recipe


# Folder names come from these: one path component, never `.`/`..`, no separators or spaces.
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Schedulers driven by evaluation metrics: stages are validated outside the Trainer (token-weighted).
NOT_WITH_TRAINER = {
    name: "it needs the Trainer's evaluation metrics, and warmline validates outside the Trainer"
    for name in ("reduce_lr_on_plateau", "greedy")
}


def _check_slug(value: str, key: str, source: str) -> None:
    if not SLUG.fullmatch(value):
        raise RecipeError(
            f"{source}: '{key}' is {value!r}; it names a folder, so use 1-64 letters, digits, '.', '_' or '-'"
            " starting with a letter or digit (e.g. counseling-v2)"
        )


def _check_range(
    value: float | int | None,
    key: str,
    source: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> None:
    """Fail unless `value` is a finite number in the interval (one line: key, file, valid range)."""
    if value is None and allow_none:
        return
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    ok = (
        value is not None
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        hint = " (or null)" if allow_none else ""
        raise RecipeError(f"{source}: '{key}' is {value!r}; expected a finite number in {interval}{hint}")


def usable_schedulers() -> list[str]:
    """transformers scheduler names that work with the settings warmline passes the Trainer."""
    import torch
    from transformers import SchedulerType, get_scheduler

    usable = []
    for kind in SchedulerType:
        if kind.value in NOT_WITH_TRAINER:
            continue
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        try:  # some need extra settings (e.g. a minimum learning rate) that recipes don't have
            get_scheduler(kind.value, optimizer=optimizer, num_warmup_steps=1, num_training_steps=10)
        except (ValueError, TypeError, NotImplementedError):
            continue
        usable.append(kind.value)
    return usable


def _check_scheduler(name: str, source: str) -> None:
    from transformers import SchedulerType

    known = [s.value for s in SchedulerType]
    usable = usable_schedulers()
    if name in usable:
        return
    if name in known:
        why = NOT_WITH_TRAINER.get(name, "it needs settings that recipes do not pass")
        raise RecipeError(
            f"{source}: 'training.lr_scheduler' {name!r} can't be used: {why}; use one of {usable}"
        )
    close = difflib.get_close_matches(name, usable, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise RecipeError(f"{source}: 'training.lr_scheduler' is {name!r}, expected one of {usable}{hint}")


def _check(recipe: Recipe, source: str) -> None:
    """Ranges, finiteness and names of every value: all checked before anything is loaded."""
    _check_slug(recipe.name, "name", source)
    if not recipe.stages:
        raise RecipeError(f"{source}: 'stages' must list at least one stage")
    names = [s.name for s in recipe.stages]
    if len(set(names)) != len(names):
        raise RecipeError(f"{source}: stage names must be unique, got {names}")
    for i, stage in enumerate(recipe.stages):
        key = f"stages.{i}"
        _check_slug(stage.name, f"{key}.name", source)
        if not stage.source.strip():
            raise RecipeError(f"{source}: '{key}.source' is empty; give a hub id, a data file or a folder")
        # A stage needs held-out rows: every stage's validation loss is a column of the forgetting matrix.
        _check_range(stage.validation_fraction, f"{key}.validation_fraction", source, 0, 0.5, low_open=True)
        _check_range(stage.replay_fraction, f"{key}.replay_fraction", source, 0, 1)
        _check_range(stage.max_rows, f"{key}.max_rows", source, 1, 10**9, allow_none=True)
        _check_range(stage.epochs, f"{key}.epochs", source, 0, 100, low_open=True)
        _check_range(stage.learning_rate, f"{key}.learning_rate", source, 0, 0.1, low_open=True)
        _check_range(stage.max_length, f"{key}.max_length", source, 16, 1_048_576)
        _check_range(
            stage.max_reply_sentences, f"{key}.max_reply_sentences", source, 1, 10**6, allow_none=True
        )
        _check_method(stage, key, source)
    t = recipe.training
    _check_range(t.micro_batch_size, "training.micro_batch_size", source, 1, 4096)
    _check_range(t.global_batch_size, "training.global_batch_size", source, t.micro_batch_size, 1 << 20)
    if t.global_batch_size % t.micro_batch_size:
        raise RecipeError(f"{source}: training.global_batch_size must be a multiple of micro_batch_size")
    _check_range(t.seed, "training.seed", source, 0, 2**32 - 1)  # numpy's seed range
    _check_range(t.trainable_layers, "training.trainable_layers", source, 1, 10_000, allow_none=True)
    # transformers reads a warmup of 1 or more as a step count: a ratio must stay below 1.
    _check_range(t.warmup_ratio, "training.warmup_ratio", source, 0, 1, high_open=True)
    _check_range(t.weight_decay, "training.weight_decay", source, 0, 1)
    _check_range(t.max_grad_norm, "training.max_grad_norm", source, 0, 1e4)
    _check_range(t.logging_steps, "training.logging_steps", source, 1, 10**9)
    _check_range(t.save_steps, "training.save_steps", source, 1, 10**9)
    _check_range(t.num_threads, "training.num_threads", source, 1, 4096, allow_none=True)
    _check_range(t.lora.r, "training.lora.r", source, 1, 4096)
    _check_range(t.lora.alpha, "training.lora.alpha", source, 0, 1e6, low_open=True)
    _check_range(t.lora.dropout, "training.lora.dropout", source, 0, 1, high_open=True)
    if t.lora.quantize and not t.lora.enabled:
        raise RecipeError(
            f"{source}: 'training.lora.quantize' is {t.lora.quantize!r} but LoRA is off; quantising the base needs "
            "adapters to train: set 'training.lora.enabled: true' (or quantize: null)"
        )
    targets = [t.lora.target_modules] if isinstance(t.lora.target_modules, str) else t.lora.target_modules
    if not targets or not all(x.strip() for x in targets):
        raise RecipeError(
            f"{source}: 'training.lora.target_modules' is empty; use all-linear or module names"
        )
    _check_scheduler(t.lr_scheduler, source)


PREFERENCE_FORMATS = ("preference", "chosen_rejected", "ratings")


def _check_method(stage: StageConfig, key: str, source: str) -> None:
    """A stage's method, its data format and its DPO settings must agree."""
    if stage.method == "sft":
        if stage.format in PREFERENCE_FORMATS:
            raise RecipeError(
                f"{source}: '{key}.format' is {stage.format!r}, a preference format; set '{key}.method: dpo' "
                "to train on preference pairs"
            )
        if stage.dpo != DpoSettings():
            raise RecipeError(
                f"{source}: '{key}.dpo' is set but '{key}.method' is sft; set 'method: dpo' or drop 'dpo'"
            )
        return
    if stage.format not in (*PREFERENCE_FORMATS, "auto"):
        raise RecipeError(
            f"{source}: '{key}.format' is {stage.format!r}, but a dpo stage reads preference pairs; use one of "
            f"{list(PREFERENCE_FORMATS)} or auto"
        )
    if stage.max_reply_sentences is not None:
        raise RecipeError(
            f"{source}: '{key}.max_reply_sentences' cuts SFT replies; a dpo stage compares whole replies, so drop it "
            f"(or cut the pairs' replies in the data)"
        )
    if stage.replay_fraction:
        raise RecipeError(
            f"{source}: '{key}.replay_fraction' is {stage.replay_fraction:g}, but a dpo stage trains on pairs, not "
            "conversations; set it to 0 (later sft stages can still replay its chosen replies)"
        )
    d = stage.dpo
    _check_range(d.beta, f"{key}.dpo.beta", source, 0, 100, low_open=True)
    _check_range(d.label_smoothing, f"{key}.dpo.label_smoothing", source, 0, 0.5, high_open=True)
    _check_range(d.sft_loss_weight, f"{key}.dpo.sft_loss_weight", source, 0, 100)
    if d.loss_type == "exo_pair" and d.label_smoothing == 0:
        raise RecipeError(
            f"{source}: '{key}.dpo.loss_type' exo_pair needs '{key}.dpo.label_smoothing' > 0 (e.g. 0.001)"
        )


def recipe_to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain data (for writing next to every artifact)."""
    return dataclasses.asdict(recipe)


def resolve_source_path(recipe_path: str | Path, source: str) -> str:
    """Local sources in a recipe are relative to the working directory, else to the recipe file.

    Called once, by `load_recipe`; hub ids and paths found in neither place are left as they are."""
    p = Path(source).expanduser()
    if p.is_absolute() or p.exists():
        return source
    candidate = Path(recipe_path).parent / source
    return str(candidate) if candidate.exists() else source
