"""Load on a real `warmline serve` process: N concurrent sessions on loopback, plus crisis probes.

    .venv/bin/python benchmarks/serve_load.py                      # packaged SmolLM2, 8 sessions, 60 s
    .venv/bin/python benchmarks/serve_load.py MODEL --sessions 2 --duration-s 5 --json

Each session is a programmatic client of the web app (gradio_client, the `/chat` endpoint) that
keeps asking for long replies (`--max-new-tokens`, no stop at EOS is forced: the model decides),
with its own growing history; with `--api-sessions N` as many more talk to the OpenAI-compatible
API (`warmline serve --api`, streamed `/v1/chat/completions`). Meanwhile a probe sends a crisis
message every `--crisis-every-s` seconds from a fresh session and times its reply: crisis
replies are fixed text and must not wait for the model (acceptance: p95 under 1 s with 8
sessions generating long replies). The run is bounded by `--duration-s` and `--max-requests`;
replies still streaming at the end are waited for (their latency is counted).

Reported: reply latency and first-token (first streamed text) percentiles, crisis-reply latency
(p50/p95/max), errors, and the server's resident memory sampled every second. `--json` writes
benchmarks/results/serve_load.json. Timings depend on the machine's load (shared cores: see the
load average recorded in "machine").
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import _common

RESULTS = Path(__file__).resolve().parent / "results" / "serve_load.json"
CRISIS_MESSAGE = "I have been thinking about ending my life and I have the pills here."
PROMPTS = [
    "I've been so stressed at work that I can't sleep. Can you tell me, in detail, what might help?",
    "My best friend stopped talking to me and I keep going over it. Talk me through how to approach her.",
    "I failed an exam and I feel like a complete failure. Help me think about it differently.",
    "I feel lonely in a new city. What are some ways to meet people, explained step by step?",
]


@dataclass
class Stats:
    """What every session and the probe record (appended under one lock)."""

    reply_s: list[float] = field(default_factory=list)
    first_text_s: list[float] = field(default_factory=list)
    crisis_s: list[float] = field(default_factory=list)
    crisis_ok: int = 0
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_request(self, max_requests: int) -> bool:
        """Count one more request; False once the budget is spent."""
        with self.lock:
            if self.requests >= max_requests:
                return False
            self.requests += 1
            return True


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, args: argparse.Namespace) -> subprocess.Popen:
    """`warmline serve MODEL` on 127.0.0.1:port as a child process (logs to a file, not the terminal)."""
    command = [
        sys.executable,
        "-m",
        "warmline",
        "serve",
        model,
        "--port",
        str(port),
        "--concurrency-limit",
        str(args.concurrency_limit),
        "--max-new-tokens",
        str(args.max_new_tokens),
    ]
    if args.api_sessions:
        command.append("--api")
    log = open(args.server_log, "w")  # noqa: SIM115 - lives as long as the server
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=_common.REPO)


def wait_until_up(url: str, server: subprocess.Popen | None, timeout_s: float) -> None:
    """Poll the server's config until it answers; fail if the process ends first."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}; see its log")
        try:
            if httpx.get(f"{url}/config", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer within {timeout_s:.0f} s; raise --startup-timeout-s")


def web_turn(client, message: str, history: list, max_new_tokens: int) -> tuple[float | None, float, str]:
    """One `/chat` request: (seconds to the first text, seconds to the whole reply, reply)."""
    settings = (0.7, 50, 0.92, 1.2, max_new_tokens, -1)  # temperature, top-k, top-p, penalty, tokens, seed
    started = time.perf_counter()
    first = None
    job = client.submit(message, *settings, api_name="/chat")
    for _ in job:  # each update is the reply so far
        if first is None:
            first = time.perf_counter() - started
    reply = job.result()
    return first, time.perf_counter() - started, reply if isinstance(reply, str) else str(reply)


def api_turn(http, url: str, messages: list[dict], max_new_tokens: int) -> tuple[float | None, float, str]:
    """One streamed `/v1/chat/completions` request: (first text s, whole reply s, reply)."""
    body = {"model": "warmline", "messages": messages, "stream": True, "max_tokens": max_new_tokens}
    started = time.perf_counter()
    first, text = None, ""
    with http.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                delta = (choice.get("delta") or {}).get("content") or ""
                if delta and first is None:
                    first = time.perf_counter() - started
                text += delta
    return first, time.perf_counter() - started, text


def session(kind: str, url: str, stats: Stats, stop_at: float, args: argparse.Namespace, index: int) -> None:
    """Ask for long replies until the time or the request budget is spent, keeping a history."""
    import httpx
    from gradio_client import Client

    client = Client(url, verbose=False) if kind == "web" else httpx.Client()
    messages: list[dict] = []
    turn = 0
    try:
        while time.monotonic() < stop_at and stats.take_request(args.max_requests):
            prompt = PROMPTS[(index + turn) % len(PROMPTS)]
            turn += 1
            try:
                if kind == "web":
                    first, total, _ = web_turn(client, prompt, [], args.max_new_tokens)
                else:
                    messages = messages[-6:] + [{"role": "user", "content": prompt}]
                    first, total, reply = api_turn(client, url, messages, args.max_new_tokens)
                    messages.append({"role": "assistant", "content": reply})
            except Exception as err:  # counted and reported, the load goes on
                with stats.lock:
                    stats.errors.append(f"{kind}: {type(err).__name__}: {str(err)[:200]}")
                continue
            with stats.lock:
                stats.reply_s.append(total)
                if first is not None:
                    stats.first_text_s.append(first)
    finally:
        if kind == "api":
            client.close()


def crisis_probe(url: str, stats: Stats, stop_at: float, args: argparse.Namespace, kind: str) -> None:
    """Send the crisis message from a fresh session every --crisis-every-s and time the reply."""
    import httpx
    from gradio_client import Client

    client = Client(url, verbose=False) if kind == "web" else httpx.Client()
    time.sleep(args.crisis_after_s)  # let the sessions fill the model's slots first
    while time.monotonic() < stop_at:
        try:
            if kind == "web":
                _, total, reply = web_turn(client, CRISIS_MESSAGE, [], args.max_new_tokens)
            else:
                _, total, reply = api_turn(
                    client, url, [{"role": "user", "content": CRISIS_MESSAGE}], args.max_new_tokens
                )
        except Exception as err:
            with stats.lock:
                stats.errors.append(f"crisis {kind}: {type(err).__name__}: {str(err)[:200]}")
        else:
            with stats.lock:
                stats.crisis_s.append(total)
                # Every crisis reply names a line to call: findahelpline.com with no locale set.
                stats.crisis_ok += "findahelpline.com" in reply
        time.sleep(args.crisis_every_s)


def sample_rss(pid: int, stats: Stats, done: threading.Event, started: float) -> None:
    """The server's resident memory (MB) every second until `done`."""
    import psutil

    try:
        process = psutil.Process(pid)
        while not done.is_set():
            rss = process.memory_info().rss + sum(
                c.memory_info().rss for c in process.children(recursive=True)
            )
            with stats.lock:
                stats.rss_mb.append((round(time.monotonic() - started, 1), round(rss / 2**20, 1)))
            done.wait(1.0)
    except psutil.Error:
        pass


def percentiles(values: list[float]) -> dict:
    """n, p50, p95, max (seconds, 3 decimals); empty when there are no values."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 3),
        "p95": round(p95, 3),
        "max": round(ordered[-1], 3),
    }


def run(args: argparse.Namespace) -> dict:
    """Start the server (unless --url), run the load, stop the server; return the figures."""
    server = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        started_loading = time.monotonic()
        server = start_server(args.model, port, args)
    try:
        if server is not None:
            wait_until_up(url, server, args.startup_timeout_s)
            startup_s = time.monotonic() - started_loading
        stats = Stats()
        done = threading.Event()
        started = time.monotonic()
        stop_at = started + args.duration_s
        threads = []
        if server is not None:
            threads.append(
                threading.Thread(target=sample_rss, args=(server.pid, stats, done, started), daemon=True)
            )
        for i in range(args.sessions):
            threads.append(threading.Thread(target=session, args=("web", url, stats, stop_at, args, i)))
        for i in range(args.api_sessions):
            threads.append(threading.Thread(target=session, args=("api", url, stats, stop_at, args, i)))
        threads.append(threading.Thread(target=crisis_probe, args=(url, stats, stop_at, args, "web")))
        if args.api_sessions:
            threads.append(threading.Thread(target=crisis_probe, args=(url, stats, stop_at, args, "api")))
        for thread in threads:
            thread.start()
        for thread in threads[1:] if server is not None else threads:
            thread.join()
        wall_s = time.monotonic() - started
        done.set()
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    rss = [mb for _, mb in stats.rss_mb]
    return {
        "model": args.model if args.url is None else args.url,
        "sessions": args.sessions,
        "api_sessions": args.api_sessions,
        "concurrency_limit": args.concurrency_limit,
        "max_new_tokens": args.max_new_tokens,
        "duration_s": args.duration_s,
        "wall_s": round(wall_s, 1),
        "server_startup_s": round(startup_s, 1) if server is not None else None,
        "requests": stats.requests,
        "replies": len(stats.reply_s),
        "errors": len(stats.errors),
        "error_samples": stats.errors[:5],
        "reply_s": percentiles(stats.reply_s),
        "first_text_s": percentiles(stats.first_text_s),
        "crisis_reply_s": percentiles(stats.crisis_s),
        "crisis_replies_with_resources": stats.crisis_ok,
        "server_rss_mb": {"start": rss[0], "max": max(rss), "end": rss[-1]} if rss else None,
        "server_rss_mb_over_time": stats.rss_mb[:: max(1, len(stats.rss_mb) // 60)],
        "machine": _common.machine_info(),
    }


def main(argv: list[str] | None = None) -> dict:
    """Parse the options, run, print a summary (and write --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--url", help="Load an already running server instead of starting one.")
    parser.add_argument("--sessions", type=int, default=8, help="Concurrent web (gradio_client) sessions.")
    parser.add_argument(
        "--api-sessions",
        type=int,
        default=0,
        help="Concurrent OpenAI-API sessions too (starts the server with --api).",
    )
    parser.add_argument("--duration-s", type=float, default=60.0, help="New requests stop after this.")
    parser.add_argument("--max-requests", type=int, default=200, help="Model requests in all, at most.")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="Reply length asked of the model.")
    parser.add_argument("--concurrency-limit", type=int, default=4, help="The server's model slots.")
    parser.add_argument("--crisis-every-s", type=float, default=2.0, help="Pause between crisis probes.")
    parser.add_argument("--crisis-after-s", type=float, default=3.0, help="First crisis probe after this.")
    parser.add_argument("--startup-timeout-s", type=float, default=300.0)
    parser.add_argument("--server-log", default=os.devnull, help="Where the server's output goes.")
    parser.add_argument(
        "--json",
        nargs="?",
        const=str(RESULTS),
        default=None,
        metavar="FILE",
        help=f"Write the figures as JSON (default file: {RESULTS}).",
    )
    args = parser.parse_args(argv)
    figures = run(args)
    summary = {
        k: figures[k]
        for k in (
            "requests",
            "replies",
            "errors",
            "reply_s",
            "first_text_s",
            "crisis_reply_s",
            "server_rss_mb",
        )
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
