"""`warmline data inspect`: what each stage's data looks like after cleaning and tokenisation."""

from __future__ import annotations

import statistics

from warmline.data.cleaning import StageData, data_problems, prepare_stage
from warmline.data.tokens import tokenize_conversation
from warmline.recipe import Recipe


def token_lengths(tokenizer, convs, max_length: int) -> tuple[list[int], int]:
    """Untruncated token length of every conversation, and how many exceed max_length."""
    lengths = [len(tokenize_conversation(tokenizer, c, 10**9).input_ids) for c in convs]
    return lengths, sum(n > max_length for n in lengths)


def percentile(values: list[int], q: float) -> int:
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def inspect_recipe(recipe: Recipe, tokenizer) -> list[dict]:
    """One row of statistics per stage."""
    rows = []
    for i, stage in enumerate(recipe.stages):
        data: StageData = prepare_stage(stage, seed=recipe.training.seed, system_prompt=recipe.system_prompt)
        problems = data_problems(
            data, f"stages.{i}", global_batch_size=recipe.training.global_batch_size, epochs=stage.epochs
        )
        lengths, truncated = token_lengths(tokenizer, data.train + data.validation, stage.max_length)
        row = data.stats()
        row.update(
            tokens_p50=int(statistics.median(lengths)) if lengths else 0,
            tokens_p95=percentile(lengths, 0.95),
            tokens_max=max(lengths, default=0),
            would_truncate=truncated,
            max_length=stage.max_length,
            problems=problems,
        )
        if stage.method == "dpo":
            row["pair_tokens"] = pair_token_lengths(tokenizer, data, stage.max_length)
        rows.append(row)
    return rows


def pair_token_lengths(tokenizer, data, max_length: int) -> dict[str, dict[str, int]]:
    """A dpo stage's prompt, chosen and rejected lengths in tokens (untruncated: p50, p95, max)."""
    from warmline.data.preferences import tokenize_pair

    pairs = [tokenize_pair(tokenizer, p, 10**9) for p in data.train_pairs + data.validation_pairs]
    pairs = [p for p in pairs if not isinstance(p, str)]
    out = {}
    for part in ("prompt", "chosen", "rejected"):
        lengths = [len(getattr(p, f"{part}_ids")) for p in pairs]
        out[part] = {
            "p50": int(statistics.median(lengths)) if lengths else 0,
            "p95": percentile(lengths, 0.95),
            "max": max(lengths, default=0),
        }
    out["over_max_length"] = sum(
        len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) > max_length for p in pairs
    )
    return out


def format_table(rows: list[dict]) -> str:
    """A plain-text table, one line per stage; then drop reasons, rows cut by max_rows, skipped
    files and anything that would stop `warmline train`."""
    headers = [
        "stage",
        "format",
        "read",
        "dropped",
        "dup",
        "kept",
        "train",
        "val",
        "p50",
        "p95",
        "max",
        "trunc",
    ]
    lines = []
    for r in rows:
        dropped = sum(r["dropped"].values())
        lines.append(
            [
                r["name"],
                r["format"],
                r["rows_read"],
                dropped,
                r["duplicates"],
                r["kept"],
                r["train_rows"],
                r["validation_rows"],
                r["tokens_p50"],
                r["tokens_p95"],
                r["tokens_max"],
                f"{r['would_truncate']} (>{r['max_length']})",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *lines, strict=False)]
    out = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=False))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=False)) for line in lines]
    reasons = [(r["name"], r["dropped"], r["cleaned"]) for r in rows if r["dropped"] or r["cleaned"]]
    for name, dropped, cleaned in reasons:
        out.append(f"{name}: dropped by reason {dropped or '{}'}; cleaned {cleaned or '{}'}")
    for r in rows:
        if r.get("pair_tokens"):
            t = r["pair_tokens"]
            out.append(
                f"{r['name']}: pairs {r['train_pairs']} train / {r['validation_pairs']} validation (dpo; the table's "
                "lengths are prompt + chosen); "
                + "; ".join(
                    f"{part} tokens p50 {t[part]['p50']} p95 {t[part]['p95']} max {t[part]['max']}"
                    for part in ("prompt", "chosen", "rejected")
                )
                + f"; {t['over_max_length']} pair(s) longer than max_length {r['max_length']} (replies cut to fit)"
            )
        if r.get("cut_by_max_rows"):
            out.append(
                f"{r['name']}: {r['cut_by_max_rows']} usable training rows not used (max_rows), not counted as dropped"
            )
        if r.get("files_skipped"):
            out.append(f"{r['name']}: skipped files that are not data files {r['files_skipped']}")
        if r.get("files_with_undecodable_bytes"):
            out.append(
                f"{r['name']}: {r['files_with_undecodable_bytes']} file(s) had bytes that are not UTF-8"
            )
        out += [f"warning: {problem}" for problem in r.get("problems", [])]
    return "\n".join(out)
