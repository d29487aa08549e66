"""Helpers shared by the benchmarks: the machine, worker processes, medians, RESULT lines.

Measurements run in worker processes (the benchmark script again, with `--worker ...`) that
report one JSON line back: training runs one configuration per process, one after another, so
each gets its own thread setting and its own peak resident memory (ru_maxrss); generation runs
its variants interleaved in one process (see generate_latency.py).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKER_PREFIX = "WORKER_RESULT "
# The CPU flags that decide which precisions and kernels are fast.
INTERESTING_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
)


def machine_info() -> dict:
    """CPU model, cores, the flags that matter, memory, and the library versions."""
    info: dict = {"python": platform.python_version(), "platform": platform.platform()}
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info["cpu_model"] = model
    info["cpu_flags"] = [f for f in INTERESTING_FLAGS if f in flags]
    info["logical_cpus_available"] = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gb"] = round(psutil.virtual_memory().total / 1e9, 1)
        info["load_average_1m_at_start"] = round(os.getloadavg()[0], 2)
    except Exception:  # noqa: BLE001 - informative only
        pass
    try:
        import torch
        import transformers
        import trl

        info["torch"] = torch.__version__
        info["transformers"] = transformers.__version__
        info["trl"] = trl.__version__
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        pass
    return info


def peak_rss_gb() -> float:
    """This process's peak resident memory in GB (10^9 bytes; Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def emit_worker_result(result: dict) -> None:
    """A worker's last word: one JSON line on stdout that the parent picks up."""
    result = {**result, "peak_rss_gb": round(peak_rss_gb(), 3)}
    print(WORKER_PREFIX + json.dumps(result), flush=True)


def run_worker(script: Path, args: list[str], *, threads: int | None = None) -> dict:
    """Run `script --worker ...` in a fresh process; its log streams to stderr, its result comes back."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    results = [
        line[len(WORKER_PREFIX) :] for line in proc.stdout.splitlines() if line.startswith(WORKER_PREFIX)
    ]
    if proc.returncode != 0 or not results:
        tail = "\n".join(proc.stdout.splitlines()[-20:])
        raise RuntimeError(f"worker {args} failed (exit {proc.returncode}); stdout tail:\n{tail}")
    result = json.loads(results[-1])
    result["worker_wall_s"] = round(time.perf_counter() - started, 1)
    return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    """`min-max` of the repetitions, to show next to a median."""
    return f"{min(values):.3g}-{max(values):.3g}" if values else "n/a"


def result_line(**values: float | str) -> str:
    """`RESULT key=value ...`: numbers to 3 significant figures, never in exponent notation."""
    parts = []
    for key, value in values.items():
        if isinstance(value, float):
            value = f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
        parts.append(f"{key}={value}")
    return "RESULT " + " ".join(parts)


def write_json(path: str | Path | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))
