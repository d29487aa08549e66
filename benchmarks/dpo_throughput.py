"""DPO stage throughput against an SFT stage on the same replies, in tokens/s.

    python benchmarks/dpo_throughput.py                 # offline recipe's dpo stage, 6 rounds
    python benchmarks/dpo_throughput.py --rounds 10 --max-length 384

Both trainers are the ones `warmline train` builds (`build_stage_trainer`), from the recipe's base
model, on the recipe's dpo stage (default: the offline recipe's last stage, data/preferences.jsonl):

  sft   the stage's chosen conversations as an SFT stage (prompt + chosen reply, reply labelled)
  dpo   the stage's pairs: policy forward+backward on chosen and rejected, frozen reference forward

Each round times one `Trainer.training_step` (forward + backward of one micro-batch, the cost of
training; the optimizer step is the same for both and small) of each trainer on its next batch,
SFT and DPO alternating, so a shared machine's load falls on both alike; round 0 is a warm-up.
Tokens are the non-padding tokens the policy reads: prompt + reply for SFT; prompt + chosen +
prompt + rejected for DPO. The ratio of the two figures is what carries over between machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(recipe, stage, tokenizer, precision: str, run_dir: Path):
    """The stage's trainer as `warmline train` builds it, and an iterator over its batches."""
    from warmline.training.train import build_stage_trainer

    built = build_stage_trainer(recipe, stage, [stage], recipe.base_model, tokenizer, precision, run_dir)
    trainer = built.trainer
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set per step by Trainer.train's loop
    return trainer, iter(trainer.get_train_dataloader())


def time_step(trainer, batches) -> tuple[int, float]:
    """(tokens, seconds) of one forward + backward of the trainer's next micro-batch."""
    batch = next(batches)
    tokens = (
        int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
    )
    started = time.perf_counter()
    trainer.training_step(trainer.model, batch)
    return tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "offline.yaml"))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--max-length", type=int, default=None, help="override the dpo stage's max_length")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dpo_throughput.json"))
    args = parser.parse_args()

    from warmline.hardware import configure_threads, physical_cores, resolve_precision
    from warmline.recipe import load_recipe
    from warmline.training.train import load_training_tokenizer, prepare_stages

    recipe = load_recipe(args.recipe)
    index = next((i for i, s in enumerate(recipe.stages) if s.method == "dpo"), None)
    if index is None:
        sys.exit(f"{args.recipe} has no `method: dpo` stage")
    recipe.stages = [recipe.stages[index]]
    if args.max_length:
        recipe.stages[0].max_length = args.max_length
    configure_threads(physical_cores())
    precision = resolve_precision(recipe.training.precision)
    tokenizer = load_training_tokenizer(recipe)
    (dpo_stage,) = prepare_stages(recipe, tokenizer)
    pairs = dpo_stage.train_pairs
    dpo_tokens = [2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    sft_tokens = [len(p.prompt_ids) + len(p.chosen_ids) for p in pairs]

    sft_stage = replace(
        dpo_stage, config=replace(dpo_stage.config, method="sft"), train_pairs=[], validation_pairs=[]
    )
    totals = {"sft": [0, 0.0], "dpo": [0, 0.0]}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            "sft": build(recipe, sft_stage, tokenizer, precision, Path(tmp) / "sft"),
            "dpo": build(recipe, dpo_stage, tokenizer, precision, Path(tmp) / "dpo"),
        }
        for round_ in range(args.rounds + 1):
            for name, (trainer, batches) in trainers.items():
                tokens, seconds = time_step(trainer, batches)
                print(f"round {round_} {name}: {tokens} tokens in {seconds:.2f} s", flush=True)
                if round_:  # round 0 warms up
                    totals[name][0] += tokens
                    totals[name][1] += seconds
    result = {
        "recipe": args.recipe,
        "max_length": recipe.stages[0].max_length,
        "precision": precision,
        "rounds": args.rounds,
        "mean_pair_tokens": round(sum(dpo_tokens) / len(dpo_tokens), 1),
        "mean_chosen_conversation_tokens": round(sum(sft_tokens) / len(sft_tokens), 1),
        **{f"{name}_tokens_per_s": round(t / s, 1) for name, (t, s) in totals.items()},
    }
    result["dpo_over_sft_tokens_per_s"] = round(result["dpo_tokens_per_s"] / result["sft_tokens_per_s"], 3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
