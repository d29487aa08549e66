"""A `method: dpo` stage: TRL's DPOTrainer in the same named steps as an SFT stage.

    build_training_args   -> build_preference_args     the shared Trainer settings + TRL's DPOConfig
    build_stage_trainer   -> build_preference_trainer  policy, frozen reference, our tokenised pairs
    run_stage_training       (unchanged: train, merge LoRA)
    publish_stage            (unchanged)

The reference model is the stage's starting point, the previous stage's published weights (or the
base model for a first stage): with full fine-tuning they are loaded once more as a frozen
`ref_model`; with LoRA TRL computes the reference with the adapters disabled, which is those same
weights, since every stage starts from merged weights and adds fresh adapters. After the stage,
`record_preferences` scores its held-out pairs under the pre-DPO model and the trained one.
"""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from pathlib import Path

from warmline.data.preferences import PreferenceStageData, TokenizedPair, reply_example, tokenize_pairs
from warmline.data.tokens import IGNORE_INDEX, TokenizedExample

logger = logging.getLogger(__name__)

PREFERENCES_FILE = "preferences.json"


def tokenize_stage_pairs(
    tokenizer, data: PreferenceStageData, max_length: int
) -> tuple[tuple[list[TokenizedPair], list[TokenizedPair]], list[TokenizedExample], list[TokenizedExample]]:
    """A dpo stage's pairs as tokens, (train, validation), plus its chosen replies as SFT examples
    (the stage's column of the forgetting matrix). Pairs that can't fit are counted in `data.dropped`."""
    train, trunc_t = tokenize_pairs(tokenizer, data.train_pairs, max_length, data.dropped)
    val, trunc_v = tokenize_pairs(tokenizer, data.validation_pairs, max_length, data.dropped)
    data.cleaned["truncated_to_max_length"] = trunc_t + trunc_v
    return (
        (train, val),
        [reply_example(p, "chosen") for p in train],
        [reply_example(p, "chosen") for p in val],
    )


def build_preference_args(recipe, stage, work_dir: Path, precision: str):
    """TRL's DPOConfig: the Trainer settings every stage shares, and the stage's `dpo` settings."""
    from trl import DPOConfig

    from warmline.training.train import trainer_arguments

    d = stage.config.dpo
    losses, weights = [d.loss_type], [1.0]
    if d.sft_loss_weight:
        losses, weights = [d.loss_type, "sft"], [1.0, d.sft_loss_weight]
    return DPOConfig(
        **trainer_arguments(recipe, stage, work_dir, precision),
        beta=d.beta,
        loss_type=losses,
        loss_weights=weights,
        label_smoothing=d.label_smoothing,
        max_length=None,  # our tokeniser already fitted every pair into the stage's max_length
        pad_to_multiple_of=None,
        padding_free=False,  # TRL 1.16 falls back to padding anyway (and warns)
        activation_checkpointing=recipe.training.gradient_checkpointing,  # TRL's default is on
        precompute_ref_log_probs=False,
        remove_unused_columns=False,  # the dataset holds exactly TRL's prompt/chosen/rejected ids
        dataset_num_proc=None,
    )


def build_preference_trainer(
    recipe,
    stage,
    model,
    init_from: str,
    tokenizer,
    precision: str,
    run_dir: Path,
    work: Path,
    *,
    callbacks=(),
):
    """The stage's DPOTrainer (policy `model` from `init_from`, reference = `init_from` frozen) with
    our callbacks; returns the StageTrainer the other steps take."""
    import datasets

    from warmline.models import load_model
    from warmline.training.callbacks import CheckpointMarker, MetricsLogger
    from warmline.training.train import COMPLETE_MARKER, StageTrainer, _peft_config

    t = recipe.training
    pairs = stage.train_pairs
    logger.info(
        "stage %d '%s': %d preference pairs (dpo, beta %g, loss %s), reference and init from %s",
        stage.index,
        stage.config.name,
        len(pairs),
        stage.config.dpo.beta,
        stage.config.dpo.loss_type,
        init_from,
    )
    train_ds = datasets.Dataset.from_dict(
        {
            "prompt_ids": [p.prompt_ids for p in pairs],
            "chosen_ids": [p.chosen_ids for p in pairs],
            "rejected_ids": [p.rejected_ids for p in pairs],
        }
    )
    # LoRA: TRL disables the adapters for the reference, i.e. uses these very weights; full (or
    # top-blocks) training: a second, frozen copy of them.
    ref_model = None if t.lora.enabled else load_model(init_from)
    if ref_model is not None:
        ref_model.requires_grad_(False)
    args = build_preference_args(recipe, stage, work, precision)
    trainer = _dpo_trainer_class()(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=_peft_config(t.lora),
    )
    metrics = MetricsLogger(
        metrics_path=run_dir / "metrics.jsonl",
        stage_name=stage.config.name,
        validation=stage.validation,  # chosen replies: the stage's column of the forgetting matrix
        precision=precision,
        useful_tokens_per_epoch=sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs),
    )
    for callback in (metrics, CheckpointMarker(COMPLETE_MARKER), *callbacks):
        trainer.add_callback(callback)
    return StageTrainer(
        stage,
        trainer,
        init_from,
        work,
        run_dir,
        stage.train,
        [],
        metrics,
        {"padding_waste": round(_pair_padding(pairs), 4)},
        quantized=t.lora.quantize is not None,
    )


def _pair_padding(pairs: list[TokenizedPair]) -> float:
    """Share of padding when each pair's chosen and rejected rows are padded to the longer one
    (one pair per micro-batch, as the CPU recipes run)."""
    used = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    padded = sum(2 * (len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids))) for p in pairs)
    return 1.0 - used / padded if padded else 0.0


@lru_cache(maxsize=1)
def _dpo_trainer_class():
    """DPOTrainer with the SFT stages' warm-up fix (`create_scheduler`), reading our tokenised pairs.

    TRL 1.16's `_prepare_dataset` always re-renders text columns with its own template call; our
    pairs are already tokenised by `data.tokens` (the chat template, user text with special
    tokens split, labelled reply + EOS exactly as SFT stages train), so a dataset of `*_ids`
    columns passes through unchanged: the same shortcut SFTTrainer takes for `input_ids`."""
    from trl import DPOTrainer

    from warmline.training.train import warmup_from_first_step

    class WarmlineDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            created = self.lr_scheduler is None
            scheduler = super().create_scheduler(num_training_steps, optimizer)
            if created:
                self.lr_scheduler = warmup_from_first_step(
                    scheduler, self.args.get_warmup_steps(num_training_steps)
                )
            return self.lr_scheduler

    return WarmlineDPOTrainer


# ---------------------------------------------------------------------------------------------
# Scoring pairs: log-probabilities of each reply under a model


def reply_logprobs(model, pairs: list[TokenizedPair], *, precision: str, max_tokens: int = 2048):
    """Summed log-probability of each pair's chosen and rejected reply (prompt given), as two
    lists; padding-free batches, as validation loss is computed."""
    import torch

    from warmline.evaluation.loss import autocast_context, collate_padding_free, pack_batches

    examples = [reply_example(p, which) for p in pairs for which in ("chosen", "rejected")]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: list[float] = []
    with torch.inference_mode():
        for batch in pack_batches(examples, max_tokens):
            inputs = {k: v.to(device) for k, v in collate_padding_free(batch).items()}
            labels = inputs.pop("labels")
            targets = labels[0, 1:]  # position t predicts token t+1
            keep = targets != IGNORE_INDEX
            owner = torch.cat([torch.full((len(ex.input_ids),), i) for i, ex in enumerate(batch)])[1:].to(
                device
            )
            with autocast_context(precision, device):
                logits = model(**inputs, use_cache=False).logits[0, :-1][keep]  # (labelled, vocab)
            token_logps = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[keep][:, None])[:, 0]
            per_example = torch.zeros(len(batch), dtype=torch.float64, device=device)
            per_example.index_add_(0, owner[keep], token_logps.double())
            sums += per_example.tolist()
    if was_training:
        model.train()
    return sums[0::2], sums[1::2]


def preference_scores(policy, reference, pairs: list[TokenizedPair], *, beta: float, precision: str) -> dict:
    """How each model ranks the pairs, and DPO's implicit rewards of the policy against the reference.

    `reference` (the pre-DPO model) and `policy` each: accuracy = share of pairs whose chosen reply
    has the higher log-probability, margin = mean (log p(chosen) - log p(rejected)). `rewards`:
    beta x (policy - reference) log-probability per reply, their accuracy and mean margin (TRL's
    `rewards/accuracies` and `rewards/margins`, here on held-out pairs)."""
    pol_c, pol_r = reply_logprobs(policy, pairs, precision=precision)
    ref_c, ref_r = reply_logprobs(reference, pairs, precision=precision)
    n = len(pairs)

    def ranking(chosen, rejected):
        return {
            "accuracy": sum(c > r for c, r in zip(chosen, rejected, strict=True)) / n,
            "margin": sum(c - r for c, r in zip(chosen, rejected, strict=True)) / n,
        }

    reward_c = [beta * (p - r) for p, r in zip(pol_c, ref_c, strict=True)]
    reward_r = [beta * (p - r) for p, r in zip(pol_r, ref_r, strict=True)]
    return (
        {
            "pairs": n,
            "beta": beta,
            "reference": ranking(ref_c, ref_r),
            "policy": ranking(pol_c, pol_r),
            "rewards": {
                **ranking(reward_c, reward_r),
                "chosen": sum(reward_c) / n,
                "rejected": sum(reward_r) / n,
            },
        }
        if n
        else {"pairs": 0, "beta": beta}
    )


FORGETTING_LIMIT = 0.05
"""Largest rise, in nats per reply token, of an earlier stage's validation loss that a preference
stage may cause before warmline warns: preferences should reshape how the model answers, not undo
what the SFT stages taught (the offline run's DPO stage: +0.006 to +0.022, benchmarks/RESULTS.md)."""


def over_forgetting_limit(changes: dict[str, float], limit: float = FORGETTING_LIMIT) -> list[str]:
    """The stages whose validation loss rose by more than ``limit`` (in ``changes``' order)."""
    return [name for name, change in changes.items() if change > limit]


def record_preferences(
    run_dir: Path,
    stage,
    policy,
    init_from: str,
    precision: str,
    *,
    before: dict | None = None,
    after: dict | None = None,
    write: bool = True,
) -> dict:
    """Score a dpo stage's held-out pairs under the pre-DPO model (`init_from`) and the trained
    `policy`; add them to `<run>/preferences.json` (main process) and print one line.

    `before`/`after`: the forgetting-matrix rows before and after the stage; the change of each
    earlier stage's validation loss is recorded with the scores (what DPO cost the SFT stages)."""
    from warmline.models import load_model
    from warmline.training.manifest import write_json_atomic

    reference = load_model(init_from)
    scores = preference_scores(
        policy, reference, stage.validation_pairs, beta=stage.config.dpo.beta, precision=precision
    )
    del reference
    scores["reference_model"] = init_from
    if before and after:
        scores["validation_loss_change"] = {
            name: after[name]["loss"] - before[name]["loss"]
            for name in before
            if name != stage.config.name and name in after
        }
        scores["forgetting_limit"] = FORGETTING_LIMIT
        scores["over_forgetting_limit"] = over_forgetting_limit(scores["validation_loss_change"])
    if write:
        path = run_dir / PREFERENCES_FILE
        recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        recorded[stage.config.name] = scores
        write_json_atomic(path, recorded)
    if scores["pairs"]:
        print(
            f"[{stage.config.name}] held-out pairs ({scores['pairs']}): chosen ranked above rejected "
            f"{scores['reference']['accuracy']:.0%} before DPO -> {scores['policy']['accuracy']:.0%} after; "
            f"reward accuracy {scores['rewards']['accuracy']:.0%}, reward margin {scores['rewards']['margin']:.3f}",
            flush=True,
        )
    if scores.get("validation_loss_change"):
        changes = ", ".join(f"{k} {v:+.3f}" for k, v in scores["validation_loss_change"].items())
        over = scores["over_forgetting_limit"]
        verdict = (
            f"over +{FORGETTING_LIMIT}: {', '.join(over)}" if over else f"all within +{FORGETTING_LIMIT}"
        )
        print(
            f"[{stage.config.name}] validation loss change on the other stages' splits: {changes} ({verdict})",
            flush=True,
        )
        if over:
            logger.warning(
                "stage %r raised earlier stages' validation loss by more than %.2f (%s): lower the "
                "learning rate or beta, or train on fewer pairs",
                stage.config.name,
                FORGETTING_LIMIT,
                ", ".join(over),
            )
    return scores


def read_preferences(run_dir: Path) -> dict:
    """`<run>/preferences.json` ({} for a run without dpo stages)."""
    path = Path(run_dir) / PREFERENCES_FILE
    return json.loads(path.read_text(encoding="utf-8")) if os.path.isfile(path) else {}
