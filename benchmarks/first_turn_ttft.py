"""First turn of a new conversation: TTFT with the shared system-prompt prefix cached vs read cold.

    python benchmarks/first_turn_ttft.py      # about 1 minute

Warmline's system prompt; generate_latency.MULTITURN_MESSAGES plus two sample prompts as first
messages, three rounds. Before each message the cached generator holds only the shared prefix
(template + system prompt, as after any earlier conversation), the cold one holds nothing; both
decode with the same fp16 copy and differ only in what they read. Prints medians and a RESULT
line.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import result_line  # noqa: E402


def main() -> int:
    import copy

    import generate_latency as gl
    import torch

    from warmline.models import load_model, load_tokenizer
    from warmline.recipe import DEFAULT_SYSTEM_PROMPT
    from warmline.serving.generator import Generator

    tokenizer = load_tokenizer(gl.BASE_MODEL)
    model = load_model(gl.BASE_MODEL).eval()
    cached = Generator(model, tokenizer, decode_dtype=torch.float16, prompt_cache_tokens=4096)
    cold = copy.copy(cached)  # the same weights and fp16 copy, no cache
    cold.prompt_cache = None

    def first_turn(message: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": message}]

    def refill() -> None:
        """Leave only the shared prefix in the cache (what any earlier conversation leaves)."""
        cached.prompt_cache.clear()
        cached.generate(first_turn("x"), max_new_tokens=1, seed=0)

    messages = [
        *gl.MULTITURN_MESSAGES,
        "I feel lonely.",
        "My best friend stopped talking to me and I don't know why.",
    ]
    refill()
    rows = []
    for _ in range(3):
        for message in messages:
            a = cold.generate(first_turn(message), max_new_tokens=1, seed=0)
            b = cached.generate(first_turn(message), max_new_tokens=1, seed=0)
            rows.append((a.prompt_tokens, b.reused_prompt_tokens, a.ttft_s * 1e3, b.ttft_s * 1e3))
            refill()
    cold_ms = statistics.median(r[2] for r in rows)
    cached_ms = statistics.median(r[3] for r in rows)
    print(
        f"first turns: {len(rows)}, median prompt {statistics.median(r[0] for r in rows):.0f} tokens,"
        f" shared prefix {rows[0][1]} tokens"
    )
    print(f"TTFT median: read cold {cold_ms:.0f} ms, shared prefix cached {cached_ms:.0f} ms")
    print(result_line(first_turn_ttft_cold_ms=cold_ms, first_turn_ttft_cached_ms=cached_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
