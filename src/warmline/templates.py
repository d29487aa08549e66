"""One registry of chat template families: role markers, stop tokens, stop strings, leak markers.

Generation (`warmline.serving`), the output screen (`warmline.safety.screen`), evaluation
(`warmline.evaluation.evaluate`) and tokenisation (`warmline.data.tokens`) all read this module,
so a marker added here stops generation, is screened and is counted as a leak alike.

    template = template_for(tokenizer)   # the family of the tokenizer's chat template
    template.stop_strings                # what ends a reply
    stop_token_ids(tokenizer, template)  # the special tokens that end a reply, as ids
    ANY.leak_markers                     # every family's markup: a reply must contain none
    LEAK_PATTERN.search(reply)           # the same, plus fabricated turns ("\\nuser: ...")

A model with its own chat template in a known family stops on that family's markup and on
transcript-style turns ("Human:", "User:"); a model with the plain "Human/Assistant" template (a
base model that may have read any family's markup) or an unrecognised template stops on the union.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Roles of the plain template, in the order `data.tokens` has always matched them.
PLAIN_ROLES: tuple[str, ...] = ("Human", "Assistant", "User", "System")
# Roles of counselling transcripts (the training sources): a reply line opening with one of
# these is a fabricated turn too, in any template.
TRANSCRIPT_ROLES: tuple[str, ...] = ("Therapist", "Client", "Patient")
# Every template's replies stop at a transcript-style next turn: models trained on dialogue
# corpora write them whatever their template. Mid-line only the capitalised role with a colon;
# at a line start lower case too.
_TRANSCRIPT_STOPS: tuple[str, ...] = (
    "Human:",
    "User:",
    "Assistant:",
    *(f"\n{role.lower()}:" for role in ("Human", "User", "Assistant", "System")),
    "\nSystem:",
    *(f"\n{role}:" for role in TRANSCRIPT_ROLES),
    *(f"\n{role.lower()}:" for role in TRANSCRIPT_ROLES),
)


@dataclass(frozen=True)
class ChatTemplate:
    """One chat template family, as its replies must be cut and checked."""

    name: str
    detect: tuple[str, ...]
    """Substrings of a tokenizer's `chat_template` that identify the family (any one of them)."""
    role_markers: tuple[str, ...]
    """Text that opens or closes a turn in this template ("<|im_start|>", "Human:")."""
    stop_tokens: tuple[str, ...]
    """Special tokens that end a reply when the model emits them (besides its EOS ids)."""
    stop_strings: tuple[str, ...]
    """Text that ends a reply where it starts (it is never shown)."""
    leak_markers: tuple[str, ...]
    """Text a shown reply must never contain (screened, and counted as a leak in evaluation)."""


def _family(
    name: str, detect: tuple[str, ...], markers: tuple[str, ...], stop_tokens: tuple[str, ...]
) -> ChatTemplate:
    """A family whose own markers, stop tokens and the transcript turns stop a reply, and are
    exactly what counts as a leak: what ends a reply and what may never be shown never disagree."""
    stops = tuple(dict.fromkeys(markers + stop_tokens + _TRANSCRIPT_STOPS))
    return ChatTemplate(name, detect, markers, stop_tokens, stops, stops)


PLAIN = _family("plain", (), ("Human:", "Assistant:"), ())  # the system turn has no marker
CHATML = _family(
    "chatml",
    ("<|im_start|>",),
    ("<|im_start|>", "<|im_end|>"),
    ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
)
LLAMA3 = _family(
    "llama3",
    ("<|start_header_id|>",),
    ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ("<|eot_id|>", "<|start_header_id|>", "<|end_of_text|>"),
)
MISTRAL = _family(
    "mistral",
    ("[INST]",),
    ("<s>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"),
    ("</s>",),
)
GEMMA = _family(
    "gemma",
    ("<start_of_turn>",),
    ("<start_of_turn>", "<end_of_turn>"),
    ("<end_of_turn>", "<start_of_turn>", "<eos>"),
)
PHI = _family(
    "phi",
    ("<|user|>", "<|assistant|>"),
    ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    ("<|end|>", "<|user|>", "<|endoftext|>"),
)
ALPACA = _family(
    "alpaca",
    ("### Instruction", "### Response", "### Human"),
    ("### Instruction", "### Response", "### Human", "### Assistant"),
    (),
)

FAMILIES: dict[str, ChatTemplate] = {t.name: t for t in (PLAIN, CHATML, LLAMA3, MISTRAL, GEMMA, PHI, ALPACA)}


def _union(name: str, families) -> ChatTemplate:
    def merged(attr: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(x for f in families for x in getattr(f, attr)))

    return ChatTemplate(
        name,
        (),
        merged("role_markers"),
        merged("stop_tokens"),
        merged("stop_strings"),
        merged("leak_markers"),
    )


ANY = _union("any", FAMILIES.values())
"""Every family at once: for a template that is not recognised, and wherever the model's template
is not known (the output screen, evaluation's leak count)."""

# A leaked marker anywhere, or a fabricated turn: a capitalised role with a colon mid-line, any
# case at a line start (transcript roles included).
LEAK_PATTERN = re.compile(
    r"\b(?:Human|User|Assistant)[ \t]*:"
    r"|(?im:^[ \t]*(?:" + "|".join(r.lower() for r in PLAIN_ROLES + TRANSCRIPT_ROLES) + r")[ \t]*:)"
    r"|"
    + "|".join(
        re.escape(m) for m in sorted(ANY.leak_markers, key=len, reverse=True) if not m.startswith("\n")
    )
)


def template_for(tokenizer) -> ChatTemplate:
    """The family of the tokenizer's chat template: ANY for the plain template or an unknown one."""
    from warmline.data.tokens import uses_chat_template

    if not uses_chat_template(tokenizer):
        return ANY  # a base model: it may have read any family's markup
    source = tokenizer.chat_template
    if not isinstance(source, str):  # a dict of named templates
        source = "\n".join(str(v) for v in dict(source).values())
    for family in FAMILIES.values():
        if any(marker in source for marker in family.detect):
            return family
    return ANY


def stop_token_ids(tokenizer, template: ChatTemplate, model=None) -> set[int]:
    """Ids that end a reply: the tokenizer's and the model's EOS, and the template's stop tokens."""
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[marker] for marker in template.stop_tokens if marker in vocab)
    return ids
