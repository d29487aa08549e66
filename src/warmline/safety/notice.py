"""The AI notice, on a schedule: at the start of every session and again after every 3 hours.

California SB 243 and New York GBL Article 47 ask a companion chatbot to say clearly that it
is an AI, not a person, at the start of an interaction and at least every three hours while
the interaction continues. ``SessionNotice`` decides when; the text is ``replies.AI_NOTICE``
(one copy), with ``REMINDER`` in front of it on the repeats.

    notice = SessionNotice()            # one per session (a terminal chat, a browser session)
    text = notice.due()                 # AI_NOTICE now, then None until 3 hours have passed
    if text:
        show(text)

The clock is injectable so tests move time instead of waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from warmline.safety.replies import AI_NOTICE

NOTICE_INTERVAL_S = 3 * 60 * 60
"""Longest continued use between two notices (SB 243 and GBL Art. 47: every 3 hours)."""
REMINDER = "You have been chatting for a while; it may be a good time for a break."
"""Put before ``AI_NOTICE`` when the notice repeats during continued use."""

Clock = Callable[[], float]


@dataclass
class SessionNotice:
    """When one session next needs the AI notice: at its start, then every ``interval_s``."""

    interval_s: float = NOTICE_INTERVAL_S
    clock: Clock = time.monotonic
    """Seconds, monotonic (``time.monotonic`` by default; a fake in tests)."""
    last_shown: float | None = None
    """Clock time the notice was last shown; None until the session's first notice."""

    def due(self) -> str | None:
        """The notice to show now, and mark it shown; None when it is not due yet."""
        now = self.clock()
        if self.last_shown is None:
            self.last_shown = now
            return AI_NOTICE
        if now - self.last_shown >= self.interval_s:
            self.last_shown = now
            return f"{REMINDER} {AI_NOTICE}"
        return None

    def mark_shown(self) -> None:
        """Record that the notice was shown now by other means (a page's persistent banner)."""
        self.last_shown = self.clock()


@dataclass
class SessionNotices:
    """A ``SessionNotice`` per session id, for a server with many sessions (thread-safe).

    Sessions idle for longer than ``forget_after_s`` are dropped, so the table does not grow
    with every visitor; a dropped session that comes back is new and gets the notice again.
    """

    interval_s: float = NOTICE_INTERVAL_S
    clock: Clock = time.monotonic
    forget_after_s: float = 24 * 60 * 60
    _sessions: dict[str, tuple[SessionNotice, float]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def due(self, session: str, *, shown_at_start: bool = False) -> str | None:
        """The notice ``session`` needs now, if any.

        ``shown_at_start``: the surface shows the notice itself when a session opens (the web
        page's banner), so a new session's first turn needs no repeat of it.
        """
        now = self.clock()
        with self._lock:
            self._forget_idle(now)
            entry = self._sessions.get(session)
            notice = entry[0] if entry else SessionNotice(self.interval_s, self.clock)
            if entry is None and shown_at_start:
                notice.mark_shown()
            self._sessions[session] = (notice, now)
            return notice.due()

    def __len__(self) -> int:
        return len(self._sessions)

    def _forget_idle(self, now: float) -> None:
        stale = [key for key, (_, seen) in self._sessions.items() if now - seen > self.forget_after_s]
        for key in stale:
            del self._sessions[key]


def with_notice(reply: str, notice: str | None) -> str:
    """``reply`` as shown, with a repeated notice in front of it (unchanged when ``notice`` is None)."""
    return f"{notice}\n\n{reply}" if notice else reply


def strip_notice(shown: str) -> str:
    """The reply without a notice that ``with_notice`` put in front (what the model should see)."""
    for notice in (f"{REMINDER} {AI_NOTICE}", AI_NOTICE):
        if shown.startswith(f"{notice}\n\n"):
            return shown[len(notice) + 2 :]
    return shown
