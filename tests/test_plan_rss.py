"""`--plan` against the real thing: the offline recipe's estimated peak memory against the peak RSS
of `make run` (`warmline train recipes/offline.yaml --samples 3`), run as its own process tree.

Slow (the whole offline run, about 10 minutes on 2 CPU cores): `make test-all` runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.30  # the bound on |plan - measured| / measured

# A wrapper process whose only child is the run: RUSAGE_CHILDREN's ru_maxrss is then that run's
# peak (the largest process of its tree), not some earlier test's child.
_PEAK_OF_CHILD = (
    "import resource, subprocess, sys, json; "
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
    "print(json.dumps({'rc': rc.returncode, 'stderr': rc.stderr.decode(errors='replace')[-2000:], "
    "'peak': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))"
)


@pytest.mark.slow
def test_plan_agrees_with_the_peak_rss_of_make_run(tmp_path):
    from warmline.recipe import load_recipe
    from warmline.training.plan import plan_recipe

    recipe_path = REPO / "recipes" / "offline.yaml"
    override = f"output_dir={tmp_path}"
    plan = plan_recipe(load_recipe(recipe_path, [override]), str(recipe_path))
    predicted = max(stage.peak_bytes for stage in plan["stages"])

    command = [
        sys.executable,
        "-m",
        "warmline",
        "train",
        str(recipe_path),
        "--set",
        override,
        "--samples",
        "3",
    ]
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_CHILD, *command],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=REPO,
    )
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    if measured["rc"] != 0:  # not the expected failure below: a run that breaks must show
        raise RuntimeError(f"make run's equivalent failed ({measured['rc']}): {measured['stderr']}")
    error = abs(predicted - measured["peak"]) / measured["peak"]
    assert error <= TOLERANCE, (
        f"plan {predicted / 2**30:.2f} GiB vs make run's peak RSS {measured['peak'] / 2**30:.2f} GiB "
        f"({error:.0%} apart, precision {plan['precision']})"
    )
