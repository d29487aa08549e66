"""`warmline export RUN --to gguf|space`: the export step, from a run (or any model reference) to
a folder people can deploy.

- `export_gguf`: `<name>-<quant>.gguf` + `Modelfile` + `README.md` (the file runs without the
  safety gate; `warmline gateway` in front keeps it).
- `export_space`: a Hugging Face Space folder (`warmline.export.space`).

Both read what the run trained with: the chat template saved with the model (or warmline's
plain "Human/Assistant" template for models without one, as `warmline chat` uses), and the
system prompt from the run's `recipe.yaml` (warmline's default when there is no recipe, as
`warmline chat` and `serve` use). Sampling defaults are `warmline chat`'s.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict
from pathlib import Path

import yaml

from warmline.export.gguf_file import ExportError, GenerationDefaults, Quant, gguf_architecture, write_gguf
from warmline.export.modelfile import (
    chat_turn_wrappers,
    check_template,
    modelfile_text,
    ollama_template,
    readme_text,
    stop_strings,
)
from warmline.models import ModelNotAvailableError, resolve_model

logger = logging.getLogger(__name__)


def generation_defaults() -> GenerationDefaults:
    """`warmline chat`'s sampling defaults (the reference recipe's)."""
    from warmline.serving.generator import GenerationSettings

    s = GenerationSettings()
    return GenerationDefaults(s.temperature, s.top_k, s.top_p, s.repetition_penalty, s.max_new_tokens)


def local_model_dir(reference: str) -> Path:
    """The folder holding the model's files, or a one-line error for a reference that has none here."""
    resolved = resolve_model(reference)
    if resolved.kind == "hub":
        raise ModelNotAvailableError(
            f"'{reference}' is a hub id; export needs the model's files: save it to a folder first "
            "(or, for a Space, pass a local model and --model-id to point the Space at the hub)"
        )
    return Path(resolved.path)


def export_name(reference: str, model_dir: Path) -> str:
    """A file-name-safe name: the run's name for a run folder, else the model folder's."""
    local = Path(reference).expanduser()
    name = local.name if local.is_dir() and model_dir.name == "final" else model_dir.name
    if reference.startswith("packaged:"):
        name = reference.split(":", 1)[1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def trained_system_prompt(model_dir: Path) -> str | None:
    """The system prompt the model was trained with (`recipe.yaml`), else warmline's default."""
    from warmline.recipe import DEFAULT_SYSTEM_PROMPT

    recipe = model_dir / "recipe.yaml"
    if not recipe.is_file():
        return DEFAULT_SYSTEM_PROMPT
    data = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    return data.get("system_prompt", DEFAULT_SYSTEM_PROMPT)


def chat_template_for(tokenizer) -> str:
    """The Jinja template prompts are built with: the model's own, or warmline's plain one."""
    from warmline.data.tokens import PLAIN_CHAT_TEMPLATE

    return tokenizer.chat_template or PLAIN_CHAT_TEMPLATE


def export_gguf(reference: str, *, out: Path | None = None, quant: Quant = "f16") -> Path:
    """Write `<name>-<quant>.gguf`, `Modelfile` and `README.md` into `out`; return the folder."""
    from transformers import AutoConfig, AutoTokenizer

    model_dir = local_model_dir(reference)
    gguf_architecture(AutoConfig.from_pretrained(model_dir).model_type)  # an unsupported one fails first
    name = export_name(reference, model_dir)
    out = Path(out) if out is not None else Path("exports") / f"{name}-gguf-{quant}"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = chat_template_for(tokenizer)
    # The Modelfile is derived and checked first: a template Ollama can't express fails in seconds.
    wrappers = chat_turn_wrappers(tokenizer, template)
    go_template = ollama_template(wrappers)
    check_template(tokenizer, template, go_template)
    defaults = generation_defaults()
    gguf_name = f"{name}-{quant}.gguf"
    written = write_gguf(
        model_dir, out / gguf_name, quant=quant, chat_template=template, defaults=defaults, name=name
    )
    stops = stop_strings(tokenizer, tokenizer.eos_token)
    system_prompt = trained_system_prompt(model_dir)
    (out / "Modelfile").write_text(
        modelfile_text(gguf_name, go_template, system_prompt, stops, defaults), encoding="utf-8"
    )
    (out / "README.md").write_text(readme_text(gguf_name, name, quant, reference), encoding="utf-8")
    kinds = sorted({t.type_name for t in written})
    logger.info("exported %s: %s (%s), Modelfile, README.md", reference, out / gguf_name, "/".join(kinds))
    return out


def export_space(
    reference: str,
    out: Path,
    *,
    model_id: str | None = None,
    locale: str | None = None,
    use_classifier: bool = True,
) -> Path:
    """Write a Hugging Face Space folder for `reference` into `out` (see `warmline.export.space`)."""
    from warmline.export.space import write_space

    model_dir = local_model_dir(reference)
    settings = asdict(generation_defaults())
    return write_space(
        model_dir,
        Path(out),
        name=export_name(reference, model_dir),
        model_id=model_id,
        system_prompt=trained_system_prompt(model_dir),
        locale=locale,
        generation=settings,
        use_classifier=use_classifier,
    )


__all__ = ["ExportError", "export_gguf", "export_space"]
