"""People's ratings: `warmline eval ratings FILES... --key KEY` and `warmline eval feedback DIR`.

`summarise_ratings` reads top to bottom: the sheet's key -> every rater's saved file (checked
against the key's sheet id and items) -> unblinded judgements (which model each "A"/"B" was) ->
win rate per model with a 95% Wilson interval -> rubric means per model -> agreement between
raters -> items where raters disagree. `write_ratings_report` turns it into markdown and a plot,
and appends that to a run's report.md when asked.

Conventions, stated in the report too:
- A judgement is one rater's answer to one item. Win rate = wins / (wins + losses): ties are
  reported separately, not counted as half. The Wilson interval treats judgements as
  independent, which several raters on the same prompt are not quite; with many raters per
  item, read it as optimistic.
- Agreement: Krippendorff's alpha (the `krippendorff` package), ordinal for the 1-5 scales
  (units: each item's reply from each model), nominal for the preference (units: items; values:
  the unblinded winner or tie). With exactly two raters also Cohen's kappa (scikit-learn):
  unweighted for the preference, linearly weighted for the scales. None where it is undefined
  (one rater, or no variation at all).

`summarise_feedback` reads the in-app thumbs of `warmline serve --feedback DIR`
(`warmline.serving.feedback`): counts, and the up-rate per model with its Wilson interval.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmline.evaluation.sheet import PREFERENCES, RATINGS_FORMAT, RUBRIC, SCALE, SHEET_FORMAT

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95
DIMENSIONS = tuple(d.name for d in RUBRIC)
_SECTION_START = "<!-- warmline:ratings {sheet} -->"
_SECTION_END = "<!-- /warmline:ratings {sheet} -->"


class RatingsError(ValueError):
    """A ratings or key file that cannot be read; the message says which and how to fix it."""


@dataclass
class Judgement:
    """One rater's answers to one item, unblinded: scores and preference by model, not by A/B."""

    rater: str
    item: str
    preference: str | None
    """The preferred model, "tie", or None (not answered)."""
    scores: dict[str, dict[str, int | None]] = field(default_factory=dict)
    """Model -> dimension -> 1..5 (None: not answered)."""
    comment: str = ""


# --- reading ---------------------------------------------------------------------------------


def load_key(path: Path) -> dict[str, Any]:
    """The organiser's key file written by `warmline eval sheet`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"key file {path} not found: pass the key-<sheet id>.json `warmline eval sheet` wrote"
        )
    key = _read_json(path)
    if not isinstance(key, dict) or key.get("format") != SHEET_FORMAT:
        raise RatingsError(
            f"{path} is not a warmline sheet key (format {SHEET_FORMAT}); pass the key-*.json file"
        )
    return key


def load_judgements(paths: Sequence[Path], key: dict[str, Any]) -> list[Judgement]:
    """Every rater's answers, unblinded with the key. A file for another sheet, an unknown item,
    a value off the scale or the same rater twice is an error naming the file."""
    order = {item["item"]: (item["A"], item["B"]) for item in key["items"]}
    judgements: list[Judgement] = []
    raters: dict[str, Path] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"ratings file {path} not found")
        data = _read_json(path)
        if not isinstance(data, dict) or data.get("format") != RATINGS_FORMAT:
            raise RatingsError(f"{path} is not a saved warmline rating sheet (format {RATINGS_FORMAT})")
        if data.get("sheet_id") != key["sheet_id"]:
            raise RatingsError(
                f"{path} rates sheet {data.get('sheet_id')!r}, but the key is for sheet {key['sheet_id']!r}:"
                " pass the key of that sheet"
            )
        rater = str(data.get("rater_id") or "").strip()
        if not rater:
            raise RatingsError(f"{path} has no rater id")
        if rater in raters:
            raise RatingsError(
                f"rater {rater!r} appears in {raters[rater]} and {path}: keep one file per rater"
            )
        raters[rater] = path
        for answer in data.get("items", []):
            item = answer.get("item")
            if item not in order:
                raise RatingsError(f"{path}: item {item!r} is not on sheet {key['sheet_id']}")
            sides = dict(zip(("A", "B"), order[item], strict=True))
            preference = answer.get("preference")
            if preference not in (*PREFERENCES, None):
                raise RatingsError(
                    f"{path}: item {item}: preference {preference!r} is not one of {PREFERENCES}"
                )
            scores: dict[str, dict[str, int | None]] = {}
            for side, model in sides.items():
                given = (answer.get("scores") or {}).get(side) or {}
                scores[model] = {}
                for dim in DIMENSIONS:
                    value = given.get(dim)
                    if value is not None and value not in SCALE:
                        raise RatingsError(
                            f"{path}: item {item}: {dim} {side} is {value!r}, not on the scale {SCALE}"
                        )
                    scores[model][dim] = value
            judgements.append(
                Judgement(
                    rater=rater,
                    item=item,
                    preference=sides.get(preference, preference),
                    scores=scores,
                    comment=str(answer.get("comment") or "").strip(),
                )
            )
    return judgements


# --- statistics (pure functions on judgements) -----------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (scipy), None when n is 0."""
    from scipy.stats import binomtest

    if n == 0:
        return None
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def win_rates(judgements: Sequence[Judgement], models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per model: wins, losses, ties, unanswered, win rate = wins / (wins + losses), its Wilson interval."""
    counts = Counter(j.preference for j in judgements)
    out = {}
    for model in models:
        wins = counts[model]
        losses = sum(counts[m] for m in models if m != model)
        decided = wins + losses
        out[model] = {
            "wins": wins,
            "losses": losses,
            "ties": counts["tie"],
            "unanswered": counts[None],
            "win_rate": wins / decided if decided else None,
            "ci95": wilson_interval(wins, decided),
        }
    return out


def dimension_means(judgements: Sequence[Judgement], models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per model and dimension: the mean score and how many scores it averages."""
    out: dict[str, dict[str, Any]] = {}
    for model in models:
        out[model] = {}
        for dim in DIMENSIONS:
            values = [v for j in judgements if (v := j.scores.get(model, {}).get(dim)) is not None]
            out[model][dim] = {"mean": sum(values) / len(values) if values else None, "n": len(values)}
    return out


def _alpha(matrix: list[list[float]], level: str, domain: Sequence[Any]) -> float | None:
    """Krippendorff's alpha of a raters x units matrix (NaN = missing); None where undefined."""
    import krippendorff
    import numpy as np

    data = np.array(matrix, dtype=float)
    if data.shape[0] < 2 or (~np.isnan(data)).sum(axis=0).max(initial=0) < 2:
        return None  # no unit was rated twice
    try:
        with _undefined_is_none():
            value = krippendorff.alpha(
                reliability_data=data, level_of_measurement=level, value_domain=list(domain)
            )
    except (ValueError, ZeroDivisionError):  # one value only: no disagreement is possible to measure
        return None
    return float(value) if math.isfinite(value) else None


def _kappa(a: list[Any], b: list[Any], weights: str | None) -> float | None:
    from sklearn.metrics import cohen_kappa_score

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if len(pairs) < 2:
        return None
    with _undefined_is_none():
        value = cohen_kappa_score([x for x, _ in pairs], [y for _, y in pairs], weights=weights)
    return float(value) if math.isfinite(value) else None


def agreement(judgements: Sequence[Judgement], models: Sequence[str]) -> dict[str, Any]:
    """Inter-rater agreement: Krippendorff's alpha per measure; Cohen's kappa with exactly two raters."""
    raters = sorted({j.rater for j in judgements})
    items = sorted({j.item for j in judgements})
    by = {(j.rater, j.item): j for j in judgements}
    preference_codes = {m: i for i, m in enumerate(models)} | {"tie": len(models)}

    def preference(rater: str, item: str) -> int | None:
        j = by.get((rater, item))
        return None if j is None or j.preference is None else preference_codes[j.preference]

    def score(rater: str, item: str, model: str, dim: str) -> int | None:
        j = by.get((rater, item))
        return None if j is None else j.scores.get(model, {}).get(dim)

    nan = float("nan")
    measures: dict[str, dict[str, Any]] = {}
    pref_rows = [[preference(r, i) for i in items] for r in raters]
    measures["preference"] = {
        "level": "nominal",
        "alpha": _alpha(
            [[nan if v is None else v for v in row] for row in pref_rows], "nominal", range(len(models) + 1)
        ),
    }
    units = [(i, m) for i in items for m in models]
    score_rows = {dim: [[score(r, i, m, dim) for i, m in units] for r in raters] for dim in DIMENSIONS}
    for dim, rows in score_rows.items():
        measures[dim] = {
            "level": "ordinal",
            "alpha": _alpha([[nan if v is None else v for v in row] for row in rows], "ordinal", SCALE),
        }
    if len(raters) == 2:
        measures["preference"]["kappa"] = _kappa(pref_rows[0], pref_rows[1], None)
        for dim, rows in score_rows.items():
            measures[dim]["kappa"] = _kappa(rows[0], rows[1], "linear")
    return {"raters": raters, "measures": measures}


def disagreements(judgements: Sequence[Judgement], models: Sequence[str]) -> list[dict[str, Any]]:
    """Items rated by two or more raters who did not all prefer the same model (or tie), or whose
    scores of one reply on one dimension differ by 2 points or more."""
    by_item: dict[str, list[Judgement]] = defaultdict(list)
    for j in judgements:
        by_item[j.item].append(j)
    out = []
    for item, group in sorted(by_item.items()):
        if len(group) < 2:
            continue
        preferences = {j.rater: j.preference for j in group}
        answered = {p for p in preferences.values() if p is not None}
        spreads = {}
        for model in models:
            for dim in DIMENSIONS:
                values = [v for j in group if (v := j.scores.get(model, {}).get(dim)) is not None]
                if len(values) >= 2 and max(values) - min(values) >= 2:
                    spreads[f"{dim} ({model})"] = [min(values), max(values)]
        if len(answered) > 1 or spreads:
            out.append({"item": item, "preferences": preferences, "score_spreads": spreads})
    return out


def summarise_ratings(paths: Sequence[Path], key_path: Path) -> dict[str, Any]:
    """Everything `warmline eval ratings` reports, as one JSON-able dict (see the module docstring)."""
    key = load_key(Path(key_path))
    judgements = load_judgements(paths, key)
    if not judgements:
        raise RatingsError("the ratings files hold no answers: did the raters press 'Save my ratings'?")
    models = list(key["models"])
    prompts = {item["item"]: item["prompt"] for item in key["items"]}
    found = disagreements(judgements, models)
    for row in found:
        row["prompt"] = " / ".join(t["content"] for t in prompts[row["item"]] if t["role"] == "user")
    return {
        "sheet_id": key["sheet_id"],
        "models": models,
        "items_on_sheet": len(key["items"]),
        "raters": sorted({j.rater for j in judgements}),
        "judgements": len(judgements),
        "complete_judgements": sum(
            j.preference is not None and all(v is not None for s in j.scores.values() for v in s.values())
            for j in judgements
        ),
        "win_rates": win_rates(judgements, models),
        "dimension_means": dimension_means(judgements, models),
        "agreement": agreement(judgements, models),
        "disagreements": found,
        "comments": [
            {"item": j.item, "rater": j.rater, "comment": j.comment} for j in judgements if j.comment
        ],
        "key_order": {item["item"]: {"A": item["A"], "B": item["B"]} for item in key["items"]},
    }


# --- the report ------------------------------------------------------------------------------


def render_ratings_markdown(summary: dict[str, Any], plot_name: str | None = None) -> str:
    """The ratings as a markdown section ("## Human ratings ...")."""
    models = summary["models"]
    label = {m: f"`{m}`" for m in models}
    lines = [
        f"## Human ratings (sheet {summary['sheet_id']})",
        "",
        f"{summary['judgements']} judgements ({summary['complete_judgements']} complete) of "
        f"{summary['items_on_sheet']} items by {len(summary['raters'])} rater(s): "
        f"{', '.join(summary['raters'])}. Models: {' vs '.join(label[m] for m in models)}.",
        "",
        "| model | wins | losses | ties | unanswered | win rate | 95% CI (Wilson) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in models:
        w = summary["win_rates"][model]
        ci = f"{w['ci95'][0]:.2f} - {w['ci95'][1]:.2f}" if w["ci95"] else "n/a"
        lines.append(
            f"| {label[model]} | {w['wins']} | {w['losses']} | {w['ties']} | {w['unanswered']} "
            f"| {_fmt(w['win_rate'])} | {ci} |"
        )
    lines += [
        "",
        "Win rate = wins / (wins + losses); ties are reported separately, not counted as half. Each"
        " rater's answer to an item is one judgement; the interval treats judgements as independent,"
        " which several raters on the same prompt are not quite.",
        "",
        f"### Rubric means ({SCALE[0]}-{SCALE[-1]}, higher is better)",
        "",
        "| dimension | " + " | ".join(label[m] for m in models) + " |",
        "|---|" + "---|" * len(models),
    ]
    titles = {d.name: d.title for d in RUBRIC}
    for dim in DIMENSIONS:
        cells = [
            f"{_fmt(summary['dimension_means'][m][dim]['mean'])} (n={summary['dimension_means'][m][dim]['n']})"
            for m in models
        ]
        lines.append(f"| {titles[dim]} | " + " | ".join(cells) + " |")
    measures = summary["agreement"]["measures"]
    two = len(summary["raters"]) == 2
    lines += [
        "",
        "### Agreement between raters",
        "",
        "| measure | Krippendorff's alpha | Cohen's kappa |" if two else "| measure | Krippendorff's alpha |",
        "|---|---|---|" if two else "|---|---|",
    ]
    for name, m in measures.items():
        title = "Preference" if name == "preference" else titles[name]
        row = f"| {title} ({m['level']}) | {_fmt(m['alpha'])} |"
        if two:
            row += f" {_fmt(m.get('kappa'))} |"
        lines.append(row)
    lines += [
        "",
        "Alpha: ordinal for the scales (units: each item's reply from each model), nominal for the"
        " preference (the unblinded winner or tie). "
        + (
            "Kappa: unweighted for the preference, linearly weighted for the scales. "
            if two
            else "Cohen's kappa needs exactly two raters. "
        )
        + "n/a: undefined (one rater, or no variation to agree on).",
        "",
        "### Items where raters disagree",
        "",
    ]
    if summary["disagreements"]:
        lines += ["| item | prompt | preferences | scores 2+ points apart |", "|---|---|---|---|"]
        for d in summary["disagreements"]:
            prefs = ", ".join(f"{r}: {p or '-'}" for r, p in sorted(d["preferences"].items()))
            spreads = ", ".join(f"{k} {v[0]}-{v[1]}" for k, v in d["score_spreads"].items()) or "-"
            lines.append(f"| {d['item']} | {_cell(d['prompt'], 90)} | {prefs} | {spreads} |")
    else:
        lines.append("None (or no item was rated by two raters).")
    if summary["comments"]:
        lines += ["", "### Comments", ""]
        for c in summary["comments"]:
            order = summary["key_order"][c["item"]]
            lines.append(
                f"- item {c['item']} ({c['rater']}; A = `{order['A']}`, B = `{order['B']}`): {_cell(c['comment'], 300)}"
            )
    if plot_name:
        lines += ["", f"![Win rates and rubric means]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot_ratings(summary: dict[str, Any], path: Path) -> Path:
    """Win rate with its interval per model, and rubric means per model, side by side (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = summary["models"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    rates = [summary["win_rates"][m]["win_rate"] or 0.0 for m in models]
    errors = [
        [r - (summary["win_rates"][m]["ci95"] or (r, r))[0] for m, r in zip(models, rates, strict=True)],
        [(summary["win_rates"][m]["ci95"] or (r, r))[1] - r for m, r in zip(models, rates, strict=True)],
    ]
    names = [_short(m) for m in models]
    left.bar(names, rates, yerr=errors, capsize=6, color=["#2563eb", "#d97706"][: len(models)])
    left.axhline(0.5, color="#6b7280", linewidth=0.8, linestyle="--")
    left.set_ylim(0, 1)
    left.set_ylabel("win rate (ties excluded), 95% CI")
    left.set_title("Preferred reply")
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        means = [summary["dimension_means"][model][d]["mean"] or 0.0 for d in DIMENSIONS]
        right.bar([i + k * width for i in range(len(DIMENSIONS))], means, width, label=_short(model))
    right.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(DIMENSIONS))])
    right.set_xticklabels([d.title for d in RUBRIC], fontsize=8)
    right.set_ylim(0, SCALE[-1])
    right.set_title("Rubric means")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_ratings_report(summary: dict[str, Any], out_dir: Path, *, report_run: Path | None = None) -> Path:
    """ratings.md, ratings.png and ratings.json in `out_dir`; with `report_run`, the same section
    (and plot) also in RUN/report/report.md, replacing the section of an earlier summary of the
    same sheet. Returns ratings.md's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_ratings(summary, out_dir / "ratings.png")
    (out_dir / "ratings.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", "utf-8")
    markdown = out_dir / "ratings.md"
    markdown.write_text(render_ratings_markdown(summary, plot.name), encoding="utf-8")
    if report_run is not None:
        append_to_report(summary, Path(report_run))
    return markdown


def append_to_report(summary: dict[str, Any], run: Path) -> Path:
    """Add (or replace) the sheet's ratings section in RUN/report/report.md, with its plot."""
    report = run / "report" / "report.md"
    if not report.is_file():
        raise FileNotFoundError(
            f"{report} not found: write the run's report first with `warmline eval {run}`"
        )
    plot_name = f"ratings-{summary['sheet_id']}.png"
    plot_ratings(summary, report.parent / plot_name)
    start, end = (s.format(sheet=summary["sheet_id"]) for s in (_SECTION_START, _SECTION_END))
    section = f"{start}\n{render_ratings_markdown(summary, plot_name)}{end}\n"
    text = report.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    report.write_text(text, encoding="utf-8")
    return report


# --- in-app feedback -------------------------------------------------------------------------


def summarise_feedback(folder: Path) -> dict[str, Any]:
    """Counts of `warmline serve --feedback DIR`'s thumbs and the up-rate per model (Wilson 95%).

    A reply rated again (or cleared) counts once, by its latest rating."""
    from warmline.serving.feedback import read_feedback

    latest: dict[tuple, dict[str, Any]] = {}
    records = read_feedback(Path(folder))
    for record in records:
        latest[(record.get("session"), record.get("message_index"), record.get("model"))] = record
    ratings = [r for r in latest.values() if r.get("rating") in ("up", "down")]
    per_model: dict[str, dict[str, Any]] = {}
    for model in sorted({r.get("model") or "?" for r in ratings}):
        mine = [r for r in ratings if (r.get("model") or "?") == model]
        up = sum(r["rating"] == "up" for r in mine)
        per_model[model] = {
            "ratings": len(mine),
            "up": up,
            "down": len(mine) - up,
            "up_rate": up / len(mine) if mine else None,
            "ci95": wilson_interval(up, len(mine)),
            "with_conversation": sum(bool(r.get("conversation")) for r in mine),
        }
    return {
        "folder": str(folder),
        "records": len(records),
        "ratings": len(ratings),
        "cleared": sum(r.get("rating") == "cleared" for r in latest.values()),
        "with_conversation": sum(bool(r.get("conversation")) for r in ratings),
        "first": min((r["time"] for r in records if "time" in r), default=None),
        "last": max((r["time"] for r in records if "time" in r), default=None),
        "per_model": per_model,
    }


def render_feedback_markdown(summary: dict[str, Any]) -> str:
    """The feedback summary as markdown."""
    lines = [
        "## In-app feedback",
        "",
        f"{summary['ratings']} rated replies ({summary['records']} clicks, {summary['cleared']} cleared;"
        f" {summary['with_conversation']} with the conversation included), "
        f"{summary['first'] or '-'} to {summary['last'] or '-'}.",
        "",
        "| model | ratings | up | down | up-rate | 95% CI (Wilson) | with conversation |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, m in summary["per_model"].items():
        ci = f"{m['ci95'][0]:.2f} - {m['ci95'][1]:.2f}" if m["ci95"] else "n/a"
        lines.append(
            f"| `{model}` | {m['ratings']} | {m['up']} | {m['down']} | {_fmt(m['up_rate'])} | {ci}"
            f" | {m['with_conversation']} |"
        )
    lines += [
        "",
        "A reply rated twice counts once, by its latest rating. People who choose to rate are not a"
        " random sample of users: compare models served to the same audience, not across audiences.",
    ]
    return "\n".join(lines) + "\n"


# --- helpers ---------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RatingsError(f"{path} is not valid JSON ({err}); pass the file as saved") from None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _cell(text: str, limit: int) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _short(model: str) -> str:
    return Path(model).name or model


@contextlib.contextmanager
def _undefined_is_none():
    """Silence the libraries' warnings for an undefined statistic (no variation: 0/0); the NaN
    they return becomes None, shown as n/a."""
    import numpy as np

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield
