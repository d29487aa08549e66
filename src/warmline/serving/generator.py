"""One streaming generator for the terminal chat, the web app and evaluation, in layers:

1. the prompt (this module): the model's chat template (or the plain "Human/Assistant" one),
   keeping the most recent turns that fit a token budget (always the system turn and the
   newest user turn), and the prefix every first turn shares;
2. the tokens (`warmline.serving.engine`): prefill with a prompt cache, then a KV-cached,
   seeded decode loop that yields token ids (`TokenEngine`, the part another engine replaces);
3. the text (`warmline.serving.release`): only the new tokens decoded, control characters
   dropped, cut at a stop string of the chat template (`warmline.templates`), held back while
   it could be one, released sentence by sentence when screened;
4. the turn (`warmline.safety.gate.turn`): assess -> fixed crisis reply (the model is not
   called) or the released reply, each sentence screened -> resources note.

    gen = Generator.from_pretrained("runs/offline", gate=SafetyGate(locale="uk"))
    result = GenerationResult()
    for piece in gen.stream(conversation, seed=0, result=result):
        print(piece, end="", flush=True)
    result.stop_reason  # eos | stop_string | max_new_tokens | crisis | screened

The gate is passed per call (`stream(conversation, gate=...)`; the generator's own by default),
so one generator serves gated and ungated calls from many threads at once.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from warmline.data.formats import Conversation
from warmline.data.tokens import encode_prompt
from warmline.safety.gate import TurnResult, turn
from warmline.serving.engine import (  # noqa: F401 - re-exported: the generator's public parts
    HalfWeightLinear,
    PromptCache,
    TokenEngine,
    TorchEngine,
    context_length,
    half_weight_copy,
)
from warmline.serving.settings import GenerationSettings
from warmline.templates import stop_token_ids, template_for

logger = logging.getLogger(__name__)

SAMPLE_PROMPTS = [
    "I feel lonely.",
    "I've been so stressed at work that I can't sleep. What can I do?",
    "My best friend stopped talking to me and I don't know why.",
    "I failed an exam and I feel like a complete failure.",
]
_OWN_GATE: Any = object()  # `stream(gate=...)` not given: the generator's own gate


@dataclass
class GenerationResult(TurnResult):
    """What `Generator.stream` leaves behind once a reply is finished: the turn's text, stop
    reason, assessment and screen reasons (`TurnResult`), and the engine's counts and timings."""

    new_tokens: int = 0
    prompt_tokens: int = 0
    reused_prompt_tokens: int = 0
    """Prompt tokens whose keys and values came from the PromptCache (not read again)."""
    ttft_s: float = 0.0
    """Seconds from the call to the first generated token."""
    duration_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Decode speed after the first token."""
        decode_s = self.duration_s - self.ttft_s
        return (self.new_tokens - 1) / decode_s if self.new_tokens > 1 and decode_s > 0 else 0.0


class ReplyStreamer(Protocol):
    """What the web app and the API need from a reply source: the one gate flow over a model
    (`Generator`) or a backend (`warmline.serving.gateway.BackendStreamer`)."""

    settings: GenerationSettings

    def stream(
        self,
        conversation: Conversation,
        *,
        seed: int | None = None,
        result: GenerationResult | None = None,
        **overrides: Any,
    ) -> Iterator[str]: ...


def truncate_history(tokenizer, conv: Conversation, max_prompt_tokens: int) -> Conversation:
    """Keep the system turn and the newest user turn, then as many recent turns as fit.

    Earlier turns are dropped in (user, assistant) pairs so roles keep alternating. When the
    system turn and the newest user turn alone are over budget, the start of the user's message
    is cut (its end is what the reply answers). Returns a new list; `conv` is not changed.
    """
    if len(encode_prompt(tokenizer, conv)) <= max_prompt_tokens:
        return list(conv)
    system = [t for t in conv[:1] if t["role"] == "system"]
    body = conv[len(system) :]
    if not body:
        return list(conv)
    kept = [body[-1]]
    i = len(body) - 1
    while i >= 2:
        candidate = body[i - 2 : i] + kept
        if len(encode_prompt(tokenizer, system + candidate)) > max_prompt_tokens:
            break
        kept = candidate
        i -= 2
    if len(kept) == 1:
        kept = [_fit_newest(tokenizer, system, body[-1], max_prompt_tokens)]
    logger.debug("prompt over %d tokens: kept %d of %d turns", max_prompt_tokens, len(kept), len(body))
    return system + kept


def _fit_newest(
    tokenizer, system: Conversation, newest: dict[str, str], max_prompt_tokens: int
) -> dict[str, str]:
    """The newest turn with the start of its text cut until the prompt fits (binary search)."""
    content = newest["content"]
    if len(encode_prompt(tokenizer, system + [newest])) <= max_prompt_tokens:
        return newest
    lo, hi = 0, len(content)  # characters kept from the end: lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (
            len(encode_prompt(tokenizer, system + [{**newest, "content": content[-mid:]}]))
            <= max_prompt_tokens
        ):
            lo = mid
        else:
            hi = mid
    if lo == 0:
        raise ValueError(
            f"the system prompt alone is longer than the prompt budget ({max_prompt_tokens} tokens); "
            "shorten it, or raise max_prompt_tokens (it must leave room for max_new_tokens)"
        )
    logger.warning("the message is longer than the prompt budget; only its last %d characters are used", lo)
    return {**newest, "content": content[-lo:]}


class Generator:
    """Streaming replies from a causal LM; see the module docstring.

    One Generator serves many conversations at once (the web app's threads): it keeps no
    per-conversation state, and every call gets its own KV cache and random generator.
    """

    # Shorter shared prefixes are not worth a second forward pass.
    _MIN_SHARED_PREFIX = 8

    def __init__(
        self,
        model,
        tokenizer,
        *,
        gate=None,
        settings: GenerationSettings | None = None,
        decode_dtype: torch.dtype | None = None,
        prompt_cache_tokens: int = 0,
        engine: TokenEngine | None = None,
    ):
        """`decode_dtype`, `prompt_cache_tokens`: see `TorchEngine`. `engine`: another token
        engine for `model`'s tokenizer (default: a TorchEngine on `model`); `model` may be None
        when the engine has its own (`warmline.serving.onnx_engine`). `gate`: the safety gate
        `stream` uses unless a call passes its own."""
        self.tokenizer = tokenizer
        self.template = template_for(tokenizer)
        self.engine = engine or TorchEngine(
            model,
            stop_token_ids=stop_token_ids(tokenizer, self.template, model),
            decode_dtype=decode_dtype,
            prompt_cache_tokens=prompt_cache_tokens,
        )
        self.gate = gate
        self.settings = settings or GenerationSettings()
        self.context_length = (
            context_length(model) if model is not None else getattr(self.engine, "context_length", None)
        )
        self._shared_prefixes: dict[str | None, list[int]] = {}  # system prompt -> its prompt prefix

    # The engine's parts, as attributes of the generator (tests and benchmarks swap them).
    model = property(lambda self: self.engine.model, lambda self, v: setattr(self.engine, "model", v))
    decode_model = property(
        lambda self: self.engine.decode_model, lambda self, v: setattr(self.engine, "decode_model", v)
    )
    prompt_cache = property(
        lambda self: self.engine.prompt_cache, lambda self, v: setattr(self.engine, "prompt_cache", v)
    )

    def __copy__(self) -> Generator:
        """A copy that shares the weights but has its own engine settings (its own prompt cache slot)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.engine = copy.copy(self.engine)
        return new

    @classmethod
    def from_pretrained(
        cls,
        reference: str,
        *,
        gate=None,
        settings: GenerationSettings | None = None,
        device: str | None = None,
        fp16_decode: bool = True,
        prompt_cache_tokens: int = 4096,
    ) -> Generator:
        """Load a run folder, stage folder, hub id or `packaged:` model; on a GPU when there is one.

        On a CPU the weights load in fp32; with `fp16_decode` an fp16 copy decodes (see
        `warmline.serving.engine`). On a GPU the model loads in bf16 (fp16 without bf16 support).
        `prompt_cache_tokens`: size of the PromptCache (0 turns it off)."""
        from warmline.models import load_model, load_tokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = None  # fp32 on CPU
        decode_dtype = torch.float16 if fp16_decode and device == "cpu" else None
        if device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        model = load_model(reference, dtype=dtype).to(device)
        logger.info(
            "loaded %s on %s (%s; decode in %s)",
            reference,
            device,
            next(model.parameters()).dtype,
            decode_dtype or next(model.parameters()).dtype,
        )
        return cls(
            model,
            load_tokenizer(reference),
            gate=gate,
            settings=settings,
            decode_dtype=decode_dtype,
            prompt_cache_tokens=prompt_cache_tokens,
        )

    def prompt_budget(self, s: GenerationSettings) -> int:
        """Prompt tokens allowed: the settings' budget, leaving room for the reply in the context."""
        if self.context_length is None:
            return s.max_prompt_tokens
        return max(1, min(s.max_prompt_tokens, self.context_length - s.max_new_tokens))

    def prompt_ids(self, conversation: Conversation, settings: GenerationSettings | None = None) -> list[int]:
        """The token ids a reply to `conversation` is generated from (after truncation)."""
        s = settings or self.settings
        return encode_prompt(
            self.tokenizer, truncate_history(self.tokenizer, conversation, self.prompt_budget(s))
        )

    def stream(
        self,
        conversation: Conversation,
        *,
        gate=_OWN_GATE,
        seed: int | None = None,
        settings: GenerationSettings | None = None,
        result: GenerationResult | None = None,
        **overrides: Any,
    ) -> Iterator[str]:
        """Yield the reply as text pieces; pass `result` to receive the final text, stop reason and timings.

        `conversation` ends with the user's turn. `gate`: the safety gate for this call (None:
        none; default: the generator's). `overrides` replace single settings for this call
        (None values keep the default). The same conversation, settings and `seed` give the
        same reply. When the screen rejects the reply, the pieces already yielded are followed
        by the fallback and `result.text` holds the fallback alone: show that instead.
        """
        if not conversation or conversation[-1]["role"] != "user":
            raise ValueError("the conversation must end with a user turn")
        s = replace(settings or self.settings, **{k: v for k, v in overrides.items() if v is not None})
        out = result if result is not None else GenerationResult()
        started = time.perf_counter()
        stop_strings = self.template.stop_strings if s.stop_strings is None else s.stop_strings
        try:
            yield from turn(
                conversation,
                lambda: self._texts(conversation, s, seed, out, started),
                gate=self.gate if gate is _OWN_GATE else gate,
                stop_strings=stop_strings,
                result=out,
            )
        finally:
            out.duration_s = time.perf_counter() - started

    def generate(
        self, conversation: Conversation, *, gate=_OWN_GATE, seed: int | None = None, **overrides: Any
    ) -> GenerationResult:
        """The whole reply at once (same code path as streaming)."""
        result = GenerationResult()
        for _ in self.stream(conversation, gate=gate, seed=seed, result=result, **overrides):
            pass
        return result

    def warm_up(self, system_prompt: str | None = None) -> None:
        """Run one short reply before the first user arrives: first-call allocations and kernel
        choices happen now, and the PromptCache keeps the template + system prompt that every
        first turn starts with. Without the gate (nothing is shown or kept)."""
        conversation = [{"role": "system", "content": system_prompt}] if system_prompt else []
        conversation.append({"role": "user", "content": "Hello."})
        self.generate(conversation, gate=None, seed=0, max_new_tokens=2)

    def _texts(
        self,
        conversation: Conversation,
        s: GenerationSettings,
        seed: int | None,
        out: GenerationResult,
        started: float,
    ) -> Iterator[str]:
        """The reply so far as text after every token: the new tokens decoded (byte-level pieces
        combine into characters only when decoded together)."""
        prompt_ids = self.prompt_ids(conversation, s)
        shared = self._shared_prefix(conversation) if self.prompt_cache is not None else []
        tokens = self.engine.tokens(prompt_ids, s, seed=seed, shared_prefix=shared, result=out)
        new_ids: list[int] = []
        try:
            for token_id in tokens:
                if not new_ids:
                    out.ttft_s = time.perf_counter() - started
                new_ids.append(token_id)
                out.new_tokens = len(new_ids)
                yield self.tokenizer.decode(
                    new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
                )
        finally:
            tokens.close()  # a stop string or the screen ended the reply: stop decoding now
            if not new_ids:  # the first token was a stop token
                out.ttft_s = time.perf_counter() - started

    def _shared_prefix(self, conversation: Conversation) -> list[int]:
        """For a first turn: the prompt tokens every first turn with the same system prompt starts
        with (the template up to where the user's text begins); [] otherwise. Found as the common
        part of two prompts that differ only in the user's text."""
        system = [t for t in conversation[:1] if t["role"] == "system"]
        if len(conversation) != len(system) + 1:
            return []  # a later turn: the previous turn's prompt is the longer match
        key = system[0]["content"] if system else None
        prefix = self._shared_prefixes.get(key)
        if prefix is None:
            a, b = (
                encode_prompt(self.tokenizer, system + [{"role": "user", "content": c}]) for c in ("a", "b")
            )
            n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            prefix = a[:n] if n >= self._MIN_SHARED_PREFIX else []
            if len(self._shared_prefixes) < 64:
                self._shared_prefixes[key] = prefix
        return prefix
