"""Read raw rows from a stage's source: a Hugging Face hub id, or local files and folders."""

from __future__ import annotations

import codecs
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
    """Rows (lines, list items, CSV records) that could not be read, by reason."""
    files_skipped: dict[str, int] = field(default_factory=dict)
    """Files in a source folder that are not data files, by suffix (e.g. {".txt": 2})."""
    files_with_undecodable_bytes: int = 0

    @property
    def rows_read(self) -> int:
        """Every row seen, readable or not: rows kept here plus rows dropped while reading."""
        return len(self.rows) + sum(self.dropped.values())


def is_local(source: str) -> bool:
    """A source is local when it exists on disk or looks like a path rather than a hub id."""
    from warmline.models import looks_like_local_path

    p = Path(source).expanduser()
    return p.exists() or p.suffix.lower() in LOCAL_SUFFIXES or looks_like_local_path(source)


def read_source(source: str, *, split: str = "train", subset: str | None = None) -> RawRows:
    """Read every row of a source into plain dicts."""
    if is_local(source):
        return _read_local(Path(source).expanduser())
    return _read_hub(source, split=split, subset=subset)


def _read_local(path: Path) -> RawRows:
    if not path.exists():
        raise SourceError(
            f"data source not found: {path} (no such file or folder; paths are relative to the working "
            "directory or the recipe's folder)"
        )
    skipped: dict[str, int] = {}
    if path.is_dir():
        files = []
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            if p.suffix.lower() in LOCAL_SUFFIXES:
                files.append(p)
            elif not p.name.startswith("."):  # hidden files (.gitattributes, .DS_Store) are not data
                suffix = p.suffix.lower() or "(no suffix)"
                skipped[suffix] = skipped.get(suffix, 0) + 1
        if skipped:
            logger.warning("%s: skipped files that are not data files: %s", path, skipped)
        if not files:
            found = f"; it holds {', '.join(f'{n} {k}' for k, n in skipped.items())} files" if skipped else ""
            raise SourceError(
                f"folder {path} holds no data files (looked for {', '.join(sorted(LOCAL_SUFFIXES))}{found})"
            )
    else:
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            raise SourceError(
                f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(sorted(LOCAL_SUFFIXES))}"
            )
        files = [path]
    out = RawRows(rows=[], files=[str(f) for f in files], files_skipped=skipped)
    columns: dict[str, None] = {}
    for f in files:
        rows, dropped = _read_file(f)
        out.files_with_undecodable_bytes += dropped.pop(_UNDECODABLE_FILE, 0)
        for reason, n in dropped.items():
            out.dropped[reason] = out.dropped.get(reason, 0) + n
        for r in rows:
            columns.update(dict.fromkeys(r))
        out.rows.extend(rows)
    out.columns = list(columns)
    return out


_UNDECODABLE_FILE = "\x00file_had_undecodable_bytes"  # a per-file note, not a row: moved out by the caller
_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _decode(path: Path, dropped: dict[str, int]) -> str:
    data = path.read_bytes()
    for bom, encoding in _BOMS:
        # A byte-order mark says exactly how the file is encoded (Windows "Unicode" saves UTF-16).
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as err:
                raise SourceError(
                    f"{path}: starts with a {encoding.upper()} byte-order mark but is not "
                    f"valid {encoding.upper()} ({err.reason}); save it as UTF-8"
                ) from err
    if data.count(b"\x00") > len(data) // 4:  # every other byte NUL: UTF-16 text without its mark
        raise SourceError(
            f"{path}: looks like UTF-16 text without a byte-order mark (NUL bytes between characters); "
            "save it as UTF-8"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Keep the readable rows: undecodable bytes become U+FFFD and the row is dropped later
        # by the cleaner ("undecodable"), counted, instead of failing the whole file.
        dropped[_UNDECODABLE_FILE] = 1
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
    if stripped[0] == "[" or (
        path.suffix.lower() == ".json" and stripped[0] == "{" and "\n{" not in stripped
    ):
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
    first_bad: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            dropped["invalid_json_line"] = dropped.get("invalid_json_line", 0) + 1
            first_bad = first_bad or (number, line.strip())
            continue
        if isinstance(item, dict):
            rows.append(item)
        else:
            dropped["not_an_object"] = dropped.get("not_an_object", 0) + 1
    if not rows and first_bad:
        # No line parsed: the file is not JSON Lines at all. Say what it is instead of letting the
        # format check report "column not found (found: nothing)".
        number, line = first_bad
        if _is_concatenated_json(text):
            raise SourceError(
                f"{path}: pretty-printed JSON, not JSON Lines (objects span several lines); write one object "
                "per line, or save the rows as a JSON list in a .json file"
            )
        raise SourceError(
            f"{path}: no line is valid JSON (line {number} starts {line[:40]!r}); JSON Lines needs one object per line"
        )
    return rows, dropped


def _is_concatenated_json(text: str) -> bool:
    """True when the text is one or more JSON values one after another (pretty-printed objects)."""
    decoder, pos, n = json.JSONDecoder(), 0, 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return n > 0
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return False
        n += 1


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
