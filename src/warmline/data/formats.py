"""Turn raw rows into conversations: lists of {"role", "content"} turns.

Every format returns `Conversation | str`: a conversation, or the reason the row was dropped
(counted by the caller, never dropped silently).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

Turn = dict[str, str]
Conversation = list[Turn]

FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "counseling": ("Context", "Response"),
    "alpaca": ("instruction", "input", "output"),
    "human_assistant": ("text",),
    "messages": ("messages",),
    # Preference pairs (dpo stages; parsed by warmline.data.preferences)
    "preference": ("prompt", "chosen", "rejected"),
    "chosen_rejected": ("chosen", "rejected"),
    "ratings": ("prompt", "reply_a", "reply_b", "preference"),
}
OPTIONAL_COLUMNS = {"alpaca": {"input"}}
ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}
_HA_MARKER = re.compile(r"^\s*(Human|Assistant)\s*:\s?", re.IGNORECASE)


class FormatError(ValueError):
    """Rows that don't fit the asked format (missing columns), with the columns that were found."""


def detect_format(columns: list[str]) -> str:
    """Pick a format from a source's column names."""
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:  # TRL's preference columns: explicit or implicit prompt
        return "preference" if "prompt" in cols else "chosen_rejected"
    if {"reply_a", "reply_b", "preference"} <= cols:  # `warmline eval ratings` items
        return "ratings"
    if {"Context", "Response"} <= cols:
        return "counseling"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if "messages" in cols or "conversations" in cols:
        return "messages"
    if "text" in cols:
        return "human_assistant"
    raise FormatError(
        f"could not detect the format from columns {sorted(cols)}; set the stage's `format` "
        f"(one of {', '.join(FORMAT_COLUMNS)}) and map columns with `columns:`"
    )


def check_columns(fmt: str, columns: list[str], mapping: dict[str, str], where: str) -> None:
    """Fail with the file and the found columns when a format's columns are missing."""
    needed = FORMAT_COLUMNS[fmt]
    if fmt == "messages":
        col = mapping.get("messages")
        if (col and col in columns) or (not col and ({"messages", "conversations"} & set(columns))):
            return
        raise FormatError(
            f"column 'messages' not found in {where} (found: {', '.join(columns) or 'nothing'}); "
            "map it with `columns: {messages: <your column>}`"
        )
    missing = [
        c for c in needed if mapping.get(c, c) not in columns and c not in OPTIONAL_COLUMNS.get(fmt, set())
    ]
    if missing:
        example = missing[0]
        raise FormatError(
            f"column '{mapping.get(example, example)}' not found in {where} "
            f"(found: {', '.join(columns) or 'nothing'}); map it with `columns: {{{example}: <your column>}}`"
        )


def _text(value: Any) -> str | None:
    """Row values must be text; numbers, lists and the like are not conversation turns."""
    return value if isinstance(value, str) else None


def from_counseling(row: dict, mapping: dict[str, str], ctx: dict) -> Conversation | str:
    context = _text(row.get(mapping.get("Context", "Context")))
    response = _text(row.get(mapping.get("Response", "Response")))
    if context is None or response is None:
        return _missing_reason(
            row.get(mapping.get("Context", "Context")), row.get(mapping.get("Response", "Response"))
        )
    return [{"role": "user", "content": context}, {"role": "assistant", "content": response}]


def _missing_reason(*values: Any) -> str:
    if any(v is None or (isinstance(v, float) and v != v) for v in values):
        return "missing_value"
    return "non_text_value"


def from_alpaca(row: dict, mapping: dict[str, str], ctx: dict) -> Conversation | str:
    instruction = row.get(mapping.get("instruction", "instruction"))
    inp = row.get(mapping.get("input", "input"), "")
    output = row.get(mapping.get("output", "output"))
    inp = "" if inp is None else inp
    if _text(instruction) is None or _text(output) is None or _text(inp) is None:
        return _missing_reason(instruction, output)
    # An instruction shared by many rows is boilerplate ("You are a helpful mental health
    # counselling assistant..."): it adds no information to each example, so the recipe's own
    # system prompt takes its place. A row-specific instruction is kept as part of the request.
    boilerplate = instruction.strip() in ctx.get("boilerplate_instructions", set())
    if boilerplate and inp.strip():
        user = inp
    elif inp.strip():
        user = f"{instruction.strip()}\n\n{inp.strip()}"
    else:
        user = instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def from_human_assistant(row: dict, mapping: dict[str, str], ctx: dict) -> Conversation | str:
    text = row.get(mapping.get("text", "text"))
    if _text(text) is None:
        return _missing_reason(text)
    turns: Conversation = []
    for line in text.replace("\r\n", "\n").split("\n"):
        m = _HA_MARKER.match(line)
        if m:
            role = "user" if m.group(1).lower() == "human" else "assistant"
            turns.append({"role": role, "content": line[m.end() :]})
        elif turns:
            turns[-1]["content"] += "\n" + line
        elif line.strip():
            return "no_role_marker"
    return turns or "no_role_marker"


def from_messages(row: dict, mapping: dict[str, str], ctx: dict) -> Conversation | str:
    col = mapping.get("messages") or ("messages" if "messages" in row else "conversations")
    items = row.get(col)
    if not isinstance(items, list):
        return _missing_reason(items)
    return message_turns(items)


def message_turns(items: list) -> Conversation | str:
    """A list of {role|from, content|value} dicts as conversation turns (role aliases mapped), or
    the reason it is not one. Shared by the `messages` format and preference message lists."""
    turns: Conversation = []
    for item in items:
        if not isinstance(item, dict):
            return "non_text_value"
        role = item.get("role", item.get("from"))
        content = item.get("content", item.get("value"))
        role = ROLE_ALIASES.get(str(role).lower()) if role is not None else None
        if role is None:
            return "unknown_role"
        if _text(content) is None:
            return _missing_reason(content)
        turns.append({"role": role, "content": content})
    return turns


CONVERTERS: dict[str, Callable[[dict, dict[str, str], dict], Conversation | str]] = {
    "counseling": from_counseling,
    "alpaca": from_alpaca,
    "human_assistant": from_human_assistant,
    "messages": from_messages,
}


def format_context(fmt: str, rows: list[dict], mapping: dict[str, str]) -> dict:
    """Whole-source facts a row converter needs (e.g. which alpaca instructions are boilerplate)."""
    if fmt != "alpaca":
        return {}
    col = mapping.get("instruction", "instruction")
    counts = Counter(r.get(col).strip() for r in rows if isinstance(r.get(col), str))
    threshold = max(3, int(0.05 * len(rows)))
    return {"boilerplate_instructions": {text for text, n in counts.items() if n >= threshold}}
