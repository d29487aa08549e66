"""Read raw rows from a stage's source: a Hugging Face hub id, or local files and folders."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
OFFLINE_HELP = (
    "Offline options: use a local copy (a .json, .jsonl, .csv or .parquet file, or a folder of them) "
    "as the stage's `source`, for example the samples shipped in data/ (see recipes/offline.yaml)."
)


class SourceError(ValueError):
    """A source that cannot be read, with a message that says how to fix it."""


@dataclass
class RawRows:
    """Rows read from a source, plus per-file bookkeeping."""

    rows: list[dict[str, Any]]
    files: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)


def is_local(source: str) -> bool:
    """A source is local when it exists on disk or looks like a file path."""
    p = Path(source)
    return p.exists() or p.suffix.lower() in LOCAL_SUFFIXES or source.startswith((".", "/", "~"))


def read_source(source: str, *, split: str = "train", subset: str | None = None) -> RawRows:
    """Read every row of a source into plain dicts."""
    if is_local(source):
        return _read_local(Path(source).expanduser())
    return _read_hub(source, split=split, subset=subset)


def _read_local(path: Path) -> RawRows:
    if not path.exists():
        raise SourceError(f"data source not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES)
        if not files:
            raise SourceError(
                f"folder {path} holds no data files (looked for {', '.join(sorted(LOCAL_SUFFIXES))})"
            )
    else:
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            raise SourceError(
                f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(sorted(LOCAL_SUFFIXES))}"
            )
        files = [path]
    out = RawRows(rows=[], files=[str(f) for f in files])
    columns: dict[str, None] = {}
    for f in files:
        rows, dropped = _read_file(f)
        for reason, n in dropped.items():
            out.dropped[reason] = out.dropped.get(reason, 0) + n
        for r in rows:
            columns.update(dict.fromkeys(r))
        out.rows.extend(rows)
    out.columns = list(columns)
    return out


def _decode(path: Path, dropped: dict[str, int]) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Keep the readable rows: undecodable bytes become U+FFFD and the row is dropped later
        # by the cleaner ("undecodable"), counted, instead of failing the whole file.
        dropped["file_had_undecodable_bytes"] = dropped.get("file_had_undecodable_bytes", 0) + 1
        return data.decode("utf-8", errors="replace")


def _read_file(path: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    kind = LOCAL_SUFFIXES[path.suffix.lower()]
    dropped: dict[str, int] = {}
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist(), dropped
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for bad files
            raise SourceError(f"{path}: not a readable Parquet file ({err})") from err
    text = _decode(path, dropped)
    if kind == "csv":
        import csv
        import io

        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            rows = []
            for row in reader:
                if None in row:  # more cells than header columns
                    dropped["malformed_csv_row"] = dropped.get("malformed_csv_row", 0) + 1
                    continue
                rows.append(dict(row))
        except csv.Error as err:
            raise SourceError(f"{path}: not valid CSV ({err})") from err
        if reader.fieldnames is None:
            raise SourceError(f"{path}: empty CSV file (no header row)")
        return rows, dropped
    stripped = text.lstrip()
    if not stripped:
        raise SourceError(f"{path}: empty file")
    if stripped[0] == "[" or (path.suffix.lower() == ".json" and stripped[0] == "{" and "\n{" not in stripped):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SourceError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
        if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}: take the single list inside
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise SourceError(f"{path}: JSON object must hold exactly one list of rows")
            data = lists[0]
        rows = []
        for item in data:
            if isinstance(item, dict):
                rows.append(item)
            else:
                dropped["not_an_object"] = dropped.get("not_an_object", 0) + 1
        return rows, dropped
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            dropped["invalid_json_line"] = dropped.get("invalid_json_line", 0) + 1
            continue
        if isinstance(item, dict):
            rows.append(item)
        else:
            dropped["not_an_object"] = dropped.get("not_an_object", 0) + 1
    return rows, dropped


def _read_hub(repo_id: str, *, split: str, subset: str | None) -> RawRows:
    from warmline.models import hub_reachable

    if not hub_reachable():
        raise SourceError(
            f"dataset '{repo_id}' is a Hugging Face hub id, and the hub is not reachable from here "
            f"(offline). {OFFLINE_HELP}"
        )
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, subset, split=split)
    except Exception as err:  # noqa: BLE001 - the hub client raises many error types
        raise SourceError(f"could not load dataset '{repo_id}' (split '{split}'): {err}") from err
    return RawRows(rows=list(ds), files=[f"hf://{repo_id}:{split}"], columns=list(ds.column_names))
