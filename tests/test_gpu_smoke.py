"""benchmarks/gpu_smoke.sh on a machine without a GPU: it parses, checks the environment, says
"no GPU" in one line and trains nothing (the GPU checks themselves need a GPU to run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_smoke.sh"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp_path), "WARMLINE_BIN": str(Path(sys.executable).parent)}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_script_parses():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(_has_cuda(), reason="this machine has a GPU: run the script itself")
@pytest.mark.parametrize(("args", "exit_code"), [(("--check",), 0), ((), 2)])
def test_without_a_gpu_it_says_so_and_trains_nothing(tmp_path, args, exit_code):
    result = _run(tmp_path, *args)
    assert result.returncode == exit_code, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("no GPU:") for line in lines), result.stdout
    assert lines[-1].startswith("RESULT gpu_smoke: ") and " 0 fail," in lines[-1] and "(no GPU)" in lines[-1]
    assert any(line.startswith("SKIP torch.cuda") for line in lines)
    # bitsandbytes is reported either way (PASS with its version, or SKIP naming the install)
    assert any(line.split()[:2] in (["PASS", "bitsandbytes"], ["SKIP", "bitsandbytes"]) for line in lines)
    # no training step ran, and its scratch folder is gone
    assert not any(name in result.stdout for name in ("train-bf16", "lora-bf16", "ddp-2gpu"))
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_option_is_refused(tmp_path):
    result = _run(tmp_path, "--fast")
    assert result.returncode == 2 and "usage: bash benchmarks/gpu_smoke.sh [--check]" in result.stderr
