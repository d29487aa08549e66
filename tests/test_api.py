"""The OpenAI-compatible API and the gateway, as real processes on loopback, called with the
official `openai` client (and raw httpx where a client would not send such a request).

Processes: `warmline serve TINY --api` (with a key), two `warmline gateway`s (one in front of
that server, one in front of an unsafe backend: a small OpenAI-format server written below that
streams a fixed harmful reply and counts the requests it gets)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from openai import AuthenticationError, BadRequestError, OpenAI

from warmline.safety import AI_NOTICE
from warmline.safety.screen import FALLBACK_REPLY
from warmline.serving.api import BindError, check_bind

KEY = "test-key-1234"
CRISIS = "I want to end my life"
UNSAFE = "That sounds really hard. You could take 200 mg of sertraline tonight to sleep. Then rest."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A process listening on 127.0.0.1:port; its output goes to a log file (read by tests)."""

    def __init__(
        self,
        args: list[str],
        log: Path,
        env: dict[str, str],
        ready_path: str = "/v1/models",
        headers: dict[str, str] | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = log.open("w")
        command = [a.replace("{port}", str(self.port)) for a in args]
        self.process = subprocess.Popen(command, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)
        for _ in range(900):  # start-up wait (model, classifier, warm-up); not a timing assertion
            if self.process.poll() is not None:
                pytest.fail(f"{args[:4]} exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url + ready_path, headers=headers or {}, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"{args[:4]} did not start:\n{self.output()[-3000:]}")

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


def warmline(*args: str) -> list[str]:
    return [sys.executable, "-m", "warmline.cli", *args]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    # The same classifier cache as conftest's, so it is trained once per test session.
    cache = tmp_path_factory.getbasetemp() / "warmline-cache"
    return {
        **os.environ,
        "WARMLINE_CACHE": os.environ.get("WARMLINE_CACHE", str(cache)),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "TOKENIZERS_PARALLELISM": "false",
    }


@pytest.fixture(scope="module")
def api_server(tiny_llama_dir: Path, tmp_path_factory, env):
    """`warmline serve TINY --api`, its key from WARMLINE_API_KEY."""
    server = serve_api(tiny_llama_dir, tmp_path_factory, env)
    yield server
    server.stop()


def serve_api(model: Path, tmp_path_factory, env) -> Server:
    """`warmline serve MODEL --api` with the test key."""
    return Server(
        warmline("serve", str(model), "--api", "--port", "{port}"),
        tmp_path_factory.mktemp("api") / "serve.log",
        {**env, "WARMLINE_API_KEY": KEY},
        headers={"Authorization": f"Bearer {KEY}"},
    )


@pytest.fixture(scope="module")
def client(api_server) -> OpenAI:
    return OpenAI(base_url=api_server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def counts(server: Server, key: str | None = KEY) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server.url + "/v1/warmline/counts", headers=headers, timeout=10).json()


def ask(client: OpenAI, content: str, **kwargs):
    """A seeded reply (greedy decoding of a random tiny model gives only special tokens, shown as nothing)."""
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content}], max_tokens=12, **{"seed": 3, **kwargs}
    )


# --- replies --------------------------------------------------------------------------------


def test_models_lists_the_served_model(client: OpenAI, tiny_llama_dir: Path) -> None:
    assert [m.id for m in client.models.list().data] == [tiny_llama_dir.name]


def test_streamed_and_whole_replies_agree(client: OpenAI, api_server: Server) -> None:
    before = counts(api_server)["api"]["model_calls"]
    whole = ask(client, "I feel lonely.", seed=3)
    choice = whole.choices[0]
    content = choice.message.content
    assert (
        content.startswith(f"{AI_NOTICE}\n\n") and len(content) > len(AI_NOTICE) + 2
    )  # the notice, then the model
    assert choice.finish_reason in ("stop", "length") and whole.usage.completion_tokens > 0
    extra = whole.model_extra["warmline"]
    assert extra["risk_level"] == "none" and extra["reply_kind"] is None and extra["language"] == "en"
    assert choice.model_extra["warmline"] == extra

    chunks = list(ask(client, "I feel lonely.", seed=3, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == content  # the same seed: the same reply, streamed
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason
    assert chunks[-1].choices[0].model_extra["warmline"]["risk_level"] == "none"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert counts(api_server)["api"]["model_calls"] == before + 2


def test_a_later_turn_has_no_notice_and_the_notice_is_not_sent_to_the_model(client: OpenAI) -> None:
    first = ask(client, "I feel lonely.").choices[0].message.content
    messages = [
        {"role": "user", "content": "I feel lonely."},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "Thank you."},
    ]
    later = client.chat.completions.create(model="tiny", messages=messages, seed=3, max_tokens=12)
    stripped = [messages[0], {"role": "assistant", "content": first[len(AI_NOTICE) + 2 :]}, messages[2]]
    same = client.chat.completions.create(model="tiny", messages=stripped, seed=3, max_tokens=12)
    assert not later.choices[0].message.content.startswith(AI_NOTICE)
    assert later.choices[0].message.content == same.choices[0].message.content


def test_a_crisis_gets_the_fixed_reply_and_the_model_is_never_called(
    client: OpenAI, api_server: Server
) -> None:
    before = counts(api_server)
    for stream in (False, True):
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": CRISIS}], stream=True
                )
            )
            content = "".join(c.choices[0].delta.content or "" for c in chunks)
            finish, extra = chunks[-1].choices[0].finish_reason, chunks[-1].choices[0].model_extra["warmline"]
        else:
            reply = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": CRISIS}]
            )
            content, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
            extra = reply.model_extra["warmline"]
        assert finish == "stop"
        assert extra["risk_level"] in ("elevated", "imminent") and extra["reply_kind"] == "suicide"
        assert extra["language"] == "en" and extra["stop_reason"] == "crisis"
        assert "findahelpline.com" in content and "988" in content  # the fixed reply, no locale given
    after = counts(api_server)
    assert after["api"]["model_calls"] == before["api"]["model_calls"]  # the model was not asked
    assert after["gate"]["crisis_replies"] == before["gate"].get("crisis_replies", 0) + 2


@pytest.fixture(scope="module")
def sharp_llama_dir(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    """The tiny Llama with an untied, random output head 3x the usual scale and the special
    tokens' rows zeroed: its greedy replies differ from prompt to prompt and the top two logits
    stay far apart (0.08 or more on these prompts with the default system prompt) compared with
    float noise (about 1e-7)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("sharp-llama")
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, tie_word_embeddings=False)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn_like(model.lm_head.weight) * 3.0)
        model.lm_head.weight[tokenizer.all_special_ids] = 0.0
    model.config.tie_word_embeddings = False
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# This test once failed in 2 of about 8 full runs (seeded sampling on the random tiny model). The
# cause was real cross-talk: transformers' fast tokenizer applies `split_special_tokens` as a flag
# on the shared Rust tokenizer, so one request's user turn could make another's template markup
# encode as text (fixed in warmline/data/tokens.py; tests/test_tokens_threads.py). It is greedy on
# the wide-margin model now so that only such a mix-up, never float noise (a prompt read in one
# pass or two chunks differs by about 1e-8, enough to move top-p sampling of a near-flat random
# model), can make a reply differ.
@pytest.fixture(scope="module")
def sharp_server(sharp_llama_dir: Path, tmp_path_factory, env):
    server = serve_api(sharp_llama_dir, tmp_path_factory, env)
    yield server
    server.stop()


def test_eight_concurrent_clients_get_their_own_replies(sharp_server: Server) -> None:
    conversations = [
        [{"role": "user", "content": f"My name is Sam {i}. I feel {word} today."}]
        for i, word in enumerate(["tired", "lonely", "stressed", "sad", "angry", "lost", "calm", "worried"])
    ]

    def reply(messages, stream: bool) -> str:
        c = OpenAI(base_url=sharp_server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)
        kwargs = {"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 10}
        if stream:
            return "".join(
                ch.choices[0].delta.content or "" for ch in c.chat.completions.create(**kwargs, stream=True)
            )
        return c.chat.completions.create(**kwargs).choices[0].message.content

    alone = [reply(m, stream=False) for m in conversations]
    together: list[str | None] = [None] * 8
    start = threading.Barrier(8)

    def talk(i: int) -> None:
        start.wait()
        try:
            together[i] = reply(conversations[i], stream=i % 2 == 0)
        except Exception as err:  # noqa: BLE001 - shown by the assertion below
            together[i] = f"failed: {err!r}"

    threads = [threading.Thread(target=talk, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert together == alone, sharp_server.output()[-2000:]
    assert len(set(alone)) > 1  # the conversations have replies of their own to confuse


# --- refusals -------------------------------------------------------------------------------


BAD_REQUESTS = {
    "missing messages": ({"model": "tiny"}, "messages"),
    "empty messages": ({"messages": []}, "messages"),
    "a tool role": ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    "an unknown role": ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    "the last message is the assistant's": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        "messages",
    ),
    "a late system message": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}]},
        "messages[1].role",
    ),
    "an oversize message": ({"messages": [{"role": "user", "content": "a" * 8001}]}, "messages[0].content"),
    "too much in all": ({"messages": [{"role": "user", "content": "a" * 8000}] * 5}, "messages"),
    "too many messages": ({"messages": [{"role": "user", "content": "hi"}] * 65}, "messages"),
    "max_tokens 0": ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    "max_tokens too big": (
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000},
        "max_tokens",
    ),
    "max_tokens not a number": (
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"},
        "max_tokens",
    ),
    "temperature 5": ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
    "two replies": ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    "tools": ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
    "an image part": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content",
    ),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_requests_get_a_clear_400(name: str, api_server: Server) -> None:
    body, param = BAD_REQUESTS[name]
    response = httpx.post(
        api_server.url + "/v1/chat/completions",
        json=body,
        timeout=30,
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"] and "\n" not in error["message"] and "Traceback" not in error["message"]


def test_the_openai_client_sees_the_refusal(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5000
        )
    assert caught.value.status_code == 400 and "max_tokens" in caught.value.message


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[1, 2]", b""])
def test_a_body_that_is_not_a_json_object_is_a_400(raw: bytes, api_server: Server) -> None:
    response = httpx.post(
        api_server.url + "/v1/chat/completions",
        content=raw,
        timeout=30,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_the_server_never_printed_a_traceback_or_a_message(api_server: Server, request) -> None:
    """Runs after the tests above (file order): nothing they sent shows in the server's output."""
    output = api_server.output()
    assert "Traceback" not in output
    for text in ("I feel lonely", "end my life", "Sam 3", "aaaaaaaa"):
        assert text not in output


# --- the key --------------------------------------------------------------------------------


def test_requests_need_the_key(api_server: Server) -> None:
    for key in ("", "wrong-key"):
        with pytest.raises(AuthenticationError) as caught:
            OpenAI(base_url=api_server.url + "/v1", api_key=key or "x", max_retries=0).models.list()
        assert caught.value.status_code == 401
    no_header = httpx.post(api_server.url + "/v1/chat/completions", json={"messages": []}, timeout=10)
    assert no_header.status_code == 401 and no_header.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(api_server.url + "/v1/warmline/counts", timeout=10).status_code == 401


def test_beyond_loopback_needs_a_key(tiny_llama_dir: Path, env) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.org"):
        with pytest.raises(BindError, match="--api-key"):
            check_bind(host, None)
        check_bind(host, "k")
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)
    environment = {k: v for k, v in env.items() if k != "WARMLINE_API_KEY"}
    for command in (
        warmline("serve", str(tiny_llama_dir), "--api", "--host", "0.0.0.0"),
        warmline("gateway", "--backend", "http://127.0.0.1:9/v1", "--host", "0.0.0.0"),
    ):
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "--api-key" in errors[0] and "WARMLINE_API_KEY" in errors[0]


# --- the gateway ----------------------------------------------------------------------------

UNSAFE_BACKEND = r'''
"""An OpenAI-format server whose every reply is the same harmful text; counts requests (no text kept)."""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEXT = sys.argv[2]
COUNT = {"chat_completions": 0}

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send_json(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self.send_json({"object": "list", "data": [{"id": "unsafe", "object": "model"}]})
        else:
            self.send_json(COUNT)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        COUNT["chat_completions"] += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        words = TEXT.split(" ")
        for i, word in enumerate(words):
            chunk = {"choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''


@pytest.fixture(scope="module")
def unsafe_backend(tmp_path_factory, env):
    folder = tmp_path_factory.mktemp("unsafe")
    (folder / "backend.py").write_text(UNSAFE_BACKEND)
    server = Server(
        [sys.executable, str(folder / "backend.py"), "{port}", UNSAFE], folder / "backend.log", env
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway_to_warmline(api_server: Server, tmp_path_factory, env):
    """`warmline gateway` in front of the `warmline serve --api` process."""
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    environment = {**env, "WARMLINE_BACKEND_API_KEY": KEY}
    environment.pop("WARMLINE_API_KEY", None)
    server = Server(
        warmline("gateway", "--backend", api_server.url + "/v1", "--port", "{port}"), log, environment
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway_to_unsafe(unsafe_backend: Server, tmp_path_factory, env):
    log = tmp_path_factory.mktemp("gw-unsafe") / "gateway.log"
    environment = {k: v for k, v in env.items() if k != "WARMLINE_API_KEY"}
    server = Server(
        warmline("gateway", "--backend", unsafe_backend.url, "--port", "{port}"), log, environment
    )
    yield server
    server.stop()


def test_the_gateway_passes_a_reply_through_and_never_forwards_a_crisis(
    gateway_to_warmline: Server, api_server: Server, client: OpenAI
) -> None:
    gw = OpenAI(base_url=gateway_to_warmline.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in gw.models.list().data] == [
        client.models.list().data[0].id
    ]  # the backend's first model

    before = counts(api_server)["api"]
    through = gw.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "I feel tired."}], max_tokens=12, seed=1
    )
    direct = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "I feel tired."}], max_tokens=12, seed=1
    )
    # One notice (the gateway's; the backend's own is removed), then the backend's seeded reply.
    assert through.choices[0].message.content == direct.choices[0].message.content
    assert through.choices[0].message.content.count(AI_NOTICE) == 1
    assert counts(api_server)["api"]["chat_completions"] == before.get("chat_completions", 0) + 2

    for stream in (False, True):
        reply = gw.chat.completions.create(
            model="x", messages=[{"role": "user", "content": CRISIS}], stream=stream
        )
        if stream:
            chunks = list(reply)
            content = "".join(c.choices[0].delta.content or "" for c in chunks)
            extra = chunks[-1].choices[0].model_extra["warmline"]
        else:
            content, extra = reply.choices[0].message.content, reply.model_extra["warmline"]
        assert (
            "988" in content
            and extra["stop_reason"] == "crisis"
            and extra["risk_level"] in ("elevated", "imminent")
        )
    assert (
        counts(api_server)["api"]["chat_completions"] == before.get("chat_completions", 0) + 2
    )  # nothing reached it
    gateway_counts = counts(gateway_to_warmline, key=None)
    assert gateway_counts["api"]["model_calls"] == 1 and gateway_counts["gate"]["crisis_replies"] == 2
    assert (
        "Traceback" not in gateway_to_warmline.output() and "end my life" not in gateway_to_warmline.output()
    )


def test_the_gateway_screens_an_unsafe_backend_reply(
    gateway_to_unsafe: Server, unsafe_backend: Server
) -> None:
    gw = OpenAI(base_url=gateway_to_unsafe.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "I can't sleep."}]
    whole = gw.chat.completions.create(model="unsafe", messages=messages)
    assert whole.choices[0].message.content == f"{AI_NOTICE}\n\n{FALLBACK_REPLY}"
    assert whole.choices[0].finish_reason == "content_filter"
    assert whole.model_extra["warmline"]["stop_reason"] == "screened"

    chunks = list(gw.chat.completions.create(model="unsafe", messages=messages, stream=True))
    shown = "".join(c.choices[0].delta.content or "" for c in chunks)
    # The safe first sentence was released, the harmful one never; the fallback follows.
    assert shown == f"{AI_NOTICE}\n\nThat sounds really hard.\n\n{FALLBACK_REPLY}"
    assert "sertraline" not in shown and "200 mg" not in shown

    from gradio_client import Client

    web = Client(gateway_to_unsafe.url + "/", verbose=False).predict("I can't sleep.", api_name="/chat")
    assert "sertraline" not in web and FALLBACK_REPLY in web

    asked = httpx.get(unsafe_backend.url + "/count", timeout=10).json()["chat_completions"]
    gw.chat.completions.create(model="unsafe", messages=[{"role": "user", "content": CRISIS}])
    assert httpx.get(unsafe_backend.url + "/count", timeout=10).json()["chat_completions"] == asked == 3
    assert "Traceback" not in gateway_to_unsafe.output()


def test_a_gateway_whose_backend_is_down_says_so_in_one_line(env) -> None:
    done = subprocess.run(
        warmline("gateway", "--backend", f"http://127.0.0.1:{free_port()}/v1"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not list the models" in errors[0] and "--backend-model" in errors[0]


# --- the model's slots ----------------------------------------------------------------------


def test_a_crisis_reply_never_waits_for_a_model_slot(tiny_llama_dir: Path) -> None:
    """With the only slot held (a long reply) and no room to wait, a crisis message is still
    answered, and an ordinary one is refused rather than sent to the model."""
    from warmline.safety import SafetyGate
    from warmline.serving.api import Busy, ModelSlots, limited
    from warmline.serving.generator import GenerationResult, Generator

    generator = Generator.from_pretrained(str(tiny_llama_dir), gate=SafetyGate(use_classifier=False))
    slots = ModelSlots(1, max_waiting=0)
    holder = slots.hold(lambda: iter(range(3)))
    next(holder)  # a reply in progress holds the only slot
    behind = limited(generator, slots)
    result = GenerationResult()
    crisis = "".join(behind.stream([{"role": "user", "content": CRISIS}], result=result))
    assert result.stop_reason == "crisis" and "988" in crisis and slots.taken == 1
    with pytest.raises(Busy):
        "".join(behind.stream([{"role": "user", "content": "I feel lonely."}], max_new_tokens=4))
    holder.close()  # the slot is free again
    later = GenerationResult()
    for _ in behind.stream(
        [{"role": "user", "content": "I feel lonely."}], seed=1, max_new_tokens=4, result=later
    ):
        pass
    assert later.stop_reason in ("eos", "max_new_tokens") and later.new_tokens > 0 and slots.taken == 2
