"""``warmline safety``: check one message, or evaluate the layer on labelled suites."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from warmline.safety.evaluate import (
    ScriptReport,
    SuiteError,
    SuiteReport,
    evaluate_scripts,
    evaluate_suite,
    read_suite,
    run_probes,
)
from warmline.safety.levels import Assessment
from warmline.safety.replies import crisis_reply
from warmline.safety.report import ReportFormat
from warmline.safety.risk import assess

logger = logging.getLogger(__name__)

app = typer.Typer(
    help="Risk assessment of user messages: check a message, evaluate the layer, report crisis counts.",
    no_args_is_help=True,
)


@app.command()
def check(
    texts: Annotated[
        list[str], typer.Argument(help="User message(s); several are read as successive user turns.")
    ],
    locale: Annotated[
        str | None,
        typer.Option(
            help="Country for the crisis reply (us, uk, fr-ca, ...); default: not known (findahelpline.com)."
        ),
    ] = None,
    classifier: Annotated[
        bool, typer.Option(help="Use the embedding classifier as well as the lexicon.")
    ] = True,
    reply: Annotated[bool, typer.Option(help="Include the crisis reply the user would get.")] = False,
) -> None:
    """Print the assessment of the message(s) as JSON."""
    conversation = [{"role": "user", "content": text} for text in texts]
    assessment: Assessment = assess(conversation, use_classifier=classifier)
    output = assessment.to_dict()
    if reply:
        output["reply"] = crisis_reply(assessment, locale) if assessment.is_crisis else None
    typer.echo(json.dumps(output, indent=2, ensure_ascii=False))


@app.command("eval")
def evaluate(
    suite: Annotated[
        Path | None,
        typer.Option(
            help="Suite: a JSONL file of messages {text, crisis, kind} (or the older {text, label}) "
            "and/or scripts {turns, expect}, or a folder of them; default: the packaged v1 suite."
        ),
    ] = None,
    probes: Annotated[Path | None, typer.Option(help="Interjection probes JSON to run as well.")] = None,
    classifier: Annotated[
        bool, typer.Option(help="Use the embedding classifier as well as the lexicon.")
    ] = True,
    show_errors: Annotated[
        bool,
        typer.Option(help="List every missed risk message, false positive, wrong reply and failed script."),
    ] = True,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON object (messages, scripts) instead of the text report."),
    ] = False,
) -> None:
    """Recall and false positives per kind and language, latency per message, pass/fail per script."""
    try:
        loaded = read_suite(suite)
    except SuiteError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    report = evaluate_suite(loaded.messages, use_classifier=classifier) if loaded.messages else None
    scripts = evaluate_scripts(loaded.scripts, use_classifier=classifier) if loaded.scripts else None
    probe_results = run_probes(probes, use_classifier=classifier) if probes is not None else None
    if as_json:
        output = {
            "suite": str(suite) if suite is not None else "packaged",
            "messages": report.to_dict() if report else None,
            "scripts": scripts.to_dict() if scripts else None,
            "probes": probe_results,
        }
        typer.echo(json.dumps(output, indent=2, ensure_ascii=False))
        return
    if report is not None:
        _echo_message_report(report, show_errors)
    if scripts is not None:
        _echo_script_report(scripts, show_errors)
    if probe_results is not None:
        typer.echo(f"probes ({probes}):")
        for result in probe_results:
            mark = "FLAGGED" if result["flagged"] else "-------"
            typer.echo(
                f"  {mark} {result['name']:<10} [{result['condition']}] level={result['level']} categories={result['categories']}"
            )
    if scripts is not None:
        typer.echo(scripts.result_line())
    if report is not None:
        typer.echo(report.result_line())


def _echo_message_report(report: SuiteReport, show_errors: bool) -> None:
    counts = report.counts_by_category
    typer.echo(
        f"suite: {report.counts['risk']} risk, {report.counts['negative']} negative, {report.counts['imminent']} imminent"
    )
    typer.echo("recall by kind (flagged elevated or imminent) | got the kind's reply:")
    for kind, recall in report.recall_by_category.items():
        reply = report.reply_accuracy_by_category.get(kind)
        reply_text = f"{reply:6.1%}" if reply is not None else "     -"
        typer.echo(f"  {kind:<20} {recall:6.1%} | {reply_text}  (n={counts['risk'][kind]})")
    typer.echo("false-positive rate by kind (non-risk flagged elevated or imminent):")
    for kind, rate in report.negatives_flagged_by_category.items():
        typer.echo(f"  {kind:<20} {rate:6.1%}  (n={counts['negative'][kind]})")
    typer.echo("by language: recall | false-positive rate (risk + non-risk messages):")
    for lang, row in report.by_language.items():
        typer.echo(
            f"  {lang:<4} {_pct(row['recall'])} | {_pct(row['fpr'])}  ({row['risk']} + {row['negative']})"
        )
    if len(report.by_form) > 1:
        typer.echo("by written form: recall | false-positive rate:")
        for form, row in report.by_form.items():
            typer.echo(
                f"  {form:<10} {_pct(row['recall'])} | {_pct(row['fpr'])}  ({row['risk']} + {row['negative']})"
            )
    typer.echo(
        f"recall {report.recall:.1%} | imminent assessed imminent {report.imminent_recall:.1%} | "
        f"false-positive rate {report.fpr:.1%} | non-risk at distress or above {report.any_flag_rate:.1%} | "
        f"right reply {report.reply_accuracy:.1%} | exact level {report.level_accuracy:.1%}"
    )
    typer.echo(
        f"latency: median {report.median_ms:.1f} ms, p95 {report.p95_ms:.1f} ms per message (mean {report.ms_per_msg:.1f})"
    )
    if show_errors:
        for record in report.misses:
            typer.echo(
                f"  MISSED [{record['category']}/{record['lang']}] {record['text']!r} -> {record['level']}"
            )
        for record in report.false_positives:
            typer.echo(
                f"  FALSE POSITIVE [{record['category']}/{record['lang']}] {record['text']!r} -> {record['level']}: {record['evidence']}"
            )
        for record in report.wrong_replies:
            typer.echo(
                f"  WRONG REPLY [{record['category']}/{record['lang']}] {record['text']!r} -> "
                f"{record['reply_kind']} (expected {record['expected_reply']})"
            )


def _echo_script_report(scripts: ScriptReport, show_errors: bool) -> None:
    typer.echo(f"scripts: {scripts.passed}/{scripts.total} pass")
    for result in scripts.results:
        mark = "PASS" if result.passed else "FAIL"
        outcome = " ".join(
            ("C" if turn["flagged"] else "-") + ("" if turn["ok"] else "!") for turn in result.turns
        )
        typer.echo(f"  {mark} {result.name:<34} [{result.kind}/{result.lang}] turns: {outcome}")
        if show_errors and not result.passed:
            for number in result.failed_turns:
                turn = result.turns[number - 1]
                typer.echo(
                    f"       turn {number}: expected {turn['expected']}, got {turn['level']} {turn['categories']}: {turn['text']!r}"
                )
    typer.echo(f"latency: median {scripts.median_ms:.1f} ms, p95 {scripts.p95_ms:.1f} ms per scripted turn")


def _pct(value: float) -> str:
    return "     -" if value != value else f"{value:6.1%}"  # NaN: nothing to count


@app.command()
def report(
    counts_file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="A counts file written by `warmline chat|serve --safety-counts FILE`."
        ),
    ],
    fmt: Annotated[
        ReportFormat, typer.Option("--format", help="json (grouped) or csv (group,name,count rows).")
    ] = ReportFormat.JSON,
    output: Annotated[
        Path | None, typer.Option(help="Write the report to this file (owner-only, 0600) instead of stdout.")
    ] = None,
) -> None:
    """Crisis referral counts per level, reply kind, category and language: counts only, never text."""
    from warmline.safety.report import format_report, read_counts

    try:
        text = format_report(read_counts(counts_file), fmt)
    except (FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if output is None:
        typer.echo(text, nl=False)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(output, 0o600)  # an existing file keeps its mode through O_CREAT


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    app()
