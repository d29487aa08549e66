"""Preference pairs for `method: dpo` stages: rows -> (prompt, chosen, rejected) -> tokens.

Three formats, detected from the columns when the stage's format is `auto`:

    preference       TRL's explicit prompt: {prompt, chosen, rejected}; the prompt is a string (one
                     user message) or a message list ending with a user turn; the replies are
                     strings or one-message assistant lists
    chosen_rejected  TRL's implicit prompt: {chosen, rejected} message lists that share the prompt
                     turns and differ in the last assistant turn
    ratings          a rating study (`warmline eval sheet`'s key + the raters' saved answers, in
                     one folder: `read_rating_study`), or rated items {id, prompt, reply_a,
                     reply_b, preference: A | B | tie}; raters of one item merged by majority

Nothing is dropped silently: a row that can't be a pair (missing or empty text, identical
replies, a tie, a prompt that doesn't end with the user) is counted under its reason. The kept
pairs are cleaned like SFT conversations (`cleaning.clean_conversation`), get the recipe's system
prompt, are de-duplicated and split by prompt with the seed; `tokenize_pair` renders them with
the same chat template and labels as SFT stages (`data.tokens`).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmline.data.cleaning import (
    StageData,
    clean_conversation,
    clean_text,
    conversation_key,
    grouped_split,
    normalise_for_dedup,
)
from warmline.data.formats import Conversation, FormatError, check_columns, detect_format, message_turns
from warmline.data.sources import RawRows, is_local, read_source
from warmline.data.tokens import IGNORE_INDEX, TokenizedExample, tokenize_conversation
from warmline.recipe import PREFERENCE_FORMATS, StageConfig

# A truncated pair keeps at least this many reply tokens; a longer prompt drops the pair.
MIN_REPLY_TOKENS = 8


@dataclass
class PreferencePair:
    """A prompt (conversation ending with a user turn) and two replies, the better one first."""

    prompt: Conversation
    chosen: str
    rejected: str

    def chosen_conversation(self) -> Conversation:
        return [*self.prompt, {"role": "assistant", "content": self.chosen}]

    def rejected_conversation(self) -> Conversation:
        return [*self.prompt, {"role": "assistant", "content": self.rejected}]


@dataclass
class PreferenceStageData(StageData):
    """A dpo stage's data: `train`/`validation` hold the chosen conversations (what the forgetting
    matrix and replay read, like any stage's), the pairs hold both replies."""

    train_pairs: list[PreferencePair] = field(default_factory=list)
    validation_pairs: list[PreferencePair] = field(default_factory=list)

    def stats(self) -> dict:
        return {
            **super().stats(),
            "method": "dpo",
            "train_pairs": len(self.train_pairs),
            "validation_pairs": len(self.validation_pairs),
        }


@dataclass
class TokenizedPair:
    """Prompt, chosen and rejected token ids as TRL's DPOTrainer reads them (`*_ids` columns)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: bool = False


# --- rows -> raw pairs -------------------------------------------------------------------------


def _messages(value: Any) -> Conversation | str:
    """A message list as {role, content} turns (role aliases as SFT's `messages` format)."""
    if not isinstance(value, list):
        return "missing_value" if value is None else "not_a_message_list"
    return message_turns(value)


def _prompt(value: Any) -> Conversation | str:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if value is None:
        return "missing_prompt"
    turns = _messages(value)
    if isinstance(turns, str):
        return turns
    if not turns or turns[-1]["role"] != "user":
        return "prompt_does_not_end_with_user"
    return turns


def _reply(value: Any, which: str) -> str:
    """A reply's text, or the reason it has none: a string, or a one-message assistant list."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN (CSV, parquet)
        return f"\x00missing_{which}"
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return "\x00non_text_value"
    turns = _messages(value)
    if isinstance(turns, str):
        return f"\x00{turns}"
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        return "\x00reply_is_not_one_assistant_turn"
    return turns[0]["content"]


def _pair(prompt: Conversation | str, chosen: str, rejected: str) -> PreferencePair | str:
    for part in (prompt, chosen, rejected):
        if isinstance(part, str) and part.startswith("\x00"):
            return part[1:]
    if isinstance(prompt, str):
        return prompt
    return PreferencePair(prompt, chosen, rejected)


def from_preference(row: dict, mapping: dict[str, str]) -> PreferencePair | str:
    """TRL's explicit-prompt format: prompt (string or messages), chosen, rejected."""
    get = lambda key: row.get(mapping.get(key, key))  # noqa: E731 - a column lookup
    return _pair(_prompt(get("prompt")), _reply(get("chosen"), "chosen"), _reply(get("rejected"), "rejected"))


def from_chosen_rejected(row: dict, mapping: dict[str, str]) -> PreferencePair | str:
    """TRL's implicit-prompt format: two message lists sharing the prompt turns."""
    chosen = _messages(row.get(mapping.get("chosen", "chosen")))
    rejected = _messages(row.get(mapping.get("rejected", "rejected")))
    for turns, which in ((chosen, "chosen"), (rejected, "rejected")):
        if turns == "missing_value":
            return f"missing_{which}"
        if isinstance(turns, str):
            return turns
    if chosen == rejected:
        return "identical_chosen_rejected"
    # The prompt is the longest common run of turns, as TRL's `data_utils.extract_prompt` takes
    # it (not imported: TRL takes seconds to import, and `data inspect` needs no trainer).
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    prompt = chosen[:shared]
    if not prompt or prompt[-1]["role"] != "user":
        return "prompt_does_not_end_with_user"
    return _pair(prompt, _reply(chosen[shared:], "chosen"), _reply(rejected[shared:], "rejected"))


def _preference_label(value: Any) -> str | None:
    text = str(value).strip().lower() if value is not None else ""
    return {"a": "A", "b": "B", "tie": "tie", "none": "tie", "": None}.get(text, "?")


def from_ratings(
    rows: list[dict], mapping: dict[str, str], dropped: Counter
) -> tuple[list[PreferencePair], int]:
    """Rated sheet items -> pairs: A/B preferred reply first; raters of one item merged by majority.

    Returns the pairs and the number of rows merged into another rater's item (counted as duplicates)."""
    col = lambda key: mapping.get(key, key)  # noqa: E731 - a column lookup
    items: dict[tuple, list[str]] = {}
    texts: dict[tuple, tuple] = {}
    for index, row in enumerate(rows):
        prompt = _prompt(row.get(col("prompt")))
        reply_a, reply_b = (
            _reply(row.get(col("reply_a")), "reply_a"),
            _reply(row.get(col("reply_b")), "reply_b"),
        )
        label = _preference_label(row.get(col("preference")))
        problem = next((p[1:] for p in (reply_a, reply_b) if p.startswith("\x00")), None)
        if isinstance(prompt, str):
            problem = prompt
        if problem is None and label is None:
            problem = "missing_preference"
        if problem is None and label == "?":
            problem = "unknown_preference"
        if problem:
            dropped[problem] += 1
            continue
        item_id = row.get(col("id"))
        key = (
            (
                str(item_id),
                conversation_key(prompt),
                normalise_for_dedup(reply_a),
                normalise_for_dedup(reply_b),
            )
            if item_id is not None
            else (index,)
        )
        items.setdefault(key, []).append(label)
        texts[key] = (prompt, reply_a, reply_b)
    pairs, merged = [], 0
    for key, votes in items.items():
        merged += len(votes) - 1
        a, b = votes.count("A"), votes.count("B")
        if a == b:
            dropped["tie" if a == 0 else "raters_split"] += 1
            continue
        prompt, reply_a, reply_b = texts[key]
        pairs.append(
            PreferencePair(prompt, reply_a, reply_b) if a > b else PreferencePair(prompt, reply_b, reply_a)
        )
    return pairs, merged


def read_rating_study(source: Path) -> RawRows | None:
    """A rating study as `warmline eval sheet` / the sheet's save button leave it: a folder (or one
    key file) with the sheet key(s) (`key-*.json`, the prompts, the replies and which model was A)
    and the raters' saved answers (`ratings-*.json`). Returns one row per rater answer with the
    `ratings` columns (id, prompt, reply_a, reply_b, preference), or None when `source` holds no key.

    The files are read and unblinded by `evaluation.ratings` (the same reader as `warmline eval
    ratings`); answers for a sheet without its key are counted (`no_key_for_sheet`)."""
    from warmline.evaluation.ratings import load_judgements, load_key
    from warmline.evaluation.sheet import RATINGS_FORMAT, SHEET_FORMAT

    files = sorted(q for q in source.rglob("*.json") if q.is_file()) if source.is_dir() else [source]
    keys: dict[str, Path] = {}
    answers: dict[str, list[Path]] = {}
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        kind = data.get("format") if isinstance(data, dict) else None
        if kind == SHEET_FORMAT:
            keys[str(data.get("sheet_id"))] = path
        elif kind == RATINGS_FORMAT:
            answers.setdefault(str(data.get("sheet_id")), []).append(path)
    if not keys:
        return None
    rows: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    for sheet_id, paths in answers.items():
        if sheet_id not in keys:
            dropped["no_key_for_sheet"] = dropped.get("no_key_for_sheet", 0) + sum(
                len(json.loads(p.read_text(encoding="utf-8")).get("items") or []) for p in paths
            )
    for sheet_id, key_path in keys.items():
        key = load_key(key_path)
        items = {item["item"]: item for item in key["items"]}
        for judgement in load_judgements(answers.get(sheet_id, []), key):
            item = items[judgement.item]
            side = {item["A"]: "A", item["B"]: "B"}.get(judgement.preference, judgement.preference)
            rows.append(
                {
                    "id": f"{sheet_id}:{judgement.item}",
                    "prompt": item["prompt"],
                    "reply_a": (item["replies"].get(item["A"]) or {}).get("text"),
                    "reply_b": (item["replies"].get(item["B"]) or {}).get("text"),
                    "preference": side,
                }
            )
    used = [str(p) for p in [*keys.values(), *(q for ps in answers.values() for q in ps)]]
    return RawRows(
        rows=rows, files=used, columns=["id", "prompt", "reply_a", "reply_b", "preference"], dropped=dropped
    )


def parse_rows(
    fmt: str, rows: list[dict], mapping: dict[str, str], dropped: Counter
) -> tuple[list[PreferencePair], int]:
    """Rows of a preference format -> pairs (dropped rows counted by reason in `dropped`); also
    returns how many rows were merged into others (ratings of one item by several raters)."""
    if fmt == "ratings":
        return from_ratings(rows, mapping, dropped)
    convert = from_preference if fmt == "preference" else from_chosen_rejected
    pairs = []
    for row in rows:
        pair = convert(row, mapping)
        if isinstance(pair, str):
            dropped[pair] += 1
        else:
            pairs.append(pair)
    return pairs, 0


# --- raw pairs -> clean, de-duplicated, split --------------------------------------------------


def clean_pair(pair: PreferencePair, cleaned: Counter) -> PreferencePair | str:
    """Clean every text as SFT turns are cleaned; the reason when the pair can't be used."""
    chosen_conv = clean_conversation(pair.chosen_conversation(), cleaned)
    if isinstance(chosen_conv, str):
        return "empty_text" if chosen_conv == "empty_turn" else chosen_conv
    if "\ufffd" in pair.rejected:
        return "undecodable"
    rejected = clean_text(pair.rejected, cleaned)
    if rejected is None:
        return "empty_text"
    chosen = chosen_conv[-1]["content"]
    if normalise_for_dedup(chosen) == normalise_for_dedup(rejected):
        return "identical_chosen_rejected"
    return PreferencePair(chosen_conv[:-1], chosen, rejected)


def prepare_preference_stage(
    stage: StageConfig, *, seed: int, system_prompt: str | None = None
) -> PreferenceStageData:
    """Read, parse, clean, de-duplicate and split one dpo stage's pairs (grouped by prompt)."""
    local = Path(stage.source).expanduser()
    study = None
    if stage.format in ("ratings", "auto") and is_local(stage.source) and local.exists():
        study = read_rating_study(local)
    raw = study or read_source(stage.source, split=stage.split, subset=stage.subset)
    fmt = stage.format if stage.format != "auto" else detect_format(raw.columns)
    where = ", ".join(raw.files) if raw.files else stage.source
    if fmt not in PREFERENCE_FORMATS:
        raise FormatError(
            f"stage '{stage.name}' (method: dpo) needs preference pairs, but {where} has columns "
            f"{', '.join(raw.columns) or 'none'} (format {fmt}); give it prompt/chosen/rejected columns, "
            "chosen/rejected message lists, or rated sheet items (reply_a, reply_b, preference)"
        )
    check_columns(fmt, raw.columns, stage.columns, where)
    dropped: Counter = Counter(raw.dropped)
    cleaned: Counter = Counter()
    parsed, merged = parse_rows(fmt, raw.rows, stage.columns, dropped)
    system = stage.system_prompt if stage.system_prompt is not None else system_prompt
    seen: set[str] = set()
    duplicates = merged
    kept: list[PreferencePair] = []
    for pair in parsed:
        pair = clean_pair(pair, cleaned)
        if isinstance(pair, str):
            dropped[pair] += 1
            continue
        key = (
            conversation_key(pair.prompt)
            + "\x1e"
            + normalise_for_dedup(pair.chosen)
            + "\x1e"
            + normalise_for_dedup(pair.rejected)
        )
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        if system and pair.prompt[0]["role"] != "system":
            pair = PreferencePair(
                [{"role": "system", "content": system}, *pair.prompt], pair.chosen, pair.rejected
            )
        kept.append(pair)
    # Split the chosen conversations as SFT stages split theirs (by first user turn, seeded), and
    # map each back to its pair: grouped_split returns the very list objects it was given.
    convs = [pair.chosen_conversation() for pair in kept]
    pair_of = {id(conv): pair for conv, pair in zip(convs, kept, strict=True)}
    train_convs, val_convs = grouped_split(convs, stage.validation_fraction, seed)
    train_pairs = [pair_of[id(c)] for c in train_convs]
    validation_pairs = [pair_of[id(c)] for c in val_convs]
    cut = 0
    if stage.max_rows is not None and len(train_pairs) > stage.max_rows:
        cut = len(train_pairs) - stage.max_rows
        train_pairs = random.Random(seed).sample(train_pairs, stage.max_rows)
    return PreferenceStageData(
        name=stage.name,
        format=fmt,
        train=[p.chosen_conversation() for p in train_pairs],
        validation=[p.chosen_conversation() for p in validation_pairs],
        rows_read=raw.rows_read,
        dropped=dict(dropped),
        cleaned=dict(cleaned),
        duplicates=duplicates,
        files=raw.files,
        cut_by_max_rows=cut,
        files_skipped=dict(raw.files_skipped),
        files_with_undecodable_bytes=raw.files_with_undecodable_bytes,
        train_pairs=train_pairs,
        validation_pairs=validation_pairs,
    )


# --- pairs -> tokens ---------------------------------------------------------------------------


def _prompt_and_reply(tokenizer, conv: Conversation) -> tuple[list[int], list[int]]:
    """The SFT tokenisation of prompt + reply, split where the reply's labels start: the prompt
    ids end with the generation prompt (what a reply is generated from), the reply ids are its
    labelled tokens (content + EOS), exactly what an SFT stage trains on."""
    ex = tokenize_conversation(tokenizer, conv, 10**9)
    labelled = [i for i, label in enumerate(ex.labels) if label != IGNORE_INDEX]
    return ex.input_ids[: labelled[0]], ex.input_ids[labelled[0] : labelled[-1] + 1]


def tokenize_pair(tokenizer, pair: PreferencePair, max_length: int) -> TokenizedPair | str:
    """Token ids of a pair, prompt + reply at most `max_length`: replies are cut to fit, a prompt
    that leaves fewer than MIN_REPLY_TOKENS drops the pair (`prompt_too_long`)."""
    prompt_ids, chosen_ids = _prompt_and_reply(tokenizer, pair.chosen_conversation())
    rejected_prompt_ids, rejected_ids = _prompt_and_reply(tokenizer, pair.rejected_conversation())
    assert prompt_ids == rejected_prompt_ids  # the prompt renders the same whatever the reply
    room = max_length - len(prompt_ids)
    if room < MIN_REPLY_TOKENS:
        return "prompt_too_long"
    truncated = max(len(chosen_ids), len(rejected_ids)) > room
    chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
    if chosen_ids == rejected_ids:
        return "identical_after_truncation"
    return TokenizedPair(prompt_ids, chosen_ids, rejected_ids, truncated)


def tokenize_pairs(
    tokenizer, pairs: list[PreferencePair], max_length: int, dropped: dict[str, int]
) -> tuple[list[TokenizedPair], int]:
    """Tokenise pairs; pairs that can't fit are counted in `dropped`; returns (pairs, truncated)."""
    out, truncated = [], 0
    for pair in pairs:
        tokens = tokenize_pair(tokenizer, pair, max_length)
        if isinstance(tokens, str):
            dropped[tokens] = dropped.get(tokens, 0) + 1
            continue
        truncated += tokens.truncated
        out.append(tokens)
    return out, truncated


def reply_example(pair: TokenizedPair, which: str) -> TokenizedExample:
    """One reply of a tokenised pair as an SFT example: prompt unlabelled, reply labelled."""
    reply = pair.chosen_ids if which == "chosen" else pair.rejected_ids
    return TokenizedExample(pair.prompt_ids + reply, [IGNORE_INDEX] * len(pair.prompt_ids) + reply)
