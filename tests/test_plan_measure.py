"""`warmline train RECIPE --plan --measure`: the first stage's first optimizer steps run for real
in a scratch folder, and the measured peak memory and speed are printed next to the plan."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from typer.testing import CliRunner

from warmline.cli import app


def _recipe(tmp_path: Path, base: Path) -> Path:
    rows = [
        {"text": f"Human: I feel tired at work, day {i}.\nAssistant: That sounds hard. What helps you rest?"}
        for i in range(16)
    ]
    data = tmp_path / "alpha.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "\n".join(
            [
                "name: tiny",
                f"base_model: {base}",
                f"output_dir: {tmp_path / 'runs'}",
                "system_prompt: null",
                "stages:",
                f"  - {{name: alpha, source: {data}, epochs: 2, learning_rate: 3.0e-3, max_length: 64}}",
                "training: {micro_batch_size: 2, global_batch_size: 2, precision: fp32, logging_steps: 1}",
            ]
        )
        + "\n"
    )
    return path


def test_measure_trains_two_steps_in_a_scratch_folder_and_reports_them(tmp_path, tiny_llama_dir, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = CliRunner().invoke(app, ["train", str(_recipe(tmp_path, tiny_llama_dir)), "--plan", "--measure"])
    assert result.exit_code == 0, result.output
    # the stage has many more steps than the two measured ones
    planned = int(re.search(r"optimizer steps (\d+):", result.output).group(1))
    assert planned > 2
    line = re.search(
        r"measured: (\d+) optimizer step\(s\) of stage 'alpha' on cpu: peak RSS ([0-9.]+) GiB "
        r"\(plan ~([0-9.]+) GiB\), ([0-9.]+) s/step, (\d+) tokens/s",
        result.output,
    )
    assert line, result.output
    assert int(line.group(1)) == 2
    assert float(line.group(2)) > 0 and float(line.group(4)) > 0 and int(line.group(5)) > 0
    assert "stage 'alpha': about" in result.output
    # nothing is kept: no run folder, and the scratch folder is gone
    assert not (tmp_path / "runs").exists()
    assert list(scratch.iterdir()) == []


def test_measure_without_plan_is_refused(tmp_path, tiny_llama_dir):
    result = CliRunner().invoke(app, ["train", str(_recipe(tmp_path, tiny_llama_dir)), "--measure"])
    assert result.exit_code == 2 and "use it with --plan" in result.output
    assert not (tmp_path / "runs").exists()
