"""Opt-in in-app feedback: `warmline serve RUN --feedback DIR`.

With `--feedback DIR` the web app shows a thumbs up and down on each reply, a one-line consent
notice and an "include this conversation" box (unticked). A click appends one JSON line to
DIR/feedback.jsonl: the rating, the model, the time, the generation settings and a random id of
the browser session (so a reply rated twice counts once) and, only when the box is ticked,
the conversation up to the rated reply. Without `--feedback` there are no buttons and nothing
is written. The file is append-only, 0600 in a 0700 folder; no log line ever holds message
text. `warmline eval feedback DIR` summarises it (`warmline.evaluation.ratings`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from warmline.data.formats import Conversation

logger = logging.getLogger(__name__)

FEEDBACK_FILE = "feedback.jsonl"
CONSENT_NOTICE = (
    "Optional: rate a reply with \U0001f44d or \U0001f44e to help improve this service. A rating stores the"
    " rating, the model's name, the time and the generation settings; the conversation is stored only if"
    " you tick \u201cinclude this conversation\u201d."
)
INCLUDE_LABEL = "include this conversation"
Rating = Literal["up", "down", "cleared"]


class FeedbackStore:
    """Appends ratings to FOLDER/feedback.jsonl (0600), one JSON object a line, from many threads."""

    def __init__(self, folder: str | Path, *, model: str):
        from warmline.serving.chat import make_private_dirs

        self.folder = Path(folder)
        self.model = model
        make_private_dirs(self.folder)  # 0700: feedback is the operator's alone
        self.path = self.folder / FEEDBACK_FILE
        self._lock = threading.Lock()

    def record(
        self,
        rating: Rating,
        *,
        settings: dict[str, Any],
        session: str | None = None,
        message_index: int | None = None,
        conversation: Conversation | None = None,
    ) -> dict[str, Any]:
        """Append one rating; `conversation` is stored only when given (the user ticked the box)."""
        if rating not in ("up", "down", "cleared"):
            raise ValueError(f"rating must be 'up', 'down' or 'cleared', got {rating!r}")
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "rating": rating,
            "model": self.model,
            "settings": settings,
            # A hash, so the file never holds Gradio's session token itself.
            "session": hashlib.sha256(session.encode()).hexdigest()[:16] if session else None,
            "message_index": message_index,
            "conversation_included": conversation is not None,
        }
        if conversation is not None:
            entry["conversation"] = conversation
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.fchmod(fd, 0o600)  # the umask cannot widen it, nor an older file's mode
                os.write(fd, line.encode("utf-8", errors="replace"))
            finally:
                os.close(fd)
        logger.info("feedback: %s (conversation included: %s)", rating, conversation is not None)
        return entry


def read_feedback(folder: Path) -> list[dict[str, Any]]:
    """Every record of FOLDER/feedback.jsonl, in order (a torn last line, from a crash, is skipped)."""
    path = Path(folder) / FEEDBACK_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: give the folder passed to `warmline serve RUN --feedback DIR`"
        )
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s:%d is not a JSON line; skipped", path, number)
    return records
