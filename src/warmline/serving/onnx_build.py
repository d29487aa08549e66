"""Build a model's ONNX Runtime GenAI folder, once, with onnxruntime-genai's own model builder.

    onnx_dir = build_onnx("runs/offline/final", "int8")   # -> runs/offline/onnx/final-int8-<hash>/

The builder (`onnxruntime_genai.models.builder`) runs in a child process: it imports its own
stack, prints a lot, and holds the whole model in memory while it converts; none of that should
stay in the chat process. Its output goes to `build.log` in the build folder; the terminal gets
one progress bar (stderr). A build folder is keyed by a hash of the weight files, config.json,
the quantisation's builder options (`QUANT_OPTIONS`) and the onnxruntime-genai version, so
retraining the model or changing the options builds again and anything else reuses the folder.
It is written under a temporary name and renamed into place: an interrupted build never looks
finished.

Not every model can be built: the builder converts a fixed list of architectures (Llama,
Mistral, Qwen, Phi, Gemma, SmolLM3, ...; not GPT-2), and ONNX Runtime's CPU attention kernel
needs a head size that is a multiple of 16. Those raise `OnnxUnsupportedError`, whose message is
one line; callers fall back to the torch engine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

QUANT_OPTIONS: dict[str, dict[str, Any]] = {
    # quant -> the builder's --precision and --extra_options (KEY=VALUE, values as strings).
    # Weight-only quantisation (MatMulNBits); accuracy_level 4 computes with int8 activations
    # (accuracy_level 1, fp32 activations, decoded at about 1 tok/s in the trial: not usable).
    "fp32": {"precision": "fp32", "extra_options": {}},
    "int8": {"precision": "int8", "extra_options": {"block_size": "32", "accuracy_level": "4"}},
    "int4": {"precision": "int4", "extra_options": {"block_size": "32", "accuracy_level": "4"}},
    # int8 in the MLP blocks only (gate, up and down projections: about 60% of a small model's
    # weights); attention and the output head stay fp32. Quantising the head (tied to the embedding
    # table in SmolLM2) and attention is where every-MatMul int8 loses its top-1 agreement
    # (benchmarks/RESULTS.md, "ONNX Runtime GenAI engine").
    "int8-mlp": {
        "precision": "int8",
        "extra_options": {"block_size": "32", "accuracy_level": "4"},
        "fp32_head": True,
        "fp32_block_matmuls": ["attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/qkv_proj", "attn/o_proj"],
    },
}
PRUNE_LM_HEAD = True
"""Serving builds compute the output head for the last position only (the builder's
`prune_lm_head`): a 100-token prompt's logits are wanted for its last token alone, and the head
(49,152 x 576 in SmolLM2, kept fp32) is a fifth of the prompt's multiply-adds. The quality gate,
which needs every position's logits, reads a twin built without it (`all_logits=True`, the same
weights and quantisation; `serving.onnx_quality.quality_verdict`)."""
SPEED_ORDER = ("int4", "int8", "int8-mlp", "fp32")
"""Quantisations from the fastest decoding to the slowest (benchmarks/onnx_quant_sweep.py on a
2-core CPU)."""


def _prunes_head(all_logits: bool) -> bool:
    """Whether a build computes the head at the last position only (a serving build, PRUNE_LM_HEAD)."""
    return PRUNE_LM_HEAD and not all_logits


def builder_options(quant: str, config: dict[str, Any], *, all_logits: bool = False) -> dict[str, str]:
    """The builder's --extra_options for `quant` on a model with `config`: a quantisation that
    keeps some MatMuls in fp32 names them (`nodes_to_exclude`), one per block of the model; a
    serving build computes the head at the last position only (PRUNE_LM_HEAD) unless
    `all_logits`."""
    spec = QUANT_OPTIONS[quant]
    options = {key: str(value) for key, value in spec["extra_options"].items()}
    if _prunes_head(all_logits):
        options["prune_lm_head"] = "true"
    names = ["/lm_head/MatMul"] if spec.get("fp32_head") else []
    layers = range(int(config.get("num_hidden_layers") or 0))
    names += [
        f"/model/layers.{i}/{matmul}/MatMul" for i in layers for matmul in spec.get("fp32_block_matmuls", ())
    ]
    if names:
        options["nodes_to_exclude"] = ",".join(names)
    return options


BUILD_LOG = "build.log"
UNSUPPORTED_FILE = "unsupported.txt"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


class OnnxBuildError(RuntimeError):
    """The builder failed; the message says where its log is."""


class OnnxUnsupportedError(OnnxBuildError):
    """The model cannot run on onnxruntime-genai (architecture or head size); use the torch engine."""


def build_onnx(
    hf_dir: str | Path, quant: str = "fp32", *, root: str | Path | None = None, all_logits: bool = False
) -> Path:
    """The ONNX Runtime GenAI folder for the Hugging Face model in `hf_dir` at `quant` (a key of
    QUANT_OPTIONS), built now if no finished build for these weights and options exists.

    `root`: where build folders go (default: `build_root(hf_dir)`). `all_logits`: a build that
    returns every position's logits (the quality gate's; serving builds return the last only,
    PRUNE_LM_HEAD). Raises OnnxUnsupportedError for a model onnxruntime-genai cannot run,
    OnnxBuildError when the builder fails."""
    if quant not in QUANT_OPTIONS:
        raise ValueError(f"unknown ONNX quantisation {quant!r}; choose one of {', '.join(QUANT_OPTIONS)}")
    hf_dir = Path(hf_dir).resolve()
    config = _read_config(hf_dir)
    target = build_dir(hf_dir, quant, root=root, all_logits=all_logits)
    root = target.parent
    if (target / "genai_config.json").is_file():
        return target
    unsupported = target.with_name(target.name + "." + UNSUPPORTED_FILE)
    if unsupported.is_file():  # the builder said so before: don't pay for its start-up again
        raise OnnxUnsupportedError(unsupported.read_text().strip())
    check_supported(config)
    root.mkdir(parents=True, exist_ok=True)
    # Builds of earlier weights or options of this kind ("-int8-" must not match "-int8-mlp-").
    kind = re.compile(
        re.escape(f"{hf_dir.name}-{quant}-{_ALL_LOGITS if all_logits else ''}") + r"[0-9a-f]{12}"
    )
    for stale in root.glob(f"{hf_dir.name}-{quant}-*"):
        if stale.is_dir() and stale != target and kind.fullmatch(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        _run_builder(hf_dir, tmp, quant, config, unsupported, all_logits=all_logits)
        if (target / "genai_config.json").is_file():  # another process finished first: keep its build
            return target
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


_ALL_LOGITS = "all-"
"""In a build folder's name, after the quantisation: the gate's every-position build."""


def build_dir(
    hf_dir: str | Path, quant: str, *, root: str | Path | None = None, all_logits: bool = False
) -> Path:
    """The folder `build_onnx(hf_dir, quant, all_logits=...)` builds into (it may not exist yet)."""
    hf_dir = Path(hf_dir).resolve()
    root = Path(root) if root is not None else build_root(hf_dir)
    kind = _ALL_LOGITS if all_logits else ""
    return root / f"{hf_dir.name}-{quant}-{kind}{build_key(hf_dir, quant, all_logits=all_logits)[:12]}"


def returns_all_logits(onnx_dir: str | Path) -> bool:
    """Whether the build in `onnx_dir` returns logits at every position (its graph's `logits`
    output has a sequence axis), not only at the last (built with `prune_lm_head`)."""
    import onnx

    config = json.loads((Path(onnx_dir) / "genai_config.json").read_text())
    graph = onnx.load(
        str(Path(onnx_dir) / config["model"]["decoder"]["filename"]), load_external_data=False
    ).graph
    for output in graph.output:
        if output.name == "logits":
            dims = output.type.tensor_type.shape.dim
            return len(dims) < 2 or dims[1].dim_value != 1
    return True


def check_buildable(hf_dir: str | Path) -> None:
    """Raise OnnxUnsupportedError (one line) now, before any build, when the model in `hf_dir`
    cannot run on onnxruntime-genai (`check_supported`)."""
    check_supported(_read_config(Path(hf_dir)))


def build_root(hf_dir: Path) -> Path:
    """Where a model's builds go: `onnx/` beside its folder (next to the run's `final/`), or
    `cache_dir()/onnx` when that is not writable (a read-only copy, the hub cache)."""
    from warmline.models import cache_dir

    parent = hf_dir.parent
    if os.access(parent, os.W_OK) and "huggingface" not in parent.parts:
        return parent / "onnx"
    return cache_dir() / "onnx"


def check_supported(config: dict[str, Any]) -> None:
    """Raise OnnxUnsupportedError (one line) for a model onnxruntime-genai cannot run on the CPU
    that can be told from its config.json; the builder's own architecture list is checked by
    running it."""
    architecture = (config.get("architectures") or ["(no architecture)"])[0]
    known = builder_architectures()
    if known and architecture not in known:
        raise OnnxUnsupportedError(_unsupported_message(architecture))
    heads = config.get("num_attention_heads") or 0
    head_size = config.get("head_dim") or (config.get("hidden_size", 0) // heads if heads else 0)
    if head_size and head_size % 16:
        raise OnnxUnsupportedError(
            f"onnxruntime-genai cannot run this model: its attention head size is {head_size} and ONNX "
            "Runtime's CPU attention needs a multiple of 16; using the torch engine (--engine torch)"
        )


def builder_architectures() -> frozenset[str]:
    """The architectures the installed builder converts, read from its dispatch in `create_model`
    (it keeps no list of them); empty when its source can't be read, and then running it decides."""
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime_genai.models.builder")
    try:
        source = Path(spec.origin).read_text() if spec and spec.origin else ""
    except OSError:
        source = ""
    return frozenset(re.findall(r'config\.architectures\[0\] == "(\w+)"', source))


def _unsupported_message(architecture: str) -> str:
    return (
        f"onnxruntime-genai's model builder cannot convert {architecture} models (it converts Llama,"
        " Mistral, Qwen, Phi, Gemma, SmolLM3 and a few more); using the torch engine (--engine torch)"
    )


def build_key(hf_dir: Path, quant: str, *, all_logits: bool = False) -> str:
    """sha256 over the weight files, config.json, the quant's builder options (the head pruned or
    not included) and the builder's version."""
    import onnxruntime_genai

    digest = hashlib.sha256()
    files = sorted(p for pattern in WEIGHT_PATTERNS for p in hf_dir.glob(pattern)) + [hf_dir / "config.json"]
    for path in files:
        digest.update(path.name.encode() + b"\0" + file_sha256(path).encode() + b"\0")
    options = {"quant": quant, **QUANT_OPTIONS[quant], "onnxruntime_genai": onnxruntime_genai.__version__}
    if _prunes_head(all_logits):
        options["prune_lm_head"] = True
    digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """A file's sha256, remembered beside it by size and modification time (hashing 0.5 GB of
    weights takes a second or more on every start otherwise)."""
    from warmline.models import cache_dir

    stat = path.stat()
    memo_path = cache_dir() / "onnx" / "file-hashes.json"
    key, seen = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if isinstance(memo.get(key), list) and memo[key][:2] == seen:
        return memo[key][2]
    with path.open("rb") as fh:
        value = hashlib.file_digest(fh, "sha256").hexdigest()
    memo = {k: v for k, v in memo.items() if Path(k).exists()}  # one entry per existing file
    memo[key] = [*seen, value]
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f".{memo_path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    except OSError:
        pass  # a read-only cache only costs the hash next time
    return value


def _read_config(hf_dir: Path) -> dict[str, Any]:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass a Hugging Face model folder (a run's final/ or a stage)"
        )
    return json.loads(path.read_text())


_NOT_SUPPORTED = re.compile(r"The (.+) model is not currently supported")
_PROGRESS = re.compile(r"^(Reading layer \d+|Reading LM head|Saving ONNX model|Saving GenAI config)")


def _run_builder(
    hf_dir: Path,
    out: Path,
    quant: str,
    config: dict[str, Any],
    unsupported: Path,
    *,
    all_logits: bool = False,
) -> None:
    """Run onnxruntime-genai's builder into `out`, a progress bar on stderr, its output in `out/build.log`."""
    from tqdm import tqdm

    options = QUANT_OPTIONS[quant]
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "--input", str(hf_dir)]
    command += ["--output", str(out), "--precision", options["precision"], "--execution_provider", "cpu"]
    command += ["--cache_dir", str(out / ".builder-cache")]
    extra = builder_options(quant, config, all_logits=all_logits)
    if extra:
        command += ["--extra_options", *(f"{k}={v}" for k, v in extra.items())]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log_path = out / BUILD_LOG
    steps = int(config.get("num_hidden_layers") or 0) + 3  # layers, LM head, saving model and config
    logger.info("building the %s ONNX model of %s into %s (once)", quant, hf_dir, out.parent)
    with (
        log_path.open("w") as log,
        tqdm(
            total=steps, desc=f"building the {quant} ONNX model (once)", unit="step", file=sys.stderr
        ) as bar,
    ):
        log.write(" ".join(command) + "\n")
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, errors="replace"
        )
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if _PROGRESS.match(line):
                bar.update(1)
        returncode = process.wait()
    shutil.rmtree(out / ".builder-cache", ignore_errors=True)
    if returncode == 0 and (out / "genai_config.json").is_file():
        return
    text = log_path.read_text(errors="replace")
    match = _NOT_SUPPORTED.search(text)
    if match:
        message = _unsupported_message((config.get("architectures") or [match.group(1)])[0])
        unsupported.write_text(message + "\n")
        raise OnnxUnsupportedError(message)
    last = next((line for line in reversed(text.splitlines()) if line.strip()), "no output")
    kept = unsupported.with_name(unsupported.name.replace(UNSUPPORTED_FILE, BUILD_LOG))
    shutil.copyfile(log_path, kept)
    raise OnnxBuildError(
        f"onnxruntime-genai's model builder failed on {hf_dir} ({quant}): {last.strip()[:200]} "
        f"(full log: {kept}); use --engine torch meanwhile"
    )
