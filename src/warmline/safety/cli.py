"""``warmline safety``: check one message, or evaluate the layer on the labelled suite."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from warmline.safety.evaluate import evaluate_suite, load_suite, run_probes
from warmline.safety.levels import Assessment
from warmline.safety.replies import crisis_reply
from warmline.safety.risk import assess

logger = logging.getLogger(__name__)

app = typer.Typer(
    help="Risk assessment of user messages: check a message or evaluate the layer.", no_args_is_help=True
)


@app.command()
def check(
    texts: Annotated[
        list[str], typer.Argument(help="User message(s); several are read as successive user turns.")
    ],
    locale: Annotated[
        str, typer.Option(help="Locale for the crisis reply (us, uk, ie, or any other).")
    ] = "us",
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
        Path | None, typer.Option(help="Labelled suite (JSONL); default: the packaged one.")
    ] = None,
    probes: Annotated[Path | None, typer.Option(help="Interjection probes JSON to run as well.")] = None,
    classifier: Annotated[
        bool, typer.Option(help="Use the embedding classifier as well as the lexicon.")
    ] = True,
    show_errors: Annotated[
        bool, typer.Option(help="List every missed risk message and false positive.")
    ] = True,
) -> None:
    """Recall per category, false-positive rate on negatives, and latency per message."""
    examples = load_suite(suite)
    report = evaluate_suite(examples, use_classifier=classifier)
    typer.echo(
        f"suite: {report.counts['risk']} risk, {report.counts['negative']} negative, {report.counts['imminent']} imminent"
    )
    typer.echo("recall by category (flagged elevated or imminent):")
    for category, recall in report.recall_by_category.items():
        typer.echo(f"  {category:<18} {recall:6.1%}")
    typer.echo("negatives flagged by category (elevated or imminent):")
    for category, rate in report.negatives_flagged_by_category.items():
        typer.echo(f"  {category:<18} {rate:6.1%}")
    typer.echo(
        f"recall {report.recall:.1%} | imminent assessed imminent {report.imminent_recall:.1%} | "
        f"false-positive rate {report.fpr:.1%} | negatives at distress or above {report.any_flag_rate:.1%} | "
        f"exact level {report.level_accuracy:.1%}"
    )
    typer.echo(f"latency: {report.ms_per_msg:.1f} ms per message (p95 {report.p95_ms:.1f} ms)")
    if show_errors:
        for record in report.misses:
            typer.echo(f"  MISSED [{record['category']}] {record['text']!r} -> {record['level']}")
        for record in report.false_positives:
            typer.echo(
                f"  FALSE POSITIVE [{record['category']}] {record['text']!r} -> {record['level']}: {record['evidence']}"
            )
    if probes is not None:
        typer.echo(f"probes ({probes}):")
        for result in run_probes(probes, use_classifier=classifier):
            mark = "FLAGGED" if result["flagged"] else "-------"
            typer.echo(
                f"  {mark} {result['name']:<10} [{result['condition']}] level={result['level']} categories={result['categories']}"
            )
    typer.echo(report.result_line())


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    app()
