"""Decoding sweep: which sampling settings suit a small model, measured on held-out prompts.

Every setting generates replies to the same held-out prompts (each stage's validation
conversations up to their last assistant turn, as `warmline eval` builds them) with a few seeds,
through the shared streaming generator without the safety gate, and is scored with the
evaluation's own metrics (`warmline.evaluation.evaluate.score_replies`): EOS stop rate within
the token limit, reply length, distinct-n and 3-gram repetition, role-marker leaks, semantic
similarity to the reference reply (the packaged MiniLM), plus the share of replies that end
with a question (what a support reply should do).

The pick, stated before looking: among settings with EOS stop rate >= 0.95, no role-marker leak
and 3-gram repetition <= 0.02, the highest semantic similarity; within 0.005 of it, the one
closest to the current default (fewest changed settings). A setting only replaces the default
when it beats the default's similarity by more than the seed-to-seed spread.

    .venv/bin/python benchmarks/decoding_sweep.py runs/offline --seeds 0 1 --json sweep.json
    .venv/bin/python benchmarks/decoding_sweep.py runs/offline --settings default t0.5 --limit 4

The last line is `RESULT best=... temperature=... top_p=... repetition_penalty=... eos_stop_rate=...`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, result_line, write_json  # noqa: E402

logger = logging.getLogger("decoding_sweep")

# Name -> (temperature, top_p, repetition_penalty). One factor at a time around the current
# default (the prototype's 0.7 / 0.92 / 1.2), plus greedy decoding: a full grid is 10x the time.
# "default" is the prototype's setting, warmline's default until this sweep picked t0.5.
SETTINGS: dict[str, tuple[float, float, float]] = {
    "default": (0.7, 0.92, 1.2),
    "t0.3": (0.3, 0.92, 1.2),
    "t0.5": (0.5, 0.92, 1.2),
    "t1.0": (1.0, 0.92, 1.2),
    "p0.8": (0.7, 0.8, 1.2),
    "p1.0": (0.7, 1.0, 1.2),
    "r1.0": (0.7, 0.92, 1.0),
    "r1.1": (0.7, 0.92, 1.1),
    "r1.3": (0.7, 0.92, 1.3),
    "greedy": (0.0, 1.0, 1.2),
}
MIN_EOS_STOP_RATE = 0.95
MAX_REPETITION_RATE = 0.02
SIMILARITY_TIE = 0.005


def question_rate(texts: list[str]) -> float | None:
    """Share of replies whose last character (after spaces and closing quotes) is a question mark."""
    ends = [t.rstrip().rstrip("\"'\u201d\u2019)").endswith("?") for t in texts]
    return sum(ends) / len(ends) if ends else None


def held_out_pairs(run_dir: Path, limit: int | None) -> list[tuple[str, list, str]]:
    """(stage, prompt, reference) for every stage's held-out prompts, as `warmline eval` builds them."""
    from warmline.data.cleaning import prepare_stage
    from warmline.evaluation.evaluate import held_out_prompts, load_run_recipe

    recipe = load_run_recipe(run_dir)
    pairs = []
    for stage in recipe.stages:
        data = prepare_stage(stage, seed=recipe.training.seed, system_prompt=recipe.system_prompt)
        pairs += [(stage.name, p, r) for p, r in held_out_prompts(data.validation, limit)]
    return pairs


def run_setting(generator, pairs, name: str, seeds: list[int], max_new_tokens: int) -> dict:
    """Replies to every pair with every seed under one setting, scored pooled and per seed."""
    from warmline.evaluation.evaluate import Reply, eos_stop_rate, score_replies

    temperature, top_p, repetition_penalty = SETTINGS[name]
    seeds = seeds[:1] if temperature == 0 else seeds  # greedy decoding ignores the seed
    replies, per_seed = [], {}
    started = time.perf_counter()
    for seed in seeds:
        mine = []
        for stage, prompt, reference in pairs:
            result = generator.generate(
                prompt,
                gate=None,
                seed=seed,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                repetition_penalty=repetition_penalty,
                do_sample=temperature > 0,
            )
            mine.append(Reply(stage, prompt, reference, result.text, result.stop_reason, result.new_tokens))
        per_seed[seed] = mine
        replies += mine
    scores = score_replies(replies)
    for key in ("rouge_l", "bleu", "chrf"):  # reference-overlap scores: not what is picked on
        scores.pop(key)
    seed_similarity = {s: score_replies(r)["semantic_similarity"] for s, r in per_seed.items()}
    return {
        "name": name,
        "temperature": temperature,
        "top_p": top_p,
        "repetition_penalty": repetition_penalty,
        "seeds": seeds,
        **scores,
        "question_rate": question_rate([r.text for r in replies]),
        "eos_stop_rate_per_seed": {s: eos_stop_rate([r.stop_reason for r in v]) for s, v in per_seed.items()},
        "similarity_per_seed": seed_similarity,
        "wall_s": round(time.perf_counter() - started, 1),
        "replies": [asdict(r) | {"seed": s} for s, v in per_seed.items() for r in v],
    }


def changed_settings(row: dict) -> int:
    """How many of temperature, top-p and repetition penalty differ from the default's."""
    default = SETTINGS["default"]
    mine = (row["temperature"], row["top_p"], row["repetition_penalty"])
    return sum(a != b for a, b in zip(mine, default, strict=True))


def pick(rows: list[dict]) -> dict | None:
    """The setting the module docstring's rule picks, or None when no setting qualifies."""
    eligible = [
        r
        for r in rows
        if (r["eos_stop_rate"] or 0) >= MIN_EOS_STOP_RATE
        and r["leak_rate"] == 0
        and (r["repetition_rate"] or 0) <= MAX_REPETITION_RATE
        and r["semantic_similarity"] is not None
    ]
    if not eligible:
        return None
    best = max(r["semantic_similarity"] for r in eligible)
    close = [r for r in eligible if r["semantic_similarity"] >= best - SIMILARITY_TIE]
    return min(close, key=lambda r: (changed_settings(r), -r["semantic_similarity"]))


def seed_spread(row: dict) -> float:
    """Max - min of the per-seed similarities (0 with one seed)."""
    values = [v for v in row["similarity_per_seed"].values() if v is not None]
    return max(values) - min(values) if len(values) > 1 else 0.0


def markdown(rows: list[dict]) -> str:
    """The sweep as a Markdown table, one row per setting."""
    header = (
        "| setting | T | top-p | rep. pen. | n | EOS stop | tokens | words | ends with ? | distinct-2 "
        "| 3-gram rep. | leak | similarity [per seed] |\n" + "|---" * 13 + "|"
    )
    lines = [header]
    for r in rows:
        per_seed = ", ".join(f"{v:.3f}" for v in r["similarity_per_seed"].values())
        lines.append(
            f"| {r['name']} | {r['temperature']:g} | {r['top_p']:g} | {r['repetition_penalty']:g} | {r['n']} "
            f"| {r['eos_stop_rate']:.3f} | {r['mean_new_tokens']:.1f} | {r['mean_words']:.1f} "
            f"| {r['question_rate']:.2f} | {r['distinct_2']:.3f} | {r['repetition_rate']:.4f} "
            f"| {r['leak_rate']:.2f} | {r['semantic_similarity']:.3f} [{per_seed}] |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="A finished run folder (runs/NAME).")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--limit", type=int, default=None, help="Held-out prompts per stage (default: all).")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None, help="Write every reply and score here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from warmline.serving.generator import Generator
    from warmline.serving.settings import GenerationSettings

    pairs = held_out_pairs(args.run, args.limit)
    generator = Generator.from_pretrained(str(args.run / "final"))
    logger.info("%d held-out prompts, settings %s, seeds %s", len(pairs), args.settings, args.seeds)
    rows = []
    for name in args.settings:
        rows.append(run_setting(generator, pairs, name, args.seeds, args.max_new_tokens))
        r = rows[-1]
        logger.info(
            "%s: EOS %.3f, %.1f tokens, similarity %.3f, repetition %.4f (%.0f s)",
            name,
            r["eos_stop_rate"],
            r["mean_new_tokens"],
            r["semantic_similarity"],
            r["repetition_rate"],
            r["wall_s"],
        )
    print(markdown(rows))
    best = pick(rows)
    default = next((r for r in rows if r["name"] == "default"), None)
    current = {f.name: f.default for f in fields(GenerationSettings)}
    verdict = "no setting qualifies"
    if best is not None:
        verdict = f"pick: {best['name']}"
        if default is not None and best is not default:
            margin = best["semantic_similarity"] - default["semantic_similarity"]
            spread = max(seed_spread(best), seed_spread(default))
            verdict += f" (similarity +{margin:.3f} over the default; seed spread {spread:.3f})"
    print(
        f"\n{verdict}; current defaults: temperature {current['temperature']}, top_p {current['top_p']}, "
        f"repetition_penalty {current['repetition_penalty']}"
    )
    write_json(
        args.json,
        {
            "machine": machine_info(),
            "run": str(args.run),
            "prompts": len(pairs),
            "rule": {
                "min_eos_stop_rate": MIN_EOS_STOP_RATE,
                "max_repetition_rate": MAX_REPETITION_RATE,
                "similarity_tie": SIMILARITY_TIE,
            },
            "pick": best["name"] if best else None,
            "settings": rows,
        },
    )
    if best is None:
        print(result_line(best="none"))
        return 1
    print(
        result_line(
            best=best["name"],
            temperature=best["temperature"],
            top_p=best["top_p"],
            repetition_penalty=best["repetition_penalty"],
            eos_stop_rate=best["eos_stop_rate"],
            similarity=best["semantic_similarity"],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
