"""Token-weighted validation loss (and so perplexity) of a model on tokenised examples."""

from __future__ import annotations

import contextlib
import math

import torch

from warmline.data.tokens import IGNORE_INDEX, TokenizedExample


def pack_batches(examples: list[TokenizedExample], max_tokens: int) -> list[list[TokenizedExample]]:
    """Group examples into padding-free batches of at most max_tokens tokens (one example may exceed it)."""
    batches: list[list[TokenizedExample]] = []
    current: list[TokenizedExample] = []
    size = 0
    for ex in examples:
        if current and size + len(ex.input_ids) > max_tokens:
            batches.append(current)
            current, size = [], 0
        current.append(ex)
        size += len(ex.input_ids)
    if current:
        batches.append(current)
    return batches


def collate_padding_free(batch: list[TokenizedExample]) -> dict[str, torch.Tensor]:
    """One row holding every example, position ids restarting at each example, no attention mask.

    With no mask and no cache, transformers builds a block-diagonal causal mask from the position
    ids, so examples don't attend to each other. The first label of each example is dropped so no
    token is predicted across a boundary.
    """
    input_ids = torch.tensor([t for ex in batch for t in ex.input_ids])[None]  # (1, total_tokens)
    position_ids = torch.cat([torch.arange(len(ex.input_ids)) for ex in batch])[None]
    labels = torch.tensor([t for ex in batch for t in ex.labels])[None]
    labels[position_ids == 0] = IGNORE_INDEX
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


def autocast_context(precision: str, device: torch.device):
    if precision in {"bf16", "fp16"}:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


@torch.inference_mode()
def evaluate_loss(
    model, examples: list[TokenizedExample], *, precision: str = "fp32", max_tokens: int = 2048
) -> dict[str, float]:
    """Mean loss over every labelled token (token-weighted across examples), and its perplexity."""
    if not examples:
        return {"loss": float("nan"), "perplexity": float("nan"), "tokens": 0}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss = 0.0
    total_tokens = 0
    # A PEFT model (LoRA, validated mid-stage) is scored through its adapted transformers model:
    # its own `base_model_prefix` attribute would resolve to the whole causal LM, not the backbone.
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(core, core.base_model_prefix, None) if getattr(core, "base_model_prefix", "") else None
    head = core.get_output_embeddings()
    for batch in pack_batches(examples, max_tokens):
        inputs = {k: v.to(device) for k, v in collate_padding_free(batch).items()}
        labels = inputs.pop("labels")
        targets = labels[0, 1:]  # position t predicts token t+1
        keep = targets != IGNORE_INDEX
        with autocast_context(precision, device):
            if backbone is not None and head is not None:
                # Project to the vocabulary only where a label is scored: the output layer is a
                # fifth of a small model's forward pass, and most positions carry no label.
                hidden = backbone(**inputs, use_cache=False).last_hidden_state[0, :-1]  # (seq-1, hidden)
                logits = head(hidden[keep])  # (labelled, vocab)
            else:
                logits = model(**inputs, use_cache=False).logits[0, :-1][keep]
        total_loss += torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum").item()
        total_tokens += int(keep.sum())
    if was_training:
        model.train()
    loss = total_loss / max(total_tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": total_tokens}
