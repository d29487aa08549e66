"""What the machine can do: precision choice and thread settings."""

from __future__ import annotations

import logging
import os
from functools import lru_cache

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512 bf16 units make bf16 autocast about 2x faster than fp32 on CPU."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def resolve_precision(precision: str) -> str:
    """`auto` -> bf16 where the hardware has it, fp16 on older GPUs, fp32 otherwise."""
    import torch

    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads slow down GEMM-bound work)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001
        n = None
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n or available, available))


ONEDNN_CACHE_CAPACITY = 8
"""oneDNN primitives kept per process while training on CPU (its default is 1024). Every
conversation has its own length, so a bf16 CPU run creates new matmul primitives at almost every
step and the default cache only grows: on the offline recipe `make run`'s peak RSS went from 4.15
to 2.90 GiB with 8 (benchmarks/RESULTS.md, "On a CPU with bf16 units")."""


def cap_onednn_cache(capacity: int = ONEDNN_CACHE_CAPACITY) -> None:
    """Cap oneDNN's primitive cache for this process unless the user set
    ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` (or the older ``DNNL_`` name) already. oneDNN reads the
    variable when it creates its first primitive, not when torch is imported: call this before
    the first CPU matmul."""
    if "ONEDNN_PRIMITIVE_CACHE_CAPACITY" in os.environ or "DNNL_PRIMITIVE_CACHE_CAPACITY" in os.environ:
        return
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(capacity)


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads (physical cores by default)."""
    import torch

    n = num_threads or physical_cores()
    torch.set_num_threads(n)
    return n


def device_memory() -> tuple[str, int]:
    """("cuda", the first GPU's memory) or ("cpu", the machine's RAM), in bytes."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_properties(0).total_memory
    import psutil

    return "cpu", psutil.virtual_memory().total
