"""`warmline export RUN --to space DIR`: a Hugging Face Space folder that runs `warmline serve`'s
web app and safety gate.

The folder:
- `app.py`: builds the generator behind `SafetyGate` and calls warmline's own web builder
  (`warmline.serving.web.build_app`, as `warmline serve` does), then launches it on
  `GRADIO_SERVER_NAME:GRADIO_SERVER_PORT` (a Space sets both; 127.0.0.1:7860 otherwise).
- `warmline/`: a source copy of the installed warmline package, safety resources included
  (lexicons, crisis lines with their sources, classifier training data). A copy rather than a
  wheel: nothing to build or publish, the Space runs exactly the code that was exported (and
  tested), and `app.py` imports it from its own folder before any other warmline.
- `requirements.txt`: warmline's runtime dependencies pinned to the versions installed here,
  torch as the CPU build (a free Space has no GPU, and the CUDA wheels are gigabytes).
- `model/` with the weights and tokenizer, or none when `--model-id` names a hub repo.
- `warmline_space.json`: model, system prompt, locale and sampling defaults for `app.py`.
- `README.md`: the Space front matter (`sdk: gradio`, `sdk_version`, `app_file: app.py`).
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import logging
import re
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

import warmline
from warmline.export.gguf_file import ExportError

logger = logging.getLogger(__name__)

CONFIG_FILE = "warmline_space.json"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Files a saved model folder holds that the Space needs (training metrics and reports stay home).
MODEL_FILES = re.compile(
    r"^(config\.json|generation_config\.json|.*\.safetensors|model\.safetensors\.index\.json|"
    r"tokenizer.*\.json|vocab\.json|merges\.txt|special_tokens_map\.json|chat_template\.jinja|"
    r"added_tokens\.json|recipe\.yaml)$"
)

APP_PY = '''"""warmline on a Hugging Face Space: the web chat of `warmline serve`, safety gate always on.

Written by `warmline export --to space`. It runs the warmline copy in this folder, the model named
in warmline_space.json, and listens on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (a Space sets both;
127.0.0.1:7860 otherwise). The chat is an AI, not a therapist; crisis messages get a fixed reply
with real crisis lines and never reach the model.
"""

import json
import os
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # this folder's warmline, not another installed copy

from warmline.safety import SafetyGate  # noqa: E402
from warmline.serving.generator import GenerationSettings, Generator  # noqa: E402
from warmline.serving.web import build_app, launch  # noqa: E402


def main() -> None:
    config = json.loads((HERE / "warmline_space.json").read_text(encoding="utf-8"))
    model = config["model_id"] or str(HERE / config["model_dir"])
    gate = SafetyGate(locale=config["locale"], use_classifier=config["use_classifier"])
    settings = GenerationSettings(**config["generation"])
    generator = Generator.from_pretrained(model, gate=gate, settings=settings)
    if gate.use_classifier:  # load (or train, once) now rather than on the first message
        from warmline.safety.classifier import load_default_classifiers

        load_default_classifiers()
    generator.warm_up(config["system_prompt"])  # the first visitor does not wait for it
    app = build_app(generator, system_prompt=config["system_prompt"], locale=config["locale"])
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    launch(app, host=host, port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))


if __name__ == "__main__":
    main()
'''


def _distribution_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0]


def declared_requirements() -> list[str]:
    """warmline's runtime requirements: from pyproject.toml in a source checkout (an editable
    install's metadata is as old as the install), else from the installed package's metadata."""
    pyproject = Path(warmline.__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == "warmline":
            return list(project.get("dependencies", []))
    try:
        declared = metadata.requires("warmline") or []
    except metadata.PackageNotFoundError:
        raise ExportError(
            "warmline is not installed as a package, so its dependencies can't be pinned; "
            "run `pip install -e .` (or `make setup`) first"
        ) from None
    return [r for r in declared if "extra ==" not in r]  # dev extras: not needed to serve


def pinned_requirements() -> list[str]:
    """warmline's runtime dependencies at the versions installed here (torch as the CPU build)."""
    lines = [f"--extra-index-url {TORCH_CPU_INDEX}"]
    for requirement in declared_requirements():
        name = _distribution_name(requirement)
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise ExportError(
                f"warmline needs '{name}', which is not installed here; run `make setup`"
            ) from None
        if name == "torch" and "+" not in version:
            version += "+cpu"
        lines.append(f"{name}=={version}")
    return lines


def space_readme(name: str, model_source: str) -> str:
    """README.md with the Space front matter and what the Space is (and is not)."""
    import gradio

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"""---
title: {name} (warmline)
emoji: 💬
colorFrom: yellow
colorTo: gray
sdk: gradio
sdk_version: {gradio.__version__}
python_version: "{python}"
app_file: app.py
pinned: false
short_description: A warm, safety-aware support chat. An AI, not a therapist.
---

# {name}

A supportive listening chat made with warmline from `{model_source}`.
**It is an AI, not a therapist and not a crisis service.** If you are in danger now, call your
local emergency number; in the US call or text 988, in the UK and Ireland call Samaritans on
116 123, elsewhere see findahelpline.com.

This Space runs the same web app and safety gate as `warmline serve`: every message is assessed
first, and a crisis message gets a fixed reply with crisis lines (the model is never asked);
replies are screened before they are shown. Conversations are not stored.

- `app.py` starts it; `warmline_space.json` holds the model, system prompt, crisis-line locale
  and sampling defaults.
- `warmline/` is the warmline package (with its safety resources), copied from version
  {metadata.version("warmline")}.
- Run it locally: `pip install -r requirements.txt && python app.py` (http://127.0.0.1:7860).
"""


def _copy_package(target: Path) -> None:
    source = Path(warmline.__file__).resolve().parent
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if not (target / "resources" / "safety" / "crisis_resources.yaml").is_file():
        raise ExportError(f"the warmline package at {source} has no safety resources; reinstall warmline")


def _copy_model(model_dir: Path, target: Path) -> None:
    target.mkdir(parents=True)
    copied = [p for p in sorted(model_dir.iterdir()) if p.is_file() and MODEL_FILES.match(p.name)]
    if not any(p.suffix == ".safetensors" for p in copied):
        raise ExportError(f"no .safetensors weights in {model_dir}; save the model with save_pretrained")
    for path in copied:
        shutil.copy2(path, target / path.name)


def write_space(
    model_dir: Path,
    out: Path,
    *,
    name: str,
    model_id: str | None,
    system_prompt: str | None,
    locale: str | None,
    generation: dict[str, Any],
    use_classifier: bool = True,
) -> Path:
    """Write the Space folder into `out` (which must not exist or be empty); return it."""
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty; pass a new folder for the Space")
    out.mkdir(parents=True, exist_ok=True)
    (out / "app.py").write_text(APP_PY, encoding="utf-8")
    _copy_package(out / "warmline")
    if model_id is None:
        _copy_model(model_dir, out / "model")
    config = {
        "model_dir": None if model_id else "model",
        "model_id": model_id,
        "system_prompt": system_prompt,
        "locale": locale,
        "use_classifier": use_classifier,
        "generation": generation,
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "requirements.txt").write_text("\n".join(pinned_requirements()) + "\n", encoding="utf-8")
    (out / "README.md").write_text(space_readme(name, model_id or str(model_dir)), encoding="utf-8")
    logger.info("wrote the Space folder %s (model: %s)", out, model_id or "model/")
    return out
