"""The v2 eval suite split into a DEV half (even 0-based line of each file, even script index)
and a TEST half (odd): tune on DEV failures only, report TEST as aggregates only.

    .venv/bin/python benchmarks/safety_devtest.py [--dev-failures FILE] [--json FILE]

The TEST half's texts and failures are never printed or written, so the held-out half stays a
fair measure of changes to the detection rules and the classifier.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from warmline.safety.evaluate import (
    _parse_message,
    _parse_script,
    evaluate_scripts,
    evaluate_suite,
    packaged_eval_dir,
)


def _halves(folder: Path):
    messages = {"dev": [], "test": []}
    scripts = {"dev": [], "test": []}
    for file in sorted(folder.glob("*.jsonl")):
        index = 0
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            half = "dev" if index % 2 == 0 else "test"
            index += 1
            where = f"{file.name}:{number}"
            if "turns" in row:
                scripts[half].append(_parse_script(row, where))
            else:
                messages[half].append(_parse_message(row, where))
    return messages, scripts


def _pct(value: float) -> str:
    return f"{100 * value:5.1f}%"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=packaged_eval_dir())
    parser.add_argument(
        "--dev-failures",
        type=Path,
        help="write the DEV half's misses, false positives and failed scripts here",
    )
    parser.add_argument("--json", type=Path, help="write both halves' aggregate figures here")
    args = parser.parse_args()
    messages, scripts = _halves(args.suite)
    figures = {}
    for half in ("dev", "test"):
        report = evaluate_suite(messages[half])
        script_report = evaluate_scripts(scripts[half])
        figures[half] = {
            "recall": report.recall,
            "imminent_recall": report.imminent_recall,
            "fpr": report.fpr,
            "reply_accuracy": report.reply_accuracy,
            "median_ms": report.median_ms,
            "counts": report.counts,
            "recall_by_kind": report.recall_by_category,
            "fp_by_kind": report.negatives_flagged_by_category,
            "by_language": report.by_language,
            "by_form": report.by_form,
            "scripts_passed": script_report.passed,
            "scripts_total": script_report.total,
        }
        if half == "dev" and args.dev_failures:
            args.dev_failures.write_text(
                json.dumps(
                    {
                        "misses": report.misses,
                        "false_positives": report.false_positives,
                        "wrong_replies": report.wrong_replies,
                        "failed_scripts": [
                            {"name": r.name, "lang": r.lang, "turns": r.turns}
                            for r in script_report.results
                            if not r.passed
                        ],
                    },
                    indent=1,
                    ensure_ascii=False,
                ),
                encoding="utf-8",
            )
    for half, f in figures.items():
        print(
            f"{half.upper():4} recall {_pct(f['recall'])} imminent {_pct(f['imminent_recall'])} fpr {_pct(f['fpr'])} "
            f"reply {_pct(f['reply_accuracy'])} scripts {f['scripts_passed']}/{f['scripts_total']} "
            f"median {f['median_ms']:.1f} ms  n={f['counts']}"
        )
    kinds = sorted(set(figures["dev"]["recall_by_kind"]) | set(figures["test"]["recall_by_kind"]))
    print("recall by kind           dev     test")
    for kind in kinds:
        print(
            f"  {kind:22} "
            + "  ".join(_pct(figures[h]["recall_by_kind"].get(kind, float("nan"))) for h in ("dev", "test"))
        )
    kinds = sorted(set(figures["dev"]["fp_by_kind"]) | set(figures["test"]["fp_by_kind"]))
    print("false positives by kind  dev     test")
    for kind in kinds:
        print(
            f"  {kind:22} "
            + "  ".join(_pct(figures[h]["fp_by_kind"].get(kind, float("nan"))) for h in ("dev", "test"))
        )
    for name in ("by_language", "by_form"):
        print(f"{name} (recall / fpr)        dev              test")
        for key in sorted(set(figures["dev"][name]) | set(figures["test"][name])):
            cells = []
            for h in ("dev", "test"):
                r = figures[h][name].get(key, {})
                cells.append(
                    f"{r.get('recall', float('nan')) * 100:5.1f}% / {r.get('fpr', float('nan')) * 100:5.1f}%"
                )
            print(f"  {key:22} " + "   ".join(cells))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
