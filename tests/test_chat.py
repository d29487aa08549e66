"""`warmline chat`: multi-turn terminal chat driven through the CLI with scripted input."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from warmline import cli
from warmline.recipe import DEFAULT_SYSTEM_PROMPT
from warmline.safety import AI_NOTICE, SafetyGate, assess, crisis_reply
from warmline.serving.generator import GenerationSettings


class EchoGenerator:
    """Replies with what it saw: the number of user turns and the latest message, in two pieces."""

    def warm_up(self, system_prompt=None) -> None:
        self.warmed_with = system_prompt

    def __init__(self) -> None:
        self.settings = GenerationSettings()
        self.conversations: list[list[dict[str, str]]] = []

    def stream(self, conversation, *, seed=None, result=None, **overrides):
        self.conversations.append(list(conversation))
        turns = sum(t["role"] == "user" for t in conversation)
        text = f"reply {turns}: {conversation[-1]['content']}"
        yield text[:7]
        yield text[7:]
        if result is not None:
            result.text, result.stop_reason, result.new_tokens = text, "eos", 3


@pytest.fixture
def echo(monkeypatch) -> EchoGenerator:
    generator = EchoGenerator()

    def load(model, locale, settings, fp16_decode=True):
        generator.fp16_decode = fp16_decode
        return generator

    monkeypatch.setattr(cli, "_load_generator", load)
    return generator


def run(lines: list[str], *args: str, model: str = "some-model"):
    result = CliRunner().invoke(cli.app, ["chat", model, *args], input="".join(f"{x}\n" for x in lines))
    assert result.exit_code == 0, result.output
    return result


def test_multi_turn_keeps_history_and_stdout_holds_only_replies(echo: EchoGenerator) -> None:
    result = run(["hello", "how are you?", "/quit"])
    assert result.stdout == "reply 1: hello\nreply 2: how are you?\n"
    assert AI_NOTICE in result.stderr and "you>" in result.stderr
    second = echo.conversations[1]
    assert second[0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert [t["content"] for t in second[1:]] == ["hello", "reply 1: hello", "how are you?"]


def test_reset_starts_over(echo: EchoGenerator) -> None:
    result = run(["one", "two", "/reset", "three"])  # end of input quits too
    assert result.stdout.splitlines() == ["reply 1: one", "reply 2: two", "reply 1: three"]
    assert echo.conversations[-1][1:] == [{"role": "user", "content": "three"}]


def test_quit_stops_reading(echo: EchoGenerator) -> None:
    result = run(["one", "/quit", "never answered"])
    assert result.stdout == "reply 1: one\n" and len(echo.conversations) == 1


def test_save_writes_a_transcript_only_when_asked(echo: EchoGenerator, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run(["one", "two", "/quit"])
    assert list(tmp_path.iterdir()) == []  # nothing written without /save

    target = tmp_path / "chats" / "t.json"
    result = run(["one", f"/save {target}", "two"], "--system", "Be brief.")
    saved = json.loads(target.read_text())
    assert saved["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "reply 1: one"},
    ]
    assert "saved" in result.stderr and str(target) not in result.stdout
    assert result.stdout.splitlines() == ["reply 1: one", "reply 2: two"]


def test_verbose_timings_go_to_stderr(echo: EchoGenerator) -> None:
    result = run(["one"], "--verbose")
    assert result.stdout == "reply 1: one\n" and "[eos: 3 tokens" in result.stderr


def test_bad_settings_are_a_usage_error(echo: EchoGenerator) -> None:
    result = CliRunner().invoke(cli.app, ["chat", "some-model", "--top-p", "0"], input="")
    assert result.exit_code == 2 and "top_p must be in" in result.output


def test_real_model_behind_the_safety_gate(tiny_llama_dir: Path, monkeypatch) -> None:
    # The gate is always on; the lexicon alone keeps the test from loading the classifier.
    monkeypatch.setattr("warmline.safety.SafetyGate", functools.partial(SafetyGate, use_classifier=False))
    args = ["--max-new-tokens", "6", "--seed", "0", "--locale", "uk"]
    result = run(["I feel lonely.", "I want to kill myself"], *args, model=str(tiny_llama_dir))
    conversation = [{"role": "user", "content": "I want to kill myself"}]
    crisis = crisis_reply(assess(conversation, use_classifier=False), "uk")
    assert "Samaritans" in crisis and result.stdout.endswith(f"\n{crisis}\n")  # UK resources
    assert len(result.stdout) > len(crisis) + 2  # the first turn got a model reply
    assert AI_NOTICE not in result.stdout


def test_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["chat", str(tmp_path / "nope")], input="")
    assert result.exit_code == 2 and "model folder not found" in result.stderr


def test_fp16_decode_is_the_default_and_can_be_turned_off(echo: EchoGenerator) -> None:
    run(["/quit"])
    assert echo.fp16_decode is True
    assert echo.warmed_with == DEFAULT_SYSTEM_PROMPT  # warmed up before the first message
    run(["/quit"], "--fp32-decode")
    assert echo.fp16_decode is False


def test_a_session_keeps_the_conversation_it_is_given() -> None:
    from warmline.serving.chat import ChatSession

    resumed = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    session = ChatSession("Be kind.", conversation=list(resumed))
    assert session.conversation == resumed and session.turns == 1
    session.reset()
    assert session.conversation == [{"role": "system", "content": "Be kind."}]
    assert ChatSession("Be kind.").conversation == [{"role": "system", "content": "Be kind."}]


@pytest.mark.parametrize("command", ["chat", "serve"])
def test_sampling_options_are_the_generation_settings(command: str) -> None:
    """One source: each option's default and help text are the dataclass field's."""
    import typer.main

    from warmline.serving.settings import cli_fields

    click_command = typer.main.get_command(cli.app).commands[command]
    options = {p.name: p for p in click_command.params}
    fields = cli_fields()
    assert [f.name for f in fields] == [
        "temperature",
        "top_k",
        "top_p",
        "repetition_penalty",
        "max_new_tokens",
    ]
    for f in fields:
        assert options[f.name].default == f.default == getattr(GenerationSettings(), f.name)
        assert options[f.name].help == f.metadata["help"]


def test_options_reach_the_generator_as_settings(echo: EchoGenerator, monkeypatch) -> None:
    seen = {}

    def load(model, locale, settings, fp16_decode=True):
        seen["settings"] = settings
        return echo

    monkeypatch.setattr(cli, "_load_generator", load)
    run(["/quit"], "--temperature", "0.3", "--max-new-tokens", "9")
    assert seen["settings"] == GenerationSettings(temperature=0.3, max_new_tokens=9)


def recording_gate(**kwargs) -> SafetyGate:
    """The real gate (lexicon only) recording, in `gate.steps`, which of its steps ran in order."""
    gate = SafetyGate(use_classifier=False, **kwargs)
    gate.steps = []
    for name in ("check_input", "reply_for", "screen", "note_for"):
        method = getattr(gate, name)
        setattr(gate, name, lambda *a, _m=method, _n=name, **k: gate.steps.append(_n) or _m(*a, **k))
    return gate


def turns_of(steps: list[str]) -> list[list[str]]:
    """The gate's steps split into turns (each starts with check_input)."""
    turns: list[list[str]] = []
    for step in steps:
        if step == "check_input":
            turns.append([])
        turns[-1].append(step)
    return turns


def test_chat_runs_the_one_gate_flow_on_a_real_model(tiny_llama_dir: Path, monkeypatch) -> None:
    gates: list[SafetyGate] = []
    monkeypatch.setattr(
        "warmline.safety.SafetyGate", lambda **kw: gates.append(recording_gate(**kw)) or gates[-1]
    )
    run(
        ["Can you suggest a book?", "I want to kill myself"],
        "--max-new-tokens",
        "6",
        "--seed",
        "0",
        model=str(tiny_llama_dir),
    )
    (gate,) = gates
    ordinary, crisis = turns_of(gate.steps)  # the warm-up went around the gate: two turns
    assert ordinary[:2] == ["check_input", "reply_for"] and ordinary[-1] == "note_for"
    assert set(ordinary[2:-1]) == {"screen"}  # every released sentence, and the whole reply
    assert crisis == ["check_input", "reply_for"]  # the fixed reply: no model, nothing to screen


# --- bad input, empty messages, Ctrl-C, private transcripts (issue 14) ---------------------


def test_invalid_utf8_on_stdin_gets_the_crisis_reply(tiny_llama_dir: Path, monkeypatch) -> None:
    # `printf '... ending my life \xff\n' | warmline chat MODEL`: the byte used to end the chat.
    monkeypatch.setattr("warmline.safety.SafetyGate", functools.partial(SafetyGate, use_classifier=False))
    raw = b"I have been thinking about ending my life \xff\n"
    result = CliRunner().invoke(cli.app, ["chat", str(tiny_llama_dir), "--locale", "uk"], input=raw)
    assert result.exit_code == 0, result.output
    message = "I have been thinking about ending my life \ufffd"
    crisis = crisis_reply(assess([{"role": "user", "content": message}], use_classifier=False), "uk")
    assert "Samaritans" in crisis and result.stdout == f"{crisis}\n"


class GatedEcho:
    """The real gate flow (`turn`, a real SafetyGate) over a scripted text source."""

    def __init__(self) -> None:
        self.settings = GenerationSettings()
        self.gate = SafetyGate(use_classifier=False)

    def stream(self, conversation, *, seed=None, result=None, **overrides):
        from warmline.safety.gate import turn

        return turn(
            conversation, lambda: ["Thank you", "Thank you for telling me."], gate=self.gate, result=result
        )


def chat_on(raw: bytes) -> tuple[str, str]:
    """run_chat on `raw` bytes as stdin (decoded strictly as UTF-8, like a pipe): (stdout, stderr)."""
    import io

    from warmline.serving.chat import run_chat

    stdin = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", errors="strict", newline=None)
    stdout, stderr = io.StringIO(), io.StringIO()
    run_chat(GatedEcho(), system_prompt="Be kind.", stdin=stdin, stdout=stdout, stderr=stderr)
    return stdout.getvalue(), stderr.getvalue()


_long = st.builds(
    lambda c, n: c * n,
    st.sampled_from(["a", "\x00", "é", "\udc80", "💀", " ", "kill "]),
    st.integers(90_000, 110_000),
)
_text = st.one_of(st.text(), st.text(st.characters(codec=None, categories=["Cc", "Cs", "Zs", "Co"])), _long)


@settings(max_examples=40, deadline=None)
@given(st.one_of(_text.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=400)))
def test_any_input_gets_a_reply_and_never_raises(raw: bytes) -> None:
    stdout, stderr = chat_on(b"I feel " + raw + b"\n")
    # The first line starts with words, so it always gets a reply (the model's or a crisis one).
    assert stdout.strip(), stderr
    assert "Traceback" not in stderr


def test_empty_and_blank_messages_are_not_sent_to_the_model(echo: EchoGenerator) -> None:
    from warmline.serving.chat import EMPTY_MESSAGE

    result = run(["   ", "\t", "hello"])
    assert [c[-1]["content"] for c in echo.conversations] == ["hello"]
    assert result.stderr.count(EMPTY_MESSAGE) == 2 and result.stdout == "reply 1: hello\n"


def test_save_is_owner_only_and_asks_before_replacing(echo: EchoGenerator, tmp_path: Path) -> None:
    import os
    import stat

    old_umask = os.umask(0o022)  # the usual umask: files 0644 and folders 0755 unless we choose
    try:
        target = tmp_path / "private" / "nested" / "t.json"
        run(["one", f"/save {target}"])
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(target.parent.parent.stat().st_mode) == 0o700
        first = target.read_text()

        result = run(["one", "two", f"/save {target}", "n"])  # answered no: the file stays
        assert target.read_text() == first and "not saved" in result.stderr
        result = run(["one", "two", f"/save {target}"])  # no answer at all (end of input): no
        assert target.read_text() == first

        target.chmod(0o644)
        run(["one", "two", f"/save {target}", "y"])
        assert [t["content"] for t in json.loads(target.read_text())["messages"] if t["role"] == "user"] == [
            "one",
            "two",
        ]
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)


_SLOW_CHAT = """
import json, signal, sys, time
# Start as a background job of a shell without job control starts (and as the whole suite does
# when it is run with `&`): SIGINT ignored, inherited by every child. The chat must re-arm it.
signal.signal(signal.SIGINT, signal.SIG_IGN)
from warmline.safety import SafetyGate
from warmline.serving.chat import run_chat
from warmline.serving.generator import GenerationSettings, Generator

gen = Generator.from_pretrained(sys.argv[1], gate=SafetyGate(use_classifier=False),
                                settings=GenerationSettings(max_new_tokens=400), fp16_decode=False)
tokens = gen.engine.tokens

def slow_tokens(*args, **kwargs):  # a deliberately slow engine: Ctrl-C lands mid-reply
    for n, token in enumerate(tokens(*args, **kwargs)):
        if n == 0:
            print("FIRST_TOKEN", file=sys.stderr, flush=True)
        time.sleep(0.05)
        yield token
    while True:  # a reply that only Ctrl-C ends, however late the signal comes
        time.sleep(1)

gen.engine.tokens = slow_tokens
gen.engine.stop_token_ids = set()  # no early end of the reply
session = run_chat(gen, system_prompt=None, seed=0)
print("CONVERSATION " + json.dumps(session.conversation), file=sys.stderr, flush=True)
"""


def test_ctrl_c_stops_the_reply_and_keeps_the_message(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A real chat process started with SIGINT ignored (see _SLOW_CHAT): Ctrl-C mid-reply stops the
    reply, prints the notice and keeps the message; the chat goes on to read /quit."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "slow_chat.py"
    script.write_text(_SLOW_CHAT)
    child = subprocess.Popen(
        [sys.executable, str(script), str(tiny_llama_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        child.stdin.write("I feel lonely.\n")
        child.stdin.flush()
        seen = ""
        while "FIRST_TOKEN" not in seen:  # the reply is being generated
            line = child.stderr.readline()
            assert line, f"the chat ended early: {seen}"
            seen += line
        child.send_signal(signal.SIGINT)
        out, err = child.communicate("/quit\n", timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert "reply stopped" in err
    conversation = json.loads(err.split("CONVERSATION ", 1)[1])
    assert [t["role"] for t in conversation] == ["user", "assistant"]
    assert conversation[0]["content"] == "I feel lonely."
    assert conversation[1]["content"] == out.strip()  # what was shown is what is kept
