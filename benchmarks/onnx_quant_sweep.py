"""Which onnxruntime-genai builder options keep a quantised model within the quality gate, and how
fast each decodes: the exploration behind QUANT_OPTIONS (serving/onnx_build.py).

    python benchmarks/onnx_quant_sweep.py --model runs/offline/final
    python benchmarks/onnx_quant_sweep.py --model runs/offline/final --candidates int8-b32,int4-b32 --max-per-stage 4

Each candidate is built with the builder's own CLI (`python -m onnxruntime_genai.models.builder`,
its --precision and --extra_options as CANDIDATES says) into --out, judged by the gate in
serving/onnx_quality.py (teacher-forced on the validation conversations, reply tokens only,
against the fp32 torch model: loss delta <= +0.02 and top-1 agreement >= 97%), then timed:
greedy decode through onnxruntime-genai, a 65-token prompt, --new-tokens tokens forced (no EOS),
median of --repeats after one warm-up, each candidate in its own process (CPU/wall shows whether
it had its threads' cores to itself). The last line is

    RESULT best=... best_decode_tok_s=... best_loss_delta=... best_top1=...

(the fastest candidate that passes the gate).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit_worker_result, machine_info, median, result_line, run_worker, write_json  # noqa: E402

logger = logging.getLogger("onnx_quant_sweep")

LM_HEAD = "/lm_head/MatMul"
# The MLP output projections of a 30-block model (SmolLM2-135M): they read the SwiGLU product,
# where the activation outliers are, so int8 activations hurt them most.
DOWN_PROJ = ",".join(f"/model/layers.{i}/mlp/down_proj/MatMul" for i in range(30))
_BLOCK_MATMULS = ("attn/qkv_proj", "attn/o_proj", "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj")
EDGE_BLOCKS = ",".join(f"/model/layers.{i}/{m}/MatMul" for i in (0, 1, 28, 29) for m in _BLOCK_MATMULS)
NOT_GATE_UP = ",".join(
    [LM_HEAD]
    + [
        f"/model/layers.{i}/{m}/MatMul"
        for i in range(30)
        for m in ("attn/qkv_proj", "attn/o_proj", "mlp/down_proj")
    ]
)
NOT_MLP = ",".join(
    [LM_HEAD] + [f"/model/layers.{i}/{m}/MatMul" for i in range(30) for m in ("attn/qkv_proj", "attn/o_proj")]
)
# name -> (--precision, --extra_options). Weight-only quantisation (MatMulNBits); accuracy_level 4
# computes with int8 activations, 1 in fp32 (the CPU default for int4/int8 is 4). SmolLM2 ties its
# embeddings to the output head, so int4 also stores the embedding table in int4 unless the head is
# left out of quantisation (it is then one fp32 matrix for both).
CANDIDATES: dict[str, tuple[str, dict[str, str]]] = {
    "int8-b32": ("int8", {"block_size": "32", "accuracy_level": "4"}),
    "int8-b32-fp32head": ("int8", {"block_size": "32", "accuracy_level": "4", "nodes_to_exclude": LM_HEAD}),
    "int8-b16": ("int8", {"block_size": "16", "accuracy_level": "4"}),
    "int8-b16-fp32head": ("int8", {"block_size": "16", "accuracy_level": "4", "nodes_to_exclude": LM_HEAD}),
    "int8-b32-fp32down": ("int8", {"block_size": "32", "accuracy_level": "4", "nodes_to_exclude": DOWN_PROJ}),
    "int8-b16-fp32head-down": (
        "int8",
        {"block_size": "16", "accuracy_level": "4", "nodes_to_exclude": f"{LM_HEAD},{DOWN_PROJ}"},
    ),
    "int4-b32-acc1": ("int4", {"block_size": "32", "accuracy_level": "1"}),
    "int4-b32": ("int4", {"block_size": "32", "accuracy_level": "4"}),
    "int4-b32-fp32head": ("int4", {"block_size": "32", "accuracy_level": "4", "nodes_to_exclude": LM_HEAD}),
    "int4-b32-int8head": (
        "int4",
        {"block_size": "32", "accuracy_level": "4", "matmul_mixed_precision": "last_matmul:int8"},
    ),
    "int4-b16": ("int4", {"block_size": "16", "accuracy_level": "4"}),
    "int8-b128": ("int8", {"block_size": "128", "accuracy_level": "4"}),
    "int4-b32-mixed-int8": (
        "int4",
        {
            "block_size": "32",
            "accuracy_level": "4",
            "matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8",
        },
    ),
    # session 11: fewer MatMuls in int8: the first and last two blocks whole in fp32 besides the
    # head and the down projections; or only the MLP's gate and up projections in int8
    "int8-b16-fp32head-down-edges": (
        "int8",
        {
            "block_size": "16",
            "accuracy_level": "4",
            "nodes_to_exclude": f"{LM_HEAD},{DOWN_PROJ},{EDGE_BLOCKS}",
        },
    ),
    "int8-b32-gate-up-only": (
        "int8",
        {"block_size": "32", "accuracy_level": "4", "nodes_to_exclude": NOT_GATE_UP},
    ),
    "int8-b32-mlp-only": ("int8", {"block_size": "32", "accuracy_level": "4", "nodes_to_exclude": NOT_MLP}),
    "int8-b32-fp32head-down": (
        "int8",
        {"block_size": "32", "accuracy_level": "4", "nodes_to_exclude": f"{LM_HEAD},{DOWN_PROJ}"},
    ),
    "fp32": ("fp32", {}),
    # Not in the default list: decoded at about 1 tok/s in the issue-15 trial (no fast int8 kernel
    # with fp32 activations on AVX2).
    "int8-b32-acc1": ("int8", {"block_size": "32", "accuracy_level": "1"}),
}
DEFAULT_CANDIDATES = tuple(name for name in CANDIDATES if name != "int8-b32-acc1")
SPEED_PROMPT_TOKENS = 65


def build(model: Path, out: Path, name: str) -> Path:
    """The candidate's build folder, built with the builder's CLI unless it is there already."""
    target = out / name
    if (target / "genai_config.json").is_file():
        return target
    precision, extra = CANDIDATES[name]
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model), "-o", str(target)]
    command += ["-p", precision, "-e", "cpu", "-c", str(out / ".builder-cache")]
    if extra:
        command += ["--extra_options", *(f"{k}={v}" for k, v in extra.items())]
    logger.info("building %s: %s", name, " ".join(command[3:]))
    target.mkdir(parents=True, exist_ok=True)
    with (target / "build.log").open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"building {name} failed: see {target / 'build.log'}")
    return target


def cached_reference(model: Path, examples, out: Path):
    """The fp32 torch reference scores, kept in --out for these conversations (reruns skip it)."""
    import hashlib

    import numpy as np

    from warmline.serving.onnx_quality import TokenScores, torch_scores

    digest = hashlib.sha256(str(model).encode())
    for f in sorted(model.glob("*.safetensors")):
        digest.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    for ex in examples:
        digest.update(np.asarray(ex.input_ids + ex.labels, dtype=np.int64).tobytes())
    path = out / f"reference-{digest.hexdigest()[:16]}.npz"
    if path.is_file():
        saved = np.load(path)
        return TokenScores(saved["nll"], saved["top1"])
    reference = torch_scores(model, examples)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(path, nll=reference.nll, top1=reference.top1)
    return reference


def _folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.glob("model.onnx*")) / 1e6


def speed_worker(onnx_dir: str, *, new_tokens: int, repeats: int) -> dict:
    """Greedy decode tok/s and time to first token through onnxruntime-genai, in this process."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(onnx_dir)
    prompt = np.arange(1000, 1000 + SPEED_PROMPT_TOKENS, dtype=np.int32)  # ordinary vocabulary ids

    def once(n: int) -> dict:
        params = og.GeneratorParams(model)
        # min_length = max_length: no EOS ends a reply early, every candidate decodes n tokens.
        params.set_search_options(do_sample=False, max_length=len(prompt) + n, min_length=len(prompt) + n)
        generator = og.Generator(model, params)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        generator.append_tokens(prompt)
        stamps = []
        while not generator.is_done():
            generator.generate_next_token()
            stamps.append(time.perf_counter())
        cpu_per_wall = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        return {
            "ttft_ms": (stamps[0] - wall0) * 1e3,
            "decode_tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
            "cpu_per_wall": cpu_per_wall,
        }

    once(8)  # warm-up: kernel selection, first allocations
    runs = [once(new_tokens) for _ in range(repeats)]
    return {
        "runs": runs,
        "decode_tok_s": median([r["decode_tok_s"] for r in runs]),
        "ttft_ms": median([r["ttft_ms"] for r in runs]),
        "cpu_per_wall": median([r["cpu_per_wall"] for r in runs]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="runs/offline/final", help="Hugging Face model folder")
    parser.add_argument("--out", default="/tmp/warmline-onnx-sweep", help="where the candidate builds go")
    parser.add_argument(
        "--candidates", default=None, help="comma-separated subset of " + ", ".join(CANDIDATES)
    )
    parser.add_argument(
        "--max-per-stage", type=int, default=None, help="validation conversations per stage (all)"
    )
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per timed reply")
    parser.add_argument("--repeats", type=int, default=3, help="timed replies per candidate (median)")
    parser.add_argument("--json", default=None, help="also write every measurement to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.worker:
        emit_worker_result(speed_worker(args.worker, new_tokens=args.new_tokens, repeats=args.repeats))
        return 0

    from warmline.serving.onnx_quality import compare_scores, onnx_scores, validation_examples

    names = args.candidates.split(",") if args.candidates else list(DEFAULT_CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidate(s) {unknown}; choose from {', '.join(CANDIDATES)}")
    model, out = (REPO / args.model).resolve(), Path(args.out)
    info = machine_info()
    examples, source = validation_examples(model, args.max_per_stage)
    logger.info("fp32 torch reference on %d conversations (%s)", len(examples), source)
    reference = cached_reference(model, examples, out)
    rows = {}
    for name in names:
        try:
            folder = build(model, out, name)
        except RuntimeError as err:  # an option the builder rejects: say so and go on
            logger.warning("%s", err)
            continue
        verdict = compare_scores(
            reference, onnx_scores(folder, examples), quant=name, conversations=len(examples), data=source
        )
        speed = run_worker(
            Path(__file__).resolve(),
            ["--worker", str(folder), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)],
        )
        rows[name] = {
            "precision": CANDIDATES[name][0],
            "extra_options": CANDIDATES[name][1],
            "model_mb": _folder_mb(folder),
            **{k: getattr(verdict, k) for k in ("loss", "loss_delta", "top1_agreement", "ok")},
            **{k: speed[k] for k in ("decode_tok_s", "ttft_ms", "cpu_per_wall", "peak_rss_gb")},
        }
        logger.info("%s | %.1f tok/s", verdict.summary(), speed["decode_tok_s"])
    write_json(
        args.json,
        {
            "machine": info,
            "args": vars(args),
            "data": source,
            "reply_tokens": int(reference.nll.size),
            "rows": rows,
        },
    )

    print(
        f"\nmachine: {info.get('cpu_model')} | {info.get('logical_cpus_available')} CPUs | load"
        f" {info.get('load_average_1m_at_start')} at start | {source}, {len(examples)} conversations,"
        f" {reference.nll.size} reply tokens (fp32 torch loss {reference.nll.mean():.4f})"
    )
    print(
        "| candidate | builder options | MB | loss delta | top-1 | gate | decode tok/s | TTFT ms | CPU/wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        options = " ".join([f"-p {r['precision']}", *(f"{k}={v}" for k, v in r["extra_options"].items())])
        options = options.replace(DOWN_PROJ, "<the 30 down_proj MatMuls>")
        print(
            f"| {name} | `{options}` | {r['model_mb']:.0f} | {r['loss_delta']:+.4f} | {r['top1_agreement']:.1%} |"
            f" {'pass' if r['ok'] else 'FAIL'} | {r['decode_tok_s']:.1f} | {r['ttft_ms']:.0f} | {r['cpu_per_wall']:.2f} |"
        )
    passing = {n: r for n, r in rows.items() if r["ok"]}
    if passing:
        best = max(passing, key=lambda n: passing[n]["decode_tok_s"])
        r = passing[best]
        print(
            result_line(
                best=best,
                best_decode_tok_s=r["decode_tok_s"],
                best_loss_delta=r["loss_delta"],
                best_top1=r["top1_agreement"],
            )
        )
    else:
        print("no candidate passes the gate: no RESULT line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
