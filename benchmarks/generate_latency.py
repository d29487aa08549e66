"""Generation latency: the prototype's `model.generate` against warmline's Generator on each engine
(torch, and the ONNX Runtime GenAI builds), with the quality of each.

    python benchmarks/generate_latency.py --model runs/offline/final          # about 15 minutes on 2 cores
    python benchmarks/generate_latency.py --model runs/offline/final --quick  # 64 new tokens, 1 repeat

Same model (--model; default the packaged SmolLM2-135M-Instruct), same user messages, same
machine, one run. The variants:

  prototype            Hugging Face `model.generate` with the prototype's settings: do_sample,
                       temperature 0.7, top_k 50, top_p 0.92, repetition_penalty 1.2,
                       pad_token_id = EOS, on the "Human: ...\\nAssistant:" prompt
  warmline             warmline's Generator on the torch engine as `from_pretrained` makes it on a
                       CPU (KV-cached streaming loop, the model's chat template; prompt read in
                       fp32, tokens decoded by an fp16 copy), the same sampling settings
  onnx-fp32|int8|int8-mlp|int4  the same Generator on the ONNX engine (`--engine onnx --quant ...`:
                       onnxruntime-genai runs the model, warmline samples), each built once by
                       `serving.onnx_build.build_onnx` with its QUANT_OPTIONS
  warmline-fp32, warmline-1thread, warmline-int8*   (not in the default list) earlier torch
                       experiments: fp32 decoding, one thread, torch.ao dynamic int8 schemes

Each variant runs in its own worker process, one after another, so its peak resident memory
(ru_maxrss) is its own. Each repetition answers a 100-token prompt (the user message is cut so
that each implementation's own prompt format makes 100 tokens) and a short one (SAMPLE_PROMPTS,
in turn), after one untimed warm-up reply, each read cold (no cached prompt). Time to first token
(TTFT) runs from the call (prompt tokenisation included) to the first sampled token; decode
tokens/s counts the tokens after the first over the time after it. Replies run to max_new_tokens
(200; 64 with --quick) so every variant decodes the same number of tokens: the prototype's
generation config has no EOS, the Generator no stop tokens or stop strings. CPU/wall (process
CPU seconds per wall second) shows whether a variant had its threads' cores to itself.

A 5-turn chat (MULTITURN_MESSAGES, warmline's system prompt, 64-token replies) gives each turn's
TTFT with the engine's prompt cache as `warmline chat` runs it (torch: PromptCache; ONNX: the
generator state the previous turn left) and read cold; the prototype reads its whole transcript
every turn (it has no cache).

Quality: each ONNX build's verdict from the gate in serving/onnx_quality.py (teacher-forced on the
validation conversations, reply tokens, against the fp32 torch model: loss delta <= +0.02 and
top-1 agreement >= 97%; cached in the build folder), and for the torch variants the same measure
on up to 8 conversations a stage. The default CPU engine is what `--engine auto` picks
(`onnx_engine.pick_quant`: the fastest quantisation that passes). The last line is

    RESULT decode_tok_s=... decode_ratio=... ttft_ms=... ttft_last_turn_ms=... quality_ok=... default=...

for that default engine: its decode tokens/s, that over the prototype's, its median TTFT for the
100-token prompt, turn 5's TTFT with the cache, and whether it passes the gate.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
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

logger = logging.getLogger("generate_latency")

BASE_MODEL = "packaged:smollm2-135m-instruct"
OFFLINE_RECIPE = REPO / "recipes" / "offline.yaml"
# int8 schemes for torch.ao.quantization.quantize_dynamic: int8 weights, activations quantised on
# the fly (per tensor, per call). scheme -> (per-channel weight scales, Linear layers left in fp32)
INT8_SCHEMES: dict[str, tuple[bool, tuple[str, ...]]] = {
    "all": (False, ()),  # quantize_dynamic(model, {nn.Linear}): its default, the output head included
    "fp32-head": (True, ("lm_head",)),
    "no-down-proj": (True, ("lm_head", "down_proj")),  # the MLP output sees the SwiGLU outliers
    "attention": (True, ("lm_head", "mlp")),  # q, k, v, o projections only
}
# variant -> (implementation, threads (None: torch's default), weights). Weights: for "warmline",
# None for fp32, "fp16" for fp32 prompt + fp16 decode (warmline's default on CPU), else an int8
# scheme; for "onnx", the build's quantisation (a key of onnx_build.QUANT_OPTIONS).
VARIANTS: dict[str, tuple[str, int | None, str | None]] = {
    "prototype": ("hf", None, None),
    "warmline": ("warmline", None, "fp16"),
    "onnx-fp32": ("onnx", None, "fp32"),
    "onnx-int8": ("onnx", None, "int8"),
    "onnx-int8-mlp": ("onnx", None, "int8-mlp"),
    "onnx-int4": ("onnx", None, "int4"),
    "warmline-fp32": ("warmline", None, None),
    "warmline-1thread": ("warmline", 1, "fp16"),
    "warmline-int8": ("warmline", None, "all"),
    "warmline-int8-fp32head": ("warmline", None, "fp32-head"),
    "warmline-int8-no-down-proj": ("warmline", None, "no-down-proj"),
    "warmline-int8-attention": ("warmline", None, "attention"),
    "warmline-int8-1thread": ("warmline", 1, "all"),
}
DEFAULT_VARIANTS = ("prototype", "warmline", "onnx-fp32", "onnx-int8", "onnx-int8-mlp", "onnx-int4")
# What "does not change reply quality" means for the torch variants (teacher-forced, reply tokens,
# against fp32); the ONNX builds are judged by serving/onnx_quality.py's gate.
MAX_LOSS_DELTA = 0.01
MIN_TOP1_AGREEMENT = 0.98
PROTOTYPE_SETTINGS = {
    "do_sample": True,
    "temperature": 0.7,
    "top_k": 50,
    "top_p": 0.92,
    "repetition_penalty": 1.2,
}
MULTITURN_NEW_TOKENS = 64
# One chat, turn by turn, for the prompt cache's time to first token.
MULTITURN_MESSAGES = (
    "I've been so stressed at work that I can't sleep.",
    "It's been like this for about a month now.",
    "My manager keeps adding projects and I don't know how to say no.",
    "I'll try talking to her on Monday. How do I start?",
    "Thanks. I think I also need to stop checking email at night.",
)
# Padding text for the ~100-token prompt: a long user message of the kind the chat gets.
LONG_MESSAGE = (
    "I have been feeling really overwhelmed for the past few weeks. My job has become much more "
    "demanding since my manager left, and I keep staying late to finish things, but it never feels "
    "like enough. I come home exhausted, I barely talk to my partner, and I have stopped going to "
    "the gym, which used to be the one thing that helped me feel calm. At night I lie awake going "
    "over everything I did wrong during the day and everything I still have to do tomorrow. I do "
    "not know how to get out of this loop or who I could even talk to about it without feeling "
    "like a burden."
)


def long_message(tokenizer, impl: str, target_prompt_tokens: int = 100) -> str:
    """The longest prefix (in words) of LONG_MESSAGE whose prompt, as `impl` builds it (the
    prototype's "Human/Assistant" text or warmline's chat template), has at most the target tokens."""
    from warmline.data.tokens import encode_prompt

    def prompt_tokens(text: str) -> int:
        if impl == "hf":
            return len(tokenizer(prototype_prompt(text))["input_ids"])
        return len(encode_prompt(tokenizer, [{"role": "user", "content": text}]))

    words = LONG_MESSAGE.split()
    best = words[0]
    for n in range(1, len(words) + 1):
        text = " ".join(words[:n])
        if prompt_tokens(text) > target_prompt_tokens:
            break
        best = text
    return best


def prototype_prompt(message: str) -> str:
    """The prototype's prompt format."""
    return f"Human: {message}\nAssistant:"


def quantize_int8(model, scheme: str):
    """A copy of the model with int8 weights in its nn.Linear layers, as INT8_SCHEMES[scheme] says."""
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    per_channel, keep_fp32 = INT8_SCHEMES[scheme]
    if not per_channel and not keep_fp32:
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    spec = {
        name: qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(part in name.split(".") for part in keep_fp32)
    }
    return quantize_dynamic(model, spec, dtype=torch.qint8)


# ---------------------------------------------------------------------------------------------
# Workers


def _hf_reply(model, tokenizer, prompt: str, seed: int, max_new_tokens: int) -> dict:
    """One `model.generate` reply to a prompt in the prototype's format, timed token by token."""
    import copy

    import torch
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        """`generate` calls put() with the prompt first, then once per new token."""

        def __init__(self):
            self.prompt_seen, self.times = False, []

        def put(self, value):
            if self.prompt_seen:
                self.times.append(time.perf_counter())
            self.prompt_seen = True

        def end(self):
            pass

    # The prototype's settings; no EOS, so the reply runs to max_new_tokens (no EOS check per step:
    # if anything, that flatters the prototype).
    config = copy.deepcopy(model.generation_config)
    config.update(
        **PROTOTYPE_SETTINGS,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.eos_token_id,
        eos_token_id=None,
    )
    stamps = Stamps()
    torch.manual_seed(seed)
    started = time.perf_counter()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=config, streamer=stamps)
    new_ids = out[0, inputs["input_ids"].shape[1] :]
    t = stamps.times
    return {
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "new_tokens": int(new_ids.shape[0]),
        "ttft_ms": (t[0] - started) * 1e3,
        "decode_tok_s": (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else 0.0,
        "text": tokenizer.decode(new_ids, skip_special_tokens=True),
    }


def _warmline_reply(gen, conversation: list[dict], seed: int, max_new_tokens: int) -> dict:
    result = gen.generate(conversation, seed=seed, max_new_tokens=max_new_tokens, stop_strings=())
    return {
        "prompt_tokens": result.prompt_tokens,
        "reused_prompt_tokens": result.reused_prompt_tokens,
        "new_tokens": result.new_tokens,
        "ttft_ms": result.ttft_s * 1e3,
        "decode_tok_s": result.tokens_per_s,
        "text": result.text,
    }


class Contestant:
    """One variant, loaded in this worker: replies to a conversation, with or without its prompt cache."""

    def __init__(self, variant: str, model_ref: str):
        import torch

        from warmline.models import load_model, load_tokenizer, resolve_model
        from warmline.serving.generator import Generator

        self.variant = variant
        self.impl, threads, weights = VARIANTS[variant]
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = load_tokenizer(model_ref)
        self.gen = None
        if self.impl == "onnx":
            from warmline.serving.onnx_engine import onnx_generator

            self.gen = onnx_generator(model_ref, engine="onnx", quant=weights)
            if self.gen is None:
                raise RuntimeError(f"{model_ref} has no ONNX build here (see the warning above)")
            data = self.gen.engine.onnx_dir.glob("model.onnx*")
            self.weights_gb = sum(f.stat().st_size for f in data) / 1e9
        else:
            model = load_model(model_ref).eval()
            if self.impl == "warmline":
                if weights not in (None, "fp16"):
                    model = quantize_int8(model, weights)
                decode_dtype = torch.float16 if weights == "fp16" else None
                self.gen = Generator(
                    model, self.tokenizer, decode_dtype=decode_dtype, prompt_cache_tokens=4096
                )
                model = self.gen.engine.decode_model or model  # for the weights column: what decodes
            self.model = model
            self.weights_gb = _weight_gb(model)
        if self.gen is not None:
            self.gen.engine.stop_token_ids = set()  # every reply runs to max_new_tokens (module docstring)
        resolve_model(model_ref)  # already resolved above; keeps the packaged conversion out of timings

    def reset_cache(self) -> None:
        """Forget every cached prompt: the next reply reads its whole prompt."""
        if self.impl == "warmline":
            self.gen.prompt_cache.clear()
        elif self.impl == "onnx":
            self.gen.engine.prompt_cache.clear()

    def reply(self, conversation: list[dict], seed: int, max_new_tokens: int) -> dict:
        if self.impl == "hf":
            prompt = "\n".join(
                ("Human: " if t["role"] == "user" else "Assistant: ") + t["content"]
                for t in conversation
                if t["role"] != "system"  # the prototype had no system prompt
            )
            return _hf_reply(self.model, self.tokenizer, prompt + "\nAssistant:", seed, max_new_tokens)
        return _warmline_reply(self.gen, conversation, seed, max_new_tokens)


def latency_worker(variant: str, model_ref: str, *, repeats: int, max_new_tokens: int) -> dict:
    """One variant in this process: the long and short prompts read cold, then the 5-turn chat."""
    from warmline.serving.generator import SAMPLE_PROMPTS

    c = Contestant(variant, model_ref)
    c.reply([{"role": "user", "content": SAMPLE_PROMPTS[0]}], 0, 8)  # warm-up: first-call allocations
    long_msg = long_message(c.tokenizer, c.impl)
    runs = []
    for r in range(repeats):
        for kind, message in (("long", long_msg), ("short", SAMPLE_PROMPTS[r % len(SAMPLE_PROMPTS)])):
            c.reset_cache()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            measured = c.reply([{"role": "user", "content": message}], r, max_new_tokens)
            # CPU seconds per wall second: below the thread count when other processes share the cores.
            cpu_per_wall = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
            measured.pop("text")
            runs.append({"repeat": r, "prompt": kind, **measured, "cpu_per_wall": cpu_per_wall})
            logger.info(
                "%s %s prompt (%d tokens): TTFT %.0f ms, %.1f tok/s over %d tokens (CPU/wall %.2f)",
                variant,
                kind,
                measured["prompt_tokens"],
                measured["ttft_ms"],
                measured["decode_tok_s"],
                measured["new_tokens"],
                cpu_per_wall,
            )
    import torch

    return {
        "variant": variant,
        "impl": c.impl,
        "threads": VARIANTS[variant][1] or torch.get_num_threads(),
        "weights": VARIANTS[variant][2],
        "weights_gb": c.weights_gb,
        "runs": runs,
        "multiturn": [multiturn_ttft(c, seed=r) for r in range(repeats)],
    }


def multiturn_ttft(c: Contestant, *, seed: int) -> list[dict]:
    """TTFT turn by turn in one chat (warmline's system prompt, MULTITURN_MESSAGES, 64-token
    replies): each turn first with the engine's cache holding the previous turn (as `warmline chat`
    runs), then read cold (cache emptied; that reply leaves the state the next turn starts from).
    The prototype has no cache: both columns are its only way, the whole transcript read."""
    from warmline.recipe import DEFAULT_SYSTEM_PROMPT

    conv = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}]
    c.reset_cache()
    if c.gen is not None:
        c.gen.warm_up(DEFAULT_SYSTEM_PROMPT)  # as `warmline chat` starts: the shared prefix cached
    rows = []
    for turn, message in enumerate(MULTITURN_MESSAGES, 1):
        conv = [*conv, {"role": "user", "content": message}]
        with_cache = c.reply(conv, seed, MULTITURN_NEW_TOKENS)
        c.reset_cache()
        without = c.reply(conv, seed, MULTITURN_NEW_TOKENS) if c.impl != "hf" else with_cache
        rows.append(
            {
                "turn": turn,
                "prompt_tokens": with_cache["prompt_tokens"],
                "reused_prompt_tokens": with_cache.get("reused_prompt_tokens", 0),
                "ttft_cold_ms": without["ttft_ms"],
                "ttft_cached_ms": with_cache["ttft_ms"],
            }
        )
        logger.info(
            "%s multi-turn %d: %d prompt tokens (%d from the cache): TTFT %.0f ms cold, %.0f ms cached",
            c.variant,
            turn,
            rows[-1]["prompt_tokens"],
            rows[-1]["reused_prompt_tokens"],
            rows[-1]["ttft_cold_ms"],
            rows[-1]["ttft_cached_ms"],
        )
        conv = [*conv, {"role": "assistant", "content": without["text"]}]
    return rows


def onnx_quality_worker(model_ref: str, quants: list[str]) -> dict:
    """The gate's verdict for each ONNX build (cached in the build folder after the first run), and
    the quantisation `--engine auto` picks."""
    from dataclasses import asdict

    from warmline.models import resolve_model
    from warmline.serving.onnx_engine import pick_quant
    from warmline.serving.onnx_quality import quality_verdict

    hf_dir = resolve_model(model_ref).path
    verdicts = {}
    for quant in quants:
        verdict = quality_verdict(hf_dir, quant)
        logger.info("%s", verdict.summary())
        verdicts[quant] = asdict(verdict)
    return {"verdicts": verdicts, "auto": pick_quant(hf_dir)}


def _weight_gb(model) -> float:
    """Bytes held by parameters and buffers, plus the int8 weights packed inside quantised Linear layers."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    for module in model.modules():
        if isinstance(module, DynamicQuantizedLinear):
            weight = module.weight()
            total += weight.numel() * weight.element_size()
    return total / 1e9


def quality_worker(model_ref: str, *, max_examples_per_stage: int, schemes: list[str]) -> dict:
    """fp32 vs each scheme, teacher-forced on validation conversations: token-weighted loss on the
    reply tokens and how often the top-1 predictions agree there.

    "fp16" follows the Generator: the fp32 model reads everything up to the first reply token (so
    it predicts that token), and the copy with fp16 Linear weights reads the rest from its KV
    cache. The int8 schemes read the whole conversation."""
    import os

    import torch
    from transformers import DynamicCache

    from warmline.data.cleaning import prepare_stage
    from warmline.data.tokens import IGNORE_INDEX, tokenize_conversation
    from warmline.models import load_model, load_tokenizer
    from warmline.recipe import load_recipe
    from warmline.serving.generator import half_weight_copy

    os.chdir(REPO)
    recipe = load_recipe(OFFLINE_RECIPE)
    tokenizer = load_tokenizer(model_ref)
    examples = []
    for stage in recipe.stages:
        data = prepare_stage(stage, seed=recipe.training.seed, system_prompt=recipe.system_prompt)
        examples += [
            tokenize_conversation(tokenizer, c, stage.max_length)
            for c in data.validation[:max_examples_per_stage]
        ]
    fp32 = load_model(model_ref).eval()
    quantized = {
        scheme: half_weight_copy(fp32) if scheme == "fp16" else quantize_int8(fp32, scheme)
        for scheme in schemes
    }
    tokens, loss_fp32 = 0, 0.0
    loss = dict.fromkeys(schemes, 0.0)
    agree = dict.fromkeys(schemes, 0)
    ce = torch.nn.functional.cross_entropy
    with torch.inference_mode():
        for ex in examples:
            ids = torch.tensor([ex.input_ids])
            targets = torch.tensor(ex.labels[1:])  # position t predicts token t+1
            keep = targets != IGNORE_INDEX
            reference = fp32(input_ids=ids).logits[0, :-1][keep]  # (labelled, vocab)
            tokens += int(keep.sum())
            loss_fp32 += ce(reference, targets[keep], reduction="sum").item()
            first_reply = ex.labels.index(next(x for x in ex.labels if x != IGNORE_INDEX))
            for scheme, model in quantized.items():
                if scheme == "fp16":
                    cache = DynamicCache(config=fp32.config)
                    head = fp32(input_ids=ids[:, :first_reply], cache=cache, use_cache=True).logits
                    rest = model(input_ids=ids[:, first_reply:], cache=cache, use_cache=True).logits
                    logits = torch.cat([head, rest], dim=1)[0, :-1][keep]
                else:
                    logits = model(input_ids=ids).logits[0, :-1][keep]
                loss[scheme] += ce(logits, targets[keep], reduction="sum").item()
                agree[scheme] += int((logits.argmax(-1) == reference.argmax(-1)).sum())
    n = max(tokens, 1)

    # Memory bandwidth: a decode step reads every weight once, so this bounds decode tokens/s.
    src = torch.empty(256 * 2**20 // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    started = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    copy_gb_s = 5 * 2 * src.numel() * 4 / (time.perf_counter() - started) / 1e9
    linear_params = sum(m.weight.numel() for m in fp32.modules() if isinstance(m, torch.nn.Linear))
    return {
        "examples": len(examples),
        "tokens": tokens,
        "loss_fp32": loss_fp32 / n,
        "schemes": {
            s: {"loss": loss[s] / n, "loss_delta": (loss[s] - loss_fp32) / n, "top1_agreement": agree[s] / n}
            for s in schemes
        },
        "copy_gb_s": copy_gb_s,
        "linear_params": linear_params,
        "fp32_weight_gb_per_token": linear_params * 4 / 1e9,
        "int8_weight_gb_per_token": linear_params / 1e9,
    }


# ---------------------------------------------------------------------------------------------
# The parent


def summarise(latency: dict[str, dict]) -> dict:
    """Per variant: medians over repetitions of the long- and short-prompt replies, and its memory."""
    out = {}
    for name, w in latency.items():
        long_runs = [r for r in w["runs"] if r["prompt"] == "long"]
        short_runs = [r for r in w["runs"] if r["prompt"] == "short"]
        decode = [r["decode_tok_s"] for r in w["runs"]]
        out[name] = {
            "ttft_long_ms": median([r["ttft_ms"] for r in long_runs]),
            "ttft_long_range": spread([r["ttft_ms"] for r in long_runs]),
            "long_prompt_tokens": long_runs[0]["prompt_tokens"] if long_runs else 0,
            "ttft_short_ms": median([r["ttft_ms"] for r in short_runs]),
            "decode_tok_s": median(decode),
            "decode_range": spread(decode),
            "new_tokens": median([r["new_tokens"] for r in w["runs"]]),
            "threads": w["threads"],
            "weights_gb": w["weights_gb"],
            "peak_rss_gb": w["peak_rss_gb"],
            "cpu_per_wall": median([r["cpu_per_wall"] for r in w["runs"]]),
            "multiturn": summarise_multiturn(w["multiturn"]),
        }
    return out


def summarise_multiturn(runs: list[list[dict]]) -> list[dict]:
    """Per turn, medians over repetitions."""
    turns = sorted({row["turn"] for run in runs for row in run})
    out = []
    for turn in turns:
        rows = [row for run in runs for row in run if row["turn"] == turn]
        out.append(
            {
                "turn": turn,
                "prompt_tokens": median([r["prompt_tokens"] for r in rows]),
                "reused_prompt_tokens": median([r["reused_prompt_tokens"] for r in rows]),
                "ttft_cold_ms": median([r["ttft_cold_ms"] for r in rows]),
                "ttft_cached_ms": median([r["ttft_cached_ms"] for r in rows]),
            }
        )
    return out


def print_report(
    info: dict, args, summary: dict, onnx_quality: dict | None, torch_quality: dict | None
) -> None:
    print(
        f"\nmachine: {info.get('cpu_model')} | {info.get('logical_cpus_available')} CPUs | load"
        f" {info.get('load_average_1m_at_start')} at start | torch {info.get('torch')} | model {args.model} |"
        f" {args.max_new_tokens} new tokens a reply, {args.repeats} repeats, each variant in its own process"
    )
    print(
        "variant               TTFT ~100-tok prompt ms [range]  TTFT short ms  decode tok/s [range]"
        "  weights GB  peak RSS GB  CPU/wall"
    )
    for name, v in summary.items():
        print(
            f"  {name:20} {v['ttft_long_ms']:6.0f} [{v['ttft_long_range']:>11}] ({v['long_prompt_tokens']:3d} tok)"
            f" {v['ttft_short_ms']:9.0f} {v['decode_tok_s']:10.1f} [{v['decode_range']:>11}] {v['weights_gb']:9.2f}"
            f" {v['peak_rss_gb']:11.2f} {v['cpu_per_wall']:9.2f}"
        )
    print(
        f"\none chat, turn by turn (system prompt, {MULTITURN_NEW_TOKENS}-token replies): TTFT ms cached | cold"
    )
    for name, v in summary.items():
        cells = "  ".join(
            f"t{row['turn']} ({row['prompt_tokens']:.0f} tok) {row['ttft_cached_ms']:4.0f} | {row['ttft_cold_ms']:4.0f}"
            for row in v["multiturn"]
        )
        print(f"  {name:20} {cells}")
    if onnx_quality:
        print(
            "\nONNX builds vs fp32 torch (serving/onnx_quality.py gate: loss +0.02, top-1 >= 97%; `--engine auto`"
            f" picks {onnx_quality['auto']}):"
        )
        for quant, q in onnx_quality["verdicts"].items():
            print(
                f"  onnx-{quant:5} loss {q['loss']:.4f} ({q['loss_delta']:+.4f}), top-1 agreement"
                f" {q['top1_agreement']:.1%} on {q['reply_tokens']} reply tokens of {q['conversations']}"
                f" conversations -> {'passes' if q['ok'] else 'FAILS'}"
            )
    if torch_quality:
        print(
            f"torch variants vs fp32, teacher-forced on {torch_quality['examples']} validation conversations "
            f"({torch_quality['tokens']} reply tokens; fp32 loss {torch_quality['loss_fp32']:.4f}):"
        )
        for scheme, q in torch_quality["schemes"].items():
            within = q["loss_delta"] <= MAX_LOSS_DELTA and q["top1_agreement"] >= MIN_TOP1_AGREEMENT
            print(
                f"  {scheme:14} loss {q['loss']:.4f} ({q['loss_delta']:+.4f}), top-1 agreement {q['top1_agreement']:.1%}"
                f" -> {'within' if within else 'OUTSIDE'} tolerance (loss +{MAX_LOSS_DELTA}, agreement"
                f" {MIN_TOP1_AGREEMENT:.0%})"
            )
    contended = [
        f"{n} (got {v['cpu_per_wall'] / v['threads']:.0%} of its threads' time)"
        for n, v in summary.items()
        if v["cpu_per_wall"] < 0.8 * v["threads"]
    ]
    if contended:
        print(
            "WARNING: other processes took CPU time from "
            + ", ".join(contended)
            + "; run again on a quiet machine"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=BASE_MODEL, help="run's final/ folder, stage folder or packaged: model"
    )
    parser.add_argument(
        "--quick", action="store_true", help="64 new tokens a reply, 1 repeat, small torch quality set"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="repetitions per variant (median; 3, 1 with --quick)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="tokens per reply (200; 64 with --quick)"
    )
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated subset of "
        + ", ".join(VARIANTS)
        + " (default: "
        + ", ".join(DEFAULT_VARIANTS)
        + ")",
    )
    parser.add_argument("--json", default=None, help="also write every measurement to this file")
    parser.add_argument(
        "--worker", choices=("latency", "quality", "onnx-quality"), default=None, help=argparse.SUPPRESS
    )
    parser.add_argument("--max-examples-per-stage", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.max_new_tokens = args.max_new_tokens or (64 if args.quick else 200)
    args.repeats = args.repeats or (1 if args.quick else 3)
    variants = args.variants.split(",") if args.variants else list(DEFAULT_VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if Path(args.model).exists():
        args.model = str(Path(args.model).resolve())
    schemes = [
        scheme
        for scheme in ("fp16", *INT8_SCHEMES)
        if any(VARIANTS[v][0] == "warmline" and VARIANTS[v][2] == scheme for v in variants)
    ]
    quants = [VARIANTS[v][2] for v in variants if VARIANTS[v][0] == "onnx"]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )

    if args.worker == "latency":
        (variant,) = variants
        result = latency_worker(variant, args.model, repeats=args.repeats, max_new_tokens=args.max_new_tokens)
        emit_worker_result(result)
        return 0
    if args.worker == "quality":
        emit_worker_result(
            quality_worker(
                args.model, max_examples_per_stage=args.max_examples_per_stage or 4, schemes=schemes
            )
        )
        return 0
    if args.worker == "onnx-quality":
        emit_worker_result(onnx_quality_worker(args.model, quants))
        return 0

    info = machine_info()
    script = Path(__file__).resolve()
    common = [
        "--model",
        args.model,
        "--repeats",
        str(args.repeats),
        "--max-new-tokens",
        str(args.max_new_tokens),
    ]
    onnx_quality = None
    if quants:
        # Builds (once; a progress bar each) and verdicts (cached in the build folders) before any timing.
        logger.info("ONNX builds and their quality verdicts: %s", ", ".join(quants))
        onnx_quality = run_worker(
            script,
            [
                "--worker",
                "onnx-quality",
                "--variants",
                ",".join(v for v in variants if VARIANTS[v][0] == "onnx"),
                *common,
            ],
        )
    torch_quality = None
    if schemes:
        logger.info("torch variants' quality check")
        torch_quality = run_worker(
            script,
            [
                "--worker",
                "quality",
                "--variants",
                ",".join(variants),
                "--max-examples-per-stage",
                "2" if args.quick else "8",
                *common,
            ],
        )
    latency = {}
    for variant in variants:
        logger.info("timing %s in its own process", variant)
        latency[variant] = run_worker(script, ["--worker", "latency", "--variants", variant, *common])
    summary = summarise(latency)
    write_json(
        args.json,
        {
            "machine": info,
            "args": vars(args),
            "latency": latency,
            "onnx_quality": onnx_quality,
            "torch_quality": torch_quality,
            "summary": summary,
        },
    )
    print_report(info, args, summary, onnx_quality, torch_quality)

    if "prototype" not in summary:
        print("prototype missing: no RESULT line")
        return 0
    proto = summary["prototype"]["decode_tok_s"]
    default = f"onnx-{onnx_quality['auto']}" if onnx_quality else "warmline"
    if default not in summary:
        default = "warmline" if "warmline" in summary else None
    if default is None:
        print("neither the default ONNX build nor warmline's torch engine was timed: no RESULT line")
        return 0
    d = summary[default]
    quality_ok = True  # the torch engine is the reference path
    if default.startswith("onnx-"):
        quality_ok = onnx_quality["verdicts"][default.removeprefix("onnx-")]["ok"]
    extra = (
        {"torch_decode_ratio": summary["warmline"]["decode_tok_s"] / proto} if "warmline" in summary else {}
    )
    print(
        f"default CPU engine (--engine auto): {default}; fastest decode:"
        f" {max(summary, key=lambda k: summary[k]['decode_tok_s'])}"
    )
    print(
        result_line(
            decode_tok_s=d["decode_tok_s"],
            decode_ratio=d["decode_tok_s"] / proto,
            ttft_ms=d["ttft_long_ms"],
            ttft_last_turn_ms=d["multiturn"][-1]["ttft_cached_ms"] if d["multiturn"] else float("nan"),
            quality_ok=str(bool(quality_ok)).lower(),
            default=default,
            **extra,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
