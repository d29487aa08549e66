"""The `warmline` command line. Every command's `--help` comes from its docstring."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, get_type_hints

import typer

from warmline.serving.settings import GenerationSettings, cli_fields

if TYPE_CHECKING:
    from warmline.serving.generator import Generator

app = typer.Typer(
    help="Sequentially fine-tune small language models into empathetic, safety-aware support chatbots.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Look at a recipe's data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


class DefaultCommandGroup(typer.core.TyperGroup):
    """A command group whose first argument, when it names none of its commands, goes to the
    group's default command: `warmline eval RUN` is `warmline eval report RUN`."""

    default_command = "report"

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(
    cls=DefaultCommandGroup,
    help="Evaluate runs: `warmline eval RUN` writes a run's report (the `report` command); `sheet`,"
    " `ratings` and `feedback` are for rating replies with people.",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")

# Command name -> the module that implements it. tests/test_cli.py keeps this map, the
# registered commands and the modules in sync.
COMMANDS: dict[str, str] = {
    "train": "warmline.training.train",
    "data inspect": "warmline.data.inspection",
    "chat": "warmline.serving.chat",
    "serve": "warmline.serving.web",
    "eval report": "warmline.evaluation.evaluate",  # also `warmline eval RUN`
    "eval sheet": "warmline.evaluation.sheet",
    "eval ratings": "warmline.evaluation.ratings",
    "eval feedback": "warmline.evaluation.ratings",
    "safety check": "warmline.safety.cli",
    "safety eval": "warmline.safety.cli",
    "safety report": "warmline.safety.report",
    "export": "warmline.export.run",
    "gateway": "warmline.serving.gateway",
}

Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe value, e.g. --set stages.0.epochs=1 (repeatable)."),
]


def _known_errors() -> tuple[type[BaseException], ...]:
    from warmline.data.formats import FormatError
    from warmline.data.sources import SourceError
    from warmline.models import ModelNotAvailableError
    from warmline.recipe import RecipeError

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
    force: Annotated[
        bool, typer.Option(help="With --resume: keep finished stages trained with a different recipe.")
    ] = False,
    samples: Annotated[int, typer.Option(help="Print this many sample replies from the final model.")] = 0,
    plan: Annotated[
        bool,
        typer.Option(
            help="Print per stage examples, tokens, optimizer steps and estimated memory; train nothing."
        ),
    ] = False,
    measure: Annotated[
        bool,
        typer.Option(
            help="With --plan: train the first stage's first 2 optimizer steps in a scratch folder (deleted"
            " after) and print measured peak memory and speed next to the estimate."
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train the recipe's stages in order, each starting from the previous stage's weights.

    Several GPUs: `accelerate launch --num_processes N -m warmline train RECIPE`."""
    _setup_logging(verbose)
    from warmline.recipe import load_recipe

    if measure and not plan:
        raise typer.BadParameter("--measure measures the plan: use it with --plan", param_hint="--measure")
    loaded = load_recipe(recipe, overrides)
    if plan:
        from warmline.training.plan import format_measurement, format_plan, measure_first_steps, plan_recipe

        result = plan_recipe(loaded, str(recipe))
        typer.echo(format_plan(result, loaded))
        if measure:
            typer.echo(format_measurement(measure_first_steps(loaded, str(recipe)), result))
        return
    from warmline.training.train import train_recipe

    train_recipe(loaded, recipe_path=recipe, resume=resume, force=force, samples=samples)


@data_app.command("inspect")
@friendly_errors
def data_inspect(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    overrides: Overrides = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print, per stage: rows read, dropped by reason, duplicates, kept, split sizes and token lengths."""
    _setup_logging(False)
    from warmline.data.inspection import format_table, inspect_recipe
    from warmline.models import load_tokenizer
    from warmline.recipe import load_recipe

    loaded = load_recipe(recipe, overrides)  # resolves relative sources, as `train` reads them
    tokenizer = load_tokenizer(loaded.base_model)
    rows = inspect_recipe(loaded, tokenizer)
    typer.echo(json.dumps(rows, indent=2) if as_json else format_table(rows))


# Options shared by `chat` and `serve`; the sampling ones come from GenerationSettings.
ModelRef = Annotated[str, typer.Argument(help="A run folder, stage folder, hub id or packaged:NAME.")]
Seed = Annotated[
    int | None, typer.Option(help="Seed for sampling: the same conversation gets the same reply.")
]
Locale = Annotated[
    str | None,
    typer.Option(
        help="Country for the crisis lines (us, uk, ie, ca, au, es, mx, fr, be, ch, de, at, pt, br, it, or a tag such"
        " as fr-CA). Default: not known, so replies give findahelpline.com and the lines of the main countries"
        " of the message's language."
    ),
]
SafetyCounts = Annotated[
    Path | None,
    typer.Option(
        help="Write crisis referral counts per level, kind, category and language (counts only, never text) to"
        " this JSON file every minute and at exit, owner-only; read it with `warmline safety report FILE`."
    ),
]


@contextlib.contextmanager
def _safety_counts(generator: Generator, path: Path | None):
    """While the block runs, write the generator's safety gate counters to `path` (if given)."""
    if path is None:
        yield
        return
    from warmline.safety.report import CountsWriter

    gate = getattr(generator, "gate", None)
    if gate is None:
        raise typer.BadParameter("the generator has no safety gate to count", param_hint="--safety-counts")
    writer = CountsWriter(path, gate.snapshot).start()
    try:
        yield
    finally:
        writer.stop()


Fp16Decode = Annotated[
    bool,
    typer.Option(
        "--fp16-decode/--fp32-decode",
        help="On a CPU, decode with an fp16 copy of the weights (faster; the prompt is still read in"
        " fp32; benchmarks/RESULTS.md has the figures).",
    ),
]


class EngineName(StrEnum):
    """What runs the model's forward passes in `chat` and `serve`."""

    auto = "auto"
    torch = "torch"
    onnx = "onnx"


class OnnxQuant(StrEnum):
    """Weight types of the ONNX engine's build (`warmline.serving.onnx_build.QUANT_OPTIONS`)."""

    fp32 = "fp32"
    int8 = "int8"
    int8_mlp = "int8-mlp"
    int4 = "int4"


EngineOption = Annotated[
    EngineName,
    typer.Option(
        help="torch: transformers. onnx: onnxruntime-genai (built from the model once, cached beside it;"
        " several times faster decoding on a CPU). auto: onnx on a CPU, torch on a GPU, and torch for a model"
        " onnxruntime-genai cannot convert (said in one line).",
    ),
]
QuantOption = Annotated[
    OnnxQuant | None,
    typer.Option(
        help="The onnx engine's weights: fp32 (lossless), int8, int8-mlp (int8 in the MLP blocks, attention"
        " and output head fp32), int4. Default: the fastest build that passes the quality gate (reply-token"
        " loss within +0.02 of fp32, top-1 agreement >= 97%; judged once per model), else fp32. For the"
        " offline run's SmolLM2-135M that is int8-mlp (+0.003, 97.5%); int8 (95%) and int4 (63%) fall"
        " outside the gate (benchmarks/RESULTS.md) and run only when asked for.",
    ),
]
SystemPrompt = Annotated[
    str | None, typer.Option("--system", help="System prompt (default: warmline's recipe default).")
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        envvar="WARMLINE_API_KEY",
        show_envvar=True,
        help="Key the API's clients must send (Authorization: Bearer KEY); required to bind beyond 127.0.0.1.",
    ),
]


def _check_bind(host: str, api_key: str | None) -> None:
    """Refuse (one line, exit 2) to expose the API beyond loopback without a key."""
    from warmline.serving.api import BindError, check_bind

    try:
        check_bind(host, api_key)
    except BindError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def _api_routes(
    streamer, *, api_key: str | None, model_id: str, system_prompt: str | None, slots, base_stop_strings=()
) -> list:
    """The OpenAI-compatible API's routes (`warmline.serving.api`)."""
    from warmline.serving.api import ChatAPI

    api = ChatAPI(
        streamer,
        model_id=model_id,
        api_key=api_key,
        system_prompt=system_prompt,
        base_stop_strings=base_stop_strings,
        slots=slots,
    )
    logging.getLogger(__name__).info("OpenAI-compatible API at /v1/chat/completions (model %r)", model_id)
    return api.routes()


def _load_generator(
    model: str,
    locale: str,
    settings: GenerationSettings,
    fp16_decode: bool = True,
    engine: str = "auto",
    quant: str | None = None,
) -> Generator:
    """The streaming generator behind a safety gate (the gate is always on), on the engine asked
    for (`warmline.serving.onnx_engine.onnx_generator`; the torch one when onnx can't run it)."""
    from warmline.safety import SafetyGate
    from warmline.serving.generator import Generator
    from warmline.serving.onnx_build import OnnxBuildError
    from warmline.serving.onnx_engine import onnx_generator

    gate = SafetyGate(locale=locale)
    try:
        generator = onnx_generator(model, engine=engine, quant=quant, gate=gate, settings=settings)
    except OnnxBuildError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if generator is None:
        generator = Generator.from_pretrained(model, gate=gate, settings=settings, fp16_decode=fp16_decode)
    if gate.use_classifier:  # load (or train, once) now rather than on the first message
        from warmline.safety.classifier import load_default_classifiers

        load_default_classifiers()
    return generator


def _engine_args(engine: EngineName, quant: OnnxQuant | None) -> dict[str, str]:
    """`_load_generator`'s engine arguments, only those not at its defaults (callers and tests that
    replace `_load_generator` without them keep working)."""
    args = {} if engine is EngineName.auto else {"engine": engine.value}
    return args if quant is None else {**args, "quant": quant.value}


def generation_options(fn: Callable) -> Callable:
    """Replace `fn`'s `settings: GenerationSettings` parameter with one option per setting in
    `cli_fields()` (its default and help text from the dataclass); `fn` gets the settings."""
    hints = get_type_hints(GenerationSettings)
    options = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=f.default,
            annotation=Annotated[hints[f.name], typer.Option(help=f.metadata["help"])],
        )
        for f in cli_fields()
    ]
    params = list(inspect.signature(fn, eval_str=True).parameters.values())
    at = next(i for i, p in enumerate(params) if p.name == "settings")
    params[at : at + 1] = options

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        values = {f.name: kwargs.pop(f.name) for f in cli_fields()}
        try:
            settings = GenerationSettings(**values)
        except ValueError as err:
            raise typer.BadParameter(str(err)) from None
        return fn(*args, settings=settings, **kwargs)

    del wrapper.__wrapped__  # typer reads the signature below, not `fn`'s
    wrapper.__signature__ = inspect.Signature(
        [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind is p.POSITIONAL_OR_KEYWORD else p
            for p in params
        ]
    )
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


@app.command()
@friendly_errors
@generation_options
def chat(
    model: ModelRef,
    settings: GenerationSettings,
    seed: Seed = None,
    locale: Locale = None,
    safety_counts: SafetyCounts = None,
    fp16_decode: Fp16Decode = True,
    engine: EngineOption = EngineName.auto,
    quant: QuantOption = None,
    system: SystemPrompt = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Timings on stderr after each reply.")
    ] = False,
) -> None:
    """Chat with a model in the terminal: replies stream to stdout, everything else goes to stderr.

    Commands: /reset starts over, /save FILE writes the conversation to FILE, /quit ends.

    Nothing is saved unless you ask. Crisis messages get a fixed reply with crisis resources.
    """
    _setup_logging(verbose)
    if not verbose:
        logging.getLogger().setLevel(logging.WARNING)  # keep the terminal for the conversation
    from warmline.recipe import DEFAULT_SYSTEM_PROMPT
    from warmline.serving.chat import run_chat

    generator = _load_generator(model, locale, settings, fp16_decode, **_engine_args(engine, quant))
    system_prompt = DEFAULT_SYSTEM_PROMPT if system is None else system
    generator.warm_up(system_prompt)
    with _safety_counts(generator, safety_counts):
        run_chat(
            generator,
            system_prompt=system_prompt,
            seed=seed,
            model_name=model,
            locale=locale or "default",
            verbose=verbose,
        )


@app.command()
@friendly_errors
@generation_options
def serve(
    model: ModelRef,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the chat to your network.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    concurrency_limit: Annotated[int, typer.Option(help="Replies generated at the same time.")] = 4,
    save_transcripts: Annotated[
        Path | None,
        typer.Option(help="Save each session's conversation as JSON in this folder (off by default)."),
    ] = None,
    feedback: Annotated[
        Path | None,
        typer.Option(
            help="Show thumbs up/down on replies and a consent line; store each rating (with the model, time"
            " and settings; the conversation only when the user ticks 'include this conversation') in"
            " DIR/feedback.jsonl, owner-only. Off by default; read it with `warmline eval feedback DIR`."
        ),
    ] = None,
    settings: GenerationSettings = None,  # the sampling options (generation_options)
    locale: Locale = None,
    safety_counts: SafetyCounts = None,
    fp16_decode: Fp16Decode = True,
    engine: EngineOption = EngineName.auto,
    quant: QuantOption = None,
    system: SystemPrompt = None,
    api: Annotated[
        bool,
        typer.Option("--api", help="Also serve an OpenAI-compatible API (/v1/chat/completions, /v1/models)."),
    ] = False,
    api_key: ApiKey = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve a web chat (Gradio) with the AI notice, crisis resources and a /chat API endpoint.

    Private by default: binds 127.0.0.1, no share link, no analytics, no stored conversations.
    With --api, the same server answers OpenAI clients at /v1, every request through the safety gate.
    With --feedback DIR, users may rate replies (opt-in, see --help of that option).
    """
    _setup_logging(verbose)
    from warmline.recipe import DEFAULT_SYSTEM_PROMPT
    from warmline.serving.feedback import FeedbackStore
    from warmline.serving.web import build_app, launch

    if api:  # refuse a keyless API beyond loopback before loading anything
        _check_bind(host, api_key)
    generator = _load_generator(model, locale, settings, fp16_decode, **_engine_args(engine, quant))
    system_prompt = DEFAULT_SYSTEM_PROMPT if system is None else system
    generator.warm_up(system_prompt)
    from warmline.serving.api import ModelSlots, limited

    # One pool of model slots for the web app and the API, taken after the assessment: a
    # crisis reply never waits for them.
    slots = ModelSlots(concurrency_limit, max_waiting=24)
    web_app = build_app(
        generator,
        system_prompt=system_prompt,
        locale=locale or "default",
        transcripts_dir=save_transcripts,
        concurrency_limit=concurrency_limit,
        slots=slots,
        feedback=FeedbackStore(feedback, model=_model_id(model)) if feedback is not None else None,
    )
    routes = []
    if api:
        routes = _api_routes(
            limited(generator, slots),
            api_key=api_key,
            model_id=_model_id(model),
            system_prompt=system_prompt,
            slots=slots,
            base_stop_strings=generator.template.stop_strings,
        )
    with _safety_counts(generator, safety_counts):
        launch(web_app, host=host, port=port, routes=routes)


def _model_id(model: str) -> str:
    """The name the API lists for a model reference: a folder's name, else the reference."""
    path = Path(model)
    return path.resolve().name if path.exists() else model


@app.command()
@friendly_errors
def gateway(
    backend: Annotated[
        str,
        typer.Option(
            help="The backend's OpenAI base URL, e.g. http://127.0.0.1:8080/v1 (llama.cpp), "
            "http://127.0.0.1:11434/v1 (Ollama), http://127.0.0.1:8000/v1 (vLLM)."
        ),
    ],
    backend_model: Annotated[
        str | None, typer.Option(help="The backend's model name (default: the first it lists).")
    ] = None,
    backend_key: Annotated[
        str | None,
        typer.Option(
            envvar="WARMLINE_BACKEND_API_KEY", show_envvar=True, help="Key sent to the backend (hosted APIs)."
        ),
    ] = None,
    api_key: ApiKey = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; beyond 127.0.0.1 needs --api-key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    concurrency_limit: Annotated[
        int, typer.Option(help="Replies asked of the backend at the same time.")
    ] = 4,
    locale: Locale = None,
    safety_counts: SafetyCounts = None,
    system: SystemPrompt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Put warmline's safety gate in front of any OpenAI-compatible server: the same web chat and API.

    Crisis messages are answered here and never reach the backend; its replies are screened
    sentence by sentence (an unsafe one is replaced), and the AI notice is shown. The backend
    runs without a gate of its own (an exported GGUF in llama.cpp or Ollama, vLLM, a hosted API).
    """
    _setup_logging(verbose)
    from warmline.recipe import DEFAULT_SYSTEM_PROMPT
    from warmline.safety import SafetyGate
    from warmline.serving.api import ModelSlots
    from warmline.serving.gateway import BackendClient, BackendError, BackendStreamer
    from warmline.serving.web import build_app, launch

    _check_bind(host, api_key)
    try:
        client = BackendClient(backend, model=backend_model, api_key=backend_key)
    except BackendError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    gate = SafetyGate(locale=locale)
    if gate.use_classifier:  # load (or train, once) now rather than on the first message
        from warmline.safety.classifier import load_default_classifiers

        load_default_classifiers()
    slots = ModelSlots(concurrency_limit)
    streamer = BackendStreamer(client, gate=gate, slots=slots)
    system_prompt = DEFAULT_SYSTEM_PROMPT if system is None else system
    web_app = build_app(
        streamer,
        system_prompt=system_prompt,
        locale=locale or "default",
        concurrency_limit=concurrency_limit,
    )
    routes = _api_routes(
        streamer, api_key=api_key, model_id=client.model, system_prompt=system_prompt, slots=slots
    )
    logging.getLogger(__name__).info("gateway to %s (model %r)", client.base_url, client.model)
    with _safety_counts(streamer, safety_counts):
        launch(web_app, host=host, port=port, routes=routes)


@eval_app.command("report")
@friendly_errors
def evaluate(
    runs: Annotated[
        list[Path],
        typer.Argument(metavar="RUN", help="A run folder (runs/NAME); with --compare, two run folders."),
    ],
    compare: Annotated[
        bool, typer.Option("--compare", help="Put two runs side by side in one report.")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="Held-out prompts per stage, and crisis prompts (default: all)."),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest reply, in tokens.")] = 200,
    seed: Annotated[int, typer.Option(help="Sampling seed: the same run and seed, the same replies.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(help="Report folder (default: RUN/report, or RUN_A/report-compare-<B> with --compare)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Evaluate a trained run and write a report: forgetting, training curves, reply quality, safety.

    `warmline eval RUN` is short for `warmline eval report RUN`. Writes report.md with PNG plots, metrics.json and replies.jsonl; everything runs offline.
    With --compare RUN_A RUN_B, two runs go side by side in one report.
    A run's own report/metrics.json is reused when it was made with the same settings and weights.
    """
    _setup_logging(verbose)
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs each tokenizer it builds
    from warmline.evaluation.evaluate import EvalSettings, run_compare, run_eval

    expected = 2 if compare else 1
    if len(runs) != expected:
        usage = "--compare RUN_A RUN_B" if compare else "RUN (or --compare RUN_A RUN_B)"
        raise typer.BadParameter(f"expected {usage}, got {len(runs)} run folder(s)", param_hint="RUN")
    settings = EvalSettings(limit=limit, max_new_tokens=max_new_tokens, seed=seed)
    report = run_compare(*runs, settings, out=out) if compare else run_eval(runs[0], settings, out=out)
    typer.echo(str(report))


def _usage_error(err: Exception) -> None:
    """A mistake in the files or values a user passed: one line, exit 2."""
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2) from None


@eval_app.command("sheet")
@friendly_errors
def eval_sheet(
    run_a: Annotated[
        str, typer.Argument(metavar="RUN_A", help="A run folder, stage folder, hub id or packaged:NAME.")
    ],
    run_b: Annotated[str, typer.Argument(metavar="RUN_B", help="The model to compare it with (same kinds).")],
    prompts: Annotated[
        Path | None,
        typer.Option(
            help='Prompts file: .txt (one message a line) or .jsonl ({"prompt": ...} or {"messages": [...]}).'
            " Default: the runs' held-out prompts of every stage plus warmline's everyday set."
        ),
    ] = None,
    n: Annotated[int, typer.Option("-n", min=1, help="Items on the sheet.")] = 40,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for the sheet and its key (default: rating-sheets/<sheet id>)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the sample, the A/B order and the replies.")] = 0,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="Longest reply, in tokens (default: the serving default).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Write a blinded rating sheet: two models' replies to the same prompts, in random order as A and B.

    The sheet is one self-contained HTML page (works offline in any browser) with a rubric
    (empathy, specificity, safety, respects boundaries, 1-5; overall preference) and a button that
    saves the rater's answers as a JSON file. The key (which model wrote A and which B) is written
    to a separate file: never send it to raters. Crisis prompts are left out.
    """
    _setup_logging(verbose)
    from warmline.evaluation.sheet import write_sheet

    settings = (
        GenerationSettings() if max_new_tokens is None else GenerationSettings(max_new_tokens=max_new_tokens)
    )
    try:
        written = write_sheet(run_a, run_b, prompts_file=prompts, n=n, out=out, seed=seed, settings=settings)
    except ValueError as err:
        _usage_error(err)
    typer.echo(f"sheet: {written['sheet']}  (send this file to raters)")
    typer.echo(f"key:   {written['key']}  (keep it; never send it to raters)")
    typer.echo(
        f"{written['items']} items from {written['candidates']} candidate prompts;"
        f" {written['dropped_crisis']} dropped as crisis prompts"
    )


@eval_app.command("ratings")
@friendly_errors
def eval_ratings(
    files: Annotated[
        list[Path], typer.Argument(metavar="FILES...", help="Ratings files saved from the sheet.")
    ],
    key: Annotated[Path, typer.Option(help="The sheet's key file (key-<sheet id>.json).")],
    report: Annotated[
        Path | None, typer.Option(metavar="RUN", help="Also append the summary to RUN/report/report.md.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for ratings.md, ratings.png, ratings.json (default: next to the key)."),
    ] = None,
) -> None:
    """Summarise people's ratings of a sheet: win rate with a 95% interval, rubric means, agreement.

    Unblinds every rater's file with the key, then reports each model's win rate (ties apart,
    Wilson interval), the rubric means, Krippendorff's alpha (and Cohen's kappa for two raters)
    and the items raters disagreed on, as markdown and a plot.
    """
    _setup_logging(False)
    from warmline.evaluation.ratings import render_ratings_markdown, summarise_ratings, write_ratings_report

    try:
        summary = summarise_ratings(files, key)
        folder = out if out is not None else key.parent / f"ratings-{summary['sheet_id']}"
        written = write_ratings_report(summary, folder, report_run=report)
    except ValueError as err:
        _usage_error(err)
    typer.echo(render_ratings_markdown(summary))
    typer.echo(
        f"written: {written}" + (f" and {report / 'report' / 'report.md'}" if report else ""), err=True
    )


@eval_app.command("feedback")
@friendly_errors
def eval_feedback(
    folder: Annotated[
        Path, typer.Argument(metavar="DIR", help="The folder given to `warmline serve --feedback`.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of markdown.")] = False,
) -> None:
    """Summarise in-app thumbs up/down from `warmline serve --feedback DIR`: counts and up-rate per model."""
    from warmline.evaluation.ratings import render_feedback_markdown, summarise_feedback

    summary = summarise_feedback(folder)
    typer.echo(json.dumps(summary, indent=2) if as_json else render_feedback_markdown(summary))


class ExportTarget(StrEnum):
    """Where `warmline export` writes to."""

    gguf = "gguf"
    space = "space"


class GgufQuant(StrEnum):
    """GGUF weight types `warmline export --to gguf` writes."""

    f16 = "f16"
    q8_0 = "q8_0"


@app.command()
@friendly_errors
def export(
    model: ModelRef,
    target_dir: Annotated[
        Path | None,
        typer.Argument(metavar="[DIR]", help="Output folder (required with --to space; else --out)."),
    ] = None,
    to: Annotated[ExportTarget, typer.Option(help="gguf: llama.cpp/Ollama/LM Studio; space: a HF Space.")] = (
        ExportTarget.gguf
    ),
    quant: Annotated[
        GgufQuant, typer.Option(help="GGUF weight type (q8_0: about half the size).")
    ] = GgufQuant.f16,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: exports/NAME-gguf-QUANT).")
    ] = None,
    model_id: Annotated[
        str | None,
        typer.Option(help="--to space: load this hub id on the Space instead of copying the model."),
    ] = None,
    locale: Annotated[
        str | None,
        typer.Option(help="--to space: the country whose crisis lines the Space gives, as `serve --locale`."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Export a model: a GGUF file with a Modelfile (--to gguf), or a Hugging Face Space folder (--to space).

    A GGUF file runs WITHOUT warmline's safety gate; put `warmline gateway` in front to keep it.
    The Space runs the same web app and safety gate as `warmline serve`.
    """
    _setup_logging(verbose)
    from warmline.export.run import ExportError, export_gguf, export_space

    folder = out or target_dir
    try:
        if to is ExportTarget.space:
            if folder is None:
                raise ExportError("--to space needs the Space folder: warmline export RUN --to space DIR")
            written = export_space(model, folder, model_id=model_id, locale=locale)
        else:
            written = export_gguf(model, out=folder, quant=quant.value)
    except ExportError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(written))


from warmline.safety.cli import app as safety_app  # noqa: E402 - registered after the commands above

app.add_typer(safety_app, name="safety")

if __name__ == "__main__":
    app()
