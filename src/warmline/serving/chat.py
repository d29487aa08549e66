"""Multi-turn chat in the terminal, streamed: `warmline chat MODEL`.

Only the replies go to stdout (so `warmline chat MODEL > replies.txt` keeps just them); the AI
notice, the prompt, command feedback and, with --verbose, timings go to stderr. Nothing is
written to disk unless the user asks with `/save FILE` (owner-only: the file 0600, a folder it
creates 0700; an existing file is replaced only when the user answers y).

Input is read tolerant of invalid UTF-8 and cleaned at this boundary (`clean`): nothing a user
types or pipes in can crash the gate; the repairs are counted on the gate, never logged as text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from warmline.data.formats import Conversation
from warmline.safety.normalise import clean
from warmline.safety.notice import SessionNotice
from warmline.serving.generator import GenerationResult, Generator

logger = logging.getLogger(__name__)

HELP = "Commands: /reset (start over), /save FILE (write this conversation to FILE), /quit (or Ctrl-D)."
USER_PROMPT = "you> "
EMPTY_MESSAGE = "(Type what's on your mind and press Enter; /help lists the commands.)"


@dataclass
class ChatSession:
    """One terminal conversation: the system turn, then alternating user and assistant turns."""

    system_prompt: str | None
    conversation: Conversation = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.conversation:  # a conversation passed in is kept (resumed), not replaced
            self.reset()

    def reset(self) -> None:
        """Forget every turn but the system prompt."""
        self.conversation = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []

    @property
    def turns(self) -> int:
        """User turns so far."""
        return sum(1 for t in self.conversation if t["role"] == "user")


def save_transcript(
    path: Path, conversation: Conversation, *, model: str, locale: str, overwrite: bool = False
) -> None:
    """Write the conversation as JSON ({"model", "locale", "messages"}); "messages" is warmline's format.

    Owner-only: the file is created 0600 and folders this creates 0700 (a transcript of a
    mental-health chat is nobody else's to read). An existing file raises FileExistsError
    unless ``overwrite``.
    """
    make_private_dirs(path.parent)
    data = json.dumps(
        {"model": model, "locale": locale, "messages": conversation}, indent=2, ensure_ascii=False
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an overwritten file keeps its old mode otherwise
        os.write(fd, (data + "\n").encode("utf-8", "replace"))
    finally:
        os.close(fd)


def make_private_dirs(folder: Path) -> None:
    """Create `folder` and any missing parents as 0700; existing folders are left as they are."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(mode=0o700, exist_ok=True)
        os.chmod(new, 0o700)  # mkdir's mode is reduced by the umask


@contextlib.contextmanager
def _ctrl_c_interrupts() -> Iterator[None]:
    """While the chat runs, Ctrl-C (SIGINT) raises KeyboardInterrupt, even when the process
    started with SIGINT ignored: a shell without job control starts every background job that
    way (`warmline chat ... &`, `nohup make test &` in a script) and children inherit it, so
    Ctrl-C would neither stop a reply nor quit. A handler the caller installed is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers, and only it receives them
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous not in (signal.SIG_IGN, signal.SIG_DFL):  # Python's default_int_handler, or the caller's own
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@_ctrl_c_interrupts()  # each call: Ctrl-C stops a reply (keeping the message) or quits at the prompt
def run_chat(
    generator: Generator,
    *,
    system_prompt: str | None,
    seed: int | None = None,
    model_name: str = "",
    locale: str = "us",
    verbose: bool = False,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    notice: SessionNotice | None = None,
) -> ChatSession:
    """Read user lines until /quit or end of input, streaming each reply to stdout.

    The AI notice goes to stderr at the start and again before a reply once 3 hours of use
    have passed (``notice``: a ``SessionNotice``, with a fake clock in tests).
    """
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    _tolerate_invalid_bytes(stdin)
    gate = getattr(generator, "gate", None)
    notice = notice or SessionNotice()
    print(notice.due() or "", file=stderr)
    print(HELP, file=stderr)
    session = ChatSession(system_prompt)
    while True:
        stderr.write(USER_PROMPT)
        stderr.flush()
        try:
            line = _read_line(stdin)
        except KeyboardInterrupt:  # Ctrl-C at the prompt quits
            stderr.write("\n")
            break
        if not line:  # end of input (Ctrl-D)
            stderr.write("\n")
            break
        message, repairs = clean(line)  # invalid bytes, lone surrogates, control characters
        message = message.strip()
        if repairs and gate is not None:
            gate.count_repairs(repairs)
        if not message:
            if line.strip("\r\n"):  # only spaces: say what to do rather than ask the model
                print(EMPTY_MESSAGE, file=stderr)
            continue
        if message.startswith("/"):
            if not _command(
                message, session, model_name=model_name, locale=locale, stdin=stdin, stderr=stderr
            ):
                break
            continue
        conversation = session.conversation + [{"role": "user", "content": message}]
        if repeat := notice.due():  # 3 hours of continued use since the last notice
            print(repeat, file=stderr)
        result = GenerationResult()
        shown = ""
        try:
            for piece in generator.stream(conversation, seed=seed, result=result):
                stdout.write(piece)
                stdout.flush()
                shown += piece
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the chat
            stdout.write("\n")
            stdout.flush()
            # The user's message stays, with the part of the reply they saw (screened sentences
            # only): the next turn answers in context, and the roles keep alternating.
            session.conversation = conversation + [{"role": "assistant", "content": shown.strip()}]
            print("(reply stopped; your message is kept)", file=stderr)
            continue
        stdout.write("\n")
        stdout.flush()
        session.conversation = conversation + [{"role": "assistant", "content": result.text}]
        if verbose:
            print(_timings(result), file=stderr)
    return session


def _tolerate_invalid_bytes(stdin: TextIO) -> None:
    """Read invalid UTF-8 as escaped bytes (repaired by `clean`) instead of raising mid-chat."""
    reconfigure = getattr(stdin, "reconfigure", None)
    if reconfigure is not None and getattr(stdin, "errors", "strict") == "strict":
        try:
            reconfigure(errors="surrogateescape")
        except (ValueError, OSError):  # pragma: no cover - a stream that cannot change
            pass


def _read_line(stdin: TextIO) -> str:
    """One line of input, with line editing and history at an interactive terminal; "" at the end."""
    if stdin is sys.stdin and stdin.isatty():
        try:
            import readline  # noqa: F401 - enables editing and history for input()
        except ImportError:  # pragma: no cover - Windows
            pass
        try:
            return input() + "\n"
        except EOFError:
            return ""
    return stdin.readline()


def _command(
    message: str, session: ChatSession, *, model_name: str, locale: str, stdin: TextIO, stderr: TextIO
) -> bool:
    """Run a /command; False means quit."""
    name, _, arg = message.partition(" ")
    arg = arg.strip()
    if name in ("/quit", "/exit", "/q"):
        return False
    if name == "/reset":
        session.reset()
        print("(conversation cleared)", file=stderr)
    elif name == "/save":
        if not arg:
            print("usage: /save FILE", file=stderr)
            return True
        path = Path(arg).expanduser()
        overwrite = False
        if path.exists():
            stderr.write(f"{arg} exists. Replace it? [y/N] ")
            stderr.flush()
            try:
                answer = clean(_read_line(stdin))[0].strip().lower()
            except KeyboardInterrupt:
                answer = ""
            if answer not in ("y", "yes"):
                print("(not saved; /save NEW_FILE picks another name)", file=stderr)
                return True
            overwrite = True
        try:
            save_transcript(path, session.conversation, model=model_name, locale=locale, overwrite=overwrite)
        except OSError as err:
            print(f"could not save to {arg}: {err.strerror or err}", file=stderr)
        else:
            print(f"(saved {session.turns} turns to {arg})", file=stderr)
    elif name in ("/help", "/?"):
        print(HELP, file=stderr)
    else:
        print(f"unknown command {name}. {HELP}", file=stderr)
    return True


def _timings(result: GenerationResult) -> str:
    return (
        f"[{result.stop_reason}: {result.new_tokens} tokens, prompt {result.prompt_tokens} tokens, "
        f"first token {result.ttft_s * 1000:.0f} ms, {result.tokens_per_s:.1f} tokens/s, "
        f"total {result.duration_s:.2f} s]"
    )
