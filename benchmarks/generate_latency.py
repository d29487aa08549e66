"""Generation latency: the prototype's `model.generate` against warmline's Generator, and what helps.

    python benchmarks/generate_latency.py --quick          # about 3 minutes on 2 cores
    python benchmarks/generate_latency.py --repeats 5

Same model (the packaged SmolLM2-135M-Instruct, fp32 on CPU as `Generator.from_pretrained` loads
it), same user messages, same machine, one run. Variants, each in its own process:

  prototype         Hugging Face `model.generate` with the prototype's settings: do_sample,
                    temperature 0.7, top_k 50, top_p 0.92, repetition_penalty 1.2,
                    pad_token_id = EOS, on the "Human: ...\\nAssistant:" prompt
  warmline          warmline's Generator (KV-cached streaming loop, the model's chat template),
                    the same sampling settings, torch's default threads (one per core)
  warmline-1thread  the same on 1 thread
  warmline-int8     the same after torch.ao.quantization.quantize_dynamic (int8 Linear layers)

Per repetition each variant answers a ~100-token prompt and a short one (SAMPLE_PROMPTS, in
turn), after one untimed warm-up reply. Time to first token (TTFT) runs from the call (prompt
tokenisation included) to the first sampled token; decode tokens/s counts the tokens after the
first over the time after it. Replies run to max_new_tokens (200; 64 with --quick): EOS is
suppressed (`min_new_tokens` for `generate`; no stop tokens or stop strings for the Generator),
so every variant decodes the same number of tokens. Figures are medians over repetitions.

A quality check runs the fp32 and int8 models teacher-forced on the offline recipe's validation
conversations: token-weighted loss of each, and how often their top-1 predictions agree on the
reply tokens. The last line is

    RESULT decode_ratio=... ttft_ms=...

(warmline's decode tokens/s over the prototype's, and warmline's median TTFT for the
~100-token prompt, both as shipped: fp32, default threads).
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
# variant -> (implementation, threads (None: torch's default), int8)
VARIANTS: dict[str, tuple[str, int | None, bool]] = {
    "prototype": ("hf", None, False),
    "warmline": ("warmline", None, False),
    "warmline-1thread": ("warmline", 1, False),
    "warmline-int8": ("warmline", None, True),
    "warmline-int8-1thread": ("warmline", 1, True),
}
QUICK_VARIANTS = ("prototype", "warmline", "warmline-1thread", "warmline-int8")
PROTOTYPE_SETTINGS = {
    "do_sample": True,
    "temperature": 0.7,
    "top_k": 50,
    "top_p": 0.92,
    "repetition_penalty": 1.2,
}
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


def long_message(tokenizer, target_prompt_tokens: int = 100) -> str:
    """The longest prefix (in words) of LONG_MESSAGE whose chat prompt has at most the target tokens."""
    from warmline.tokenize import encode_prompt

    words = LONG_MESSAGE.split()
    best = words[0]
    for n in range(1, len(words) + 1):
        text = " ".join(words[:n])
        if len(encode_prompt(tokenizer, [{"role": "user", "content": text}])) > target_prompt_tokens:
            break
        best = text
    return best


def prototype_prompt(message: str) -> str:
    """The prototype's prompt format."""
    return f"Human: {message}\nAssistant:"


def quantize_int8(model):
    """int8 weights for every nn.Linear (the tied output head included), activations quantised per call."""
    import torch

    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


# ---------------------------------------------------------------------------------------------
# Workers


def _hf_reply(model, tokenizer, message: str, seed: int, max_new_tokens: int) -> dict:
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

    stamps = Stamps()
    torch.manual_seed(seed)
    started = time.perf_counter()
    inputs = tokenizer(prototype_prompt(message), return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, **PROTOTYPE_SETTINGS, max_new_tokens=max_new_tokens,
                             min_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id, streamer=stamps)  # fmt: skip
    new_tokens = out.shape[1] - inputs["input_ids"].shape[1]
    t = stamps.times
    return {"prompt_tokens": int(inputs["input_ids"].shape[1]), "new_tokens": int(new_tokens),
            "ttft_ms": (t[0] - started) * 1e3, "decode_tok_s": (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else 0.0}  # fmt: skip


def _warmline_reply(gen, message: str, seed: int, max_new_tokens: int) -> dict:
    result = gen.generate([{"role": "user", "content": message}], seed=seed, max_new_tokens=max_new_tokens,
                          stop_strings=())  # fmt: skip
    return {"prompt_tokens": result.prompt_tokens, "new_tokens": result.new_tokens,
            "ttft_ms": result.ttft_s * 1e3, "decode_tok_s": result.tokens_per_s}  # fmt: skip


def latency_worker(variant: str, *, repeats: int, max_new_tokens: int) -> dict:
    import torch

    from warmline.generate import SAMPLE_PROMPTS, Generator
    from warmline.models import load_model, load_tokenizer

    impl, threads, int8 = VARIANTS[variant]
    if threads:
        torch.set_num_threads(threads)
    model = load_model(BASE_MODEL).eval()
    tokenizer = load_tokenizer(BASE_MODEL)
    if int8:
        model = quantize_int8(model)
    long_msg = long_message(tokenizer)
    if impl == "hf":

        def reply(message, seed, n):
            return _hf_reply(model, tokenizer, message, seed, n)

    else:
        gen = Generator(model, tokenizer)
        gen.stop_token_ids = set()  # run every reply to max_new_tokens (see the module docstring)

        def reply(message, seed, n):
            return _warmline_reply(gen, message, seed, n)

    reply(SAMPLE_PROMPTS[0], 0, 8)  # warm-up: first-call allocations and kernel selection
    runs = []
    for r in range(repeats):
        for kind, message in (("long", long_msg), ("short", SAMPLE_PROMPTS[r % len(SAMPLE_PROMPTS)])):
            runs.append({"repeat": r, "prompt": kind, **reply(message, r, max_new_tokens)})
            last = runs[-1]
            logger.info("%s %s prompt (%d tokens): TTFT %.0f ms, %.1f tok/s over %d tokens", variant, kind,
                        last["prompt_tokens"], last["ttft_ms"], last["decode_tok_s"], last["new_tokens"])  # fmt: skip
    return {"variant": variant, "impl": impl, "threads": torch.get_num_threads(), "int8": int8, "runs": runs}


def quality_worker(*, max_examples_per_stage: int) -> dict:
    """fp32 vs int8, teacher-forced on validation conversations: loss and top-1 agreement on replies."""
    import os

    import torch

    from warmline.data import prepare_stage
    from warmline.models import load_model, load_tokenizer
    from warmline.recipe import load_recipe
    from warmline.tokenize import IGNORE_INDEX, tokenize_conversation

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
    int8 = quantize_int8(load_model(BASE_MODEL).eval())
    totals = {"tokens": 0, "loss_fp32": 0.0, "loss_int8": 0.0, "agree": 0}
    with torch.inference_mode():
        for ex in examples:
            ids = torch.tensor([ex.input_ids])
            targets = torch.tensor(ex.labels[1:])  # position t predicts token t+1
            keep = targets != IGNORE_INDEX
            a = fp32(input_ids=ids).logits[0, :-1][keep]  # (labelled, vocab)
            b = int8(input_ids=ids).logits[0, :-1][keep]
            totals["tokens"] += int(keep.sum())
            totals["loss_fp32"] += torch.nn.functional.cross_entropy(a, targets[keep], reduction="sum").item()
            totals["loss_int8"] += torch.nn.functional.cross_entropy(b, targets[keep], reduction="sum").item()
            totals["agree"] += int((a.argmax(-1) == b.argmax(-1)).sum())
    n = max(totals["tokens"], 1)

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
        "examples": len(examples), "tokens": totals["tokens"], "loss_fp32": totals["loss_fp32"] / n,
        "loss_int8": totals["loss_int8"] / n, "top1_agreement": totals["agree"] / n, "copy_gb_s": copy_gb_s,
        "linear_params": linear_params, "fp32_weight_gb_per_token": linear_params * 4 / 1e9,
        "int8_weight_gb_per_token": linear_params / 1e9,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The parent


def summarise(workers: dict[str, dict]) -> dict:
    out = {}
    for name, w in workers.items():
        long_runs = [r for r in w["runs"] if r["prompt"] == "long"]
        short_runs = [r for r in w["runs"] if r["prompt"] == "short"]
        decode = [r["decode_tok_s"] for r in w["runs"]]
        out[name] = {
            "ttft_long_ms": median([r["ttft_ms"] for r in long_runs]),
            "ttft_long_range": spread([r["ttft_ms"] for r in long_runs]),
            "long_prompt_tokens": long_runs[0]["prompt_tokens"] if long_runs else 0,
            "ttft_short_ms": median([r["ttft_ms"] for r in short_runs]),
            "decode_tok_s": median(decode), "decode_range": spread(decode),
            "new_tokens": median([r["new_tokens"] for r in w["runs"]]), "threads": w["threads"],
            "int8": w["int8"], "peak_rss_gb": w["peak_rss_gb"],
        }  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="64 new tokens a reply, 4 variants, small quality set"
    )
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per variant (median)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="tokens per reply (200; 64 with --quick)"
    )
    parser.add_argument("--variants", default=None, help="comma-separated subset of " + ", ".join(VARIANTS))
    parser.add_argument("--json", default=None, help="also write every measurement to this file")
    parser.add_argument("--worker", choices=("latency", "quality"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=tuple(VARIANTS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--max-examples-per-stage", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    max_new_tokens = args.max_new_tokens or (64 if args.quick else 200)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )

    if args.worker == "latency":
        emit_worker_result(latency_worker(args.variant, repeats=args.repeats, max_new_tokens=max_new_tokens))
        return 0
    if args.worker == "quality":
        emit_worker_result(quality_worker(max_examples_per_stage=args.max_examples_per_stage or 4))
        return 0

    info = machine_info()
    script = Path(__file__).resolve()
    variants = args.variants.split(",") if args.variants else list(QUICK_VARIANTS if args.quick else VARIANTS)
    workers = {}
    for variant in variants:
        logger.info("variant %s", variant)
        threads = VARIANTS[variant][1]
        workers[variant] = run_worker(script, ["--worker", "latency", "--variant", variant, "--repeats",
                                               str(args.repeats), "--max-new-tokens", str(max_new_tokens)],
                                      threads=threads)  # fmt: skip
    quality = None
    if any(VARIANTS[v][2] for v in variants):
        logger.info("int8 quality check")
        quality = run_worker(
            script, ["--worker", "quality", "--max-examples-per-stage", "2" if args.quick else "8"]
        )
    summary = summarise(workers)
    write_json(args.json, {"machine": info, "args": vars(args), "workers": workers, "quality": quality,
                           "summary": summary})  # fmt: skip

    print(f"\nmachine: {info.get('cpu_model')} | {info.get('logical_cpus_available')} CPUs | "
          f"torch {info.get('torch')} | {max_new_tokens} new tokens a reply, {args.repeats} repeats")  # fmt: skip
    print(
        "variant                TTFT ~100-tok prompt ms [range]   TTFT short ms   decode tok/s [range]   RSS GB"
    )
    for name, s in summary.items():
        print(f"  {name:21} {s['ttft_long_ms']:8.0f} [{s['ttft_long_range']:>11}] ({s['long_prompt_tokens']:3d} tok)"
              f" {s['ttft_short_ms']:10.0f} {s['decode_tok_s']:12.1f} [{s['decode_range']:>11}] {s['peak_rss_gb']:8.2f}")  # fmt: skip
    if quality:
        print(f"\nint8 vs fp32 on {quality['examples']} validation conversations ({quality['tokens']} reply tokens): "
              f"loss {quality['loss_fp32']:.4f} -> {quality['loss_int8']:.4f} "
              f"({quality['loss_int8'] - quality['loss_fp32']:+.4f}), top-1 agreement {quality['top1_agreement']:.1%}")  # fmt: skip
        print(f"memory copy bandwidth {quality['copy_gb_s']:.1f} GB/s: decode bound by weight reads "
              f"{quality['copy_gb_s'] / quality['fp32_weight_gb_per_token']:.0f} tok/s fp32, "
              f"{quality['copy_gb_s'] / quality['int8_weight_gb_per_token']:.0f} tok/s int8")  # fmt: skip
    if "prototype" in summary and "warmline" in summary:
        base = summary["warmline"]
        best = max(summary, key=lambda k: summary[k]["decode_tok_s"])
        print(f"fastest decode: {best} ({summary[best]['decode_tok_s'] / summary['prototype']['decode_tok_s']:.2f}x "
              f"the prototype); lowest TTFT: {min(summary, key=lambda k: summary[k]['ttft_long_ms'])}")  # fmt: skip
        print(result_line(decode_ratio=base["decode_tok_s"] / summary["prototype"]["decode_tok_s"],
                          ttft_ms=base["ttft_long_ms"]))  # fmt: skip
    else:
        print("prototype or warmline missing: no RESULT line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
