"""Sequential fine-tuning: stage after stage, each starting from the previous stage's weights.

`train_recipe` reads top to bottom: load -> prepare data -> for each stage: train, evaluate on
every stage's validation split, save -> final model -> sample replies. Training itself is handed
to TRL's SFTTrainer (padding-free batches with per-example position ids, assistant-only labels
and trained EOS from our tokeniser, bf16 autocast where the hardware has it).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from warmline.data.cleaning import StageData, prepare_stage
from warmline.data.tokens import (
    PLAIN_CHAT_TEMPLATE,
    TokenizedExample,
    tokenize_conversation,
    tokenize_prototype,
)
from warmline.evaluation.loss import evaluate_loss
from warmline.hardware import configure_threads, resolve_precision
from warmline.models import load_model, load_tokenizer
from warmline.recipe import Recipe, StageConfig, recipe_to_dict, resolve_source_path
from warmline.training.manifest import file_sha256, write_manifest

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "warmline_checkpoint_complete"
STAGE_FILES = ("recipe.yaml", "data_stats.json", "metrics.jsonl", "manifest.json")


@dataclass
class PreparedStage:
    """A stage's config, its cleaned data and its tokenised splits."""

    index: int  # 1-based
    config: StageConfig
    data: StageData
    train: list[TokenizedExample]
    validation: list[TokenizedExample]

    @property
    def dirname(self) -> str:
        return f"stage-{self.index:02d}-{self.config.name}"


def stage_dir(run_dir: Path, stage: PreparedStage) -> Path:
    return run_dir / stage.dirname


def tokenize_all(tokenizer, convs, max_length: int, prototype: bool) -> tuple[list[TokenizedExample], int]:
    """Tokenise conversations; drop those left with no labelled token; count truncations."""
    out, truncated = [], 0
    for conv in convs:
        ex = tokenize_prototype(tokenizer, conv, max_length) if prototype else tokenize_conversation(
            tokenizer, conv, max_length
        )
        truncated += ex.truncated
        if any(label != -100 for label in ex.labels):
            out.append(ex)
    return out, truncated


def prepare_stages(recipe: Recipe, recipe_path: Path | None, tokenizer) -> list[PreparedStage]:
    prepared = []
    for i, stage in enumerate(recipe.stages, start=1):
        if recipe_path is not None:
            stage.source = resolve_source_path(recipe_path, stage.source)
        data = prepare_stage(stage, seed=recipe.training.seed, system_prompt=recipe.system_prompt)
        train, trunc_t = tokenize_all(tokenizer, data.train, stage.max_length, recipe.baseline_prototype)
        val, trunc_v = tokenize_all(tokenizer, data.validation, stage.max_length, recipe.baseline_prototype)
        data.cleaned["truncated_to_max_length"] = trunc_t + trunc_v
        logger.info(
            "stage %d '%s': %d train / %d validation conversations (%d read, %d duplicates, dropped %s)",
            i, stage.name, len(train), len(val), data.rows_read, data.duplicates, data.dropped,
        )  # fmt: skip
        prepared.append(PreparedStage(i, stage, data, train, val))
    return prepared


def replay_examples(stages: list[PreparedStage], current: PreparedStage, seed: int) -> list[TokenizedExample]:
    """Earlier stages' training examples mixed into this stage: replay_fraction x this stage's size."""
    pool = [ex for s in stages if s.index < current.index for ex in s.train]
    n = round(current.config.replay_fraction * len(current.train))
    if not pool or n == 0:
        return []
    rng = random.Random(seed + current.index)
    return rng.sample(pool, n) if n <= len(pool) else [rng.choice(pool) for _ in range(n)]


def evaluate_all(model, stages: list[PreparedStage], precision: str) -> dict[str, dict]:
    """Validation loss on every stage's validation split (a row of the forgetting matrix)."""
    return {s.config.name: evaluate_loss(model, s.validation, precision=precision) for s in stages}


def train_recipe(recipe: Recipe, *, recipe_path: Path | None = None, resume: bool = False, samples: int = 0) -> Path:
    """Train every stage of a recipe in order; returns the final model folder."""
    started = time.time()
    run_dir = recipe.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    logger.info("recipe:\n%s", yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    threads = configure_threads(recipe.training.num_threads)
    precision = resolve_precision(recipe.training.precision)
    logger.info("precision %s, %d threads", precision, threads)

    # --- load ---------------------------------------------------------------------------
    tokenizer = load_tokenizer(recipe.base_model)
    if not tokenizer.chat_template or recipe.baseline_prototype:
        # The prototype trained and prompted with plain "Human/Assistant" text: its model folders
        # carry that template so every tool prompts them the way they were trained.
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE

    # --- prepare data (every stage up front: replay and the forgetting matrix need them all) --
    stages = prepare_stages(recipe, recipe_path, tokenizer)
    metrics_path = run_dir / "metrics.jsonl"
    if not resume and metrics_path.exists():
        metrics_path.unlink()

    # --- row 0 of the forgetting matrix: the base model ---------------------------------
    forgetting_path = run_dir / "forgetting.json"
    forgetting = json.loads(forgetting_path.read_text()) if resume and forgetting_path.exists() else {}
    if "base" not in forgetting:
        base = load_model(recipe.base_model)
        forgetting["base"] = evaluate_all(base, stages, precision)
        del base
        _write_json(forgetting_path, forgetting)

    # --- train the stages in order ------------------------------------------------------
    previous = recipe.base_model
    for stage in stages:
        out = stage_dir(run_dir, stage)
        if resume and (out / "config.json").is_file():
            logger.info("stage %d '%s' already finished: skipping", stage.index, stage.config.name)
            previous = str(out)
            continue
        model = train_stage(recipe, stage, stages, previous, tokenizer, precision, run_dir, resume=resume)
        forgetting[stage.config.name] = evaluate_all(model, stages, precision)
        del model
        _write_json(forgetting_path, forgetting)
        _append_metrics(metrics_path, {"event": "stage_end", "stage": stage.config.name,
                                       "validation": forgetting[stage.config.name]})  # fmt: skip
        previous = str(out)

    # --- final model --------------------------------------------------------------------
    final = run_dir / "final"
    if _process_state().is_main_process:
        _publish_copy(Path(previous), final)
        write_manifest(final, recipe=recipe, stages=stages, wall_time_s=time.time() - started,
                       extra={"source_stage": Path(previous).name})  # fmt: skip
    _process_state().wait_for_everyone()
    _print_summary(forgetting, stages)
    logger.info("final model: %s (%.0f s)", final, time.time() - started)
    if samples:
        print_sample_replies(final, samples, system_prompt=recipe.system_prompt)
    return final


def train_stage(
    recipe: Recipe,
    stage: PreparedStage,
    stages: list[PreparedStage],
    init_from: str,
    tokenizer,
    precision: str,
    run_dir: Path,
    *,
    resume: bool,
):
    """Train one stage from `init_from` with a fresh optimizer and schedule; publish it atomically.

    Returns the trained model (in memory), so the caller can evaluate it without reloading."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from warmline.training.callbacks import CheckpointMarker, MetricsLogger

    cfg, t = stage.config, recipe.training
    work = run_dir / ".work" / stage.dirname
    if not resume and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    model = load_model(init_from)
    model.config.use_cache = False  # packed batches must not see a cache (and training needs none)
    if t.trainable_layers is not None and not t.lora.enabled:
        freeze_below(model, t.trainable_layers)
    replay = replay_examples(stages, stage, t.seed)
    train_examples = stage.train + replay
    logger.info("stage %d '%s': %d examples (%d replayed from earlier stages), init from %s",
                stage.index, cfg.name, len(train_examples), len(replay), init_from)  # fmt: skip
    train_ds = datasets.Dataset.from_dict(
        {"input_ids": [e.input_ids for e in train_examples], "labels": [e.labels for e in train_examples]}
    )
    prototype = recipe.baseline_prototype
    args = SFTConfig(
        output_dir=str(work),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=max(1, t.global_batch_size // t.micro_batch_size),
        lr_scheduler_type="constant_with_warmup" if prototype else t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not _cuda_available(),
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=1,
        eval_strategy="no",  # validation runs in MetricsLogger, token-weighted, on every epoch
        report_to=["tensorboard"] if _has_tensorboard() else [],
        include_num_input_tokens_seen="all",
        dataloader_num_workers=0,
        max_length=None,  # our tokeniser already truncated to the stage's max_length
        # TRL's SFTConfig turns activation checkpointing ON by default (transformers' does not):
        # the recipe decides. Recomputing activations saves memory and costs ~1/3 more compute.
        activation_checkpointing=t.gradient_checkpointing,
        # One example per micro-batch needs neither padding nor packing.
        padding_free=t.packing and not prototype and t.micro_batch_size > 1,
        pad_to_multiple_of=512 if prototype else None,
        packing=False,
        dataset_num_proc=None,
        remove_unused_columns=True,
        disable_tqdm=False,
        save_only_model=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                         peft_config=_peft_config(t.lora))  # fmt: skip
    metrics_logger = MetricsLogger(
        metrics_path=run_dir / "metrics.jsonl",
        stage_name=cfg.name,
        validation=stage.validation,
        precision=precision,
        useful_tokens_per_epoch=sum(sum(lbl != -100 for lbl in e.labels) for e in train_examples),
    )
    trainer.add_callback(metrics_logger)
    trainer.add_callback(CheckpointMarker(COMPLETE_MARKER))
    waste = padding_waste([len(e.input_ids) for e in train_examples], t.micro_batch_size,
                          padding_free=args.padding_free, pad_to_multiple_of=args.pad_to_multiple_of)  # fmt: skip
    logger.info("stage '%s': padding waste %.1f%% of processed tokens", cfg.name, 100 * waste)
    checkpoint = latest_complete_checkpoint(work) if resume else None
    if checkpoint:
        logger.info("resuming stage '%s' from %s", cfg.name, checkpoint)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    # --- save: weights + tokenizer + self-description, published by an atomic rename ---------
    model = trainer.model
    if t.lora.enabled:
        model = model.merge_and_unload()
    model.config.use_cache = True
    # Under `accelerate launch` every process trains; only the main one writes the stage folder,
    # and the others wait for it before the next stage loads it.
    state = _process_state()
    if state.is_main_process:
        tmp = run_dir / f".{stage.dirname}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
        stats = stage.data.stats()
        stats.update(train_examples=len(stage.train), replay_examples=len(replay),
                     validation_examples=len(stage.validation), padding_waste=round(waste, 4))  # fmt: skip
        _write_json(tmp / "data_stats.json", stats)
        if (run_dir / "metrics.jsonl").exists():
            shutil.copy(run_dir / "metrics.jsonl", tmp / "metrics.jsonl")
        write_manifest(tmp, recipe=recipe, stages=stages, wall_time_s=metrics_logger.elapsed_s(),
                       extra={"stage": cfg.name, "init_from": init_from, "precision": precision})  # fmt: skip
        out = stage_dir(run_dir, stage)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    state.wait_for_everyone()
    shutil.rmtree(work, ignore_errors=True)
    return model


def padding_waste(lengths: list[int], micro_batch_size: int, *, padding_free: bool,
                  pad_to_multiple_of: int | None) -> float:  # fmt: skip
    """Share of processed tokens that are padding (0 when padding-free; batches taken in order)."""
    if padding_free or not lengths:
        return 0.0
    padded = 0
    for i in range(0, len(lengths), micro_batch_size):
        batch = lengths[i : i + micro_batch_size]
        width = max(batch)
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        padded += width * len(batch)
    return 1.0 - sum(lengths) / padded


def transformer_blocks(model):
    """The model's stack of transformer blocks (the ModuleList with one entry per layer)."""
    import torch

    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"could not find the {n_layers} transformer blocks of {type(model).__name__}")


def freeze_below(model, trainable_layers: int) -> None:
    """Train only the top `trainable_layers` blocks and the final norm; freeze the rest.

    Embeddings (and a tied output head) stay frozen, so backpropagation stops at the lowest
    trained block instead of running through the whole network.
    """
    import torch

    blocks = list(transformer_blocks(model))
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    keep = {id(p) for block in blocks[-trainable_layers:] for p in block.parameters()}
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    for module in model.modules():  # the final norm: a norm layer outside the blocks
        is_norm = isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
        if is_norm:
            keep.update(id(p) for p in module.parameters() if id(p) not in in_blocks and id(p) not in embeddings)
    for param in model.parameters():
        param.requires_grad = id(param) in keep
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("training the top %d blocks: %.1fM of %.1fM parameters", trainable_layers, n_train / 1e6,
                sum(p.numel() for p in model.parameters()) / 1e6)  # fmt: skip


def latest_complete_checkpoint(work: Path) -> Path | None:
    """The newest checkpoint that finished writing (it carries the completion marker)."""
    done = [p for p in work.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _peft_config(lora):
    if not lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, task_type="CAUSAL_LM")  # fmt: skip


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _process_state():
    from accelerate import PartialState

    return PartialState()


def _write_json(path: Path, data) -> None:
    if not _process_state().is_main_process:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _append_metrics(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _publish_copy(src: Path, dst: Path) -> None:
    """Copy a finished model folder (hard links where possible) and rename it into place."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)

    def link_or_copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, tmp, copy_function=link_or_copy)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def _print_summary(forgetting: dict, stages: list[PreparedStage]) -> None:
    names = [s.config.name for s in stages]
    rows = ["validation loss (rows: after stage; columns: stage's validation split)",
            "after".ljust(14) + "".join(n[:12].rjust(13) for n in names)]  # fmt: skip
    for row_name, row in forgetting.items():
        rows.append(row_name[:13].ljust(14) + "".join(f"{row[n]['loss']:13.3f}" for n in names if n in row))
    print("\n".join(rows), flush=True)


def print_sample_replies(model_dir: Path, n: int, *, system_prompt: str | None = None) -> None:
    """Print n replies of the final model to fixed prompts (sampled with a fixed seed), with the
    system prompt it was trained with."""
    from warmline.serving.generator import SAMPLE_PROMPTS, Generator

    gen = Generator.from_pretrained(str(model_dir))
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for prompt in SAMPLE_PROMPTS[:n]:
        result = gen.generate([*system, {"role": "user", "content": prompt}], seed=0)
        print(f"\n> {prompt}\n{result.text}\n[stopped by {result.stop_reason} after {result.new_tokens} tokens]",
              flush=True)  # fmt: skip


__all__ = ["train_recipe", "train_stage", "latest_complete_checkpoint", "file_sha256"]
