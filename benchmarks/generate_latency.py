"""Generation latency: the prototype's `model.generate` against warmline's Generator, and what helps.

    python benchmarks/generate_latency.py --quick          # about 4 minutes on 2 cores
    python benchmarks/generate_latency.py --repeats 5      # 200 new tokens a reply, every variant

Same model (the packaged SmolLM2-135M-Instruct, fp32 on CPU as `Generator.from_pretrained` loads
it), same user messages, same machine, one run. The variants:

  prototype            Hugging Face `model.generate` with the prototype's settings: do_sample,
                       temperature 0.7, top_k 50, top_p 0.92, repetition_penalty 1.2,
                       pad_token_id = EOS, on the "Human: ...\nAssistant:" prompt
  warmline             warmline's Generator as `from_pretrained` makes it on a CPU (KV-cached
                       streaming loop, the model's chat template; prompt read in fp32, tokens
                       decoded by an fp16 copy), the same sampling settings, torch's default
                       threads (2 here)
  warmline-fp32        the same decoding in fp32 too
  warmline-1thread     the same as warmline on 1 thread
  warmline-int8*       the same after torch.ao.quantization.quantize_dynamic: every Linear
                       (`int8`, its default), or per-channel scales leaving the output head
                       (`-fp32head`), the head and the MLP down projections (`-no-down-proj`),
                       or everything but the attention projections (`-attention`) in fp32

Every variant runs in one worker process, interleaved: repetition r runs each variant in turn, so
load from other processes on a shared machine falls on all of them alike. Each repetition
answers a 100-token prompt (the user message is cut so that each implementation's own prompt
format makes 100 tokens) and a short one (SAMPLE_PROMPTS, in turn), after one untimed warm-up
reply per variant. Time to first token (TTFT) runs from the call (prompt tokenisation included)
to the first sampled token; decode tokens/s counts the tokens after the first over the time
after it. Replies run to max_new_tokens (200; 64 with --quick) so every variant decodes the same
number of tokens: the prototype's generation config has no EOS, the Generator no stop tokens or
stop strings. CPU/wall (process CPU seconds per wall second) shows whether a variant had its
threads' cores to itself. Figures are medians over repetitions.

These variants run without warmline's PromptCache (each repetition asks the same 100-token
prompt, which the cache would answer without reading it). The cache is measured on its own: one
chat of five turns (MULTITURN_MESSAGES, warmline's system prompt, natural replies up to 64
tokens), each turn's time to first token without and with it, same prompts.

A quality check runs the fp32 model, the fp16 decode path and each int8 scheme teacher-forced on
the offline recipe's validation conversations: token-weighted loss on the reply tokens, and how
often the top-1 predictions agree with fp32 there. A scheme is within tolerance when the loss
rises by at most MAX_LOSS_DELTA and top-1 agreement is at least MIN_TOP1_AGREEMENT (fp16's
disagreements are near-ties; sampling at temperature 0.7 draws from nearly the same
distribution). The last line is

    RESULT decode_ratio=... ttft_ms=... ttft_last_turn_ms=...

(warmline's decode tokens/s over the prototype's, and warmline's median TTFT for the 100-token
prompt, both as shipped: fp16 decode, default threads; the last chat turn's TTFT with the
PromptCache).
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
# variant -> (implementation, threads (None: torch's default), weights: None for fp32, "fp16" for
# fp32 prompt + fp16 decode (warmline's default on CPU), else an int8 scheme)
VARIANTS: dict[str, tuple[str, int | None, str | None]] = {
    "prototype": ("hf", None, None),
    "warmline": ("warmline", None, "fp16"),
    "warmline-fp32": ("warmline", None, None),
    "warmline-1thread": ("warmline", 1, "fp16"),
    "warmline-int8": ("warmline", None, "all"),
    "warmline-int8-fp32head": ("warmline", None, "fp32-head"),
    "warmline-int8-no-down-proj": ("warmline", None, "no-down-proj"),
    "warmline-int8-attention": ("warmline", None, "attention"),
    "warmline-int8-1thread": ("warmline", 1, "all"),
}
QUICK_VARIANTS = ("prototype", "warmline", "warmline-fp32", "warmline-1thread", "warmline-int8-no-down-proj")
# What "does not change reply quality" means here (teacher-forced, reply tokens, against fp32).
MAX_LOSS_DELTA = 0.01
MIN_TOP1_AGREEMENT = 0.98
PROTOTYPE_SETTINGS = {
    "do_sample": True,
    "temperature": 0.7,
    "top_k": 50,
    "top_p": 0.92,
    "repetition_penalty": 1.2,
}
# One chat, turn by turn, for the PromptCache's time to first token.
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


def _hf_reply(model, tokenizer, message: str, seed: int, max_new_tokens: int) -> dict:
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
    inputs = tokenizer(prototype_prompt(message), return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=config, streamer=stamps)
    new_tokens = out.shape[1] - inputs["input_ids"].shape[1]
    t = stamps.times
    return {
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "new_tokens": int(new_tokens),
        "ttft_ms": (t[0] - started) * 1e3,
        "decode_tok_s": (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else 0.0,
    }


def _warmline_reply(gen, message: str, seed: int, max_new_tokens: int) -> dict:
    result = gen.generate(
        [{"role": "user", "content": message}], seed=seed, max_new_tokens=max_new_tokens, stop_strings=()
    )
    return {
        "prompt_tokens": result.prompt_tokens,
        "new_tokens": result.new_tokens,
        "ttft_ms": result.ttft_s * 1e3,
        "decode_tok_s": result.tokens_per_s,
    }


def latency_worker(variants: list[str], *, repeats: int, max_new_tokens: int) -> dict:
    """Every variant in one process, interleaved: repetition r runs each variant in turn (starting
    one further along each time), so load from other processes on a shared machine falls on all
    variants alike instead of on whichever ran while it lasted."""
    import copy

    import torch

    from warmline.models import load_model, load_tokenizer
    from warmline.serving.generator import SAMPLE_PROMPTS, Generator

    default_threads = torch.get_num_threads()
    tokenizer = load_tokenizer(BASE_MODEL)
    models = {None: load_model(BASE_MODEL).eval()}
    for scheme in {VARIANTS[v][2] for v in variants} - {None, "fp16"}:
        models[scheme] = quantize_int8(models[None], scheme)
    fp16 = (
        Generator(models[None], tokenizer, decode_dtype=torch.float16)
        if any(VARIANTS[v][2] == "fp16" for v in variants)
        else None
    )
    if fp16 is not None:
        models["fp16"] = fp16.decode_model  # for the weights column: the decode copy

    def make_reply(variant: str):
        impl, _, scheme = VARIANTS[variant]
        model = models[scheme]
        if impl == "hf":
            return lambda message, seed, n: _hf_reply(model, tokenizer, message, seed, n)
        gen = copy.copy(fp16) if scheme == "fp16" else Generator(model, tokenizer)
        gen.engine.stop_token_ids = set()  # run every reply to max_new_tokens (see the module docstring)
        return lambda message, seed, n: _warmline_reply(gen, message, seed, n)

    replies = {v: make_reply(v) for v in variants}
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for variant in variants:  # warm-up: first-call allocations and kernel selection
        torch.set_num_threads(VARIANTS[variant][1] or default_threads)
        replies[variant](SAMPLE_PROMPTS[0], 0, 8)
    for r in range(repeats):
        for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
            torch.set_num_threads(VARIANTS[variant][1] or default_threads)
            long_msg = long_message(tokenizer, VARIANTS[variant][0])
            for kind, message in (("long", long_msg), ("short", SAMPLE_PROMPTS[r % len(SAMPLE_PROMPTS)])):
                wall0, cpu0 = time.perf_counter(), time.process_time()
                measured = replies[variant](message, r, max_new_tokens)
                # CPU seconds per wall second: below the thread count when other processes share the cores.
                cpu_per_wall = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
                runs[variant].append(
                    {
                        "repeat": r,
                        "prompt": kind,
                        **measured,
                        "cpu_per_wall": cpu_per_wall,
                        "threads": torch.get_num_threads(),
                    }
                )
                last = runs[variant][-1]
                logger.info(
                    "%s %s prompt (%d tokens): TTFT %.0f ms, %.1f tok/s over %d tokens (CPU/wall %.2f)",
                    variant,
                    kind,
                    last["prompt_tokens"],
                    last["ttft_ms"],
                    last["decode_tok_s"],
                    last["new_tokens"],
                    cpu_per_wall,
                )
    multiturn_runs = []
    if fp16 is not None:
        torch.set_num_threads(default_threads)
        for r in range(repeats):
            multiturn_runs.append(multiturn_ttft(fp16, seed=r))
    return {
        "variants": {
            v: {
                "impl": VARIANTS[v][0],
                "threads": VARIANTS[v][1] or default_threads,
                "int8": VARIANTS[v][2],
                "weights_gb": _weight_gb(models[VARIANTS[v][2]]),
                "runs": runs[v],
            }
            for v in variants
        },
        "multiturn": multiturn_runs,
    }


def multiturn_ttft(cold, *, seed: int) -> list[dict]:
    """TTFT turn by turn in one chat (warmline's system prompt, MULTITURN_MESSAGES, natural replies
    up to 64 tokens), with the PromptCache (as `warmline chat` and `serve` run) and without: the
    same prompts and weights (`cold`, a Generator without a cache, and a copy of it with an empty
    one), so the only difference is how much of each prompt the model reads."""
    import copy

    from warmline.recipe import DEFAULT_SYSTEM_PROMPT
    from warmline.serving.generator import PromptCache

    cached = copy.copy(cold)
    cached.prompt_cache = PromptCache(4096)
    conv = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}]
    rows = []
    for turn, message in enumerate(MULTITURN_MESSAGES, 1):
        conv.append({"role": "user", "content": message})
        without = cold.generate(conv, seed=seed, max_new_tokens=64)
        with_cache = cached.generate(conv, seed=seed, max_new_tokens=64)
        rows.append(
            {
                "turn": turn,
                "prompt_tokens": with_cache.prompt_tokens,
                "reused_prompt_tokens": with_cache.reused_prompt_tokens,
                "ttft_cold_ms": without.ttft_s * 1e3,
                "ttft_cached_ms": with_cache.ttft_s * 1e3,
            }
        )
        logger.info(
            "multi-turn %d: %d prompt tokens (%d from the cache): TTFT %.0f ms cold, %.0f ms cached",
            turn,
            rows[-1]["prompt_tokens"],
            rows[-1]["reused_prompt_tokens"],
            rows[-1]["ttft_cold_ms"],
            rows[-1]["ttft_cached_ms"],
        )
        conv.append({"role": "assistant", "content": with_cache.text})
    return rows


def _weight_gb(model) -> float:
    """Bytes held by parameters and buffers, plus the int8 weights packed inside quantised Linear layers."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    for module in model.modules():
        if isinstance(module, DynamicQuantizedLinear):
            weight = module.weight()
            total += weight.numel() * weight.element_size()
    return total / 1e9


def quality_worker(*, max_examples_per_stage: int, schemes: list[str]) -> dict:
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
    tokenizer = load_tokenizer(BASE_MODEL)
    examples = []
    for stage in recipe.stages:
        data = prepare_stage(stage, seed=recipe.training.seed, system_prompt=recipe.system_prompt)
        examples += [
            tokenize_conversation(tokenizer, c, stage.max_length)
            for c in data.validation[:max_examples_per_stage]
        ]
    fp32 = load_model(BASE_MODEL).eval()
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


def summarise(latency: dict) -> dict:
    out = {}
    for name, w in latency["variants"].items():
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
            "int8": w["int8"],
            "weights_gb": w["weights_gb"],
            "cpu_per_wall": median([r["cpu_per_wall"] for r in w["runs"]]),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="64 new tokens a reply, 6 variants, small quality set"
    )
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per variant (median)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="tokens per reply (200; 64 with --quick)"
    )
    parser.add_argument("--variants", default=None, help="comma-separated subset of " + ", ".join(VARIANTS))
    parser.add_argument("--json", default=None, help="also write every measurement to this file")
    parser.add_argument("--worker", choices=("latency", "quality"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--max-examples-per-stage", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    max_new_tokens = args.max_new_tokens or (64 if args.quick else 200)
    variants = args.variants.split(",") if args.variants else list(QUICK_VARIANTS if args.quick else VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    schemes = [
        scheme for scheme in ("fp16", *INT8_SCHEMES) if any(VARIANTS[v][2] == scheme for v in variants)
    ]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )

    if args.worker == "latency":
        emit_worker_result(latency_worker(variants, repeats=args.repeats, max_new_tokens=max_new_tokens))
        return 0
    if args.worker == "quality":
        emit_worker_result(
            quality_worker(max_examples_per_stage=args.max_examples_per_stage or 4, schemes=schemes)
        )
        return 0

    info = machine_info()
    script = Path(__file__).resolve()
    logger.info("variants %s, interleaved, %d repeats", ", ".join(variants), args.repeats)
    latency = run_worker(
        script,
        [
            "--worker",
            "latency",
            "--variants",
            ",".join(variants),
            "--repeats",
            str(args.repeats),
            "--max-new-tokens",
            str(max_new_tokens),
        ],
    )
    quality = None
    if schemes:
        logger.info("int8 quality check")
        quality = run_worker(
            script,
            [
                "--worker",
                "quality",
                "--variants",
                ",".join(variants),
                "--max-examples-per-stage",
                "2" if args.quick else "8",
            ],
        )
    summary = summarise(latency)
    multiturn = summarise_multiturn(latency.get("multiturn") or [])
    write_json(
        args.json,
        {
            "machine": info,
            "args": vars(args),
            "latency": latency,
            "quality": quality,
            "summary": summary,
            "multiturn": multiturn,
        },
    )

    print(
        f"\nmachine: {info.get('cpu_model')} | {info.get('logical_cpus_available')} CPUs | torch {info.get('torch')}"
        f" | {max_new_tokens} new tokens a reply, {args.repeats} repeats, variants interleaved in one process"
        f" (peak RSS {latency['peak_rss_gb']:.2f} GB)"
    )
    print(
        "variant                          TTFT ~100-tok prompt ms [range]  TTFT short ms  decode tok/s [range]"
        "  weights GB  CPU/wall"
    )
    for name, v in summary.items():
        print(
            f"  {name:30} {v['ttft_long_ms']:6.0f} [{v['ttft_long_range']:>11}] ({v['long_prompt_tokens']:3d} tok)"
            f" {v['ttft_short_ms']:9.0f} {v['decode_tok_s']:10.1f} [{v['decode_range']:>11}] {v['weights_gb']:9.2f}"
            f" {v['cpu_per_wall']:9.2f}"
        )
    if multiturn:
        print(
            "\none chat turn by turn (warmline, system prompt, replies up to 64 tokens): TTFT ms without | with"
            " the PromptCache"
        )
        for row in multiturn:
            print(
                f"  turn {row['turn']}: {row['prompt_tokens']:5.0f} prompt tokens, {row['reused_prompt_tokens']:5.0f}"
                f" from the cache: {row['ttft_cold_ms']:6.0f} | {row['ttft_cached_ms']:6.0f}"
            )
    if quality:
        print(
            f"\nfp16 decode and int8 vs fp32, teacher-forced on {quality['examples']} validation conversations "
            f"({quality['tokens']} reply tokens; fp32 loss {quality['loss_fp32']:.4f}):"
        )
        for scheme, q in quality["schemes"].items():
            within = q["loss_delta"] <= MAX_LOSS_DELTA and q["top1_agreement"] >= MIN_TOP1_AGREEMENT
            print(
                f"  {scheme:14} loss {q['loss']:.4f} ({q['loss_delta']:+.4f}), top-1 agreement {q['top1_agreement']:.1%}"
                f" -> {'within' if within else 'OUTSIDE'} tolerance (loss +{MAX_LOSS_DELTA}, agreement"
                f" {MIN_TOP1_AGREEMENT:.0%})"
            )
        print(
            f"memory copy bandwidth {quality['copy_gb_s']:.1f} GB/s: reading every Linear weight once per token bounds"
            f" decode at {quality['copy_gb_s'] / quality['fp32_weight_gb_per_token']:.0f} tok/s in fp32,"
            f" {quality['copy_gb_s'] / quality['fp32_weight_gb_per_token'] * 2:.0f} in fp16,"
            f" {quality['copy_gb_s'] / quality['int8_weight_gb_per_token']:.0f} in int8"
        )
    contended = [
        f"{n} (got {v['cpu_per_wall'] / v['threads']:.0%} of its threads' time)"
        for n, v in summary.items()
        if v["cpu_per_wall"] < 0.8 * v["threads"]
    ]
    if contended:
        print("WARNING: other processes took CPU time from " + ", ".join(contended) + "; run again")
    if "prototype" in summary and "warmline" in summary:
        base, proto = summary["warmline"], summary["prototype"]["decode_tok_s"]
        best = max(summary, key=lambda k: summary[k]["decode_tok_s"])
        print(
            f"fastest decode: {best} ({summary[best]['decode_tok_s'] / proto:.2f}x the prototype); "
            f"lowest TTFT: {min(summary, key=lambda k: summary[k]['ttft_long_ms'])}"
        )
        last_turn = {"ttft_last_turn_ms": multiturn[-1]["ttft_cached_ms"]} if multiturn else {}
        print(
            result_line(decode_ratio=base["decode_tok_s"] / proto, ttft_ms=base["ttft_long_ms"], **last_turn)
        )
    else:
        print("prototype or warmline missing: no RESULT line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
