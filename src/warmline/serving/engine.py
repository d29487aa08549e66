"""The token layer of generation: a prompt in, reply token ids out (the part an engine replaces).

`TokenEngine` is the whole interface the `Generator` needs: `tokens(prompt_ids, settings, seed=,
shared_prefix=, result=)` yields the reply's token ids one by one (never the stop token) and
records on `result` the prompt size, the prompt tokens reused and why it stopped (eos or
max_new_tokens). An ONNX or remote engine implements the same method.

`TorchEngine` is the transformers one, in two steps:

- `prefill`: the prompt into a KV cache, reusing the longest cached prompt it starts with
  (`PromptCache`) and, on a conversation's first turn, reading and keeping the part every first
  turn shares (template + system prompt) on its own;
- `tokens`: the KV-cached decode loop, with the logits processors, sampling from a seeded
  random generator, stop token ids and `max_new_tokens`.

On a CPU the prompt is read with the fp32 weights and decoding uses a copy whose Linear weights
are fp16 (`half_weight_copy`): a decode step is bound by reading the weights, a prompt read is
not (benchmarks/RESULTS.md has the measured speed-up and the agreement with fp32).

The PromptCache keeps, in memory only and bounded in tokens, the KV cache of each recent prompt
right after the model read it: the next turn of a conversation starts with the previous turn's
prompt, so only the reply and the new message are read. The same prompt gives the same keys and
values, so sharing entries between conversations reveals nothing they do not share.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from warmline.serving.generator import GenerationResult
    from warmline.serving.settings import GenerationSettings


class TokenEngine(Protocol):
    """What the `Generator` needs from an engine."""

    def tokens(
        self,
        prompt_ids: list[int],
        settings: GenerationSettings,
        *,
        seed: int | None = None,
        shared_prefix: Sequence[int] = (),
        result: GenerationResult,
    ) -> Iterator[int]:
        """Yield the reply's token ids (not the stop token); set `result.prompt_tokens`,
        `result.reused_prompt_tokens` and `result.stop_reason` ("eos" or "max_new_tokens")."""
        ...


class PromptCache:
    """KV caches of recent prompts (as the model left them after reading the prompt), least
    recently used dropped first once they hold more than `max_tokens` tokens in all.

    `lookup` returns a private copy of the longest entry whose tokens begin the new prompt, with
    the next-token logits stored beside it (used when the prompt is the whole entry). Safe to
    share between threads.
    """

    def __init__(self, max_tokens: int = 4096):
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[int, ...], tuple[Any, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def lookup(self, prompt_ids: list[int]) -> tuple[int, Any, torch.Tensor | None]:
        """(tokens reused, a copy of their cache, the logits after them); (0, None, None) on a miss."""
        with self._lock:
            best: tuple[int, ...] | None = None
            for key in self._entries:
                if len(best or ()) < len(key) <= len(prompt_ids) and tuple(prompt_ids[: len(key)]) == key:
                    best = key
            if best is None:
                return 0, None, None
            self._entries.move_to_end(best)
            cache, logits = self._entries[best]
            return len(best), copy.deepcopy(cache), logits

    def store(self, prompt_ids: list[int], cache, logits: torch.Tensor) -> None:
        """Keep a copy of `cache` (which holds exactly `prompt_ids`) and the logits after it."""
        if len(prompt_ids) > self.max_tokens:
            return
        entry = (copy.deepcopy(cache), logits.detach().clone())
        with self._lock:
            self._entries[tuple(prompt_ids)] = entry
            self._entries.move_to_end(tuple(prompt_ids))
            while sum(map(len, self._entries)) > self.max_tokens:
                self._entries.popitem(last=False)


class HalfWeightLinear(torch.nn.Module):
    """A Linear layer for decoding: its weight kept in `dtype` (half the bytes to read per token),
    input and output in the dtype the rest of the model computes in."""

    def __init__(self, linear: torch.nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().to(dtype), persistent=False)
        self.register_buffer(
            "bias", None if linear.bias is None else linear.bias.detach().clone(), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)
        return y if self.bias is None else y + self.bias


def half_weight_copy(model, dtype: torch.dtype = torch.float16):
    """A copy of `model` for decoding with every nn.Linear (the output head included) replaced by
    a HalfWeightLinear in `dtype`; embeddings, norms and everything else unchanged."""
    copied = copy.deepcopy(model).eval()
    for module in list(copied.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, HalfWeightLinear(child, dtype))
    return copied


@dataclass
class Prefill:
    """A prompt read into a KV cache: the cache and the logits for the first reply token."""

    cache: Any
    logits: torch.Tensor
    reused: int
    """Prompt tokens whose keys and values came from the PromptCache."""
    read: int
    """Prompt tokens the model read now (0: the whole prompt was cached)."""


class Sampler:
    """How the next token is picked from the last position's logits: transformers' processors in
    `generate`'s order (repetition penalty, temperature, top-k, top-p), then a seeded sample or the
    argmax. Every engine picks its tokens here.

    With top-k on, top-p and the draw run on the k candidates only: the same distribution as
    applying them to the whole vocabulary (where everything outside the k is already -inf), but
    without sorting 49k logits per token, which cost more than a decode step of the ONNX engine
    (benchmarks/RESULTS.md, "Sampling on the top-k candidates")."""

    def __init__(self, s: GenerationSettings):
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        self.sampling = s.sampling
        self.penalty = LogitsProcessorList()
        if s.repetition_penalty != 1.0:
            self.penalty.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
        self.top_k = s.top_k if s.sampling else 0
        self.warpers = LogitsProcessorList()  # what runs on the candidates (all tokens if no top-k)
        if s.sampling:
            if s.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(s.temperature))
            if s.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(s.top_p))

    def candidates(
        self, logits: torch.Tensor, reply_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The sampling probabilities (1, n) and the token ids they belong to (1, n), or None when
        they are the whole vocabulary in order; the penalty sees the reply so far."""
        scores = self.penalty(reply_ids, logits.float())  # (1, vocab)
        ids = None
        if 0 < self.top_k < scores.shape[-1]:
            scores, ids = scores.topk(self.top_k, dim=-1)  # (1, k), most likely first
        return torch.softmax(self.warpers(reply_ids, scores), dim=-1), ids

    def __call__(self, logits: torch.Tensor, reply_ids: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """The next token (1, 1) from logits (1, vocab)."""
        if not self.sampling:
            return self.penalty(reply_ids, logits.float()).argmax(dim=-1, keepdim=True)
        probs, ids = self.candidates(logits, reply_ids)
        choice = torch.multinomial(probs, 1, generator=rng)  # (1, 1)
        return choice if ids is None else ids.gather(-1, choice)


def seeded_rng(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """The random generator a reply samples from: seeded (same seed, same reply) or fresh."""
    rng = torch.Generator(device=device)
    if seed is None:
        rng.seed()
    else:
        rng.manual_seed(seed)
    return rng


def reply_token_budget(
    prompt_ids: Sequence[int],
    settings: GenerationSettings,
    context_length: int | None,
    result: GenerationResult,
) -> int:
    """The reply's token limit for this prompt; records the prompt size and the default stop reason
    on `result` (every engine starts a reply here)."""
    result.prompt_tokens = len(prompt_ids)
    result.stop_reason = "max_new_tokens"
    max_new_tokens = settings.max_new_tokens
    if context_length is not None:  # only a system prompt near the context size gets here
        max_new_tokens = max(1, min(max_new_tokens, context_length - len(prompt_ids)))
    return max_new_tokens


def decode_loop(
    logits: torch.Tensor,
    advance,
    *,
    settings: GenerationSettings,
    max_new_tokens: int,
    stop_token_ids,
    rng: torch.Generator,
    result: GenerationResult,
    device: torch.device | str = "cpu",
) -> Iterator[int]:
    """The reply's tokens from the prompt's last logits (1, vocab); `advance(token)` feeds one
    token (1, 1) to the engine and returns the next logits (1, vocab). Stops at a stop token
    (result.stop_reason "eos", the token not yielded) or after `max_new_tokens`. Every engine
    decodes here, so sampling, penalties and stopping are the same code on all of them."""
    sampler = Sampler(settings)
    # The repetition penalty looks at the reply only. Penalising the prompt (as `generate` does)
    # also penalises the end-of-turn token that closes every earlier turn, and with it the
    # model's ability to stop: replies then run to the token limit.
    reply_ids = torch.empty((1, 0), dtype=torch.long, device=device)  # (1, new tokens)
    for step in range(max_new_tokens):
        token = sampler(logits, reply_ids, rng)
        token_id = int(token)
        if token_id in stop_token_ids:
            result.stop_reason = "eos"
            return
        reply_ids = torch.cat([reply_ids, token], dim=1)
        yield token_id
        if step + 1 < max_new_tokens:
            logits = advance(token)


class TorchEngine:
    """Reply tokens from a transformers causal LM; see the module docstring.

    Keeps no per-conversation state: every call gets its own KV cache and random generator, so
    one engine serves many threads (the PromptCache is thread-safe).
    """

    def __init__(
        self,
        model,
        *,
        stop_token_ids: set[int],
        decode_dtype: torch.dtype | None = None,
        prompt_cache_tokens: int = 0,
    ):
        """`decode_dtype`: decode (every token after the first) with a copy of the model in this
        dtype; the prompt is still read by `model`. None: `model` does everything.
        `prompt_cache_tokens`: the PromptCache's size in tokens (0: no cache)."""
        self.model = model.eval()
        self.decode_model = self.model
        if decode_dtype is not None and decode_dtype != next(model.parameters()).dtype:
            self.decode_model = half_weight_copy(model, decode_dtype)
        self.prompt_cache = PromptCache(prompt_cache_tokens) if prompt_cache_tokens > 0 else None
        self.stop_token_ids = stop_token_ids
        self.device = next(model.parameters()).device
        self.context_length = context_length(model)

    def _forward(self, model, ids: Sequence[int] | torch.Tensor, cache) -> torch.Tensor:
        input_ids = ids if isinstance(ids, torch.Tensor) else torch.tensor([list(ids)], device=self.device)
        return model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1).logits

    def prefill(self, prompt_ids: list[int], shared_prefix: Sequence[int] = ()) -> Prefill:
        """Read the prompt (what the PromptCache does not hold) with the full-precision model."""
        from transformers import DynamicCache

        reused, cache, logits = 0, None, None
        if self.prompt_cache is not None:
            reused, cache, logits = self.prompt_cache.lookup(prompt_ids)
        if cache is None:
            cache = DynamicCache(config=self.model.config)
        held = reused  # prompt tokens the cache holds
        shared = list(shared_prefix)
        if (
            self.prompt_cache is not None
            and reused < len(shared) < len(prompt_ids)
            and prompt_ids[: len(shared)] == shared
        ):
            # Read the part every first turn shares on its own and keep it for the next conversation.
            logits = self._forward(self.model, prompt_ids[reused : len(shared)], cache)
            self.prompt_cache.store(shared, cache, logits)
            held = len(shared)
        if held < len(prompt_ids):
            logits = self._forward(self.model, prompt_ids[held:], cache)
            if self.prompt_cache is not None:
                self.prompt_cache.store(prompt_ids, cache, logits)  # before decoding adds to it
        return Prefill(cache, logits, reused, len(prompt_ids) - reused)

    # inference_mode on a generator function applies to each step it runs, in whichever thread.
    @torch.inference_mode()
    def tokens(
        self,
        prompt_ids: list[int],
        settings: GenerationSettings,
        *,
        seed: int | None = None,
        shared_prefix: Sequence[int] = (),
        result: GenerationResult,
    ) -> Iterator[int]:
        """The KV-cached decode loop (see `TokenEngine.tokens`)."""
        max_new_tokens = reply_token_budget(prompt_ids, settings, self.context_length, result)
        rng = seeded_rng(seed, self.device)
        prefill = self.prefill(prompt_ids, shared_prefix)
        result.reused_prompt_tokens = prefill.reused
        cache = prefill.cache
        yield from decode_loop(
            prefill.logits[:, -1, :],
            # The decode model continues from the prompt's cache.
            lambda token: self._forward(self.decode_model, token, cache)[:, -1, :],
            settings=settings,
            max_new_tokens=max_new_tokens,
            stop_token_ids=self.stop_token_ids,
            rng=rng,
            result=result,
            device=self.device,
        )


def context_length(model) -> int | None:
    """The model's maximum sequence length in tokens (None when the config does not say)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
