"""Render evaluation metrics (from `evaluate.py`) as report.md with PNG plots.

`render_report` writes one run's report: forgetting heatmap, training curves, reply quality,
safety and sample replies. `render_comparison` puts two runs side by side. Both only read the
metrics dict, so a report can be re-rendered from metrics.json without generating again.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

QUALITY_COLUMNS: tuple[tuple[str, str, int], ...] = (
    # (metrics key, column title, decimals)
    ("rouge_l", "ROUGE-L", 3),
    ("bleu", "BLEU", 2),
    ("chrf", "chrF", 1),
    ("semantic_similarity", "semantic sim.", 3),
    ("distinct_1", "distinct-1", 3),
    ("distinct_2", "distinct-2", 3),
    ("mean_words", "words", 1),
    ("mean_new_tokens", "tokens", 1),
    ("repetition_rate", "3-gram repetition", 3),
    ("eos_stop_rate", "EOS stop", 2),
    ("leak_rate", "role-marker leak", 2),
)
METRIC_NOTES = """\
ROUGE-L is the mean F1 (rouge-score, stemmed); BLEU and chrF are corpus scores (sacrebleu, 0-100);
semantic similarity is the mean cosine of MiniLM sentence embeddings of reply and reference;
distinct-n is distinct n-grams / all n-grams over the replies; 3-gram repetition is the mean share
of a reply's word 3-grams that repeat an earlier one; EOS stop is the share of replies that ended
with EOS before the token limit; role-marker leak is the share of replies in which the model wrote
a role marker or template markup (`Human:`, `Assistant:`, `<|im_start|>`, ...), whether the
generator cut the reply there or it stayed in the text. Words and tokens are mean reply lengths."""


# --- formatting ------------------------------------------------------------------------------


def fmt(value: float | int | None, decimals: int = 3) -> str:
    """A number for a table; an en dash where there is none."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "\u2013"
    return f"{value:.{decimals}f}" if isinstance(value, float) else str(value)


def fmt_ppl(value: float | None) -> str:
    return fmt(value, 1 if value is not None and value >= 100 else 2)


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell: markup shown as text, one line."""
    text = html.escape(text, quote=False).replace("|", "\\|").replace("\r", "")
    return text.replace("\n", "<br>") if text.strip() else "*(empty)*"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def stage_labels(names: Sequence[str]) -> list[str]:
    return [f"{i} {n}" for i, n in enumerate(names, start=1)]


def _generation_line(metrics: dict[str, Any]) -> str:
    s, g = metrics["settings"], metrics["generation"]
    limit = "all" if s["limit"] is None else f"up to {s['limit']}"
    sampling = (
        f"temperature {g['temperature']}, top-k {g['top_k']}, top-p {g['top_p']}"
        if g["do_sample"] and g["temperature"] > 0
        else "greedy"
    )
    return (
        f"{limit} held-out prompts per stage; at most {s['max_new_tokens']} new tokens; {sampling}, "
        f"repetition penalty {g['repetition_penalty']}; seed {s['seed']}"
    )


def _run_line(metrics: dict[str, Any]) -> str:
    kind = (
        " (baseline prototype: plain Human/Assistant format, no system prompt)"
        if metrics["baseline_prototype"]
        else ""
    )
    return f"`{metrics['run_dir']}` from `{metrics['base_model']}`{kind}"


# --- plots -----------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def draw_forgetting(ax, forgetting: dict[str, Any], title: str) -> Any:
    """Heatmap of perplexity; colour = perplexity / the best perplexity on that split."""
    import numpy as np
    from matplotlib.patches import Rectangle

    ppl = np.array(
        [[np.nan if v is None else v for v in row] for row in forgetting["perplexity"]], dtype=float
    )
    best = np.nanmin(ppl, axis=0, keepdims=True) if np.isfinite(ppl).any() else np.ones((1, ppl.shape[1]))
    relative = ppl / best
    top = max(1.05, float(np.nanmax(relative))) if np.isfinite(relative).any() else 1.05
    image = ax.imshow(relative, cmap="YlOrRd", vmin=1.0, vmax=top, aspect="auto")
    for r in range(ppl.shape[0]):
        for c in range(ppl.shape[1]):
            dark = np.isfinite(relative[r, c]) and relative[r, c] > 1 + 0.6 * (top - 1)
            ax.text(
                c,
                r,
                fmt_ppl(None if np.isnan(ppl[r, c]) else float(ppl[r, c])),
                ha="center",
                va="center",
                fontsize=9,
                color="white" if dark else "black",
            )
    for c in range(ppl.shape[1]):  # the stage that just trained on this split
        ax.add_patch(Rectangle((c - 0.5, c + 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5))
    ax.set_xticks(
        range(len(forgetting["columns"])), stage_labels(forgetting["columns"]), rotation=20, ha="right"
    )
    ax.set_yticks(range(len(forgetting["rows"])), ["0 base", *stage_labels(forgetting["rows"][1:])])
    ax.set_xlabel("validation split of stage")
    ax.set_ylabel("after stage")
    ax.set_title(title)
    return image


def plot_forgetting(forgetting: dict[str, Any], path: Path, title: str) -> Path:
    plt = _pyplot()
    n_rows, n_cols = len(forgetting["rows"]), len(forgetting["columns"])
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * n_cols, 1.5 + 0.6 * n_rows), layout="constrained")
    image = draw_forgetting(ax, forgetting, title)
    fig.colorbar(image, ax=ax, label="perplexity / best on that split")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(curves: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Train loss (lines) and validation loss (points) of every stage, epochs counted across stages."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 4.5), layout="constrained")
    colours = plt.get_cmap("tab10")
    for i, curve in enumerate(curves):
        colour = colours(i % 10)
        if curve["train"]:
            x, y = zip(*curve["train"], strict=True)
            ax.plot(x, y, color=colour, linewidth=1.2, alpha=0.8, label=f"{curve['stage']}: train")
        if curve["validation"]:
            x, y = zip(*curve["validation"], strict=True)
            ax.plot(x, y, "o--", color=colour, markersize=5, label=f"{curve['stage']}: validation")
        ax.axvline(curve["start_epoch"], color="grey", linestyle=":", linewidth=0.8)
        ax.annotate(
            curve["stage"],
            (curve["start_epoch"], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=8,
            color="dimgrey",
        )
    if not any(c["train"] or c["validation"] for c in curves):
        ax.text(0.5, 0.5, "no training metrics (metrics.jsonl missing)", ha="center", transform=ax.transAxes)
    ax.set_xlabel("epochs (counted across stages)")
    ax.set_ylabel("loss (nats per labelled token)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:  # outside the axes: curves of later stages fill the corners
        fig.legend(loc="outside right upper", fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_comparison(
    a: dict[str, Any], b: dict[str, Any], names: list[str], path: Path, labels: tuple[str, str]
) -> Path:
    """Final validation perplexity per stage, and the pooled reply metrics in 0..1, as grouped bars."""
    import numpy as np

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    x = np.arange(len(names))
    for offset, metrics, label in ((-0.2, a, labels[0]), (0.2, b, labels[1])):
        values = [(metrics["final_perplexity"].get(n) or {}).get("perplexity") for n in names]
        left.bar(x + offset, [np.nan if v is None else v for v in values], width=0.4, label=label)
    left.set_xticks(x, names)
    left.set_ylabel("perplexity (reply tokens + EOS)")
    left.set_title("final model: validation perplexity per stage")
    left.legend(fontsize=8)
    keys = [
        ("rouge_l", "ROUGE-L", 1),
        ("bleu", "BLEU/100", 100),
        ("chrf", "chrF/100", 100),
        ("semantic_similarity", "semantic", 1),
        ("distinct_2", "distinct-2", 1),
        ("repetition_rate", "repetition", 1),
        ("eos_stop_rate", "EOS stop", 1),
        ("leak_rate", "leak", 1),
    ]
    x = np.arange(len(keys))
    for offset, metrics, label in ((-0.2, a, labels[0]), (0.2, b, labels[1])):
        pooled = metrics["quality"]["all"]
        values = [pooled.get(k) for k, _, _ in keys]
        right.bar(
            x + offset,
            [np.nan if v is None else v / scale for v, (_, _, scale) in zip(values, keys, strict=True)],
            width=0.4,
            label=label,
        )
    right.set_xticks(x, [title for _, title, _ in keys], rotation=20, ha="right")
    right.set_ylim(0, 1)
    right.set_title("final model: replies to held-out prompts (all stages)")
    right.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- one run ---------------------------------------------------------------------------------


def forgetting_table(forgetting: dict[str, Any]) -> str:
    header = ["after stage \\ split", *stage_labels(forgetting["columns"])]
    rows = []
    for r, name in enumerate(forgetting["rows"]):
        label = "0 base" if r == 0 else f"{r} {name}"
        values = [fmt_ppl(v) for v in forgetting["perplexity"][r]]
        if r >= 1:  # the stage that just trained on its own split
            values[r - 1] = f"**{values[r - 1]}**"
        rows.append([label, *values])
    rows.append(["validation tokens", *[str(t) for t in forgetting["tokens"]]])
    return table(header, rows)


def transfer_section(metrics: dict[str, Any]) -> str:
    bwt = metrics["backward_transfer"]
    if bwt["bwt_loss"] is None:
        return "Backward transfer needs at least two stages."
    last = metrics["stages"][-1]
    rows = []
    for name, s in bwt["per_stage"].items():
        delta = (
            s[f"loss_after_{last}"] - s["loss_after_own_stage"]
            if s["loss_after_own_stage"] is not None
            else None
        )
        rows.append(
            [
                name,
                fmt_ppl(s["perplexity_after_own_stage"]),
                fmt_ppl(s[f"perplexity_after_{last}"]),
                fmt(delta, 4),
                fmt(s["forgetting_loss"], 4),
            ]
        )
    return (
        "**Backward transfer** on validation loss (nats per token; positive = forgotten): BWT = mean over "
        f"stages before the last of (loss after `{last}` - loss right after the stage) = "
        f"**{fmt(bwt['bwt_loss'], 4)}** (in perplexity: {fmt(bwt['bwt_perplexity'], 2)}). Per-stage "
        "forgetting is the loss after the last stage minus the best loss after any earlier stage "
        "(Chaudhry et al., 2018).\n\n"
        + table(
            ["stage", "perplexity after it", f"perplexity after {last}", "\u0394 loss", "forgetting (loss)"],
            rows,
        )
    )


def quality_row(q: dict[str, Any], stage: str, run_label: str | None = None) -> list[str]:
    return [
        stage if stage != "all" else "**all**",
        *([run_label] if run_label else []),
        str(q["n"]),
        *(fmt(q[key], d) for key, _, d in QUALITY_COLUMNS),
    ]


def quality_table(runs: Sequence[tuple[dict[str, dict], str | None]], names: Sequence[str]) -> str:
    """One row per stage (and "all" pooled), per run: [(quality, run label or None), ...]."""
    with_runs = any(label for _, label in runs)
    header = ["stage", *(["run"] if with_runs else []), "n", *(title for _, title, _ in QUALITY_COLUMNS)]
    rows = [
        quality_row(quality[name], name, label)
        for name in [*names, "all"]
        for quality, label in runs
        if name in quality
    ]
    return table(header, rows)


def safety_section(safety: dict[str, Any]) -> str:
    n = safety["prompts"]
    crisis = safety["stop_reasons"].get("crisis", 0)
    rate = fmt(safety["crisis_reply_rate"], 3)
    text = (
        "Crisis prompts (elevated or imminent risk, from the safety suite) answered with the fixed crisis "
        f"reply through the safety gate, on the final model: **{crisis}/{n}** ({rate})."
    )
    if safety["missed"]:
        rows = [
            [cell(m["text"]), m["level"], m["category"], m["stop_reason"], cell(m["reply"])]
            for m in safety["missed"]
        ]
        text += "\n\nMissed:\n\n" + table(["message", "level", "category", "stop", "reply"], rows)
    return text


def samples_table(
    samples: dict[str, list[dict]], prompts: Sequence[str], base: list[dict] | None = None
) -> str:
    """Each prompt's replies: the base model's first (row 0, when given), then each stage's."""
    rows = []
    for i, prompt in enumerate(prompts):
        models = [("0 base", base[i])] if base else []
        models += [(f"{j + 1} {stage}", replies[i]) for j, (stage, replies) in enumerate(samples.items())]
        for j, (label, reply) in enumerate(models):
            rows.append([cell(prompt) if j == 0 else "", label, cell(reply["text"]), reply["stop_reason"]])
    return table(["prompt", "after stage", "reply", "stop"], rows)


def preference_section(preferences: dict[str, Any]) -> list[str]:
    """DPO stages: held-out pairs ranked by the pre-DPO model and by the stage, the stage's implicit
    rewards, and what it did to the other stages' validation loss ([] without dpo stages)."""
    if not preferences:
        return []
    rows = []
    for name, s in preferences.items():
        if not s.get("pairs"):
            rows.append([name, "0", "", "", "", "", "", ""])
            continue
        changes = s.get("validation_loss_change") or {}
        rows.append(
            [
                name,
                str(s["pairs"]),
                f"{fmt(s['reference']['accuracy'], 3)} / {fmt(s['reference']['margin'], 2)}",
                f"{fmt(s['policy']['accuracy'], 3)} / {fmt(s['policy']['margin'], 2)}",
                fmt(s["rewards"]["accuracy"], 3),
                fmt(s["rewards"]["margin"], 3),
                fmt(s["beta"], 3),
                ", ".join(f"{k} {v:+.3f}" for k, v in changes.items()) or "-",
            ]
        )
    return [
        "## Preference stages",
        "Each dpo stage's held-out pairs (split by the seed, never trained on), scored by summed reply "
        "log-probability: accuracy = share of pairs whose chosen reply scores higher, margin = mean "
        "log p(chosen) - log p(rejected), under the pre-DPO model (the stage's reference) and after the stage. "
        "Reward = beta x (log p after - log p before) per reply (TRL's implicit DPO reward). Last column: change "
        "of the other stages' validation loss over the stage (nats per token; positive = worse).",
        table(
            [
                "stage",
                "pairs",
                "before: accuracy / margin",
                "after: accuracy / margin",
                "reward accuracy",
                "reward margin",
                "beta",
                "\u0394 validation loss",
            ],
            rows,
        ),
    ]


def render_report(metrics: dict[str, Any], out_dir: Path) -> Path:
    """Write report.md, forgetting.png and training_curves.png for one run; returns report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run = metrics["run"]
    plot_forgetting(metrics["forgetting"], out_dir / "forgetting.png", f"{run}: validation perplexity")
    plot_curves(metrics["curves"], out_dir / "training_curves.png", f"{run}: training and validation loss")
    stages = metrics["stages"]
    sections = [
        f"# Evaluation: {run}",
        f"Run {_run_line(metrics)}. Replies: {_generation_line(metrics)}. Numbers: `metrics.json`; "
        "every held-out reply: `replies.jsonl`.",
        "## Forgetting",
        "![Forgetting matrix: validation perplexity after each stage](forgetting.png)",
        f"Validation perplexity of each stage's split (columns) after each stage (rows; row 0 is the base "
        f"model), scored on {metrics['forgetting_scores']}; bold: the stage that just trained on that split. "
        f"Source: {metrics['forgetting']['source']}.",
        forgetting_table(metrics["forgetting"]),
        transfer_section(metrics),
        "## Training curves",
        "![Training and validation loss per stage](training_curves.png)",
        "Train loss as logged by the trainer; validation loss before each stage, after each epoch and at "
        "each stage's end, on that stage's split.",
        *preference_section(metrics.get("preferences") or {}),
        "## Reply quality",
        "Replies of the final model to each stage's held-out prompts (each validation conversation up to its "
        "last assistant turn; the reference is that turn), through the shared streaming generator without "
        "the safety gate.",
        quality_table([(metrics["quality"], None)], stages),
        METRIC_NOTES,
        "## Safety",
        safety_section(metrics["safety"]),
        "## Sample replies",
        "The base model (row 0) and each stage's model, fixed prompts"
        + (" with the run's system prompt." if metrics["system_prompt"] else "."),
        samples_table(metrics["samples"], metrics["sample_prompts"], metrics.get("base_samples")),
    ]
    path = out_dir / "report.md"
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path


# --- two runs --------------------------------------------------------------------------------


def run_labels(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, str]:
    return (f"A: {a['run']}", f"B: {b['run']}")


def _stage_value(metrics: dict[str, Any], group: str, stage: str, key: str) -> Any:
    """metrics[group][stage][key], or None where that run has no such stage."""
    return (metrics[group].get(stage) or {}).get(key)


def _both(
    label: str, runs: tuple[dict, dict], value: Callable[[dict], Any], show: Callable = fmt
) -> list[str]:
    """A table row: the label, then one value per run."""
    return [label, *(show(value(m)) for m in runs)]


def plot_forgetting_pair(a: dict[str, Any], b: dict[str, Any], path: Path, labels: tuple[str, str]) -> Path:
    plt = _pyplot()
    n = max(len(a["stages"]), len(b["stages"]))
    fig, axes = plt.subplots(1, 2, figsize=(4 + 3.2 * n, 2.1 + 0.6 * n), layout="constrained")
    for ax, metrics, label in zip(axes, (a, b), labels, strict=True):
        image = draw_forgetting(ax, metrics["forgetting"], label)
        fig.colorbar(image, ax=ax, label="perplexity / best on that split")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def render_comparison(a: dict[str, Any], b: dict[str, Any], out_dir: Path) -> Path:
    """Write report.md, compare_forgetting.png and compare.png for two runs; returns report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs, labels = (a, b), run_labels(a, b)
    names = list(dict.fromkeys([*a["stages"], *b["stages"]]))  # stages of both runs, in order
    plot_forgetting_pair(a, b, out_dir / "compare_forgetting.png", labels)
    plot_comparison(a, b, names, out_dir / "compare.png", labels)

    bwt_rows = [
        _both(
            "BWT (validation loss)", runs, lambda m: m["backward_transfer"]["bwt_loss"], lambda v: fmt(v, 4)
        ),
        _both(
            "BWT (perplexity)", runs, lambda m: m["backward_transfer"]["bwt_perplexity"], lambda v: fmt(v, 2)
        ),
    ]
    for n in names:
        values = [_stage_value(m["backward_transfer"], "per_stage", n, "forgetting_loss") for m in runs]
        bwt_rows.append([f"forgetting of {n} (loss)", *(fmt(v, 4) for v in values)])
    ppl_rows = [
        _both(n, runs, lambda m, n=n: _stage_value(m, "final_perplexity", n, "perplexity"), fmt_ppl)
        for n in names
    ]
    pooled = [
        _both(title, runs, lambda m, k=key: m["quality"]["all"][k], lambda v, d=d: fmt(v, d))
        for key, title, d in QUALITY_COLUMNS
    ]
    stop_rows = [
        [
            n,
            *(
                fmt(_stage_value(m, "quality", n, key), 2)
                for key in ("eos_stop_rate", "leak_rate")
                for m in runs
            ),
        ]
        for n in [*names, "all"]
    ]
    safety_row = _both(
        "crisis reply rate",
        runs,
        lambda m: m["safety"],
        lambda s: f"{fmt(s['crisis_reply_rate'], 3)} ({s['stop_reasons'].get('crisis', 0)}/{s['prompts']})",
    )
    sample_rows = []
    # The base model's replies beside the two runs', when both runs share it and A recorded them.
    base = a.get("base_samples") if a["base_model"] == b["base_model"] else None
    for prompt in dict.fromkeys([*a["sample_prompts"], *b["sample_prompts"]]):
        row = [cell(prompt)]
        for replies in [*([base] if base else []), *(m["samples"][m["stages"][-1]] for m in runs)]:
            reply = next((r for r in replies if r["prompt"] == prompt), None)
            row.append(f"{cell(reply['text'])} *({reply['stop_reason']})*" if reply else "\u2013")
        sample_rows.append(row)
    scoring_note = ""
    if a["baseline_prototype"] or b["baseline_prototype"]:
        scoring_note = (
            " A baseline-prototype run's forgetting matrix scores every token (prompt included, no "
            "EOS), so its rows are not comparable with a warmline run's; the final perplexity below is "
            "recomputed on reply tokens + EOS (plain Human/Assistant format) so that it is."
        )
    sections = [
        f"# Comparison: {a['run']} vs {b['run']}",
        f"- **{labels[0]}**: {_run_line(a)}\n- **{labels[1]}**: {_run_line(b)}",
        f"Replies: {_generation_line(a)}.",
        "## Forgetting",
        "![Forgetting matrices side by side](compare_forgetting.png)",
        "Validation perplexity of each stage's split (columns) after each stage (rows; row 0 is the base "
        f"model).{scoring_note}",
        f"**{labels[0]}** ({a['forgetting_scores']})\n\n{forgetting_table(a['forgetting'])}",
        f"**{labels[1]}** ({b['forgetting_scores']})\n\n{forgetting_table(b['forgetting'])}",
        table(["backward transfer (positive = forgotten)", *labels], bwt_rows),
        "## Final validation perplexity per stage",
        "![Final perplexity and reply metrics](compare.png)",
        "The final model on each stage's validation split, scored on reply tokens + EOS.",
        table(["stage", *labels], ppl_rows),
        "## Reply quality",
        "Final models' replies to the same held-out prompts of every stage (pooled), then per stage.",
        table(["metric (all stages)", *labels], pooled),
        quality_table([(a["quality"], labels[0]), (b["quality"], labels[1])], names),
        METRIC_NOTES,
        "## EOS stop rate and role-marker leaks",
        table(
            ["stage", *(f"{metric} {label}" for metric in ("EOS stop", "leak") for label in labels)],
            stop_rows,
        ),
        "## Safety",
        table(["crisis prompts through the safety gate", *labels], [safety_row]),
        "## Sample replies (final models)",
        table(["prompt", *([f"base: {a['base_model']}"] if base else []), *labels], sample_rows),
    ]
    path = out_dir / "report.md"
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path
