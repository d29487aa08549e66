"""The `warmline` command line. Every command's `--help` comes from its docstring."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Sequentially fine-tune small language models into empathetic, safety-aware support chatbots.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Look at a recipe's data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Command name -> the module that implements it. tests/test_cli.py keeps this map, the
# registered commands and the modules in sync.
COMMANDS: dict[str, str] = {
    "train": "warmline.train",
    "data inspect": "warmline.inspect_data",
    "chat": "warmline.chat",
    "serve": "warmline.serve",
    "eval": "warmline.evaluate",
    "safety check": "warmline.safety",
    "safety eval": "warmline.safety",
}

Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe value, e.g. --set stages.0.epochs=1 (repeatable)."),
]


def _known_errors() -> tuple[type[BaseException], ...]:
    from .formats import FormatError
    from .models import ModelNotAvailableError
    from .recipe import RecipeError
    from .sources import SourceError

    return (RecipeError, SourceError, FormatError, ModelNotAvailableError, FileNotFoundError)


def friendly_errors(fn: Callable) -> Callable:
    """Known user errors print one clear line and exit 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _known_errors() as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
@friendly_errors
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option(help="Skip finished stages; continue an interrupted one.")] = False,
    samples: Annotated[int, typer.Option(help="Print this many sample replies from the final model.")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train the recipe's stages in order, each starting from the previous stage's weights."""
    _setup_logging(verbose)
    from .recipe import load_recipe
    from .train import train_recipe

    loaded = load_recipe(recipe, overrides)
    train_recipe(loaded, recipe_path=recipe, resume=resume, samples=samples)


@data_app.command("inspect")
@friendly_errors
def data_inspect(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    overrides: Overrides = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print, per stage: rows read, dropped by reason, duplicates, kept, split sizes and token lengths."""
    _setup_logging(False)
    from .inspect_data import format_table, inspect_recipe
    from .models import load_tokenizer
    from .recipe import load_recipe

    loaded = load_recipe(recipe, overrides)
    tokenizer = load_tokenizer(loaded.base_model)
    rows = inspect_recipe(loaded, tokenizer)
    typer.echo(json.dumps(rows, indent=2) if as_json else format_table(rows))


def _register_optional() -> None:
    """Sub-apps that live in their own modules."""
    try:
        from .safety.cli import app as safety_app
    except ImportError as err:  # pragma: no cover - only while a module is being built
        if os.environ.get("WARMLINE_DEBUG"):
            raise
        logging.getLogger(__name__).debug("safety commands unavailable: %s", err)
    else:
        app.add_typer(safety_app, name="safety")


_register_optional()

if __name__ == "__main__":
    app()
