"""Conversations to training tokens: the model's chat template (or the plain "Human/Assistant"
template), labels only on assistant tokens, EOS appended to every assistant turn and trained.

The template is rendered with placeholder contents and split on them, so structural markers
come only from the template: user text is tokenised with special tokens split, and a user who
types "<|im_start|>assistant" or "Assistant:" cannot forge a turn.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from warmline.data.formats import Conversation
from warmline.templates import PLAIN_ROLES

IGNORE_INDEX = -100
_PLACEHOLDER = "\u2063WLTURN{}\u2063"
_PLACEHOLDER_RE = re.compile("\u2063WLTURN(\\d+)\u2063")
# Role markers a user could type to fake a turn in the plain template (warmline.templates).
_PLAIN_MARKERS = re.compile(r"(?i)\b(" + "|".join(role.lower() for role in PLAIN_ROLES) + r")\s*:")


# The "Human/Assistant" template as a chat template, saved with models that had none, so every
# saved tokenizer renders its own prompts. It produces exactly the plain segments below.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'Human: ' + message['content'] + '\\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + eos_token + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def uses_chat_template(tokenizer) -> bool:
    """True for a model's own chat template; False for none or our plain "Human/Assistant" one."""
    template = getattr(tokenizer, "chat_template", None)
    return bool(template) and template != PLAIN_CHAT_TEMPLATE


def neutralise_plain_markers(text: str) -> str:
    """Make typed role markers inert in the plain template: "Assistant:" -> "Assistant\uff1a"."""
    return _PLAIN_MARKERS.sub(lambda m: m.group(1) + "\uff1a", text)


def _plain_segments(conv: Conversation, add_generation_prompt: bool) -> list[tuple[str, int | None]]:
    """Segments of the plain template: (text, message index) for content, (text, None) for markup."""
    segments: list[tuple[str, int | None]] = []
    for i, turn in enumerate(conv):
        if turn["role"] == "system":
            segments += [("", i), ("\n", None)]
        elif turn["role"] == "user":
            segments += [("Human: ", None), ("", i), ("\n", None)]
        else:
            segments += [("Assistant: ", None), ("", i), ("\n", None)]
    if add_generation_prompt:
        segments.append(("Assistant: ", None))  # the same markup as in training
    return segments


def render_segments(tokenizer, conv: Conversation, *, add_generation_prompt: bool = False):
    """The prompt as (markup text, None) and (content, message index) pieces, in order."""
    if not uses_chat_template(tokenizer):
        return _plain_segments(conv, add_generation_prompt)
    placeholders = [{"role": t["role"], "content": _PLACEHOLDER.format(i)} for i, t in enumerate(conv)]
    rendered = tokenizer.apply_chat_template(
        placeholders, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    segments: list[tuple[str, int | None]] = []
    pos = 0
    for m in _PLACEHOLDER_RE.finditer(rendered):
        if m.start() > pos:
            segments.append((rendered[pos : m.start()], None))
        segments.append(("", int(m.group(1))))
        pos = m.end()
    if pos < len(rendered):
        segments.append((rendered[pos:], None))
    return segments


# transformers' fast tokenizer applies a call's `split_special_tokens` by setting a flag on the one
# Rust tokenizer it wraps, and the next call sets it back: two threads encoding at once (the web
# app's and the API's sessions) could read the template's markup as text, or a user's typed
# "<|im_start|>" as a real special token. Every encode here holds this lock (tests/test_tokens_threads.py).
_ENCODE_LOCK = threading.Lock()


def _encode(tokenizer, text: str, *, split_special_tokens: bool = False) -> list[int]:
    with _ENCODE_LOCK:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=split_special_tokens)[
            "input_ids"
        ]


def _encode_markup(tokenizer, text: str) -> list[int]:
    return _encode(tokenizer, text) if text else []


def _encode_content(tokenizer, text: str, plain: bool) -> list[int]:
    if plain:
        text = neutralise_plain_markers(text)
    # split_special_tokens: "<|im_start|>" typed by a user becomes ordinary text tokens.
    return _encode(tokenizer, text, split_special_tokens=True) if text else []


def encode_prompt(tokenizer, conv: Conversation) -> list[int]:
    """Token ids of a conversation plus the generation prompt (what a reply is generated from)."""
    plain = not uses_chat_template(tokenizer)
    ids: list[int] = []
    for text, index in render_segments(tokenizer, conv, add_generation_prompt=True):
        if index is None:
            ids += _encode_markup(tokenizer, text)
        else:
            ids += _encode_content(tokenizer, conv[index]["content"], plain)
            if plain and conv[index]["role"] == "assistant":
                # Earlier replies end with EOS, as in training and PLAIN_CHAT_TEMPLATE.
                ids.append(tokenizer.eos_token_id)
    return ids


def tokenize_conversation(
    tokenizer, conv: Conversation, max_length: int, *, eos_token_id: int | None = None
) -> TokenizedExample:
    """Token ids and labels: assistant content and its EOS are labelled, everything else -100."""
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    plain = not uses_chat_template(tokenizer)
    input_ids: list[int] = []
    labels: list[int] = []
    expect_eos = False  # inside the markup right after an assistant turn, until its EOS is found
    for text, index in render_segments(tokenizer, conv):
        if index is None:
            ids = _encode_markup(tokenizer, text)
            if expect_eos:
                if eos in ids:
                    cut = ids.index(eos) + 1
                    input_ids += ids[:cut]
                    labels += ids[:cut]
                    ids = ids[cut:]
                else:  # the template ends assistant turns without EOS: add it, and train it
                    input_ids.append(eos)
                    labels.append(eos)
                expect_eos = False
            input_ids += ids
            labels += [IGNORE_INDEX] * len(ids)
            continue
        role = conv[index]["role"]
        ids = _encode_content(tokenizer, conv[index]["content"], plain)
        input_ids += ids
        if role == "assistant":
            labels += ids
            expect_eos = True
        else:
            labels += [IGNORE_INDEX] * len(ids)
    if expect_eos:  # the conversation ended right after an assistant turn
        input_ids.append(eos)
        labels.append(eos)
    truncated = len(input_ids) > max_length
    return TokenizedExample(input_ids[:max_length], labels[:max_length], truncated)


def tokenize_prototype(tokenizer, conv: Conversation, max_length: int) -> TokenizedExample:
    """The replaced prototype's tokenisation, kept as a baseline: "Human/Assistant" text, loss on
    every token, no EOS (its pad token was EOS, so EOS was masked as padding and never learned)."""
    text = "\n".join(
        ("Human: " if t["role"] == "user" else "Assistant: " if t["role"] == "assistant" else "")
        + t["content"]
        for t in conv
        if t["role"] != "system"
    )
    ids = _encode(tokenizer, text)
    truncated = len(ids) > max_length
    ids = ids[:max_length]
    return TokenizedExample(ids, list(ids), truncated)
