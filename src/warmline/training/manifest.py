"""Manifests: what produced an artifact (versions, data hashes, seed, git commit, wall time)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

PACKAGES = ("warmline", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain"],
        capture_output=True,
        text=True,
        timeout=5,
        cwd=Path(__file__).resolve().parent,
    ).stdout.strip()
    return res.stdout.strip() + ("-dirty" if dirty else "")


def write_manifest(folder: Path, *, recipe, stages, wall_time_s: float, extra: dict | None = None) -> dict:
    """Write `manifest.json` into `folder`: what made the weights beside it."""
    data_files = {}
    for s in stages:
        for f in s.data.files:
            if Path(f).is_file():
                data_files[f] = file_sha256(f)
            else:
                data_files[f] = "remote"
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "recipe": recipe.name,
        "base_model": recipe.base_model,
        "seed": recipe.training.seed,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "platform": platform.platform(),
        "data_files": data_files,
        "wall_time_s": round(wall_time_s, 1),
        **(extra or {}),
    }
    write_json_atomic(Path(folder) / "manifest.json", manifest)
    return manifest


def write_json_atomic(path: Path, data) -> None:
    """Strict JSON (NaN refused), written under a temporary name and renamed into place.

    The rename also replaces a hard-linked file instead of writing through the link, so a
    published copy never changes the folder it was linked from."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)
