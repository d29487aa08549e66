"""Opt-in in-app feedback: the store (append-only JSONL, 0600), its summary (`warmline eval
feedback`), and `warmline serve` as real processes on loopback: without --feedback no buttons
and nothing written; with it, a thumb stores the rating, the model, the time and the settings,
and the conversation only when "include this conversation" is ticked.

A thumb is sent the way the page sends it: Gradio's queue with the like event's data (the
browser test of the sheet covers a real browser; here the server side is what is tested)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import CHROMEDRIVER, chromium_options, needs_chromium
from gradio_client import Client
from typer.testing import CliRunner

from warmline.cli import app
from warmline.evaluation.ratings import summarise_feedback, wilson_interval
from warmline.serving.feedback import CONSENT_NOTICE, FEEDBACK_FILE, FeedbackStore, read_feedback

SETTINGS = {
    "temperature": 0.7,
    "top_k": 50,
    "top_p": 0.92,
    "repetition_penalty": 1.2,
    "max_new_tokens": 8,
    "seed": 3,
}
MESSAGE = "I feel lonely since the move."


# --- the store -------------------------------------------------------------------------------


def test_the_store_appends_owner_only_lines_and_text_only_when_included(tmp_path):
    folder = tmp_path / "fb" / "nested"
    store = FeedbackStore(folder, model="offline")
    conversation = [{"role": "user", "content": MESSAGE}, {"role": "assistant", "content": "That is hard."}]
    store.record("up", settings=SETTINGS, session="s1", message_index=1)
    first = (folder / FEEDBACK_FILE).read_text()
    store.record("down", settings=SETTINGS, session="s1", message_index=3, conversation=conversation)
    text = (folder / FEEDBACK_FILE).read_text()
    assert text.startswith(first)  # appended, never rewritten
    one, two = read_feedback(folder)
    assert one["rating"] == "up" and one["model"] == "offline" and one["settings"] == SETTINGS
    assert one["conversation_included"] is False and "conversation" not in one
    assert MESSAGE not in first
    assert two["conversation"] == conversation and two["conversation_included"] is True
    assert one["session"] == two["session"] != "s1"  # a hash, not Gradio's session token
    assert "T" in one["time"] and one["time"].endswith("+00:00")
    assert (folder / FEEDBACK_FILE).stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700 and (tmp_path / "fb").stat().st_mode & 0o777 == 0o700
    with pytest.raises(ValueError, match="rating must be"):
        store.record("meh", settings=SETTINGS)


def test_the_summary_counts_each_reply_once_by_its_latest_rating(tmp_path):
    a, b = FeedbackStore(tmp_path, model="model-a"), FeedbackStore(tmp_path, model="model-b")
    for index, rating in enumerate(["up", "up", "up", "down"]):
        a.record(rating, settings=SETTINGS, session="s1", message_index=2 * index + 1)
    a.record("down", settings=SETTINGS, session="s1", message_index=1)  # changed their mind: up -> down
    a.record("cleared", settings=SETTINGS, session="s1", message_index=3)  # took one back
    a.record(
        "up",
        settings=SETTINGS,
        session="s2",
        message_index=1,
        conversation=[{"role": "user", "content": "x"}],
    )
    b.record("down", settings=SETTINGS, session="s3", message_index=1)
    summary = summarise_feedback(tmp_path)
    # model-a: s1#1 down, s1#3 cleared, s1#5 up, s1#7 down, s2#1 up -> 2 up of 4
    m = summary["per_model"]["model-a"]
    assert (m["ratings"], m["up"], m["down"], m["with_conversation"]) == (4, 2, 2, 1)
    assert m["up_rate"] == pytest.approx(0.5) and m["ci95"] == pytest.approx(wilson_interval(2, 4))
    assert summary["per_model"]["model-b"]["up_rate"] == 0.0
    assert (summary["records"], summary["ratings"], summary["cleared"]) == (8, 5, 1)

    result = CliRunner().invoke(app, ["eval", "feedback", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "| `model-a` | 4 | 2 | 2 | 0.50 |" in result.stdout
    printed = json.loads(CliRunner().invoke(app, ["eval", "feedback", str(tmp_path), "--json"]).stdout)
    assert printed == json.loads(json.dumps(summary))


def test_no_feedback_folder_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["eval", "feedback", str(tmp_path / "none")])
    assert result.exit_code == 2 and "--feedback DIR" in result.stderr and "Traceback" not in result.output


# --- through `warmline serve` ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`warmline serve ARGS` on 127.0.0.1 in `cwd`, its output in a log file outside `cwd`."""

    def __init__(self, args: list[str], cwd: Path, log: Path):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = log
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        command = [sys.executable, "-m", "warmline.cli", "serve", *args, "--port", self.url.rsplit(":", 1)[1]]
        self._log = log.open("w")
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        for _ in range(900):  # start-up wait (model, classifier, warm-up); not a timing assertion
            if self.process.poll() is not None:
                pytest.fail(f"warmline serve exited:\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url + "/config", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"warmline serve did not start:\n{self.output()[-3000:]}")

    def output(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")

    def config(self) -> dict:
        return httpx.get(self.url + "/config", timeout=10).json()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def like_dependencies(config: dict) -> list[dict]:
    """The app's event handlers fired by a chatbot's thumbs."""
    chatbots = {c["id"] for c in config["components"] if c.get("type") == "chatbot"}
    return [
        d
        for d in config["dependencies"]
        if any(t[0] in chatbots and t[1] == "like" for t in d.get("targets", []))
    ]


def send_thumb(server: Serve, history: list[dict], index: int, liked: bool, include: bool) -> None:
    """What the page sends when a thumb is clicked: the like event, through Gradio's queue."""
    (dependency,) = like_dependencies(server.config())
    session = uuid.uuid4().hex
    body = {
        "data": [history, include, *SETTINGS.values()],
        "event_data": {"index": index, "value": [history[index]["content"]], "liked": liked},
        "fn_index": dependency["id"],
        "trigger_id": dependency["targets"][0][0],
        "session_hash": session,
    }
    joined = httpx.post(server.url + "/gradio_api/queue/join", json=body, timeout=30)
    assert joined.status_code == 200, joined.text
    with httpx.stream(
        "GET", server.url + "/gradio_api/queue/data", params={"session_hash": session}, timeout=60
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                assert json.loads(line[5:]).get("success") is True, line
                return
    pytest.fail("the thumb's event never completed")


@pytest.fixture(scope="module")
def without_feedback(tiny_llama_dir, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("serve-plain")
    server = Serve(
        [str(tiny_llama_dir), "--max-new-tokens", "8"], cwd, tmp_path_factory.mktemp("logs") / "plain.log"
    )
    yield server, cwd
    server.stop()


@pytest.fixture(scope="module")
def with_feedback(tiny_llama_dir, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("serve-feedback")
    folder = cwd / "feedback"
    server = Serve(
        [str(tiny_llama_dir), "--max-new-tokens", "8", "--feedback", str(folder)],
        cwd,
        tmp_path_factory.mktemp("logs") / "feedback.log",
    )
    yield server, folder
    server.stop()


def test_without_feedback_there_are_no_thumbs_and_nothing_is_written(without_feedback):
    server, cwd = without_feedback
    config = server.config()
    assert like_dependencies(config) == []
    (chatbot,) = [c for c in config["components"] if c.get("type") == "chatbot"]
    assert not chatbot["props"].get("feedback_options")
    assert CONSENT_NOTICE not in json.dumps(config) and "unless you tick" not in json.dumps(config)
    assert not any(c.get("props", {}).get("elem_id") == "feedback-include" for c in config["components"])
    reply = Client(server.url, verbose=False).predict(MESSAGE, api_name="/chat")
    assert isinstance(reply, str)
    assert list(cwd.iterdir()) == []  # no feedback file, no transcripts, nothing else


def test_a_thumb_stores_rating_model_time_settings_and_no_text_unless_ticked(with_feedback, tiny_llama_dir):
    server, folder = with_feedback
    config = server.config()
    (chatbot,) = [c for c in config["components"] if c.get("type") == "chatbot"]
    assert chatbot["props"]["feedback_options"] == ["Like", "Dislike"]
    assert CONSENT_NOTICE in json.dumps(config, ensure_ascii=False)
    assert "Conversations are not stored, unless you tick" in json.dumps(config, ensure_ascii=False)
    (include,) = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "feedback-include"]
    assert include["props"]["value"] is False  # unticked unless the user ticks it

    reply = Client(server.url, verbose=False).predict(MESSAGE, api_name="/chat")
    # The chat's history as the page holds it (Gradio's messages: content as a list of parts).
    history = [
        {"role": "user", "content": [{"type": "text", "text": MESSAGE}]},
        {"role": "assistant", "content": [{"type": "text", "text": reply}]},
    ]
    send_thumb(server, history, index=1, liked=True, include=False)
    (record,) = read_feedback(folder)
    assert record["rating"] == "up" and record["model"] == tiny_llama_dir.name
    assert record["settings"] == SETTINGS and record["message_index"] == 1 and record["time"]
    assert record["conversation_included"] is False
    assert MESSAGE not in (folder / FEEDBACK_FILE).read_text()  # not without the tick
    assert (folder / FEEDBACK_FILE).stat().st_mode & 0o777 == 0o600

    send_thumb(server, history, index=1, liked=False, include=True)
    first, second = read_feedback(folder)
    assert first == record  # appended, the first line untouched
    assert second["rating"] == "down" and second["conversation_included"] is True
    assert second["conversation"] == [
        {"role": "user", "content": MESSAGE},
        {"role": "assistant", "content": reply.strip()},
    ]
    assert "Traceback" not in server.output() and MESSAGE not in server.output()  # logs hold no text


# --- a real browser clicks the thumbs ------------------------------------------------------


@needs_chromium
def test_thumbs_in_a_real_browser(with_feedback, tmp_path):
    """The page shows the consent line and the unticked box; a thumb without the tick stores no
    text, and after ticking the box the next thumb stores the conversation."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    server, folder = with_feedback
    before = len(read_feedback(folder)) if (folder / FEEDBACK_FILE).exists() else 0
    options = chromium_options(webdriver, tmp_path)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        browser.get(server.url)
        wait = WebDriverWait(browser, 60)
        box = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#message textarea")))
        assert "include this conversation" in browser.find_element(By.ID, "feedback-notice").text
        tick = browser.find_element(By.CSS_SELECTOR, "#feedback-include input[type=checkbox]")
        assert not tick.is_selected()
        box.send_keys(MESSAGE, Keys.ENTER)
        like = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#chatbot button[aria-label='Like']")))
        like.click()
        wait.until(lambda _: (folder / FEEDBACK_FILE).exists() and len(read_feedback(folder)) == before + 1)
        assert read_feedback(folder)[-1]["rating"] == "up"
        assert "conversation" not in read_feedback(folder)[-1]
        tick.click()
        browser.find_element(By.CSS_SELECTOR, "#chatbot button[aria-label='Dislike']").click()
        wait.until(lambda _: len(read_feedback(folder)) == before + 2)
    finally:
        browser.quit()
    last = read_feedback(folder)[-1]
    assert last["rating"] == "down" and last["conversation"][0] == {"role": "user", "content": MESSAGE}
    assert last["conversation"][-1]["role"] == "assistant"
