"""Trainer callbacks: metrics (loss, lr, tokens/s, validation) and checkpoint completion markers."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

from warmline.data.tokens import TokenizedExample
from warmline.evaluation.loss import evaluate_loss


class CheckpointMarker(TrainerCallback):
    """Mark a checkpoint folder complete once the Trainer has finished writing it.

    `--resume` only trusts marked checkpoints, so a process killed mid-save never leaves a
    half-written checkpoint that looks usable.
    """

    def __init__(self, marker: str):
        self.marker = marker

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / self.marker).write_text(json.dumps({"global_step": state.global_step}))
        return control


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

    def log_validation(self, model, epoch: float) -> dict:
        result = evaluate_loss(model, self.validation, precision=self.precision)
        self._write({"event": "validation", "epoch": epoch, "val_loss": result["loss"],
                     "val_perplexity": result["perplexity"]})  # fmt: skip
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
        self._write({"event": "log", "step": state.global_step, **{k: v for k, v in logs.items()
                                                                    if isinstance(v, int | float)}})  # fmt: skip
        return control

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        # The last epoch's validation is part of the stage-end evaluation on every split.
        last_epoch = state.epoch is not None and state.epoch >= args.num_train_epochs - 1e-6
        if model is not None and state.is_world_process_zero and self.validation and not last_epoch:
            result = self.log_validation(model, epoch=round(state.epoch or 0.0, 3))
            print(f"[{self.stage_name}] epoch {state.epoch:.2f}: val_loss {result['loss']:.4f}", flush=True)
        return control
