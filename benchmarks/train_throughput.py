"""Training throughput: the prototype's recipe against warmline's trainer, in useful tokens/s.

    python benchmarks/train_throughput.py --quick          # about 7 minutes on 2 cores
    python benchmarks/train_throughput.py --repeats 5      # the recipes' real batch sizes, 2 steps a window

Same base model (recipes' `base_model`, the packaged SmolLM2-135M-Instruct), same conversations,
same machine, one run. The configurations:

  prototype     recipes/baseline-prototype.yaml with all layers trained, as the prototype did
                (the recipe trains the top 10 blocks so that its quality comparison matches
                offline.yaml): every example padded to 512 tokens, loss on every token, fp32,
                no activation checkpointing (TRL SFTTrainer in prototype mode)
  warmline        recipes/offline.yaml as it is: one conversation per forward pass (no
                  padding, plain causal attention), 4 per optimizer step, precision `auto`,
                  top 10 of 30 blocks trained
  warmline-all    the same with every layer trained: like for like with the prototype
  warmline-packed offline.yaml with 4 conversations packed into one padding-free row per
                  forward pass (per-example position ids, block-diagonal attention mask)
  warmline-ckpt   offline.yaml with activation checkpointing on (what TRL's SFTConfig does by
                  default, and what warmline did until train_stage passed the recipe's setting)

Useful tokens are assistant-reply tokens, counted the same way for every configuration: the
content tokens of assistant turns that are in the trained sequence (after truncation). The
prototype also trains on user text and markup, and warmline also trains each reply's EOS; neither
is counted. That is what the product is for (learning replies), so it is the fair unit.

The conversations are the offline recipe's stages' training conversations (seeded subsets, as
the recipe trains them) plus, when present, an equal number from the counsel-chat copy in
../shared/datasets. Both tokenisations come from warmline (`tokenize_conversation` and
`tokenize_prototype`); a conversation is kept only if both keep it, so every configuration draws
from the same pool, and the Trainer's seeded sampler gives every configuration the same order.

Each configuration runs in its own process through `warmline.training.train.build_stage_trainer`
(the stage's real SFTTrainer, callbacks included, as `warmline train` builds it) on a temporary run
folder: one warm-up optimizer step, then --repeats timed windows of --steps-per-repeat optimizer
steps; each figure is the median over the windows. A callback passed to the builder stops the
Trainer after the last window (recipes have no max-steps setting). Forward pre-hooks see every micro-batch, so tokens are attributed to the step that
trained them. `--quick` sets the prototype's global batch to its micro batch (4) so every
configuration trains the same 4 conversations per optimizer step, and times 1 step per window.
When window r of every configuration holds the same conversations (checked, and always so with
--quick), the ratios are medians of per-window paired ratios; otherwise ratios of medians.

On a shared machine other processes can take CPU time from a configuration, and a 2-thread
torch process that loses a core slows down far more than 2x. Every window records CPU seconds
per wall second; a configuration that got under 80% of its threads' time is run again (once, by
default) and the report warns about any that stayed contended.

The same run measures the CPU's fp32 and bf16 GEMM throughput on training shapes, and reports
model FLOPs utilisation (MFU) against the fp32 peak (and the bf16 one; see `train_flops`).
The last line is

    RESULT train_ratio=... train_ratio_all_layers=... mfu_fp32=... peak_rss_gb=...

(warmline / prototype useful tokens/s; the same for warmline-all; warmline's MFU against the
measured fp32 GEMM peak; warmline's peak resident memory in GB).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO,
    emit_worker_result,
    machine_info,
    median,
    result_line,
    run_worker,
    spread,
    write_json,
)

logger = logging.getLogger("train_throughput")

OFFLINE_RECIPE = REPO / "recipes" / "offline.yaml"
PROTOTYPE_RECIPE = REPO / "recipes" / "baseline-prototype.yaml"
COUNSEL_CHAT = REPO.parent / "shared" / "datasets" / "counsel_chat" / "counsel_chat_amod_format.jsonl"
CONFIGS = ("prototype", "warmline", "warmline-all", "warmline-packed", "warmline-ckpt")
REQUIRED_CONFIGS = CONFIGS[:3]  # the RESULT line's; the others measure one setting each


# ---------------------------------------------------------------------------------------------
# FLOPs: what the model has to compute (not what the kernels happen to execute)


@dataclass(frozen=True)
class Arch:
    """The shapes that decide a decoder's FLOPs per token."""

    layers: int
    block_matmul_params: int  # q, k, v, o and the MLP of one block
    head_params: int  # the output projection (hidden x vocab), tied or not
    attention_dim: int  # query heads x head dim

    @classmethod
    def from_config(cls, config) -> Arch:
        hidden, inter = config.hidden_size, config.intermediate_size
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        mlp = (3 if getattr(config, "hidden_act", "") in {"silu", "swiglu"} else 2) * hidden * inter
        block = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2 + mlp
        return cls(config.num_hidden_layers, block, hidden * config.vocab_size, heads * head_dim)


def forward_flops(length: int, arch: Arch) -> float:
    """One causal forward pass over one sequence: 2 FLOPs per weight per token, plus attention
    (QK^T and AV over the causal half of the length x length scores)."""
    return 2.0 * length * (arch.layers * arch.block_matmul_params + arch.head_params) + (
        arch.layers * 2.0 * arch.attention_dim * length * length
    )


def train_flops(length: int, arch: Arch, trained_blocks: int | None) -> float:
    """Forward + backward FLOPs to train on one sequence.

    All layers trained (`trained_blocks=None`): backward = 2 x forward (input gradients and
    weight gradients), the usual 6 x params x tokens plus attention. Only the top blocks trained,
    embeddings and the tied head frozen (warmline's `trainable_layers`): the backward pass runs
    only through the head (input gradients only: its weight is frozen) and the trained blocks
    (input and weight gradients, 4 FLOPs per weight per token, and twice their attention); the
    frozen blocks below run forward only.
    """
    fwd = forward_flops(length, arch)
    if trained_blocks is None:
        return 3.0 * fwd
    trained_blocks = min(trained_blocks, arch.layers)
    backward = 2.0 * length * arch.head_params + trained_blocks * (
        4.0 * length * arch.block_matmul_params + 4.0 * arch.attention_dim * length * length
    )
    return fwd + backward


def executed_train_flops(row_width: int, rows: int, arch: Arch, trained_blocks: int | None) -> float:
    """FLOPs the kernels execute on a (rows, row_width) batch: padding included, and attention
    over the full row_width^2 score matrix, since an explicit mask (padding, or the block-diagonal
    mask of a packed row) stops SDPA from skipping anything."""
    per_row = train_flops(row_width, arch, trained_blocks)
    # train_flops counts the causal half of the scores; a masked SDPA computes all of them.
    attention_passes = (
        3.0 * arch.layers if trained_blocks is None else arch.layers + 2.0 * min(trained_blocks, arch.layers)
    )
    per_row += attention_passes * 2.0 * arch.attention_dim * row_width * row_width
    return rows * per_row


# ---------------------------------------------------------------------------------------------
# Useful tokens: assistant-reply content, the same for every configuration


def warmline_useful_tokens(labels: list[int], eos_token_id: int) -> int:
    """Labelled tokens except the trained EOS: the assistant content that survived truncation.

    User text is tokenised with special tokens split, so EOS never appears inside content."""
    return sum(1 for label in labels if label != -100 and label != eos_token_id)


def prototype_useful_tokens(tokenizer, conv, max_length: int) -> tuple[list[int], int]:
    """`tokenize_prototype`'s ids, and how many of them (after truncation) fall in assistant text.

    Rebuilds the prototype's text with the character span of every assistant turn's content and
    counts the tokens that overlap one, from the tokenizer's offsets."""
    pieces, spans, pos = [], [], 0
    for turn in (t for t in conv if t["role"] != "system"):
        prefix = "Human: " if turn["role"] == "user" else "Assistant: " if turn["role"] == "assistant" else ""
        if pieces:
            pos += 1  # the "\n" that joins turns
        start = pos + len(prefix)
        pieces.append(prefix + turn["content"])
        pos = start + len(turn["content"])
        if turn["role"] == "assistant":
            spans.append((start, pos))
    text = "\n".join(pieces)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][:max_length], enc["offset_mapping"][:max_length]
    useful = sum(1 for a, b in offsets if any(a < e and b > s for s, e in spans))
    return ids, useful


# ---------------------------------------------------------------------------------------------
# The worker: one configuration, through the stage's real trainer builder


def _conversation_pool(counsel_chat_rows: int):
    """(max_length, conversation) pairs: the offline recipe's training conversations + counsel-chat."""
    from warmline.data.cleaning import prepare_stage
    from warmline.recipe import StageConfig, load_recipe

    os.chdir(REPO)  # recipe sources are relative to the repository root
    offline = load_recipe(OFFLINE_RECIPE)
    pool = []
    for stage in offline.stages:
        data = prepare_stage(stage, seed=offline.training.seed, system_prompt=offline.system_prompt)
        pool += [(stage.max_length, conv) for conv in data.train]
    if counsel_chat_rows and COUNSEL_CHAT.is_file():
        stage = StageConfig(
            name="counsel-chat",
            source=str(COUNSEL_CHAT),
            format="counseling",
            validation_fraction=offline.stages[0].validation_fraction,
            max_rows=counsel_chat_rows,
            max_length=512,
        )
        data = prepare_stage(stage, seed=offline.training.seed, system_prompt=offline.system_prompt)
        pool += [(stage.max_length, conv) for conv in data.train]
    return pool


class _BatchProbe:
    """Forward pre-hook: per training micro-batch, the sequences it holds and what they cost."""

    def __init__(
        self, lookup: dict[tuple[int, ...], tuple[int, int]], arch: Arch, trained_blocks: int | None
    ):
        self.lookup = lookup  # input ids -> (conversation index, useful tokens)
        self.arch = arch
        self.trained_blocks = trained_blocks
        self.totals = {
            "useful_tokens": 0,
            "tokens": 0,
            "tensor_tokens": 0,
            "model_flops": 0.0,
            "executed_flops": 0.0,
            "micro_batches": 0,
            "unmatched": 0,
        }
        self.conversations: list[int] = []
        self.first_batch_lengths: list[int] | None = None
        self.activation_checkpointing: bool | None = None  # as the Trainer's arguments resolved it

    def __call__(self, module, args, kwargs):
        if not module.training:
            return None
        ids = kwargs["input_ids"]  # (rows, width)
        rows, width = ids.shape
        mask = kwargs.get("attention_mask")
        segments: list[list[int]] = []
        if mask is None and kwargs.get("position_ids") is not None:  # one packed row per micro-batch
            positions = kwargs["position_ids"]
            for r in range(rows):
                starts = (positions[r] == 0).nonzero().flatten().tolist() + [width]
                segments += [ids[r, a:b].tolist() for a, b in zip(starts, starts[1:], strict=False) if b > a]
        else:
            lengths = mask.sum(-1).tolist() if mask is not None else [width] * rows
            segments = [ids[r, : int(n)].tolist() for r, n in enumerate(lengths)]
        t = self.totals
        for seg in segments:
            hit = self.lookup.get(tuple(seg))
            if hit is None:
                t["unmatched"] += 1
            else:
                self.conversations.append(hit[0])
                t["useful_tokens"] += hit[1]
            t["tokens"] += len(seg)
            t["model_flops"] += train_flops(len(seg), self.arch, self.trained_blocks)
        t["tensor_tokens"] += rows * width
        t["executed_flops"] += executed_train_flops(width, rows, self.arch, self.trained_blocks)
        t["micro_batches"] += 1
        if self.first_batch_lengths is None:
            self.first_batch_lengths = [len(s) for s in segments]
        return None

    def snapshot(self) -> dict:
        return {**self.totals, "n_conversations": len(self.conversations)}


def _step_marks(probe: _BatchProbe, warmup_steps: int, timed_steps: int, marks: list):
    """A callback that notes the time after every optimizer step and stops after the last window."""
    from transformers import TrainerCallback

    class StepMarks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(
                {
                    "step": state.global_step,
                    "time": time.perf_counter(),
                    "cpu_s": time.process_time(),
                    **probe.snapshot(),
                }
            )
            if state.global_step >= warmup_steps + timed_steps:
                control.should_training_stop = True
            return control

    return StepMarks()


def train_worker(
    config: str, *, repeats: int, steps_per_repeat: int, quick: bool, counsel_chat_rows: int
) -> dict:
    """Train one configuration for 1 + repeats x steps_per_repeat optimizer steps; time the windows."""
    from transformers import AutoConfig

    from warmline.data.cleaning import StageData
    from warmline.data.tokens import tokenize_conversation, tokenize_prototype
    from warmline.hardware import configure_threads, resolve_precision
    from warmline.models import resolve_model
    from warmline.recipe import load_recipe
    from warmline.training.train import PreparedStage, build_stage_trainer, load_training_tokenizer

    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix=f"warmline-bench-{config}-"))
    overrides = [f"output_dir={tmp}", "training.save_steps=1000000"]  # no checkpoint inside a window
    if config in ("warmline-all", "prototype"):
        overrides.append("training.trainable_layers=null")
    if config == "warmline-ckpt":
        overrides.append("training.gradient_checkpointing=true")
    if config == "warmline-packed":
        overrides.append("training.micro_batch_size=4")  # the same 4 conversations a step, packed
    prototype = config == "prototype"
    recipe_path = PROTOTYPE_RECIPE if prototype else OFFLINE_RECIPE
    if quick and prototype:
        overrides.append("training.global_batch_size=4")  # its micro batch: one forward/backward a step
    recipe = load_recipe(recipe_path, overrides)
    t = recipe.training
    threads = configure_threads(t.num_threads)
    precision = resolve_precision(t.precision)
    tokenizer = load_training_tokenizer(recipe)  # the template train.py trains with
    eos = tokenizer.eos_token_id

    # --- the same pool for every configuration --------------------------------------------
    proto_max_length = (
        recipe.stages[0].max_length if prototype else load_recipe(PROTOTYPE_RECIPE).stages[0].max_length
    )
    examples, lookup = [], {}
    for max_length, conv in _conversation_pool(counsel_chat_rows):
        ours = tokenize_conversation(tokenizer, conv, max_length)
        if not any(label != -100 for label in ours.labels):  # what tokenize_all drops
            continue
        proto_ids, proto_useful = prototype_useful_tokens(tokenizer, conv, proto_max_length)
        if proto_ids != tokenize_prototype(tokenizer, conv, proto_max_length).input_ids:
            raise SystemExit(
                "prototype_useful_tokens no longer rebuilds tokenize_prototype's text: update it"
            )
        if prototype:
            ids, labels, useful = proto_ids, list(proto_ids), proto_useful  # tokenize_prototype's example
        else:
            ids, labels, useful = ours.input_ids, ours.labels, warmline_useful_tokens(ours.labels, eos)
        lookup.setdefault(tuple(ids), (len(examples), useful))
        examples.append(type(ours)(ids, labels, False))

    # --- train with the real stage trainer, plus a probe and step marks -----------------------
    arch = Arch.from_config(AutoConfig.from_pretrained(resolve_model(recipe.base_model).path))
    trained_blocks = None if t.lora.enabled else t.trainable_layers
    probe = _BatchProbe(lookup, arch, trained_blocks)
    marks: list[dict] = []
    timed_steps = repeats * steps_per_repeat
    stage_cfg = replace(recipe.stages[0], name="benchmark", epochs=float(max(1, recipe.stages[0].epochs)))
    data = StageData(name="benchmark", format="mixed", train=[], validation=[])
    stage = PreparedStage(1, stage_cfg, data, examples, [])  # no validation: nothing to evaluate mid-run
    steps_per_epoch = len(examples) // t.global_batch_size
    if steps_per_epoch * stage_cfg.epochs < 1 + timed_steps:
        raise SystemExit(
            f"{len(examples)} examples give {steps_per_epoch} steps per epoch; need {1 + timed_steps}"
        )
    setup_s = time.perf_counter() - started
    train_started = time.perf_counter()  # warm-up: model load, trainer build and the first step
    built = build_stage_trainer(
        recipe,
        stage,
        [stage],
        recipe.base_model,
        tokenizer,
        precision,
        recipe.run_dir,
        callbacks=(_step_marks(probe, 1, timed_steps, marks),),
    )
    built.trainer.model.register_forward_pre_hook(probe, with_kwargs=True)
    probe.activation_checkpointing = bool(built.trainer.args.activation_checkpointing)
    built.trainer.train()  # the stage's real trainer; nothing is published
    model = built.trainer.model
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_params = sum(p.numel() for p in model.parameters())
    del model

    if len(marks) < 1 + timed_steps:
        raise SystemExit(f"the Trainer stopped after {len(marks)} steps; need {1 + timed_steps}")
    windows = []
    for r in range(repeats):
        a, b = marks[r * steps_per_repeat], marks[(r + 1) * steps_per_repeat]
        w = {key: b[key] - a[key] for key in probe.totals}
        w["seconds"] = b["time"] - a["time"]
        # CPU seconds per wall second: the thread count when the process had the cores to itself;
        # lower means other processes took CPU time from it (a shared machine).
        w["cpu_per_wall"] = (b["cpu_s"] - a["cpu_s"]) / w["seconds"]
        w["steps"] = steps_per_repeat
        w["conversations"] = probe.conversations[a["n_conversations"] : b["n_conversations"]]
        windows.append(w)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "config": config,
        "activation_checkpointing": probe.activation_checkpointing,
        "recipe": str(recipe_path.relative_to(REPO)),
        "precision": precision,
        "threads": threads,
        "micro_batch_size": t.micro_batch_size,
        "global_batch_size": t.global_batch_size,
        "padding_free": t.packing and not recipe.baseline_prototype and t.micro_batch_size > 1,
        "trainable_layers": trained_blocks,
        "trainable_params": n_trainable,
        "params": n_params,
        "pool_conversations": len(examples),
        "warmup_s": marks[0]["time"] - train_started,
        "setup_s": setup_s,
        "windows": windows,
        "first_batch_lengths": probe.first_batch_lengths,
        "unmatched_sequences": probe.totals["unmatched"],
        "arch": arch.__dict__,
        "load_average_1m": [load_at_start, os.getloadavg()[0]],
    }


# ---------------------------------------------------------------------------------------------
# The worker: GEMM peak and the cost of masked attention on a packed row


def _time_op(fn, min_seconds: float) -> float:
    """Seconds per call: one warm-up call, then as many as fit in min_seconds (at least 2)."""
    fn()
    n, started = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - started < min_seconds:
        fn()
        n += 1
    return (time.perf_counter() - started) / n


def gemm_worker(*, repeats: int, quick: bool, packed_lengths: list[int]) -> dict:
    """GFLOP/s of fp32 and bf16 matmuls of training shapes, and SDPA on a packed row vs per example."""
    import torch

    from warmline.hardware import configure_threads

    threads = configure_threads(None)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    torch.manual_seed(0)
    min_s = 0.3 if quick else 1.0
    hidden, inter, vocab = 576, 1536, 49152
    results = []
    plans = [
        # (tokens, k, n, label): (tokens x k) @ (k x n), as in a forward pass
        (torch.float32, 2048, hidden, inter, "mlp up/gate"),
        (torch.float32, 2048, inter, hidden, "mlp down"),
        (torch.float32, 2048, hidden, hidden, "q/o proj"),
        (torch.float32, 2048, hidden, vocab, "lm head"),
        (torch.float32, 512, hidden, inter, "mlp up/gate"),
        # bf16 runs at ~1% of fp32 on CPUs without avx512_bf16/AMX: small shapes keep it short
        (torch.bfloat16, 64, hidden, inter, "mlp up/gate"),
        (torch.bfloat16, 64, inter, hidden, "mlp down"),
        (torch.bfloat16, 16, hidden, vocab, "lm head"),
    ]
    for dtype, m, k, n, label in plans:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        rates = []
        for _ in range(repeats):
            seconds = _time_op(lambda a=a, b=b: torch.mm(a, b), min_s)
            rates.append(2.0 * m * k * n / seconds / 1e9)
        results.append(
            {
                "dtype": str(dtype).removeprefix("torch."),
                "shape": f"({m}x{k})@({k}x{n})",
                "label": label,
                "gflops": rates,
            }
        )

    # Attention on one packed row (block-diagonal causal mask, as transformers builds it from the
    # position ids) against the same sequences one by one with is_causal (what padding-free
    # attention kernels such as FlashAttention-varlen do on a GPU).
    attention = None
    if packed_lengths:
        heads, head_dim = 9, 64
        total = sum(packed_lengths)
        seg = torch.repeat_interleave(torch.arange(len(packed_lengths)), torch.tensor(packed_lengths))
        causal = torch.ones(total, total, dtype=torch.bool).tril()
        block_mask = (causal & (seg[:, None] == seg[None, :]))[None, None]
        q, k, v = (torch.randn(1, heads, total, head_dim, requires_grad=True) for _ in range(3))
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def packed_fwd():
            with torch.no_grad():
                sdpa(q, k, v, attn_mask=block_mask)

        def packed_fwd_bwd():
            sdpa(q, k, v, attn_mask=block_mask).sum().backward()

        bounds = [0, *torch.cumsum(torch.tensor(packed_lengths), 0).tolist()]

        def split_fwd():
            with torch.no_grad():
                for s, e in zip(bounds, bounds[1:], strict=False):
                    sdpa(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True)

        def split_fwd_bwd():
            for s, e in zip(bounds, bounds[1:], strict=False):
                sdpa(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True).sum().backward()

        attention = {"lengths": packed_lengths, "heads": heads, "head_dim": head_dim}
        for name, fn in (
            ("packed_fwd_ms", packed_fwd),
            ("packed_fwd_bwd_ms", packed_fwd_bwd),
            ("split_fwd_ms", split_fwd),
            ("split_fwd_bwd_ms", split_fwd_bwd),
        ):
            attention[name] = median([_time_op(fn, min_s) * 1e3 for _ in range(repeats)])
    cpu_per_wall = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return {"threads": threads, "gemm": results, "attention": attention, "cpu_per_wall": cpu_per_wall}


# ---------------------------------------------------------------------------------------------
# The parent: run the workers, summarise, print the RESULT line


def contended_share(worker: dict, threshold: float = 0.8) -> float | None:
    """The median share of its threads' CPU time a configuration got, when under the threshold."""
    share = median([w["cpu_per_wall"] for w in worker["windows"]]) / worker["threads"]
    return share if share < threshold else None


def summarise(workers: dict[str, dict], gemm: dict) -> dict:
    """Medians over windows, ratios to the prototype, MFU against the measured GEMM peaks."""
    peaks = {}
    for dtype in ("float32", "bfloat16"):
        rates = [median(g["gflops"]) for g in gemm["gemm"] if g["dtype"] == dtype]
        peaks[dtype] = max(rates) if rates else float("nan")
    summary: dict = {"peak_gflops": peaks, "configs": {}}
    for name, w in workers.items():
        win = w["windows"]
        useful = [x["useful_tokens"] / x["seconds"] for x in win]
        tokens = [x["tokens"] / x["seconds"] for x in win]
        mfu = [x["model_flops"] / x["seconds"] / 1e9 / peaks["float32"] for x in win]
        hfu = [x["executed_flops"] / x["seconds"] / 1e9 / peaks["float32"] for x in win]
        mfu_bf16 = [x["model_flops"] / x["seconds"] / 1e9 / peaks["bfloat16"] for x in win]
        padding = [1 - x["tokens"] / x["tensor_tokens"] for x in win]
        summary["configs"][name] = {
            "useful_tok_s": median(useful),
            "useful_tok_s_range": spread(useful),
            "tok_s": median(tokens),
            "mfu_fp32": median(mfu),
            "mfu_fp32_range": spread(mfu),
            "executed_fu_fp32": median(hfu),
            "mfu_vs_bf16_peak": median(mfu_bf16),
            "step_s": median([x["seconds"] / x["steps"] for x in win]),
            "padding_share": median(padding),
            "useful_share": median([x["useful_tokens"] / x["tokens"] for x in win]),
            "peak_rss_gb": w["peak_rss_gb"],
            "precision": w["precision"],
            "threads": w["threads"],
            "trainable_params_m": w["trainable_params"] / 1e6,
            "warmup_s": w["warmup_s"],
            "cpu_per_wall": median([x["cpu_per_wall"] for x in win]),
            "activation_checkpointing": w.get("activation_checkpointing"),
        }
    # The same conversations in every window (quick mode: equal step sizes)? Then window r of one
    # configuration and window r of the prototype did the same work, and their ratio is a paired
    # measurement: immune to how long window r's conversations happen to be.
    convs = {name: [x["conversations"] for x in w["windows"]] for name, w in workers.items()}
    paired = len({str(v) for v in convs.values()}) == 1
    summary["same_conversations_per_window"] = paired
    summary["ratios"] = {}
    for name, w in workers.items():
        baseline = "prototype"
        if name == baseline or baseline not in workers:
            continue
        proto, ours = workers[baseline]["windows"], w["windows"]
        total = (sum(x["useful_tokens"] for x in ours) / sum(x["seconds"] for x in ours)) / (
            sum(x["useful_tokens"] for x in proto) / sum(x["seconds"] for x in proto)
        )
        per_window = [
            (a["useful_tokens"] / a["seconds"]) / (b["useful_tokens"] / b["seconds"])
            for a, b in zip(ours, proto, strict=False)
        ]
        summary["ratios"][name] = {
            "baseline": baseline,
            "median_of_paired_windows": median(per_window) if paired else float("nan"),
            "paired_windows": per_window if paired else [],
            "of_medians": summary["configs"][name]["useful_tok_s"]
            / summary["configs"][baseline]["useful_tok_s"],
            "of_totals": total,
        }
        # The headline: the paired median where windows pair up, else the ratio of medians.
        summary["ratios"][name]["headline"] = summary["ratios"][name][
            "median_of_paired_windows" if paired else "of_medians"
        ]
    summary["train_ratio"] = summary["ratios"].get("warmline", {}).get("headline", float("nan"))
    summary["train_ratio_all_layers"] = (
        summary["ratios"].get("warmline-all", {}).get("headline", float("nan"))
    )
    return summary


def print_report(info: dict, workers: dict, gemm: dict, summary: dict) -> None:
    print(
        f"\nmachine: {info.get('cpu_model')} | {info.get('logical_cpus_available')} CPUs | flags "
        f"{' '.join(info.get('cpu_flags', []))} | torch {info.get('torch')} ({info.get('torch_cpu_capability')})"
    )
    print(f"\nGEMM (median GFLOP/s over repeats; CPU/wall {gemm.get('cpu_per_wall', float('nan')):.2f}):")
    for g in gemm["gemm"]:
        print(
            f"  {g['dtype']:9} {g['shape']:22} {g['label']:12} {median(g['gflops']):8.2f}  [{spread(g['gflops'])}]"
        )
    att = gemm.get("attention")
    if att:
        print(f"\nSDPA on one packed row of {att['lengths']} tokens (9 heads x 64), per layer:")
        print(
            f"  block-diagonal mask: fwd {att['packed_fwd_ms']:.1f} ms, fwd+bwd {att['packed_fwd_bwd_ms']:.1f} ms;"
            f" per example, is_causal: fwd {att['split_fwd_ms']:.1f} ms, fwd+bwd {att['split_fwd_bwd_ms']:.1f} ms"
        )
    print(
        "\nconfig                 useful tok/s [range]       tok/s   step s  useful  pad   MFU fp32  exec FU"
        "  peak RSS GB  CPU/wall  act. ckpt"
    )
    for name, s in summary["configs"].items():
        print(
            f"  {name:20} {s['useful_tok_s']:8.1f} [{s['useful_tok_s_range']:>13}] {s['tok_s']:8.1f} "
            f"{s['step_s']:7.1f} {s['useful_share']:6.0%} {s['padding_share']:5.0%} {s['mfu_fp32']:8.1%} "
            f"{s['executed_fu_fp32']:8.1%} {s['peak_rss_gb']:9.2f} {s['cpu_per_wall']:9.2f}  {s['activation_checkpointing']}"
        )
    peaks = summary["peak_gflops"]
    print(f"\npeak GFLOP/s: fp32 {peaks['float32']:.1f}, bf16 {peaks['bfloat16']:.2f}")
    if peaks["bfloat16"] < peaks["float32"]:
        print(
            "  bf16 matrix products are slower than fp32 on this CPU (no bf16 units): the bf16 peak is not a"
            " usable ceiling, so MFU is reported against the fp32 peak"
        )
    else:
        for name, s in summary["configs"].items():
            print(f"  {name}: MFU against the bf16 peak {s['mfu_vs_bf16_peak']:.0%}")
    print(f"same conversations in each configuration's windows: {summary['same_conversations_per_window']}")
    if summary["ratios"]:
        print(
            "useful tokens/s against the prototype: median of paired windows [each window] | ratio of medians"
            " | ratio of totals"
        )
        for name, r in summary["ratios"].items():
            windows = ", ".join(f"{x:.2f}" for x in r["paired_windows"])
            print(
                f"  {name:20} vs {r['baseline']:16} {r['median_of_paired_windows']:5.2f} [{windows}] |"
                f" {r['of_medians']:.2f} | {r['of_totals']:.2f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 step per window, prototype global batch 4")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per configuration (median)")
    parser.add_argument(
        "--steps-per-repeat", type=int, default=None, help="optimizer steps per window (1 quick, 2 else)"
    )
    parser.add_argument(
        "--counsel-chat-rows", type=int, default=96, help="counsel-chat conversations in the pool (0: none)"
    )
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help="comma-separated, from " + ", ".join(CONFIGS),
    )
    parser.add_argument("--json", default=None, help="also write every measurement to this file")
    parser.add_argument(
        "--contention-retries",
        type=int,
        default=1,
        help="re-run a configuration whose windows got under 80%% of its threads' CPU time",
    )
    parser.add_argument("--worker", choices=("train", "gemm"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", choices=CONFIGS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--packed-lengths", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps_per_repeat or (1 if args.quick else 2)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )

    if args.worker == "train":
        emit_worker_result(
            train_worker(
                args.config,
                repeats=args.repeats,
                steps_per_repeat=steps,
                quick=args.quick,
                counsel_chat_rows=args.counsel_chat_rows,
            )
        )
        return 0
    if args.worker == "gemm":
        lengths = [int(x) for x in args.packed_lengths.split(",") if x]
        emit_worker_result(gemm_worker(repeats=args.repeats, quick=args.quick, packed_lengths=lengths))
        return 0

    info = machine_info()
    script = Path(__file__).resolve()
    common = [
        "--repeats",
        str(args.repeats),
        "--steps-per-repeat",
        str(steps),
        "--counsel-chat-rows",
        str(args.counsel_chat_rows),
    ] + (["--quick"] if args.quick else [])
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    workers, discarded = {}, []
    for config in configs:
        for attempt in range(1 + args.contention_retries):
            logger.info(
                "configuration %s: %d warm-up + %d x %d timed optimizer steps", config, 1, args.repeats, steps
            )
            result = run_worker(script, ["--worker", "train", "--config", config, *common])
            share = contended_share(result)
            if share is None or attempt == args.contention_retries:
                break
            logger.warning(
                "configuration %s got %.0f%% of its threads' CPU time (other processes on the machine):"
                " measuring it again",
                config,
                100 * share,
            )
            discarded.append(result)
        workers[config] = result
    packed = (workers.get("warmline-packed") or workers.get("warmline") or {}).get(
        "first_batch_lengths"
    ) or []
    logger.info("GEMM and attention throughput")
    gemm = run_worker(script, ["--worker", "gemm", "--packed-lengths", ",".join(map(str, packed)), *common])
    record = {
        "machine": info,
        "args": vars(args),
        "workers": workers,
        "gemm": gemm,
        "discarded_contended": discarded,
    }
    write_json(args.json, record)  # the raw measurements first: nothing below can lose them
    summary = summarise(workers, gemm)
    record["summary"] = summary
    write_json(args.json, record)
    print_report(info, workers, gemm, summary)
    contended = {name: share for name, w in workers.items() if (share := contended_share(w)) is not None}
    if contended:
        print(
            "WARNING: other processes took CPU time from "
            + ", ".join(f"{n} (got {s:.0%} of its threads' time)" for n, s in contended.items())
            + "; its figures are low and the ratios unreliable: run again"
        )
    if set(REQUIRED_CONFIGS) <= set(workers):
        w = summary["configs"]["warmline"]
        print(
            result_line(
                train_ratio=summary["train_ratio"],
                train_ratio_all_layers=summary["train_ratio_all_layers"],
                mfu_fp32=w["mfu_fp32"],
                peak_rss_gb=w["peak_rss_gb"],
            )
        )
    else:
        print("not every configuration ran: no RESULT line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
