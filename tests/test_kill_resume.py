"""kill -9 at four points of training, then `warmline train --resume`: the run completes with the
same validation losses as an uninterrupted run and a complete forgetting matrix.

Real processes: a small runner wraps one named step of the training code so that the process
SIGKILLs itself at that exact point (no cleanup, no `finally`), then a plain `python -m warmline
train --resume` finishes the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import _recipe

import warmline.training.train as train_mod

pytestmark = pytest.mark.slow

RUNNER = r"""
import os, signal, sys
from pathlib import Path

import warmline.training.train as train_mod
from warmline.training import callbacks

point, argv = sys.argv[1], sys.argv[2:]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if point == "after_checkpoint":  # stage 2's checkpoint-4 is written and marked
    real_on_save = callbacks.CheckpointMarker.on_save

    def on_save(self, args, state, control, **kwargs):
        real_on_save(self, args, state, control, **kwargs)
        if "stage-02" in str(args.output_dir) and state.global_step == 4:
            die()
        return control

    callbacks.CheckpointMarker.on_save = on_save
elif point == "during_rotation":  # checkpoint-2 half deleted while checkpoint-4 replaces it
    real_remove = callbacks.CheckpointMarker.remove_older

    def remove_older(self, keep):
        if "stage-02" in str(keep) and keep.name == "checkpoint-4":
            for old in keep.parent.glob("checkpoint-*"):
                if old != keep:
                    (old / self.marker).unlink(missing_ok=True)
                    next(p for p in sorted(old.iterdir()) if p.is_file()).unlink()
                    die()
        return real_remove(self, keep)

    callbacks.CheckpointMarker.remove_older = remove_older
elif point == "after_publish":  # stage 2's folder renamed into place, its forgetting row not written
    real_replace = train_mod._replace_folder

    def replace_folder(tmp, dst, run_dir):
        real_replace(tmp, dst, run_dir)
        if dst.name.startswith("stage-02"):
            die()

    train_mod._replace_folder = replace_folder
elif point == "during_publish":  # stage 2's weights written under the temporary name, not yet renamed
    real_manifest = train_mod.write_manifest

    def write_manifest(folder, **kwargs):
        if Path(folder).name.startswith(".stage-02"):
            die()
        return real_manifest(folder, **kwargs)

    train_mod.write_manifest = write_manifest

from warmline.cli import app

app(argv, prog_name="warmline")
"""


def _train(args: list[str], cwd: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    if kill_at:
        runner = cwd / "kill_runner.py"
        runner.write_text(RUNNER, encoding="utf-8")
        command = [sys.executable, str(runner), kill_at, "train", *args]
    else:
        command = [sys.executable, "-m", "warmline", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=cwd)


def _losses(run: Path) -> dict[str, dict[str, float]]:
    forgetting = json.loads((run / "forgetting.json").read_text())
    return {row: {split: v["loss"] for split, v in cols.items()} for row, cols in forgetting.items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_llama_dir) -> dict:
    folder = tmp_path_factory.mktemp("uninterrupted")
    recipe = _recipe(folder, tiny_llama_dir)
    done = _train([str(recipe), "--set", "stages.0.epochs=1"], folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return _losses(folder / "runs" / "tiny")


@pytest.mark.parametrize(
    "kill_at", ["after_checkpoint", "during_rotation", "after_publish", "during_publish"]
)
def test_kill_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_llama_dir, uninterrupted, kill_at):
    recipe = _recipe(tmp_path, tiny_llama_dir)
    args = [str(recipe), "--set", "stages.0.epochs=1"]
    killed = _train(args, tmp_path, kill_at=kill_at)
    assert killed.returncode == -9, f"{kill_at}: the kill point was not reached\n{killed.stderr[-3000:]}"
    run = tmp_path / "runs" / "tiny"
    work = run / ".work" / "stage-02-beta"
    stage2 = run / "stage-02-beta"
    if kill_at in ("after_checkpoint", "during_rotation"):
        assert train_mod.latest_complete_checkpoint(work).name == "checkpoint-4"
    if kill_at == "during_rotation":
        assert (work / "checkpoint-2").is_dir() and not (
            work / "checkpoint-2" / train_mod.COMPLETE_MARKER
        ).exists()
    if kill_at == "after_publish":
        assert train_mod.is_published(stage2) and "beta" not in _losses(run)
    if kill_at == "during_publish":
        assert not stage2.exists() and (run / ".stage-02-beta.tmp").is_dir()

    resumed = _train([*args, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    losses = _losses(run)
    assert list(losses) == ["base", "alpha", "beta"], "the forgetting matrix must be complete"
    for row, cols in uninterrupted.items():
        assert losses[row] == pytest.approx(cols, abs=1e-5), (kill_at, row)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [(m["stage"], m["step"]) for m in metrics if m.get("event") == "log" and "loss" in m]
    assert len(steps) == len(set(steps)), "a killed attempt's steps were kept"
    assert [m["stage"] for m in metrics if m.get("event") == "stage_end"] == ["alpha", "beta"]
    assert train_mod.is_published(run / "final") and not work.exists()
