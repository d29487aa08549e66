"""Sequential fine-tuning: stage after stage, each starting from the previous stage's weights.

`train_recipe` reads top to bottom: check -> load -> prepare data -> for each stage: train,
evaluate on every stage's validation split, publish -> final model -> sample replies. A stage is
trained in named steps (torchtune's `_setup_*` recipe steps), which benchmarks and tests call too:

    build_training_args   the recipe's stage -> TRL's SFTConfig
    build_stage_trainer   the model, our pre-tokenised dataset and callbacks -> a ready SFTTrainer
    run_stage_training    train (from the newest complete checkpoint on --resume)
    publish_stage         weights + tokenizer + self-description, renamed into place atomically

Training itself is handed to TRL's SFTTrainer (padding-free batches with per-example position
ids, assistant-only labels and trained EOS from our tokeniser, bf16 autocast where the hardware
has it); the one thing changed is that warm-up starts above learning rate 0 (`warmup_from_first_step`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from warmline.data.cleaning import StageData, data_problems, prepare_stage
from warmline.data.tokens import (
    PLAIN_CHAT_TEMPLATE,
    TokenizedExample,
    tokenize_conversation,
    tokenize_prototype,
)
from warmline.evaluation.loss import evaluate_loss
from warmline.hardware import cap_onednn_cache, configure_threads, physical_cores, resolve_precision
from warmline.models import load_model, load_tokenizer
from warmline.recipe import Recipe, RecipeError, StageConfig, recipe_to_dict
from warmline.training.manifest import file_sha256, write_json_atomic, write_manifest

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "warmline_checkpoint_complete"
STAGE_FILES = ("recipe.yaml", "data_stats.json", "metrics.jsonl", "manifest.json")
PADDING_ORDERS = 16  # random batch orders averaged when the padding share depends on the order


@dataclass
class PreparedStage:
    """A stage's config, its cleaned data and its tokenised splits."""

    index: int  # 1-based
    config: StageConfig
    data: StageData
    train: list[TokenizedExample]
    validation: list[TokenizedExample]
    # A dpo stage's tokenised pairs (`train`/`validation` then hold its chosen replies).
    train_pairs: list = field(default_factory=list)
    validation_pairs: list = field(default_factory=list)

    @property
    def dirname(self) -> str:
        return f"stage-{self.index:02d}-{self.config.name}"

    @property
    def key(self) -> str:
        """The stage's key in the recipe, for error messages (`stages.0`)."""
        return f"stages.{self.index - 1}"


def stage_dir(run_dir: Path, stage: PreparedStage) -> Path:
    return run_dir / stage.dirname


def is_published(folder: Path) -> bool:
    """A stage or final folder exists only once complete: it is renamed into place last."""
    return (folder / "config.json").is_file() and (folder / "manifest.json").is_file()


def tokenize_all(tokenizer, convs, max_length: int, prototype: bool) -> tuple[list[TokenizedExample], int]:
    """Tokenise conversations; drop those left with no labelled token; count truncations."""
    out, truncated = [], 0
    for conv in convs:
        ex = (
            tokenize_prototype(tokenizer, conv, max_length)
            if prototype
            else tokenize_conversation(tokenizer, conv, max_length)
        )
        truncated += ex.truncated
        if any(label != -100 for label in ex.labels):
            out.append(ex)
    return out, truncated


def load_training_tokenizer(recipe: Recipe):
    """The base model's tokenizer with the chat template training uses (and saves with every stage).

    The prototype trained and prompted with plain "Human/Assistant" text, and models without a
    template get the same: their folders carry it, so every tool prompts them as they were trained."""
    tokenizer = load_tokenizer(recipe.base_model)
    if not tokenizer.chat_template or recipe.baseline_prototype:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer


def prepare_stages(recipe: Recipe, tokenizer, source: str = "recipe") -> list[PreparedStage]:
    """Read, clean, split and tokenise every stage; a stage that can't train is an error here,
    before any weights load (no validation rows, all rows dropped, less than one optimizer step)."""
    prepared = []
    t = recipe.training
    for i, stage in enumerate(recipe.stages, start=1):
        data = prepare_stage(stage, seed=t.seed, system_prompt=recipe.system_prompt)
        problems = data_problems(
            data, f"stages.{i - 1}", global_batch_size=t.global_batch_size, epochs=stage.epochs
        )
        if problems:
            raise RecipeError(f"{source}: {problems[0]}")
        train, trunc_t = tokenize_all(tokenizer, data.train, stage.max_length, recipe.baseline_prototype)
        val, trunc_v = tokenize_all(tokenizer, data.validation, stage.max_length, recipe.baseline_prototype)
        data.cleaned["truncated_to_max_length"] = trunc_t + trunc_v
        pairs: tuple[list, list] = ([], [])
        if stage.method == "dpo":  # pairs; the chosen replies are its train/validation examples
            from warmline.training.preference import tokenize_stage_pairs

            pairs, train, val = tokenize_stage_pairs(tokenizer, data, stage.max_length)
        if not train or not val:
            raise RecipeError(
                f"{source}: 'stages.{i - 1}' ({stage.name}): no {'training' if not train else 'validation'} example "
                f"keeps an assistant token within max_length {stage.max_length}; raise 'stages.{i - 1}.max_length'"
            )
        logger.info(
            "stage %d '%s': %d train / %d validation conversations (%d read, %d duplicates, dropped %s)",
            i,
            stage.name,
            len(train),
            len(val),
            data.rows_read,
            data.duplicates,
            data.dropped,
        )
        prepared.append(PreparedStage(i, stage, data, train, val, *pairs))
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
    return {s.config.name: evaluate_gathered(model, s.validation, precision=precision) for s in stages}


def evaluate_gathered(model, examples: list[TokenizedExample], *, precision: str) -> dict[str, float]:
    """`evaluate_loss` under `accelerate launch`: each process scores every N-th example and the
    summed losses and token counts are added up across processes, so the result is the same
    token-weighted mean a single process computes (up to float summation order). Every process
    must call it (it is a collective); with one process it is `evaluate_loss` itself."""
    state = _process_state()
    if state.num_processes == 1:
        return evaluate_loss(model, examples, precision=precision)
    import torch
    import torch.distributed as dist

    shard = examples[state.process_index :: state.num_processes]
    part = evaluate_loss(model, shard, precision=precision) if shard else {"loss": 0.0, "tokens": 0}
    # float64: a sum of per-token losses over a large split keeps its digits
    totals = torch.tensor(
        [part["loss"] * part["tokens"] if part["tokens"] else 0.0, float(part["tokens"])],
        dtype=torch.float64,
        device=state.device,
    )
    dist.all_reduce(totals)
    loss_sum, tokens = totals.tolist()
    loss = loss_sum / max(tokens, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": int(tokens)}


def accumulation_steps(global_batch_size: int, micro_batch_size: int, num_processes: int, source: str) -> int:
    """Micro-batches each process accumulates per optimizer step, so that a step sees the recipe's
    global batch whatever the number of processes: global / (micro x processes)."""
    per_step = micro_batch_size * num_processes
    if global_batch_size % per_step:
        fits = [
            n
            for n in range(1, global_batch_size // micro_batch_size + 1)
            if global_batch_size % (micro_batch_size * n) == 0
        ]
        raise RecipeError(
            f"{source}: 'training.global_batch_size' {global_batch_size} is not a multiple of micro_batch_size "
            f"{micro_batch_size} x {num_processes} processes; change global_batch_size or micro_batch_size, or "
            f"launch with --num_processes in {fits}"
        )
    return global_batch_size // per_step


def train_recipe(
    recipe: Recipe,
    *,
    recipe_path: Path | None = None,
    resume: bool = False,
    force: bool = False,
    samples: int = 0,
) -> Path:
    """Train every stage of a recipe in order; returns the final model folder.

    `resume` skips published stages (writing any forgetting row a kill left out) and continues an
    interrupted one from its newest complete checkpoint; it refuses a recipe that differs from
    the one that trained them unless `force`."""
    from warmline.training.checks import check_against_model, check_resume

    started = time.time()
    source, run_dir = str(recipe_path or "recipe"), recipe.run_dir
    logger.info("recipe:\n%s", yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    check_launch()
    state = _process_state()  # under `accelerate launch`: this process's rank among N
    t = recipe.training
    if not _cuda_available():
        cap_onednn_cache()  # before the first matmul: oneDNN reads it once
    # Processes on one machine share its cores: each gets its share (set num_threads to override).
    threads = configure_threads(t.num_threads or max(1, physical_cores() // _local_processes()))
    precision = resolve_precision(t.precision)
    logger.info(
        "precision %s, %d threads, process %d of %d",
        precision,
        threads,
        state.process_index + 1,
        state.num_processes,
    )

    # --- check and prepare everything before any weights load ---------------------------
    accumulation_steps(t.global_batch_size, t.micro_batch_size, state.num_processes, source)
    check_against_model(recipe, source)  # the config and module names, on the meta device
    tokenizer = load_training_tokenizer(recipe)
    stages = prepare_stages(recipe, tokenizer, source)  # every stage: replay and forgetting need them all
    if resume:
        check_resume(recipe, _trained_folders(run_dir, stages), force=force)
    metrics_path, forgetting_path = run_dir / "metrics.jsonl", run_dir / "forgetting.json"
    # Only the main process writes files; the others wait for it wherever they read them next.
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and metrics_path.exists():
            metrics_path.unlink()
    state.wait_for_everyone()

    # --- row 0 of the forgetting matrix: the base model ---------------------------------
    forgetting = json.loads(forgetting_path.read_text()) if resume and forgetting_path.exists() else {}
    if "base" not in forgetting:
        forgetting["base"] = evaluate_all(load_model(recipe.base_model), stages, precision)
        _write_forgetting(forgetting_path, forgetting, stages)

    # --- train the stages in order (a published stage is skipped; its row written if missing) --
    previous = recipe.base_model
    for stage in stages:
        out = stage_dir(run_dir, stage)
        if resume and is_published(out):
            logger.info("stage %d '%s' already finished: skipping", stage.index, stage.config.name)
            if state.is_main_process and (run_dir / ".work" / stage.dirname).exists():
                remove_tree(
                    run_dir / ".work" / stage.dirname, run_dir
                )  # killed after publishing, before cleanup
            model = load_model(str(out)) if stage.config.name not in forgetting else None
        else:
            model = train_stage(recipe, stage, stages, previous, tokenizer, precision, run_dir, resume=resume)
        if model is not None:  # a new stage, or one killed after publishing, before its row
            forgetting[stage.config.name] = evaluate_all(model, stages, precision)
            if stage.config.method == "dpo":  # held-out pairs: pre-DPO model vs this stage
                from warmline.training.preference import record_preferences

                before = forgetting[stages[stage.index - 2].config.name if stage.index > 1 else "base"]
                record_preferences(
                    run_dir,
                    stage,
                    model,
                    previous,
                    precision,
                    before=before,
                    after=forgetting[stage.config.name],
                    write=state.is_main_process,
                )
            del model
            from warmline.training.callbacks import release_memory

            release_memory()  # the stage's model, trainer and optimizer state, before the next loads
            _write_forgetting(forgetting_path, forgetting, stages)
            if state.is_main_process:
                _append_metrics(
                    metrics_path,
                    {
                        "event": "stage_end",
                        "stage": stage.config.name,
                        "validation": forgetting[stage.config.name],
                    },
                )
        previous = str(out)

    # --- final model: a copy of the last stage, with that stage's manifest -------------------
    final = run_dir / "final"
    if state.is_main_process:
        publish_final(Path(previous), final, run_dir, run_wall_time_s=time.time() - started)
    state.wait_for_everyone()
    if not state.is_main_process:
        return final
    _print_summary(forgetting, stages)
    logger.info("final model: %s (%.0f s)", final, time.time() - started)
    if samples:
        print_sample_replies(final, samples, system_prompt=recipe.system_prompt)
    return final


# ---------------------------------------------------------------------------------------------
# One stage, in named steps: build the config, build the trainer, train, publish


@dataclass
class StageTrainer:
    """A stage's SFTTrainer, built and ready to train, with what publishing the stage needs."""

    stage: PreparedStage
    trainer: object  # trl.SFTTrainer (imported lazily: TRL takes seconds to import)
    init_from: str
    work_dir: Path
    run_dir: Path
    train_examples: list[TokenizedExample]
    replay: list[TokenizedExample]
    metrics: object  # MetricsLogger
    padding: dict = field(default_factory=dict)
    quantized: bool = False  # QLoRA: the trained base is 4-bit; merge into a full-precision copy


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
    built = build_stage_trainer(
        recipe, stage, stages, init_from, tokenizer, precision, run_dir, resume=resume
    )
    model = run_stage_training(built, resume=resume)
    publish_stage(built, model, recipe=recipe, stages=stages, tokenizer=tokenizer, precision=precision)
    return model


def build_training_args(recipe: Recipe, stage: PreparedStage, work_dir: Path, precision: str):
    """TRL's SFTConfig for one stage: the recipe's values, and the settings warmline relies on."""
    from trl import SFTConfig

    t = recipe.training
    prototype = recipe.baseline_prototype
    return SFTConfig(
        **trainer_arguments(recipe, stage, work_dir, precision),
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
    )


def trainer_arguments(recipe: Recipe, stage: PreparedStage, work_dir: Path, precision: str) -> dict:
    """The Trainer settings every stage shares, SFT or DPO: schedule, batch, precision, logging,
    crash-safe checkpoints (the trainer-specific ones are added by each stage's config)."""
    cfg, t = stage.config, recipe.training
    prototype = recipe.baseline_prototype
    return dict(
        output_dir=str(work_dir),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=t.micro_batch_size,
        # The recipe's global batch whatever the number of processes (checked before weights load).
        gradient_accumulation_steps=accumulation_steps(
            t.global_batch_size, t.micro_batch_size, _process_state().num_processes, "recipe"
        ),
        lr_scheduler_type="constant_with_warmup" if prototype else t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the stage's steps (recipe-checked)
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
        # CheckpointMarker rotates: the Trainer would delete the old checkpoint before the new one
        # is marked complete, so a kill in between would lose the stage's progress.
        save_total_limit=None,
        eval_strategy="no",  # validation runs in MetricsLogger, token-weighted, on every epoch
        report_to=["tensorboard"] if _has_tensorboard() else [],
        include_num_input_tokens_seen="all",
        dataloader_num_workers=0,
        disable_tqdm=False,
        save_only_model=False,
    )


def build_stage_trainer(
    recipe: Recipe,
    stage: PreparedStage,
    stages: list[PreparedStage],
    init_from: str,
    tokenizer,
    precision: str,
    run_dir: Path,
    *,
    resume: bool = False,
    callbacks: tuple = (),
) -> StageTrainer:
    """The stage's model (from `init_from`, top blocks trainable), its examples (plus replay) and a
    ready SFTTrainer with our callbacks (metrics, checkpoint markers) and any extra `callbacks`."""
    import datasets
    import torch

    from warmline.training.callbacks import CheckpointMarker, MemoryTrim, MetricsLogger

    t = recipe.training
    work = run_dir / ".work" / stage.dirname
    state = _process_state()
    if state.is_main_process:
        if not resume and work.exists():
            remove_tree(work, run_dir)
        work.mkdir(parents=True, exist_ok=True)
        # What trained this stage's checkpoints: a resume compares it with its own recipe.
        (work / "recipe.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    state.wait_for_everyone()
    model = load_stage_model(init_from, t.lora)
    model.config.use_cache = False  # packed batches must not see a cache (and training needs none)
    if t.trainable_layers is not None and not t.lora.enabled:
        freeze_below(model, t.trainable_layers)
    if stage.config.method == "dpo":  # preference pairs: TRL's DPOTrainer, the same steps around it
        from warmline.training.preference import build_preference_trainer

        return build_preference_trainer(
            recipe, stage, model, init_from, tokenizer, precision, run_dir, work, callbacks=callbacks
        )
    replay = replay_examples(stages, stage, t.seed)
    train_examples = stage.train + replay
    logger.info(
        "stage %d '%s': %d examples (%d replayed from earlier stages), init from %s",
        stage.index,
        stage.config.name,
        len(train_examples),
        len(replay),
        init_from,
    )
    train_ds = datasets.Dataset.from_dict(
        {"input_ids": [e.input_ids for e in train_examples], "labels": [e.labels for e in train_examples]}
    )
    args = build_training_args(recipe, stage, work, precision)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=_peft_config(t.lora),
    )
    metrics = MetricsLogger(
        metrics_path=run_dir / "metrics.jsonl",
        stage_name=stage.config.name,
        validation=stage.validation,
        precision=precision,
        useful_tokens_per_epoch=sum(sum(lbl != -100 for lbl in e.labels) for e in train_examples),
    )
    on_cpu = not torch.cuda.is_available()
    for callback in (
        metrics,
        CheckpointMarker(COMPLETE_MARKER),
        *((MemoryTrim(),) if on_cpu else ()),
        *callbacks,
    ):
        trainer.add_callback(callback)
    padding = padding_stats(
        [len(e.input_ids) for e in train_examples],
        t.micro_batch_size,
        seed=t.seed,
        padding_free=args.padding_free,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )
    logger.info("stage '%s': padding %s", stage.config.name, padding)
    return StageTrainer(
        stage,
        trainer,
        init_from,
        work,
        run_dir,
        train_examples,
        replay,
        metrics,
        padding,
        quantized=t.lora.quantize is not None,
    )


def run_stage_training(built: StageTrainer, *, resume: bool):
    """Train (on `resume`, from the newest complete checkpoint, dropping the killed attempt's
    metrics after it); returns the trained model with LoRA adapters merged."""
    from warmline.training.callbacks import trim_metrics

    name = built.stage.config.name
    checkpoint = latest_complete_checkpoint(built.work_dir) if resume else None
    if resume:
        step = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
        if _process_state().is_main_process:
            trim_metrics(built.run_dir / "metrics.jsonl", name, keep_through_step=step)
        _process_state().wait_for_everyone()
    if checkpoint:
        logger.info("resuming stage '%s' from %s", name, checkpoint)
    built.trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    model = built.trainer.model
    if built.quantized:  # QLoRA: the adapters go onto full-precision weights, never the 4-bit ones
        model = merge_into_full_precision(model, built.init_from)
    elif hasattr(model, "merge_and_unload"):  # LoRA: plain weights that transformers loads alone
        model = model.merge_and_unload()
    model.config.use_cache = True
    return model


def quantization_config(lora):
    """transformers' BitsAndBytesConfig for `lora.quantize` (QLoRA's settings: NF4 weights, double
    quantisation of the scales, bf16 compute), or None for a full-precision base."""
    if lora.quantize is None:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def load_stage_model(init_from: str, lora):
    """The stage's starting weights: full precision (fp32; autocast does the rest), or with QLoRA the
    same weights quantised to 4-bit on this process's GPU (recipe-checked: CUDA and bitsandbytes)."""
    if lora.quantize is None:
        return load_model(init_from)
    import torch
    from transformers import AutoModelForCausalLM

    from warmline.models import resolve_model

    return AutoModelForCausalLM.from_pretrained(
        resolve_model(init_from).path,
        quantization_config=quantization_config(lora),
        dtype=torch.bfloat16,
        device_map={"": _process_state().local_process_index},  # one whole copy per process (DDP)
    )


def merge_into_full_precision(peft_model, init_from: str):
    """The stage's LoRA adapters merged into a full-precision copy of the weights they trained on.

    Merging into 4-bit weights would round the update away (and re-quantise the base at every
    stage); instead the trained adapter tensors are copied onto the fp32 base loaded afresh from
    `init_from`, and merged there. Returns a plain transformers model."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    adapters = {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(peft_model).items()}
    config = peft_model.peft_config[peft_model.active_adapter]
    full = get_peft_model(load_model(init_from), config)
    result = set_peft_model_state_dict(full, adapters)
    if result.unexpected_keys:
        raise RuntimeError(
            f"LoRA adapters did not fit the full-precision model: {result.unexpected_keys[:3]}"
        )
    return full.merge_and_unload()


def publish_stage(
    built: StageTrainer, model, *, recipe: Recipe, stages: list[PreparedStage], tokenizer, precision: str
) -> Path:
    """Write weights, tokenizer and self-description under a temporary name, then rename the
    folder into place: a stage folder exists only once complete. Returns the stage folder."""
    stage, run_dir = built.stage, built.run_dir
    out = stage_dir(run_dir, stage)
    # Under `accelerate launch` every process trains; only the main one writes the stage folder,
    # and the others wait for it before the next stage loads it.
    state = _process_state()
    if state.is_main_process:
        tmp = run_dir / f".{stage.dirname}.tmp"
        if tmp.exists():
            remove_tree(tmp, run_dir)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
        stats = stage.data.stats()
        stats.update(
            train_examples=len(stage.train),
            replay_examples=len(built.replay),
            validation_examples=len(stage.validation),
            **built.padding,
        )
        write_json_atomic(tmp / "data_stats.json", stats)
        if (run_dir / "metrics.jsonl").exists():
            shutil.copy(run_dir / "metrics.jsonl", tmp / "metrics.jsonl")
        write_manifest(
            tmp,
            recipe=recipe,
            stages=stages,
            wall_time_s=built.metrics.elapsed_s(),
            extra={"stage": stage.config.name, "init_from": built.init_from, "precision": precision},
        )
        _replace_folder(tmp, out, run_dir)
        remove_tree(built.work_dir, run_dir)
    state.wait_for_everyone()
    return out


def publish_final(stage_folder: Path, final: Path, run_dir: Path, *, run_wall_time_s: float) -> None:
    """`final/`: the last stage's folder (hard links where possible) with that stage's manifest,
    so it describes exactly the weights beside it, plus which stage it is and the run's wall time."""
    tmp = run_dir / f".{final.name}.tmp"
    if tmp.exists():
        remove_tree(tmp, run_dir)

    def link_or_copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(stage_folder, tmp, copy_function=link_or_copy)
    manifest = json.loads((stage_folder / "manifest.json").read_text())
    manifest.update(source_stage=stage_folder.name, run_wall_time_s=round(run_wall_time_s, 1))
    write_json_atomic(tmp / "manifest.json", manifest)  # replaces the link: the stage's copy is untouched
    _replace_folder(tmp, final, run_dir)


def padding_stats(
    lengths: list[int],
    micro_batch_size: int,
    *,
    padding_free: bool,
    pad_to_multiple_of: int | None,
    seed: int = 0,
) -> dict[str, float | str]:
    """Share of processed tokens that are padding, as data_stats.json records it.

    Exact (`padding_waste`) when the batch order can't change it: padding-free batches, one example
    per micro-batch, or every example padded to the same multiple. Otherwise the Trainer's shuffle
    decides it, so this is an estimate (`padding_waste_estimate`): the mean over random orders."""
    if padding_free or not lengths:
        return {"padding_waste": 0.0}
    one_width = pad_to_multiple_of is not None and max(lengths) <= pad_to_multiple_of
    if micro_batch_size == 1 or one_width:
        return {"padding_waste": round(_padding_share(lengths, micro_batch_size, pad_to_multiple_of), 4)}
    rng = random.Random(seed)
    shares = []
    for _ in range(PADDING_ORDERS):
        order = rng.sample(lengths, len(lengths))
        shares.append(_padding_share(order, micro_batch_size, pad_to_multiple_of))
    return {
        "padding_waste_estimate": round(sum(shares) / len(shares), 4),
        "padding_waste_method": f"mean over {PADDING_ORDERS} random batch orders (the Trainer shuffles)",
    }


def _padding_share(lengths: list[int], micro_batch_size: int, pad_to_multiple_of: int | None) -> float:
    padded = 0
    for i in range(0, len(lengths), micro_batch_size):
        batch = lengths[i : i + micro_batch_size]
        width = max(batch)
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        padded += width * len(batch)
    return 1.0 - sum(lengths) / padded


def warmup_from_first_step(scheduler, num_warmup_steps: int):
    """transformers' schedule, with warm-up starting above 0: its multiplier is step / warmup, so
    the first optimizer step of every stage would run at learning rate 0 and learn nothing.
    Warm-up here covers steps 1..warmup instead (as litgpt's LinearLR(start_factor=1/warmup)),
    and the rest of the schedule is unchanged."""
    from torch.optim.lr_scheduler import LambdaLR

    if num_warmup_steps <= 0 or not isinstance(scheduler, LambdaLR):
        return scheduler

    def shifted(base):
        # A plain function: LambdaLR's state_dict then saves no closure into the checkpoint.
        def multiplier(step: int) -> float:
            return base(step + 1) if step < num_warmup_steps else base(step)

        return multiplier

    return LambdaLR(scheduler.optimizer, [shifted(base) for base in scheduler.lr_lambdas])


@lru_cache(maxsize=1)
def _trainer_class():
    """SFTTrainer with one documented hook overridden (`create_scheduler`): the warm-up fix."""
    from trl import SFTTrainer

    class WarmlineSFTTrainer(SFTTrainer):
        def create_scheduler(self, num_training_steps: int, optimizer=None):
            created = self.lr_scheduler is None
            scheduler = super().create_scheduler(num_training_steps, optimizer)
            if created:
                self.lr_scheduler = warmup_from_first_step(
                    scheduler, self.args.get_warmup_steps(num_training_steps)
                )
            return self.lr_scheduler

    return WarmlineSFTTrainer


# ---------------------------------------------------------------------------------------------
# Helpers


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
            keep.update(
                id(p) for p in module.parameters() if id(p) not in in_blocks and id(p) not in embeddings
            )
    for param in model.parameters():
        param.requires_grad = id(param) in keep
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "training the top %d blocks: %.1fM of %.1fM parameters",
        trainable_layers,
        n_train / 1e6,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )


def latest_complete_checkpoint(work: Path) -> Path | None:
    """The newest checkpoint that finished writing (it carries the completion marker)."""
    done = [p for p in work.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _peft_config(lora):
    if not lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def remove_tree(path: Path, run_dir: Path) -> None:
    """rmtree, only ever inside the run folder (stage names are slugs; this is the second lock)."""
    resolved, root = path.resolve(), run_dir.resolve()
    if resolved == root or root not in resolved.parents:
        raise RuntimeError(f"refusing to delete {path}: it is not inside the run folder {run_dir}")
    shutil.rmtree(resolved, ignore_errors=True)


def _replace_folder(tmp: Path, dst: Path, run_dir: Path) -> None:
    """Rename a finished folder into place. An older `dst` is first renamed aside, so a kill
    leaves either the old folder or the new one under `dst`'s name, and never deletes before
    the new one is complete."""
    old = dst.with_name(f".{dst.name}.old")
    if old.exists():
        remove_tree(old, run_dir)
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old.exists():
        remove_tree(old, run_dir)


def _trained_folders(run_dir: Path, stages: list[PreparedStage]) -> list[tuple[int, Path]]:
    """(stage number, folder with the recipe that trained it): published stages, and the work
    folder of an interrupted one."""
    found = []
    for stage in stages:
        out, work = stage_dir(run_dir, stage), run_dir / ".work" / stage.dirname
        if is_published(out):
            found.append((stage.index, out))
        elif latest_complete_checkpoint(work) is not None:
            found.append((stage.index, work))
    return found


def _write_forgetting(path: Path, forgetting: dict, stages: list[PreparedStage]) -> None:
    """forgetting.json in matrix order (base, then stages in training order), strict JSON."""
    if not _process_state().is_main_process:
        return
    order = ["base", *(s.config.name for s in stages)]
    rows = {name: forgetting[name] for name in order if name in forgetting}
    write_json_atomic(path, rows)


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
    """accelerate's view of this process: its rank among the launched processes.

    `cpu` follows the hardware: without CUDA, processes launched by torchrun
    (`accelerate launch --multi_gpu`) join a gloo group; with `cpu=False` accelerate would treat
    each of them as a lone process."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def check_launch() -> None:
    """Fail, naming the command that works, when a launch would not do what it asks: accelerate's
    `--cpu --num_processes N` starts ONE process unless an MPI hostfile is given, and FSDP or DeepSpeed
    on CPU processes would run as plain DDP."""
    from accelerate.utils import parse_flag_from_env

    asked_for_several = "MASTER_ADDR" in os.environ and parse_flag_from_env("ACCELERATE_USE_CPU")
    launched = any(
        k in os.environ for k in ("LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    )
    if asked_for_several and not launched:
        raise RecipeError(
            "`accelerate launch --cpu --num_processes N` starts a single process (accelerate needs mpirun for "
            "several CPU processes); on a CPU-only machine launch with `accelerate launch --multi_gpu "
            "--num_processes N -m warmline train RECIPE` (torchrun; gloo when there is no CUDA), or drop --cpu"
        )
    sharding = [
        name
        for name, flag in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
        if parse_flag_from_env(flag)
    ]
    if sharding and not _cuda_available():
        # accelerate enables FSDP only on accelerator devices: on CPU processes it would quietly run
        # plain DDP (every process holding everything), not what the launch config promised.
        raise RecipeError(
            f"{sharding[0]} needs GPUs (accelerate does not shard on CPU processes; it would silently run plain "
            "DDP); on a CPU-only machine launch with `accelerate launch --multi_gpu --num_processes N -m warmline "
            "train RECIPE`, or use recipes/accelerate/multi-gpu-ddp.yaml"
        )


def _local_processes() -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE under `accelerate launch`)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _append_metrics(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _print_summary(forgetting: dict, stages: list[PreparedStage]) -> None:
    names = [s.config.name for s in stages]
    rows = [
        "validation loss (rows: after stage; columns: stage's validation split)",
        "after".ljust(14) + "".join(n[:12].rjust(13) for n in names),
    ]
    for row_name, row in forgetting.items():
        rows.append(row_name[:13].ljust(14) + "".join(f"{row[n]['loss']:13.3f}" for n in names if n in row))
    print("\n".join(rows), flush=True)


def print_sample_replies(model_dir: Path, n: int, *, system_prompt: str | None = None) -> None:
    """Print n replies of the final model to fixed prompts (sampled with a fixed seed), with the
    system prompt it was trained with."""
    from warmline.serving.generator import SAMPLE_PROMPTS, Generator
    from warmline.training.callbacks import release_memory

    release_memory()  # the last stage's training memory, before a second model loads
    gen = Generator.from_pretrained(str(model_dir))
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for prompt in SAMPLE_PROMPTS[:n]:
        result = gen.generate([*system, {"role": "user", "content": prompt}], seed=0)
        print(
            f"\n> {prompt}\n{result.text}\n[stopped by {result.stop_reason} after {result.new_tokens} tokens]",
            flush=True,
        )


__all__ = [
    "train_recipe",
    "train_stage",
    "build_training_args",
    "build_stage_trainer",
    "run_stage_training",
    "publish_stage",
    "latest_complete_checkpoint",
    "file_sha256",
]
