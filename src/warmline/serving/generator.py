"""One streaming generator for the terminal chat, the web app and evaluation.

It builds the prompt with the model's chat template (or the plain "Human/Assistant" one), keeps
the most recent turns that fit a token budget (always the system turn and the newest user turn),
streams tokens from a KV-cached decode loop, stops on EOS or a stop string, and decodes only the
new tokens.

On a CPU, `from_pretrained` reads the prompt with the fp32 weights and decodes with a copy whose
Linear weights are stored in fp16 (`decode_dtype`; activations, norms, attention and the KV cache
stay fp32). A decode step multiplies one token by every weight, so it is bound by reading them
from memory: half the bytes gave about 1.5x the tokens/s on a 2-core AVX2 EPYC, while fp16 matrix
products over a whole prompt are slower than fp32 there, hence the split (benchmarks/RESULTS.md
has the figures and the agreement with fp32). It costs a second, half-size copy of the weights.

`from_pretrained` also keeps a `PromptCache`: the KV cache of each recent prompt, right after the
model read it. The next turn of a conversation starts with the previous turn's prompt, so only
the reply and the new message are read: time to first token stays flat as a chat grows. The
cache lives in memory only, never on disk, bounded in tokens; the same prompt gives the same
keys and values, so sharing entries between conversations reveals nothing they do not share.
On a new conversation's first turn the cache also keeps the part every such prompt starts with
(the template and system prompt, up to the user's text), so the next conversation skips it.

An optional safety gate answers crisis messages itself and screens every reply:

    gen = Generator.from_pretrained("runs/offline", gate=SafetyGate(locale="uk"))
    result = GenerationResult()
    for piece in gen.stream(conversation, seed=0, result=result):
        print(piece, end="", flush=True)
    result.stop_reason  # eos | stop_string | max_new_tokens | crisis | screened
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from warmline.data.formats import Conversation
from warmline.data.tokens import encode_prompt

logger = logging.getLogger(__name__)

SAMPLE_PROMPTS = [
    "I feel lonely.",
    "I've been so stressed at work that I can't sleep. What can I do?",
    "My best friend stopped talking to me and I don't know why.",
    "I failed an exam and I feel like a complete failure.",
]
# A model that starts writing the user's next turn (or a template marker spelled out as text)
# has finished its reply: everything from the marker on is dropped, never shown.
STOP_STRINGS: tuple[str, ...] = (
    "Human:", "User:", "Assistant:", "\nhuman:", "\nuser:", "\nassistant:", "\nSystem:",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>",
)  # fmt: skip
# Special tokens that end a reply when the model emits them (besides its own EOS ids).
_STOP_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>")
_SENTENCE_END = (".", "!", "?", "\n")
# Control characters (all but tab and newline) never reach a terminal or page: a model could
# otherwise emit escape sequences that rewrite what the user sees.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

StopReason = Literal["", "eos", "stop_string", "max_new_tokens", "crisis", "screened"]


@dataclass
class GenerationSettings:
    """Sampling settings; the defaults are the reference recipe's."""

    temperature: float = 0.7
    """Softmax temperature; 0 means greedy decoding."""
    top_k: int = 50
    """Sample from the k most likely tokens (0 turns it off)."""
    top_p: float = 0.92
    """Nucleus sampling: the smallest set of tokens whose probabilities add up to top_p."""
    repetition_penalty: float = 1.2
    """Divides the logits of tokens already in the prompt or reply (1.0 turns it off)."""
    max_new_tokens: int = 200
    """Longest reply, in tokens."""
    do_sample: bool = True
    """False: greedy decoding (temperature, top-k and top-p are ignored)."""
    max_prompt_tokens: int = 1536
    """Token budget for the prompt; older turns beyond it are dropped."""
    stop_strings: tuple[str, ...] = STOP_STRINGS
    """Text that ends the reply where it starts (it is never shown)."""

    def __post_init__(self) -> None:
        problems = []
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_prompt_tokens < 1:
            problems.append(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        if problems:
            raise ValueError("invalid generation settings: " + "; ".join(problems))

    @property
    def sampling(self) -> bool:
        """True when tokens are sampled rather than picked greedily."""
        return self.do_sample and self.temperature > 0


@dataclass
class GenerationResult:
    """What `Generator.stream` leaves behind once a reply is finished."""

    text: str = ""
    """The reply as it should be shown and kept in the history: the model's reply (with the
    resources note at distress level), the fixed crisis reply, or the screen's safe fallback."""
    stop_reason: StopReason = ""
    new_tokens: int = 0
    prompt_tokens: int = 0
    reused_prompt_tokens: int = 0
    """Prompt tokens whose keys and values came from the PromptCache (not read again)."""
    ttft_s: float = 0.0
    """Seconds from the call to the first generated token."""
    duration_s: float = 0.0
    assessment: dict[str, Any] | None = None
    """The safety gate's assessment of the conversation (None without a gate)."""
    screen_reasons: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Decode speed after the first token."""
        decode_s = self.duration_s - self.ttft_s
        return (self.new_tokens - 1) / decode_s if self.new_tokens > 1 and decode_s > 0 else 0.0


def context_length(model) -> int | None:
    """The model's maximum sequence length in tokens (None when the config does not say)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


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


def _stop_token_ids(tokenizer, model) -> set[int]:
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[marker] for marker in _STOP_TOKENS if marker in vocab)
    return ids


def _find_stop(text: str, stop_strings: tuple[str, ...]) -> int:
    hits = [text.find(s) for s in stop_strings if s in text]
    return min(hits) if hits else -1


def _held_back(text: str, stop_strings: tuple[str, ...]) -> int:
    """How many trailing characters could be the start of a stop string (not released yet)."""
    longest = 0
    for s in stop_strings:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


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
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone(), persistent=False)

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


class Generator:
    """Streaming replies from a causal LM; see the module docstring.

    One Generator serves many conversations at once (the web app's threads): it keeps no
    per-conversation state, and every call gets its own KV cache and random generator.
    """

    def __init__(self, model, tokenizer, *, gate=None, settings: GenerationSettings | None = None,
                 decode_dtype: torch.dtype | None = None, prompt_cache_tokens: int = 0):  # fmt: skip
        """`decode_dtype`: decode (every token after the first) with a copy of the model in this
        dtype; the prompt is still read by `model`. None: `model` does everything.
        `prompt_cache_tokens`: the PromptCache's size in tokens (0: no cache)."""
        self.model = model.eval()
        self.prompt_cache = PromptCache(prompt_cache_tokens) if prompt_cache_tokens > 0 else None
        self._shared_prefixes: dict[str | None, list[int]] = {}  # system prompt -> its prompt prefix
        self.decode_model = self.model
        if decode_dtype is not None and decode_dtype != next(model.parameters()).dtype:
            self.decode_model = half_weight_copy(model, decode_dtype)
        self.tokenizer = tokenizer
        self.gate = gate
        self.settings = settings or GenerationSettings()
        self.stop_token_ids = _stop_token_ids(tokenizer, model)
        self.device = next(model.parameters()).device
        self.context_length = context_length(model)

    @classmethod
    def from_pretrained(cls, reference: str, *, gate=None, settings: GenerationSettings | None = None,
                        device: str | None = None, fp16_decode: bool = True,
                        prompt_cache_tokens: int = 4096) -> Generator:  # fmt: skip
        """Load a run folder, stage folder, hub id or `packaged:` model; on a GPU when there is one.

        On a CPU the weights load in fp32; with `fp16_decode` an fp16 copy decodes (see the
        module docstring). On a GPU the model loads in bf16 (fp16 without bf16 support).
        `prompt_cache_tokens`: size of the PromptCache (0 turns it off)."""
        from warmline.models import load_model, load_tokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = None  # fp32 on CPU
        decode_dtype = torch.float16 if fp16_decode and device == "cpu" else None
        if device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        model = load_model(reference, dtype=dtype).to(device)
        logger.info("loaded %s on %s (%s; decode in %s)", reference, device, next(model.parameters()).dtype,
                    decode_dtype or next(model.parameters()).dtype)  # fmt: skip
        return cls(model, load_tokenizer(reference), gate=gate, settings=settings, decode_dtype=decode_dtype,
                   prompt_cache_tokens=prompt_cache_tokens)  # fmt: skip

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
        self, conversation: Conversation, *, seed: int | None = None, settings: GenerationSettings | None = None,
        result: GenerationResult | None = None, **overrides: Any,
    ) -> Iterator[str]:  # fmt: skip
        """Yield the reply as text pieces; pass `result` to receive the final text, stop reason and timings.

        `conversation` ends with the user's turn. `overrides` replace single settings for this
        call (None values keep the default). The same conversation, settings and `seed` give the
        same reply. When the screen rejects the reply, the pieces already yielded are followed
        by the fallback and `result.text` holds the fallback alone: show that instead.
        """
        if not conversation or conversation[-1]["role"] != "user":
            raise ValueError("the conversation must end with a user turn")
        s = replace(settings or self.settings, **{k: v for k, v in overrides.items() if v is not None})
        out = result if result is not None else GenerationResult()
        started = time.perf_counter()
        try:
            assessment = None
            if self.gate is not None:
                assessment = self.gate.check_input(conversation)
                out.assessment = assessment.to_dict()
                crisis = self.gate.reply_for(assessment)
                if crisis is not None:  # the model is not asked
                    out.text, out.stop_reason = crisis, "crisis"
                    yield crisis
                    return
            prompt_ids = self.prompt_ids(conversation, s)
            shared = self._shared_prefix(conversation) if self.prompt_cache is not None else []
            released_any = False
            for piece in self._decode_stream(prompt_ids, s, seed, out, started, assessment, shared):
                released_any = True
                yield piece
            if out.stop_reason == "screened":
                # Only screened-safe sentences were released; the fallback follows them.
                yield ("\n\n" if released_any else "") + out.text
            elif assessment is not None:
                note = self.gate.note_for(assessment)
                if note:
                    out.text = f"{out.text}\n\n{note}" if out.text else note
                    yield ("\n\n" if released_any else "") + note
        finally:
            out.duration_s = time.perf_counter() - started

    def warm_up(self, system_prompt: str | None = None) -> None:
        """Run one short reply before the first user arrives: first-call allocations and kernel
        choices happen now, and the PromptCache keeps the template + system prompt that every
        first turn starts with. Bypasses the gate (nothing is shown or kept)."""
        conversation = [{"role": "system", "content": system_prompt}] if system_prompt else []
        conversation.append({"role": "user", "content": "Hello."})
        gate, self.gate = self.gate, None
        try:
            self.generate(conversation, seed=0, max_new_tokens=2)
        finally:
            self.gate = gate

    def generate(
        self, conversation: Conversation, *, seed: int | None = None, **overrides: Any
    ) -> GenerationResult:
        """The whole reply at once (same code path as streaming)."""
        result = GenerationResult()
        for _ in self.stream(conversation, seed=seed, result=result, **overrides):
            pass
        return result

    def _processors(self, s: GenerationSettings):
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        procs = LogitsProcessorList()
        if s.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
        if s.sampling:
            if s.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(s.temperature))
            if s.top_k:
                procs.append(TopKLogitsWarper(s.top_k))
            if s.top_p < 1.0:
                procs.append(TopPLogitsWarper(s.top_p))
        return procs

    # Shorter shared prefixes are not worth a second forward pass.
    _MIN_SHARED_PREFIX = 8

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
            a, b = (encode_prompt(self.tokenizer, system + [{"role": "user", "content": c}]) for c in ("a", "b"))
            n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            prefix = a[:n] if n >= self._MIN_SHARED_PREFIX else []
            if len(self._shared_prefixes) < 64:
                self._shared_prefixes[key] = prefix
        return prefix

    # inference_mode on a generator function applies to each step it runs, in whichever thread.
    @torch.inference_mode()
    def _decode_stream(
        self, prompt_ids: list[int], s: GenerationSettings, seed: int | None, out: GenerationResult,
        started: float, assessment, shared: list[int] = (),
    ) -> Iterator[str]:  # fmt: skip
        """The KV-cached decode loop; yields text once it is past every stop string (and screened)."""
        from transformers import DynamicCache

        out.prompt_tokens = len(prompt_ids)
        max_new_tokens = s.max_new_tokens
        if self.context_length is not None:  # only a system prompt near the context size gets here
            max_new_tokens = max(1, min(max_new_tokens, self.context_length - len(prompt_ids)))
        rng = torch.Generator(device=self.device)
        if seed is None:
            rng.seed()
        else:
            rng.manual_seed(seed)
        procs = self._processors(s)
        reused, cache, cached_logits = 0, None, None
        if self.prompt_cache is not None:
            reused, cache, cached_logits = self.prompt_cache.lookup(prompt_ids)
        if cache is None:
            cache = DynamicCache(config=self.model.config)
        out.reused_prompt_tokens = reused
        read = reused  # prompt tokens the cache holds
        if reused < len(shared) < len(prompt_ids) and prompt_ids[: len(shared)] == list(shared):
            # Read the part every first turn shares on its own and keep it for the next conversation.
            logits = self.model(input_ids=torch.tensor([prompt_ids[reused : len(shared)]], device=self.device),
                                cache=cache, use_cache=True, logits_to_keep=1).logits  # fmt: skip
            self.prompt_cache.store(list(shared), cache, logits)
            read = len(shared)
        # The repetition penalty looks at the reply only. Penalising the prompt (as `generate` does)
        # also penalises the end-of-turn token that closes every earlier turn, and with it the
        # model's ability to stop: replies then run to the token limit.
        reply_ids = torch.empty((1, 0), dtype=torch.long, device=self.device)  # (1, new tokens)
        # The prompt (what the cache does not hold yet), then one token a step
        next_input = torch.tensor([prompt_ids[read:]], device=self.device)
        new_ids: list[int] = []
        released = 0  # characters of `text` already yielded
        text = ""
        out.stop_reason = "max_new_tokens"
        model = self.model  # reads the prompt; then the decode model (maybe another dtype)
        for _ in range(max_new_tokens):
            if next_input.shape[1] == 0:  # the whole prompt came from the PromptCache
                logits = cached_logits
            else:
                logits = model(input_ids=next_input, cache=cache, use_cache=True, logits_to_keep=1).logits
            if not new_ids and self.prompt_cache is not None and next_input.shape[1] > 0:
                self.prompt_cache.store(prompt_ids, cache, logits)  # before decoding adds to it
            model = self.decode_model
            scores = procs(reply_ids, logits[:, -1, :].float())  # (1, vocab)
            if s.sampling:
                token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=rng)
            else:
                token = scores.argmax(dim=-1, keepdim=True)
            token_id = int(token)
            if not new_ids:
                out.ttft_s = time.perf_counter() - started
            if token_id in self.stop_token_ids:
                out.stop_reason = "eos"
                break
            new_ids.append(token_id)
            out.new_tokens = len(new_ids)
            reply_ids = torch.cat([reply_ids, token], dim=1)
            next_input = token
            # Decode only the new tokens, every step: byte-level pieces combine into characters.
            text = self.tokenizer.decode(
                new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            text = _CONTROL_CHARS.sub("", text).lstrip()
            cut = _find_stop(text, s.stop_strings)
            if cut >= 0:
                text = text[:cut]
                out.stop_reason = "stop_string"
                break
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
                continue
            safe_upto = len(text) - _held_back(text, s.stop_strings)
            if self.gate is not None:
                # With a gate, release whole sentences, each time after screening all of the text.
                last_end = max(text.rfind(c, 0, safe_upto) for c in _SENTENCE_END)
                safe_upto = last_end + 1 if last_end >= 0 else 0
                if safe_upto > released and not self._screen_ok(text[:safe_upto], out, assessment):
                    return
            # Trailing whitespace waits for more text, so the pieces add up to the final reply.
            safe_upto = len(text[:safe_upto].rstrip())
            if safe_upto > released:
                yield text[released:safe_upto]
                released = safe_upto
        text = text.rstrip()
        if self.gate is not None and not self._screen_ok(text, out, assessment):
            return
        if len(text) > released:
            yield text[released:]
        out.text = text

    def _screen_ok(self, text: str, out: GenerationResult, assessment) -> bool:
        screened = self.gate.screen(text, assessment)
        if screened.safe:
            return True
        out.text, out.stop_reason, out.screen_reasons = screened.text, "screened", list(screened.reasons)
        return False
