"""Trainer callbacks: metrics (loss, lr, tokens/s, validation), checkpoint completion markers, and
returning freed heap memory to the operating system on CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import logging
import os
import shutil
import time
from functools import lru_cache
from pathlib import Path

from transformers import TrainerCallback

from warmline.data.tokens import TokenizedExample

logger = logging.getLogger(__name__)

TRIM_EVERY_STEPS = 4
"""How often (optimizer steps) MemoryTrim hands freed heap memory back. On the offline recipe (12
bf16 steps, a quiet 2-core CPU) every 4th step took the peak from 3.20 to 2.66 GiB for about 9% of
the step time; every step costs more (benchmarks/RESULTS.md, "On a CPU with bf16 units")."""


@lru_cache(maxsize=1)
def _libc_malloc_trim():
    """glibc's malloc_trim, or None on a C library without it (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_memory() -> bool:
    """Collect garbage and return the heap's free pages to the OS (glibc ``malloc_trim(0)``).

    A CPU training step allocates and frees hundreds of tensors of every size (activations for
    each conversation's own length, bf16 casts of the weights under autocast); glibc keeps the
    freed pages, so a process's RSS climbs step after step (2.2 -> 4.8 GiB over the offline run
    on a bf16 CPU) although the live tensors stay the same. Returns whether a trim ran."""
    gc.collect()
    trim = _libc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class MemoryTrim(TrainerCallback):
    """On CPU, ``release_memory`` every ``every`` optimizer steps and at the end of training, so
    the peak RSS is what the live tensors need (the `--plan` estimate), not the allocator's
    history."""

    def __init__(self, every: int = TRIM_EVERY_STEPS) -> None:
        self.every = max(1, every)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            release_memory()

    def on_train_end(self, args, state, control, **kwargs):
        release_memory()


class CheckpointMarker(TrainerCallback):
    """Mark a checkpoint folder complete once the Trainer has finished writing it, then remove the
    older checkpoints: the rotation the Trainer's `save_total_limit` would do, in a crash-safe order.

    The Trainer deletes old checkpoints before `on_save` runs, so a kill in between leaves no
    marked checkpoint at all; here the new one is complete and marked first. An old checkpoint
    loses its marker before its files go, so a kill mid-deletion never leaves a half-deleted
    checkpoint that looks usable. `--resume` only trusts marked checkpoints.
    """

    def __init__(self, marker: str):
        self.marker = marker

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                tmp = folder / f".{self.marker}.tmp"
                tmp.write_text(json.dumps({"global_step": state.global_step}))
                os.replace(tmp, folder / self.marker)  # the marker appears whole or not at all
                self.remove_older(folder)
        return control

    def remove_older(self, keep: Path) -> None:
        """Delete every other checkpoint in `keep`'s folder (marker first)."""
        for old in keep.parent.glob("checkpoint-*"):
            if old == keep or not old.is_dir():
                continue
            (old / self.marker).unlink(missing_ok=True)
            shutil.rmtree(old, ignore_errors=True)


def trim_metrics(path: Path, stage_name: str, *, keep_through_step: int) -> int:
    """Drop a stage's records after `keep_through_step` (a killed attempt's steps, which the
    resumed run logs again) and its `stage_end`; returns how many were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            dropped += 1
            continue
        step = record.get("step")
        stale = record.get("stage") == stage_name and (
            record.get("event") == "stage_end" or step is None or step > keep_through_step
        )
        if stale:
            dropped += 1
        else:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
    if dropped:
        logger.info(
            "metrics.jsonl: dropped %d records of stage '%s' after step %d (an interrupted attempt)",
            dropped,
            stage_name,
            keep_through_step,
        )
    return dropped


class MetricsLogger(TrainerCallback):
    """Append training logs and per-epoch validation loss to metrics.jsonl, with useful tokens/s."""

    def __init__(
        self,
        metrics_path: Path,
        stage_name: str,
        validation: list[TokenizedExample],
        precision: str,
        useful_tokens_per_epoch: int,
    ):
        self.metrics_path = Path(metrics_path)
        self.stage_name = stage_name
        self.validation = validation
        self.precision = precision
        self.useful_tokens_per_epoch = useful_tokens_per_epoch
        self.started = time.time()
        self._last_time = self.started
        self._last_tokens = 0
        self.total_tokens = 0

    def elapsed_s(self) -> float:
        return time.time() - self.started

    def _write(self, record: dict) -> None:
        record = {"stage": self.stage_name, "time": round(time.time(), 3), **record}
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def log_validation(self, model, epoch: float, step: int, *, write: bool = True) -> dict:
        """Validation loss, scored across every process (a collective: all of them call it);
        only the one with `write` appends it to metrics.jsonl."""
        from warmline.training.train import evaluate_gathered

        result = evaluate_gathered(model, self.validation, precision=self.precision)
        if write:
            self._write(
                {
                    "event": "validation",
                    "step": step,
                    "epoch": epoch,
                    "val_loss": result["loss"],
                    "val_perplexity": result["perplexity"],
                }
            )
        return result

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.time()
        self._last_tokens = state.num_input_tokens_seen
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return control
        now = time.time()
        tokens = state.num_input_tokens_seen
        if now > self._last_time and tokens >= self._last_tokens:
            logs["tokens_per_s"] = round((tokens - self._last_tokens) / (now - self._last_time), 1)
        self._last_time, self._last_tokens = now, tokens
        self._write(
            {
                "event": "log",
                "step": state.global_step,
                **{k: v for k, v in logs.items() if isinstance(v, int | float)},
            }
        )
        return control

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        # The last epoch's validation is part of the stage-end evaluation on every split.
        last_epoch = state.epoch is not None and state.epoch >= args.num_train_epochs - 1e-6
        # Every process scores its share of the split; the main one writes and prints.
        if model is not None and self.validation and not last_epoch:
            result = self.log_validation(
                model,
                epoch=round(state.epoch or 0.0, 3),
                step=state.global_step,
                write=state.is_world_process_zero,
            )
            if state.is_world_process_zero:
                print(
                    f"[{self.stage_name}] epoch {state.epoch:.2f}: val_loss {result['loss']:.4f}", flush=True
                )
        return control
