"""From a stage's source to clean, de-duplicated train/validation conversations.

Nothing is dropped silently: every dropped row is counted under a reason.
"""

from __future__ import annotations

import hashlib
import html
import logging
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from warmline.data.formats import (
    CONVERTERS,
    Conversation,
    FormatError,
    check_columns,
    detect_format,
    format_context,
)
from warmline.data.sources import read_source
from warmline.recipe import StageConfig

logger = logging.getLogger(__name__)

_HTML_TAG = re.compile(
    r"</?(?:p|br|div|span|b|i|em|strong|u|a|li|ul|ol|h[1-6])(?:\s[^<>]*)?/?>", re.IGNORECASE
)
_HTML_ENTITY = re.compile(r"&(?:[a-zA-Z]{2,8}|#\d{1,6}|#x[0-9a-fA-F]{1,6});")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass
class StageData:
    """A stage's conversations after cleaning, with the bookkeeping `data inspect` prints."""

    name: str
    format: str
    train: list[Conversation]
    validation: list[Conversation]
    rows_read: int = 0
    """Every row seen, including rows that could not be parsed: read = dropped + duplicates + kept + cut."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows that could not be used, by reason."""
    cleaned: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    files: list[str] = field(default_factory=list)
    cut_by_max_rows: int = 0
    """Usable training rows left out because the stage's `max_rows` asked for fewer (not dropped)."""
    files_skipped: dict[str, int] = field(default_factory=dict)
    """Files in a source folder that are not data files, by suffix."""
    files_with_undecodable_bytes: int = 0

    @property
    def kept(self) -> int:
        return len(self.train) + len(self.validation)

    def stats(self) -> dict:
        return {
            "name": self.name,
            "format": self.format,
            "rows_read": self.rows_read,
            "dropped": dict(self.dropped),
            "cleaned": dict(self.cleaned),
            "duplicates": self.duplicates,
            "cut_by_max_rows": self.cut_by_max_rows,
            "kept": self.kept,
            "train_rows": len(self.train),
            "validation_rows": len(self.validation),
            "files": self.files,
            "files_skipped": dict(self.files_skipped),
            "files_with_undecodable_bytes": self.files_with_undecodable_bytes,
        }


def clean_text(text: str, cleaned: Counter) -> str | None:
    """Normalise one turn's text; None (with no count) means nothing is left."""
    if "\ufffd" in text:
        return None
    original = text
    text = unicodedata.normalize("NFC", text)
    had_html = bool(_HTML_TAG.search(text) or _HTML_ENTITY.search(text))
    if had_html:
        text = _HTML_TAG.sub(
            lambda m: "\n" if m.group(0).lower().startswith(("<br", "</p", "<p")) else "", text
        )
        text = html.unescape(text)
        cleaned["html_removed"] += 1
    text = _CONTROL.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _BLANK_LINES.sub("\n\n", "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n")))
    text = text.strip()
    if text != original.strip() and not had_html:  # this turn's change, not an earlier turn's
        cleaned["whitespace_normalised"] += 1
    return text or None


def clean_conversation(conv: Conversation, cleaned: Counter) -> Conversation | str:
    """Clean every turn; return the reason when the conversation can't be used."""
    out: Conversation = []
    for turn in conv:
        if "\ufffd" in turn["content"]:
            return "undecodable"
        text = clean_text(turn["content"], cleaned)
        if text is None:
            return "empty_turn"
        out.append({"role": turn["role"], "content": text})
    body = [t for t in out if t["role"] != "system"]
    if not body or body[0]["role"] != "user":
        return "does_not_start_with_user"
    if out[-1]["role"] != "assistant":
        return "no_final_assistant_turn"
    for a, b in zip(body, body[1:], strict=False):
        if a["role"] == b["role"]:
            return "roles_do_not_alternate"
    return out


def normalise_for_dedup(text: str) -> str:
    """Case-, punctuation- and whitespace-insensitive form used to find duplicates."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def conversation_key(conv: Conversation) -> str:
    return "\x1f".join(
        f"{t['role']}:{normalise_for_dedup(t['content'])}" for t in conv if t["role"] != "system"
    )


def prompt_key(conv: Conversation) -> str:
    """Group key for the split: the first user turn, normalised."""
    first_user = next(t["content"] for t in conv if t["role"] == "user")
    return normalise_for_dedup(first_user)


def grouped_split(
    convs: list[Conversation], validation_fraction: float, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """Split so that all answers to one prompt land on the same side."""
    if validation_fraction <= 0 or len(convs) < 2:
        return list(convs), []
    groups: dict[str, list[Conversation]] = {}
    for conv in convs:
        groups.setdefault(prompt_key(conv), []).append(conv)
    # Order groups by a seeded hash: stable across runs and independent of input order.
    order = sorted(groups, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    n_val_groups = max(1, round(validation_fraction * len(order))) if len(order) > 1 else 0
    val_keys = set(order[:n_val_groups])
    train = [c for k in order if k not in val_keys for c in groups[k]]
    validation = [c for k in order if k in val_keys for c in groups[k]]
    return train, validation


def first_sentences(text: str, n: int) -> str:
    """The text up to the end of its n-th sentence (nltk's Punkt boundaries), original spacing kept."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    # Punkt's default parameters need no downloaded model: boundaries after ., ! and ? with its
    # orthographic heuristics (an ellipsis mid-sentence is not one); the whole text when shorter.
    spans = list(PunktSentenceTokenizer().span_tokenize(text))
    return text if len(spans) <= n else text[: spans[n - 1][1]]


@lru_cache(maxsize=1)
def _crisis_line_pattern() -> re.Pattern:
    """Any crisis line of the packaged resources (its number as written, e.g. 988, 116 123) or
    findahelpline.com: the one registry the safety replies read."""
    from warmline.safety.replies import load_resources

    numbers = {
        number
        for locale in load_resources().values()
        for line in locale.crisis
        for number in re.findall(r"\d[\d ]*\d", line.contact)
    }
    alternatives = sorted((re.escape(n) for n in numbers), key=len, reverse=True)
    return re.compile(r"findahelpline\.com|(?<!\d)(?:" + "|".join(alternatives) + r")(?!\d)", re.IGNORECASE)


def shorten_replies(convs: list[Conversation], max_sentences: int, counts: Counter) -> list[Conversation]:
    """Every assistant turn cut to its first `max_sentences` sentences (new lists; counted by turn).

    A reply whose cut-off part names a crisis line stays whole (counted apart): training must
    never teach a reply to someone at risk that drops the safety question and the lines."""
    out = []
    for conv in convs:
        turns = []
        for turn in conv:
            if turn["role"] == "assistant":
                short = first_sentences(turn["content"], max_sentences)
                if short != turn["content"]:
                    if _crisis_line_pattern().search(turn["content"][len(short) :]):
                        counts["reply_kept_whole_for_its_crisis_lines"] += 1
                    else:
                        counts["reply_cut_to_max_reply_sentences"] += 1
                        turn = {**turn, "content": short}
            turns.append(turn)
        out.append(turns)
    return out


def prepare_stage(stage: StageConfig, *, seed: int, system_prompt: str | None = None) -> StageData:
    """Read, convert, clean, de-duplicate and split one stage's data (a dpo stage's: its pairs,
    `data.preferences.prepare_preference_stage`)."""
    if stage.method == "dpo":
        from warmline.data.preferences import prepare_preference_stage

        return prepare_preference_stage(stage, seed=seed, system_prompt=system_prompt)
    raw = read_source(stage.source, split=stage.split, subset=stage.subset)
    fmt = stage.format
    if fmt == "auto":
        fmt = detect_format(raw.columns)
        logger.info("stage '%s': detected format '%s' from columns %s", stage.name, fmt, raw.columns)
    if fmt not in CONVERTERS:  # detected preference pairs in an sft stage
        raise FormatError(
            f"stage '{stage.name}': {', '.join(raw.files) or stage.source} holds preference pairs (format {fmt}); "
            "train on them with `method: dpo`"
        )
    where = ", ".join(raw.files) if raw.files else stage.source
    check_columns(fmt, raw.columns, stage.columns, where)
    rows = raw.rows
    dropped: Counter = Counter(raw.dropped)
    cleaned: Counter = Counter()
    convert = CONVERTERS[fmt]
    ctx = format_context(fmt, rows, stage.columns)
    seen: set[str] = set()
    duplicates = 0
    kept: list[Conversation] = []
    system = stage.system_prompt if stage.system_prompt is not None else system_prompt
    for row in rows:
        conv = convert(row, stage.columns, ctx)
        if isinstance(conv, str):
            dropped[conv] += 1
            continue
        conv = clean_conversation(conv, cleaned)
        if isinstance(conv, str):
            dropped[conv] += 1
            continue
        key = conversation_key(conv)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        if system and conv[0]["role"] != "system":
            conv = [{"role": "system", "content": system}, *conv]
        kept.append(conv)
    train, validation = grouped_split(kept, stage.validation_fraction, seed)
    cut = 0
    if stage.max_rows is not None and len(train) > stage.max_rows:
        cut = len(train) - stage.max_rows  # usable rows the recipe chose not to train on: not "dropped"
        train = random.Random(seed).sample(train, stage.max_rows)
    if stage.max_reply_sentences is not None:
        # Training rows only: the held-out replies stay the source's, so validation loss and the
        # reference replies of `warmline eval` measure against the data as it was written.
        train = shorten_replies(train, stage.max_reply_sentences, cleaned)
    data = StageData(
        name=stage.name,
        format=fmt,
        train=train,
        validation=validation,
        rows_read=raw.rows_read,
        dropped=dict(dropped),
        cleaned=dict(cleaned),
        duplicates=duplicates,
        files=raw.files,
        cut_by_max_rows=cut,
        files_skipped=dict(raw.files_skipped),
        files_with_undecodable_bytes=raw.files_with_undecodable_bytes,
    )
    if dropped or duplicates:
        logger.info("stage '%s': dropped %s, duplicates %d", stage.name, dict(dropped), duplicates)
    return data


def data_problems(data: StageData, stage_key: str, *, global_batch_size: int, epochs: float) -> list[str]:
    """Why a stage's data can't train (empty list when it can): each a line naming the stage's key.

    Checked before any model is loaded. `stage_key` is the recipe key, e.g. `stages.0`."""
    where = ", ".join(data.files) or "the source"
    problems = []
    if not data.kept:
        reasons = ", ".join(f"{k}: {n}" for k, n in sorted(data.dropped.items())) or "none kept"
        problems.append(
            f"'{stage_key}' ({data.name}): all {data.rows_read} rows of {where} were dropped ({reasons}"
            f"{f', duplicates: {data.duplicates}' if data.duplicates else ''}); check the stage's format and columns"
        )
        return problems
    if not data.validation:
        problems.append(
            f"'{stage_key}' ({data.name}): no validation rows ({data.kept} usable rows of {where} in "
            f"{len({prompt_key(c) for c in data.train})} prompt group(s)); every stage needs held-out rows: "
            f"add rows or raise '{stage_key}.validation_fraction'"
        )
    if len(data.train) * epochs < global_batch_size:
        problems.append(
            f"'{stage_key}' ({data.name}): {len(data.train)} training rows x {epochs:g} epochs make less than one "
            f"optimizer step (training.global_batch_size {global_batch_size}); add rows or raise '{stage_key}.epochs'"
        )
    return problems
