"""Checks that run before any weights load: the recipe against the model's config, and a resumed
run against the recipe that trained its finished stages."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from warmline.recipe import Recipe, RecipeError, recipe_to_dict

logger = logging.getLogger(__name__)

# Layer types PEFT's LoRA can adapt (GPT-2 uses transformers' Conv1D for its projections).
LORA_LAYER_TYPES = ("Linear", "Conv1D", "Conv1d", "Conv2d", "Embedding")
# Recipe keys that never change the weights: a resume may change them freely.
NOT_WEIGHT_KEYS = {"output_dir", "training.logging_steps", "training.save_steps", "training.num_threads"}


class ResumeMismatchError(RecipeError):
    """`--resume` with a recipe that differs from the one that trained the finished stages."""


def check_against_model(recipe: Recipe, source: str) -> None:
    """Check the recipe against the base model's config and module names, before any weights load.

    The model is built on the meta device (accelerate's `init_empty_weights`): its modules and
    shapes exist, its weights take no memory and no time. Checks `trainable_layers` against the
    number of blocks, each stage's `max_length` against the position limit, and LoRA target modules
    against the module names (PEFT's own matching rule)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from warmline.models import resolve_model
    from warmline.training.train import transformer_blocks

    t = recipe.training
    if t.lora.quantize:  # first: it needs no model, and no amount of downloading fixes it
        check_quantization(t.lora.quantize, source)
    resolved = resolve_model(recipe.base_model)
    config = AutoConfig.from_pretrained(resolved.path)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    n_blocks = len(transformer_blocks(model))
    if t.trainable_layers is not None and not t.lora.enabled and t.trainable_layers > n_blocks:
        raise RecipeError(
            f"{source}: 'training.trainable_layers' is {t.trainable_layers}, but {recipe.base_model} has "
            f"{n_blocks} blocks; use 1..{n_blocks}, or null to train all"
        )
    max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    for i, stage in enumerate(recipe.stages):
        if max_positions and stage.max_length > max_positions:
            raise RecipeError(
                f"{source}: 'stages.{i}.max_length' is {stage.max_length}, but {recipe.base_model} reads at most "
                f"{max_positions} tokens; use 16..{max_positions}"
            )
    if t.lora.enabled:
        check_lora_targets(model, t.lora, recipe.base_model, source)


def check_quantization(quantize: str, source: str) -> None:
    """4-bit QLoRA needs a CUDA GPU and the bitsandbytes package: say so before any weights load,
    naming the alternative that runs here (plain LoRA on the full-precision base)."""
    import importlib.util

    import torch

    plain = (
        "use plain LoRA instead: set 'training.lora.quantize: null' (or --set training.lora.quantize=null)"
    )
    if not torch.cuda.is_available():
        raise RecipeError(
            f"{source}: 'training.lora.quantize: {quantize}' needs a CUDA GPU (bitsandbytes), and none "
            f"is available here; {plain}"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RecipeError(
            f"{source}: 'training.lora.quantize: {quantize}' needs the bitsandbytes package: "
            f"pip install 'warmline[gpu]'; or {plain}"
        )


def check_lora_targets(model, lora, model_name: str, source: str) -> None:
    """Every LoRA target must match an adaptable module of the model, by PEFT's matching rule."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    if lora.target_modules == "all-linear":
        return
    adaptable = {name: m for name, m in model.named_modules() if type(m).__name__ in LORA_LAYER_TYPES}
    leaf_names = sorted({name.rsplit(".", 1)[-1] for name in adaptable})
    targets = [lora.target_modules] if isinstance(lora.target_modules, str) else list(lora.target_modules)
    for target in targets:
        config = LoraConfig(target_modules=target if isinstance(lora.target_modules, str) else [target])
        if not any(check_target_module_exists(config, name) for name in adaptable):
            raise RecipeError(
                f"{source}: 'training.lora.target_modules' entry {target!r} matches no adaptable module of "
                f"{model_name}; its module names are {', '.join(leaf_names)} (or use all-linear)"
            )


def _weight_settings(recipe: dict, n_stages: int) -> dict[str, object]:
    """The flattened recipe values that decide the weights of the first `n_stages` stages."""
    flat: dict[str, object] = {}

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif key not in NOT_WEIGHT_KEYS:
            flat[key] = value

    for key, value in recipe.items():
        if key == "stages":
            for i, stage in enumerate(value[:n_stages]):
                # A key added to the schema after the folder was trained reads as its default.
                stage = {**_stage_defaults(), **stage}
                source = Path(str(stage["source"])).expanduser()
                # The same file, however the recipe's relative path was written.
                stage["source"] = str(source.resolve()) if source.exists() else stage["source"]
                walk(stage, f"stages.{i}")
        else:
            walk(value, key)
    return flat


def _stage_defaults() -> dict[str, object]:
    """Every StageConfig field that has a default, as plain data (as `recipe.yaml` holds it)."""
    import dataclasses

    from warmline.recipe import StageConfig

    out: dict[str, object] = {}
    for f in dataclasses.fields(StageConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def recipe_differences(trained_with: dict, current: dict, n_stages: int) -> list[str]:
    """`key: old -> new` for every weight-relevant value that differs."""
    old, new = _weight_settings(trained_with, n_stages), _weight_settings(current, n_stages)
    if len(trained_with.get("stages", [])) < n_stages:
        return [
            f"stages: the folder was trained as part of a {len(trained_with.get('stages', []))}-stage recipe"
        ]
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]


def check_resume(recipe: Recipe, folders: list[tuple[int, Path]], *, force: bool) -> None:
    """Refuse (unless `force`) to resume when a finished or interrupted stage was trained with a
    different recipe: its weights would then not be what the recipe and the final manifest say.

    `folders`: (stage number, folder holding the `recipe.yaml` that trained it)."""
    current = recipe_to_dict(recipe)
    for number, folder in folders:
        recipe_file = folder / "recipe.yaml"
        if not recipe_file.is_file():
            continue
        trained_with = yaml.safe_load(recipe_file.read_text(encoding="utf-8")) or {}
        diffs = recipe_differences(trained_with, current, number)
        if not diffs:
            continue
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        if not force:
            raise ResumeMismatchError(
                f"{folder} was trained with a different recipe ({shown}); resume with the recipe that trained "
                "it, start a new run (another `name`), or pass --force to keep its weights anyway"
            )
        logger.warning("--force: keeping %s, trained with a different recipe (%s)", folder, shown)
