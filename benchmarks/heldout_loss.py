"""Validation loss of one run's models on another run's held-out splits, like for like.

When a recipe changes its validation fractions, its forgetting matrix is measured on other
conversations than an older report's; this scores the models of RUN (base, every stage) on the
validation splits that OTHER's recipe holds out, the way training scores them (reply tokens +
EOS, token-weighted; `warmline.evaluation.evaluate.recompute_forgetting`).

    .venv/bin/python benchmarks/heldout_loss.py runs/after/offline --splits-of runs/offline-before
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="The run whose models are scored (runs/NAME).")
    parser.add_argument(
        "--splits-of", type=Path, required=True, help="The run whose held-out splits are used."
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from warmline.data.cleaning import prepare_stage
    from warmline.evaluation.evaluate import load_run_recipe, recompute_forgetting
    from warmline.hardware import resolve_precision

    mine, theirs = load_run_recipe(args.run), load_run_recipe(args.splits_of)
    if [s.name for s in mine.stages] != [s.name for s in theirs.stages]:
        print(
            f"the runs' stages differ: {[s.name for s in mine.stages]} vs {[s.name for s in theirs.stages]}"
        )
        return 2
    seed, system = theirs.training.seed, theirs.system_prompt
    data = [prepare_stage(s, seed=seed, system_prompt=system) for s in theirs.stages]
    models = {"base": mine.base_model}
    models |= {s.name: str(args.run / f"stage-{i:02d}-{s.name}") for i, s in enumerate(mine.stages, start=1)}
    rows = recompute_forgetting(args.run, theirs, data, models, resolve_precision(mine.training.precision))
    names = [s.name for s in theirs.stages]
    columns = " | ".join(f"{n} ({len(d.validation)} conv.)" for n, d in zip(names, data, strict=True))
    print(f"| after stage | {columns} |")
    print("|---" * (len(names) + 1) + "|")
    for row, scores in rows.items():
        losses = " | ".join(f"{scores[n]['loss']:.3f}" for n in names)
        print(f"| {row} | {losses} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
