"""Multi-process training under `accelerate launch --multi_gpu` (torchrun; CPU, gloo): the same optimizer steps, the same
examples per step and the same validation losses as one process with the same global batch, and
files written once, by the main process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from warmline.recipe import RecipeError
from warmline.training.train import accumulation_steps

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
# Two processes reduce gradients in another summation order than one: tiny float differences
# that the Adam steps carry forward. Measured here: at most 3e-7 on the validation losses, and the
# logged step losses (4 decimals) equal; the bound leaves room for other CPUs.
LOSS_TOLERANCE = 1e-4


def _write_stage_data(folder: Path, name: str, n: int, offset: int) -> Path:
    rows = [
        {
            "text": f"Human: I feel tired on day {i + offset}, again and again.\n"
            f"Assistant: Feeling tired on day {i + offset} is hard. What helps you rest?"
        }
        for i in range(n)
    ]
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _recipe(tmp_path: Path, base: Path, run_name: str, **training) -> Path:
    """Two stages; 18 rows each -> 16 training examples (+4 replayed in stage 2): every
    optimizer step holds exactly the global batch of 4, in one process or two."""
    a = _write_stage_data(tmp_path, "alpha", 18, 0)
    b = _write_stage_data(tmp_path, "beta", 18, 100)
    opts = {
        "micro_batch_size": 2,
        "global_batch_size": 4,
        "save_steps": 3,
        "logging_steps": 1,
        "precision": "fp32",
        "warmup_ratio": 0.0,
        "num_threads": 1,
        **training,
    }
    lines = [
        f"name: {run_name}",
        f"base_model: {base}",
        f"output_dir: {tmp_path / 'runs'}",
        "system_prompt: null",
        "stages:",
        f"  - {{name: alpha, source: {a}, epochs: 2, learning_rate: 3.0e-3, max_length: 64}}",
        f"  - {{name: beta, source: {b}, epochs: 1, learning_rate: 3.0e-3, max_length: 64, replay_fraction: 0.25}}",
        "training:",
        *[f"  {k}: {v}" for k, v in opts.items()],
    ]
    path = tmp_path / f"{run_name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _launch_cmd(recipe: Path, *train_args: str, launch_args: tuple[str, ...] = ()) -> list[str]:
    """`accelerate launch --multi_gpu --num_processes 2 -m warmline train RECIPE`, the documented
    command: torchrun underneath, and a gloo group here, as there is no CUDA."""
    return [
        str(ACCELERATE),
        "launch",
        "--num_processes",
        "2",
        "--multi_gpu",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *launch_args,
        "-m",
        "warmline",
        "train",
        str(recipe),
        *train_args,
    ]


def _launch(recipe: Path, *train_args: str, launch_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        _launch_cmd(recipe, *train_args, launch_args=launch_args),
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _single(recipe: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "warmline", "train", str(recipe)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _logs(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("event") == "log" and "loss" in r]


def test_accumulation_gives_the_global_batch_whatever_the_process_count():
    assert accumulation_steps(32, 4, 1, "r.yaml") == 8
    assert accumulation_steps(32, 4, 2, "r.yaml") == 4
    assert accumulation_steps(32, 4, 8, "r.yaml") == 1
    with pytest.raises(
        RecipeError, match=r"not a multiple of micro_batch_size 4 x 3 processes.*\[1, 2, 4, 8\]"
    ):
        accumulation_steps(32, 4, 3, "r.yaml")


@pytest.mark.slow
def test_a_global_batch_that_does_not_divide_fails_before_weights_load(tmp_path, tiny_llama_dir):
    recipe = _recipe(tmp_path, tiny_llama_dir, "odd", micro_batch_size=4)  # 4 / (4 x 2) does not divide
    result = _launch(recipe)
    assert result.returncode != 0
    assert "is not a multiple of micro_batch_size 4 x 2 processes" in result.stderr
    assert not (tmp_path / "runs" / "odd").exists()  # nothing loaded, nothing written


@pytest.mark.slow
def test_accelerate_cpu_flag_with_several_processes_fails_naming_the_working_command(
    tmp_path, tiny_llama_dir
):
    """accelerate's `--cpu` launcher starts one process for `--num_processes 2` (it needs mpirun):
    warmline says so instead of training on one process while two were asked for."""
    recipe = _recipe(tmp_path, tiny_llama_dir, "cpuflag")
    cmd = [
        str(ACCELERATE),
        "launch",
        "--num_processes",
        "2",
        "--cpu",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "warmline",
        "train",
        str(recipe),
    ]
    result = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "starts a single process" in result.stderr and "accelerate launch --multi_gpu" in result.stderr
    assert not (tmp_path / "runs" / "cpuflag").exists()


@pytest.mark.slow
def test_fsdp_on_cpu_processes_fails_naming_ddp(tmp_path, tiny_llama_dir):
    """accelerate turns FSDP on only for accelerator devices: on CPU processes the shipped FSDP config
    would quietly train as plain DDP (tried: it completes with DDP's losses). warmline refuses."""
    recipe = _recipe(tmp_path, tiny_llama_dir, "fsdp")
    config = REPO / "recipes" / "accelerate" / "fsdp-full-shard.yaml"
    cmd = [str(ACCELERATE), "launch", "--config_file", str(config), "-m", "warmline", "train", str(recipe)]
    result = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "FSDP needs GPUs" in result.stderr and "multi-gpu-ddp.yaml" in result.stderr
    assert not (tmp_path / "runs" / "fsdp").exists()


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    one, two = _recipe(tmp_path, tiny_llama_dir, "one"), _recipe(tmp_path, tiny_llama_dir, "two")
    single = _single(one)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = _launch(two)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "process 1 of 2" in multi.stderr and "process 2 of 2" in multi.stderr  # really two processes
    run1, run2 = tmp_path / "runs" / "one", tmp_path / "runs" / "two"

    logs1, logs2 = _logs(run1), _logs(run2)
    # One line per logged step (not one per process), the same steps: 2 epochs x 4 + 5 = 13.
    assert [(r["stage"], r["step"]) for r in logs2] == [(r["stage"], r["step"]) for r in logs1]
    assert len(logs1) == 13
    # The same examples per step: tokens seen (gathered across processes) grow step by step alike.
    assert [r["num_input_tokens_seen"] for r in logs2] == [r["num_input_tokens_seen"] for r in logs1]
    for r1, r2 in zip(logs1, logs2, strict=True):
        assert r2["loss"] == pytest.approx(r1["loss"], abs=LOSS_TOLERANCE), (r1["stage"], r1["step"])

    f1 = json.loads((run1 / "forgetting.json").read_text())
    f2 = json.loads((run2 / "forgetting.json").read_text())
    assert f1.keys() == f2.keys() == {"base", "alpha", "beta"}
    for row in f1:
        for split in f1[row]:
            assert f2[row][split]["tokens"] == f1[row][split]["tokens"]  # every example scored once
            assert f2[row][split]["loss"] == pytest.approx(f1[row][split]["loss"], abs=LOSS_TOLERANCE)
    assert f2["beta"]["beta"]["loss"] < f2["base"]["beta"]["loss"]  # it trained

    stage_ends = [
        r
        for r in map(json.loads, (run2 / "metrics.jsonl").read_text().splitlines())
        if r.get("event") == "stage_end"
    ]
    assert [r["stage"] for r in stage_ends] == ["alpha", "beta"]
    for folder in ("stage-01-alpha", "stage-02-beta", "final"):
        model = AutoModelForCausalLM.from_pretrained(run2 / folder)  # plain transformers, no warmline
        assert model.config.num_hidden_layers == 2
        assert (run2 / folder / "manifest.json").is_file()
    assert not (run2 / ".work").exists() or not any((run2 / ".work").iterdir())
    assert not list(run2.glob(".*.tmp"))


@pytest.mark.slow
def test_two_process_resume_after_a_kill_matches_the_uninterrupted_run(tmp_path, tiny_llama_dir):
    """SIGKILL to the whole launch (every process) once stage 1 has a complete checkpoint; then
    `--resume` under two processes gives the uninterrupted run's losses, one line per step."""
    from warmline.training.train import COMPLETE_MARKER

    full, cut = _recipe(tmp_path, tiny_llama_dir, "full"), _recipe(tmp_path, tiny_llama_dir, "cut")
    assert _launch(full).returncode == 0
    proc = subprocess.Popen(
        _launch_cmd(cut),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    marker = tmp_path / "runs" / "cut" / ".work" / "stage-01-alpha" / "checkpoint-3" / COMPLETE_MARKER
    try:
        deadline = time.monotonic() + 600
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "no complete checkpoint appeared"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers: its own session
        proc.wait()
    assert not (tmp_path / "runs" / "cut" / "final").exists()

    resumed = _launch(cut, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_full, run_cut = tmp_path / "runs" / "full", tmp_path / "runs" / "cut"
    steps = [(r["stage"], r["step"]) for r in _logs(run_cut)]
    assert steps == [(r["stage"], r["step"]) for r in _logs(run_full)]  # no step twice, none missing
    f_full = json.loads((run_full / "forgetting.json").read_text())
    f_cut = json.loads((run_cut / "forgetting.json").read_text())
    assert f_cut.keys() == f_full.keys() == {"base", "alpha", "beta"}
    for row in f_full:
        for split in f_full[row]:
            assert f_cut[row][split]["loss"] == pytest.approx(f_full[row][split]["loss"], abs=LOSS_TOLERANCE)


LAUNCH_CONFIGS = {
    "single-gpu.yaml": ("NO", 1),
    "multi-gpu-ddp.yaml": ("MULTI_GPU", 2),
    "fsdp-full-shard.yaml": ("FSDP", 2),
    "deepspeed-zero2.yaml": ("DEEPSPEED", 2),
    "deepspeed-zero3.yaml": ("DEEPSPEED", 2),
}


def test_shipped_launch_configs_load_with_accelerates_loader():
    """Every recipes/accelerate/*.yaml loads with accelerate's own config loader, says in its first
    line when to use it, and leaves precision to the recipe (mixed_precision 'no')."""
    from accelerate.commands.config.config_args import load_config_from_file

    folder = REPO / "recipes" / "accelerate"
    assert sorted(p.name for p in folder.glob("*.yaml")) == sorted(LAUNCH_CONFIGS)
    for name, (kind, processes) in LAUNCH_CONFIGS.items():
        path = folder / name
        config = load_config_from_file(str(path))
        assert config.distributed_type.value == kind, name
        assert config.num_processes == processes, name
        assert str(config.mixed_precision) == "no", name
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and " when " in first.lower(), name
    fsdp = load_config_from_file(str(folder / "fsdp-full-shard.yaml")).fsdp_config
    assert fsdp["fsdp_reshard_after_forward"] is True and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    stages = {
        n: load_config_from_file(str(folder / n)).deepspeed_config["zero_stage"]
        for n in ("deepspeed-zero2.yaml", "deepspeed-zero3.yaml")
    }
    assert stages == {"deepspeed-zero2.yaml": 2, "deepspeed-zero3.yaml": 3}
    # Accumulation is the Trainer's (from the recipe and process count), never fixed in a config.
    for n in stages:
        assert "gradient_accumulation_steps" not in load_config_from_file(str(folder / n)).deepspeed_config
