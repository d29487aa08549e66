"""`warmline eval ratings`: the statistics on constructed ratings with answers worked out by hand
(win rate, Wilson interval, Krippendorff's alpha, Cohen's kappa, rubric means, disagreements),
the unblinding by the key, the report files and the one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from warmline.cli import app
from warmline.evaluation.ratings import load_judgements, summarise_ratings
from warmline.evaluation.sheet import RATINGS_FORMAT, RUBRIC, SHEET_FORMAT

MODELS = ["runs/alpha", "runs/beta"]
DIMS = [d.name for d in RUBRIC]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_key(tmp_path: Path, n_items: int, sheet_id: str = "abc123") -> Path:
    """A key whose A/B order alternates item by item: alpha is A on odd items, B on even ones."""
    items = []
    for i in range(1, n_items + 1):
        a, b = (MODELS[0], MODELS[1]) if i % 2 else (MODELS[1], MODELS[0])
        items.append(
            {
                "item": f"{i:02d}",
                "A": a,
                "B": b,
                "source": "everyday",
                "prompt": [{"role": "user", "content": f"prompt number {i}"}],
                "replies": {},
            }
        )
    key = {"format": SHEET_FORMAT, "sheet_id": sheet_id, "models": MODELS, "items": items}
    path = tmp_path / f"key-{sheet_id}.json"
    path.write_text(json.dumps(key))
    return path


def write_ratings(
    tmp_path: Path,
    key_path: Path,
    rater: str,
    winners: list[str | None],
    scores: dict[str, list[int]] | None = None,
    sheet_id: str | None = None,
) -> Path:
    """A saved ratings file as the sheet writes it, from answers given per model (not per side):
    winners[i] is "alpha", "beta", "tie" or None; scores[model][i] is every dimension's score."""
    key = json.loads(key_path.read_text())
    names = {"alpha": MODELS[0], "beta": MODELS[1]}
    items = []
    for i, (item, winner) in enumerate(zip(key["items"], winners, strict=True)):
        side_of = {item["A"]: "A", item["B"]: "B"}
        preference = None if winner is None else "tie" if winner == "tie" else side_of[names[winner]]
        per_side = {"A": {d: None for d in DIMS}, "B": {d: None for d in DIMS}}
        for short, values in (scores or {}).items():
            per_side[side_of[names[short]]] = {d: values[i] for d in DIMS}
        items.append({"item": item["item"], "scores": per_side, "preference": preference, "comment": ""})
    data = {
        "format": RATINGS_FORMAT,
        "sheet_id": sheet_id or key["sheet_id"],
        "rater_id": rater,
        "saved_at": "2026-12-01T12:00:00Z",
        "items": items,
    }
    path = tmp_path / f"ratings-{rater}.json"
    path.write_text(json.dumps(data))
    return path


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval, written out (Wilson 1927; Agresti & Coull 1998, eq. 2)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


# --- win rate and interval -------------------------------------------------------------------


def test_win_rate_excludes_ties_and_has_the_wilson_interval(tmp_path):
    key = make_key(tmp_path, 12)
    # 7 alpha wins, 3 beta wins, 2 ties, spread over both A/B orders.
    winners = [
        "alpha",
        "alpha",
        "beta",
        "alpha",
        "tie",
        "alpha",
        "alpha",
        "beta",
        "alpha",
        "tie",
        "alpha",
        "beta",
    ]
    summary = summarise_ratings([write_ratings(tmp_path, key, "r1", winners)], key)
    alpha, beta = summary["win_rates"][MODELS[0]], summary["win_rates"][MODELS[1]]
    assert (alpha["wins"], alpha["losses"], alpha["ties"]) == (7, 3, 2)
    assert (beta["wins"], beta["losses"], beta["ties"]) == (3, 7, 2)
    assert alpha["win_rate"] == pytest.approx(0.7) and beta["win_rate"] == pytest.approx(0.3)
    assert alpha["ci95"] == pytest.approx(wilson(7, 10), abs=1e-9)
    assert alpha["ci95"] == pytest.approx((0.3968, 0.8922), abs=1e-4)  # the published 7/10 interval
    assert beta["ci95"] == pytest.approx(wilson(3, 10), abs=1e-9)


def test_the_key_unblinds_a_and_b(tmp_path):
    """The rater always picked "A": with the alternating order, each model won on its own items."""
    key = make_key(tmp_path, 6)
    ratings = tmp_path / "all-a.json"
    write_ratings(tmp_path, key, "r1", ["alpha", "beta"] * 3).rename(ratings)
    data = json.loads(ratings.read_text())
    assert [i["preference"] for i in data["items"]] == ["A"] * 6  # what the rater clicked
    summary = summarise_ratings([ratings], key)
    assert summary["win_rates"][MODELS[0]]["wins"] == 3 and summary["win_rates"][MODELS[1]]["wins"] == 3


def test_no_decided_judgement_has_no_win_rate(tmp_path):
    key = make_key(tmp_path, 3)
    summary = summarise_ratings([write_ratings(tmp_path, key, "r1", ["tie", "tie", None])], key)
    w = summary["win_rates"][MODELS[0]]
    assert w["win_rate"] is None and w["ci95"] is None and w["ties"] == 2 and w["unanswered"] == 1


# --- rubric means ----------------------------------------------------------------------------


def test_dimension_means_per_model(tmp_path):
    key = make_key(tmp_path, 4)
    scores = {"alpha": [5, 4, 4, 3], "beta": [2, 2, 3, 1]}
    summary = summarise_ratings([write_ratings(tmp_path, key, "r1", ["alpha"] * 4, scores)], key)
    for dim in DIMS:
        assert summary["dimension_means"][MODELS[0]][dim] == {"mean": pytest.approx(4.0), "n": 4}
        assert summary["dimension_means"][MODELS[1]][dim] == {"mean": pytest.approx(2.0), "n": 4}


# --- agreement -------------------------------------------------------------------------------


def test_perfect_agreement_is_alpha_and_kappa_one(tmp_path):
    key = make_key(tmp_path, 6)
    winners = ["alpha", "beta", "tie", "alpha", "alpha", "beta"]
    scores = {"alpha": [5, 2, 3, 4, 5, 1], "beta": [1, 4, 3, 2, 2, 5]}
    files = [write_ratings(tmp_path, key, r, winners, scores) for r in ("r1", "r2")]
    measures = summarise_ratings(files, key)["agreement"]["measures"]
    for name in ("preference", *DIMS):
        assert measures[name]["alpha"] == pytest.approx(1.0)
        assert measures[name]["kappa"] == pytest.approx(1.0)
    assert measures["preference"]["level"] == "nominal" and measures["empathy"]["level"] == "ordinal"


def test_kappa_and_nominal_alpha_by_hand(tmp_path):
    """Two raters, 10 items, agreeing on 8. Kappa: p_o = 0.8, p_e = 0.5*0.5 + 0.5*0.5 = 0.5, so
    (0.8 - 0.5) / (1 - 0.5) = 0.6. Alpha (nominal): 20 values, coincidences o(a,b) = o(b,a) = 2,
    n_alpha = n_beta = 10, so 1 - (20 - 1) * 4 / (10 * 10 * 2) = 0.62."""
    key = make_key(tmp_path, 10)
    one = ["alpha"] * 5 + ["beta"] * 5
    two = ["alpha"] * 4 + ["beta"] * 5 + ["alpha"]
    files = [write_ratings(tmp_path, key, "r1", one), write_ratings(tmp_path, key, "r2", two)]
    summary = summarise_ratings(files, key)
    preference = summary["agreement"]["measures"]["preference"]
    assert preference["kappa"] == pytest.approx(0.6)
    assert preference["alpha"] == pytest.approx(0.62)
    assert [d["item"] for d in summary["disagreements"]] == ["05", "10"]
    assert summary["disagreements"][0]["preferences"] == {"r1": MODELS[0], "r2": MODELS[1]}
    assert summary["disagreements"][0]["prompt"] == "prompt number 5"


def test_three_raters_get_alpha_but_no_kappa(tmp_path):
    key = make_key(tmp_path, 4)
    files = [write_ratings(tmp_path, key, r, ["alpha", "beta", "alpha", "beta"]) for r in ("a", "b", "c")]
    measures = summarise_ratings(files, key)["agreement"]["measures"]
    assert measures["preference"]["alpha"] == pytest.approx(1.0) and "kappa" not in measures["preference"]


def test_one_rater_has_no_agreement_to_measure(tmp_path):
    key = make_key(tmp_path, 4)
    summary = summarise_ratings([write_ratings(tmp_path, key, "solo", ["alpha"] * 4)], key)
    assert summary["agreement"]["measures"]["preference"]["alpha"] is None
    assert summary["disagreements"] == []


def test_scores_two_points_apart_are_a_disagreement(tmp_path):
    key = make_key(tmp_path, 2)
    files = [
        write_ratings(tmp_path, key, "r1", ["alpha", "alpha"], {"alpha": [5, 4], "beta": [3, 3]}),
        write_ratings(tmp_path, key, "r2", ["alpha", "alpha"], {"alpha": [3, 4], "beta": [3, 2]}),
    ]
    (found,) = summarise_ratings(files, key)["disagreements"]
    assert found["item"] == "01" and found["score_spreads"] == {f"{d} ({MODELS[0]})": [3, 5] for d in DIMS}


# --- the command -----------------------------------------------------------------------------


def test_cli_writes_the_report_and_appends_it_to_a_run_once(tmp_path):
    key = make_key(tmp_path, 4)
    files = [
        write_ratings(
            tmp_path, key, "r1", ["alpha", "alpha", "beta", "tie"], {"alpha": [4] * 4, "beta": [3] * 4}
        ),
        write_ratings(
            tmp_path, key, "r2", ["alpha", "beta", "beta", "tie"], {"alpha": [4] * 4, "beta": [3] * 4}
        ),
    ]
    run = tmp_path / "runs" / "alpha"
    (run / "report").mkdir(parents=True)
    (run / "report" / "report.md").write_text("# Report\n\nearlier text\n")
    args = [
        "eval",
        "ratings",
        *map(str, files),
        "--key",
        str(key),
        "--report",
        str(run),
        "--out",
        str(tmp_path / "out"),
    ]
    for _ in range(2):  # a second summary of the same sheet replaces the first
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    assert "| `runs/alpha` | 3 | 3 | 2 | 0 | 0.50 |" in result.stdout
    assert (tmp_path / "out" / "ratings.png").read_bytes().startswith(PNG_SIGNATURE)
    saved = json.loads((tmp_path / "out" / "ratings.json").read_text())
    assert saved["win_rates"][MODELS[0]]["win_rate"] == pytest.approx(0.5) and saved["raters"] == ["r1", "r2"]
    report = (run / "report" / "report.md").read_text()
    assert report.startswith("# Report\n\nearlier text\n")
    assert report.count("## Human ratings (sheet abc123)") == 1
    assert "![Win rates and rubric means](ratings-abc123.png)" in report
    assert (run / "report" / "ratings-abc123.png").read_bytes().startswith(PNG_SIGNATURE)


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    return line


def test_ratings_of_another_sheet_are_refused(tmp_path):
    key = make_key(tmp_path, 2)
    other = write_ratings(tmp_path, key, "r1", ["alpha", "beta"], sheet_id="zzz999")
    error = _one_line_error(CliRunner().invoke(app, ["eval", "ratings", str(other), "--key", str(key)]))
    assert "zzz999" in error and "abc123" in error


def test_a_score_off_the_scale_is_refused(tmp_path):
    key = make_key(tmp_path, 2)
    path = write_ratings(tmp_path, key, "r1", ["alpha", "beta"], {"alpha": [4, 9], "beta": [3, 3]})
    with pytest.raises(ValueError, match="not on the scale"):
        load_judgements([path], json.loads(key.read_text()))


def test_the_same_rater_twice_is_refused(tmp_path):
    key = make_key(tmp_path, 2)
    first = write_ratings(tmp_path, key, "r1", ["alpha", "beta"])
    second = tmp_path / "copy.json"
    second.write_text(first.read_text())
    error = _one_line_error(
        CliRunner().invoke(app, ["eval", "ratings", str(first), str(second), "--key", str(key)])
    )
    assert "r1" in error and "one file per rater" in error


def test_a_missing_key_is_one_line(tmp_path):
    error = _one_line_error(
        CliRunner().invoke(app, ["eval", "ratings", "x.json", "--key", str(tmp_path / "k.json")])
    )
    assert "key file" in error
