"""Freed heap memory goes back to the OS during CPU training (`warmline.training.callbacks`)."""

from __future__ import annotations

import sys

import psutil
import pytest

from warmline.training import callbacks
from warmline.training.callbacks import MemoryTrim, release_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_release_memory_returns_freed_heap_pages():
    process = psutil.Process()
    # 64 KiB blocks stay under glibc's mmap threshold (128 KiB at least), so they live on the
    # heap; keeping every tenth pins the heap's extent and frees the rest in the middle, which
    # glibc keeps (a plain gc.collect() returns none of it).
    blocks = [bytearray(64 << 10) for _ in range(4000)]
    kept = blocks[::10]
    del blocks
    held = process.memory_info().rss
    assert release_memory()
    released = held - process.memory_info().rss
    assert released > 64 * (1 << 20), f"only {released / 2**20:.0f} MiB of ~225 MiB returned"
    assert len(kept) == 400


def test_memory_trim_runs_every_n_steps_and_at_the_end(monkeypatch):
    calls = []
    monkeypatch.setattr(callbacks, "release_memory", lambda: calls.append(1) or True)

    class State:
        global_step = 0

    trim, state = MemoryTrim(every=4), State()
    for step in range(1, 10):
        state.global_step = step
        trim.on_step_end(None, state, None)
    assert len(calls) == 2  # steps 4 and 8
    trim.on_train_end(None, state, None)
    assert len(calls) == 3
