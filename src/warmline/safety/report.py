"""Crisis referral counts an operator can export: counts only, never message text.

`warmline chat|serve --safety-counts FILE` writes the safety gate's counters
(``SafetyGate.snapshot``) to FILE every minute and at exit, added to the counts already in it,
so the file covers every run that wrote to it. `warmline safety report FILE` turns it into
JSON or CSV per level, reply kind, category and language.

The file holds integers keyed by event name and two timestamps, nothing else: no message
text, no session ids, no times of individual events. It is written owner-only (0600).

    {"format": "warmline-safety-counts", "version": 1,
     "started": "2026-12-01T12:00:00+00:00", "updated": "2026-12-01T13:00:00+00:00",
     "counts": {"assessments": 120, "crisis_replies": 3, "crisis_kind:suicide": 2, ...}}
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from warmline.safety.levels import CATEGORIES, LANGUAGES, REPLY_KINDS, RiskLevel

logger = logging.getLogger(__name__)

FORMAT = "warmline-safety-counts"
VERSION = 1
WRITE_EVERY_S = 60.0
"""How often ``CountsWriter`` rewrites the file while serving."""


class ReportFormat(StrEnum):
    """What `warmline safety report` writes."""

    JSON = "json"
    CSV = "csv"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_counts(path: str | Path) -> dict[str, Any]:
    """The counts file at ``path`` as a dict (``format``, ``version``, ``started``, ``updated``, ``counts``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"safety counts file not found: {path} (write one with `warmline serve MODEL --safety-counts {path}`)"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not a safety counts file ({error}); it is written by --safety-counts"
        ) from None
    counts = data.get("counts") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or not isinstance(counts, dict)
        or not all(isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in counts.items())
    ):
        raise ValueError(
            f"{path} is not a safety counts file (format {FORMAT!r} with integer counts expected)"
        )
    return data


def write_counts(path: str | Path, counts: Mapping[str, int], *, started: str | None = None) -> None:
    """Write ``counts`` to ``path`` atomically, readable by its owner only (0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": FORMAT,
        "version": VERSION,
        "started": started or _now(),
        "updated": _now(),
        "counts": dict(sorted(counts.items())),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    # Created 0600 from the start (not chmod-ed after), so no other user can ever read it.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2) + "\n")
    os.chmod(tmp, 0o600)  # an existing tmp file keeps its old mode through O_CREAT
    os.replace(tmp, path)


class CountsWriter:
    """Writes a gate's counters to a file every ``interval_s`` and at exit, on top of the
    counts the file already held (so restarts add up)."""

    def __init__(
        self, path: str | Path, snapshot: Callable[[], Mapping[str, int]], interval_s: float = WRITE_EVERY_S
    ) -> None:
        self.path = Path(path)
        self.snapshot = snapshot
        self.interval_s = interval_s
        previous = read_counts(self.path) if self.path.exists() else None
        self.base: Counter[str] = Counter(previous["counts"] if previous else {})
        self.started = previous["started"] if previous else _now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> CountsWriter:
        """Write now, then every ``interval_s`` in a background thread and once more at exit."""
        self.flush()
        self._thread = threading.Thread(target=self._run, name="safety-counts", daemon=True)
        self._thread.start()
        atexit.register(self.flush)
        logger.info("writing safety counts (counts only, no text) to %s", self.path)
        return self

    def flush(self) -> None:
        """Write the file now: the earlier runs' counts plus this run's."""
        with self._lock:
            write_counts(self.path, self.base + Counter(self.snapshot()), started=self.started)

    def stop(self) -> None:
        """Stop the timer and write a last time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        atexit.unregister(self.flush)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
            except OSError as error:  # a full disk must not take the chat down
                logger.warning("could not write safety counts to %s: %s", self.path, error)


def summarise(data: Mapping[str, Any]) -> dict[str, Any]:
    """The counts grouped for an operator: totals, and per level, reply kind, category, language.

    Every level, reply kind and language appears (0 when none), so reports line up over time.
    """
    counts: Mapping[str, int] = data["counts"]

    def group(prefix: str, names: tuple[str, ...] = ()) -> dict[str, int]:
        found = {key[len(prefix) :]: value for key, value in counts.items() if key.startswith(prefix)}
        return {name: found.get(name, 0) for name in names} | dict(sorted(found.items()))

    return {
        "started": data.get("started"),
        "updated": data.get("updated"),
        "assessments": counts.get("assessments", 0),
        "by_level": group("level:", tuple(str(level) for level in RiskLevel)),
        "crisis_replies": counts.get("crisis_replies", 0),
        "crisis_replies_by_level": group("crisis_replies:", ("elevated", "imminent")),
        "crisis_replies_by_kind": group("crisis_kind:", tuple(kind for kind, _ in REPLY_KINDS)),
        "crisis_replies_by_category": {k: v for k, v in group("crisis_category:", CATEGORIES).items() if v},
        "crisis_replies_by_language": group("crisis_language:", LANGUAGES),
        "distress_notes": counts.get("distress_notes", 0),
        "screened_outputs": counts.get("screened_outputs", 0),
        "screened_outputs_by_reason": group("screened_outputs:"),
    }


def format_report(data: Mapping[str, Any], fmt: ReportFormat | str = ReportFormat.JSON) -> str:
    """The report as JSON (``summarise``) or CSV rows ``group,name,count``."""
    summary = summarise(data)
    if fmt == ReportFormat.JSON:
        return json.dumps(summary, indent=2) + "\n"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "name", "count"])
    for key, value in summary.items():
        if isinstance(value, dict):
            writer.writerows([key, name, count] for name, count in value.items())
        elif isinstance(value, int):
            writer.writerow(["total", key, value])
        elif value is not None:
            writer.writerow(["period", key, value])
    return out.getvalue()
