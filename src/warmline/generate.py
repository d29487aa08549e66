"""One streaming generator for the terminal chat, the web app and evaluation.

It builds the prompt with the model's chat template (or the plain "Human/Assistant" one), keeps
the most recent turns that fit a token budget (always the system turn and the newest user turn),
streams tokens from a KV-cached decode loop, stops on EOS or a stop string, and decodes only the
new tokens. An optional safety gate answers crisis messages itself and screens every reply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch

from .formats import Conversation
from .tokenize import encode_prompt

logger = logging.getLogger(__name__)

SAMPLE_PROMPTS = [
    "I feel lonely.",
    "I've been so stressed at work that I can't sleep. What can I do?",
    "My best friend stopped talking to me and I don't know why.",
    "I failed an exam and I feel like a complete failure.",
]
STOP_STRINGS = ("Human:", "\nHuman", "User:", "\nUser", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "\nAssistant:")
_SENTENCE_END = (".", "!", "?", "\n")


@dataclass
class GenerationSettings:
    """Sampling settings; the defaults are the reference recipe's."""

    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.92
    repetition_penalty: float = 1.2
    max_new_tokens: int = 200
    do_sample: bool = True
    max_prompt_tokens: int = 1536
    """Token budget for the prompt; older turns beyond it are dropped."""


@dataclass
class GenerationResult:
    text: str
    stop_reason: str  # eos | stop_string | max_new_tokens | crisis | screened
    new_tokens: int = 0
    prompt_tokens: int = 0
    ttft_s: float = 0.0
    duration_s: float = 0.0
    assessment: dict | None = None
    screen_reasons: list[str] = field(default_factory=list)


def truncate_history(tokenizer, conv: Conversation, max_prompt_tokens: int) -> Conversation:
    """Keep the system turn and the newest user turn, then as many recent turns as fit."""
    system = [t for t in conv[:1] if t["role"] == "system"]
    body = conv[len(system) :]
    if not body:
        return list(conv)
    kept = [body[-1]]
    i = len(body) - 1
    # Add earlier turns in (user, assistant) pairs so roles keep alternating.
    while i >= 2:
        candidate = body[i - 2 : i] + kept
        if len(encode_prompt(tokenizer, system + candidate)) > max_prompt_tokens:
            break
        kept = candidate
        i -= 2
    return system + kept


def _stop_token_ids(tokenizer, model) -> set[int]:
    ids: set[int] = set()
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    for value in (tokenizer.eos_token_id, eos):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(value)
    vocab = tokenizer.get_vocab()
    for marker in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"):
        if marker in vocab:
            ids.add(vocab[marker])
    return ids


def _find_stop(text: str, stop_strings: tuple[str, ...]) -> int:
    hits = [text.find(s) for s in stop_strings if s in text]
    return min(hits) if hits else -1


def _held_back(text: str, stop_strings: tuple[str, ...]) -> int:
    """How many trailing characters could be the start of a stop string (not released yet)."""
    longest = 0
    for s in stop_strings:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                longest = max(longest, k)
                break
    return longest


class Generator:
    """Streaming replies from a causal LM; see the module docstring."""

    def __init__(self, model, tokenizer, *, gate=None, settings: GenerationSettings | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.gate = gate
        self.settings = settings or GenerationSettings()
        self.stop_token_ids = _stop_token_ids(tokenizer, model)
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, reference: str, *, gate=None, settings: GenerationSettings | None = None,
                        device: str | None = None) -> Generator:  # fmt: skip
        from .models import load_model, load_tokenizer

        model = load_model(reference)
        if device:
            model = model.to(device)
        elif torch.cuda.is_available():
            model = model.to("cuda")
        return cls(model, load_tokenizer(reference), gate=gate, settings=settings)

    def _processors(self, s: GenerationSettings):
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        procs = LogitsProcessorList()
        if s.repetition_penalty and s.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
        if s.do_sample:
            if s.temperature and s.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(s.temperature))
            if s.top_k:
                procs.append(TopKLogitsWarper(s.top_k))
            if s.top_p and s.top_p < 1.0:
                procs.append(TopPLogitsWarper(s.top_p))
        return procs

    def stream(
        self, conversation: Conversation, *, seed: int | None = None, settings: GenerationSettings | None = None,
        result: GenerationResult | None = None, **overrides,
    ) -> Iterator[str]:  # fmt: skip
        """Yield the reply as text pieces. Pass `result` to receive stop reason and timings."""
        s = replace(settings or self.settings, **overrides)
        out = result if result is not None else GenerationResult(text="", stop_reason="")
        started = time.perf_counter()
        assessment = None
        if self.gate is not None:
            assessment = self.gate.check_input(conversation)
            out.assessment = assessment.to_dict()
            crisis = self.gate.reply_for(assessment)
            if crisis is not None:  # the model is not asked
                out.text, out.stop_reason, out.duration_s = crisis, "crisis", time.perf_counter() - started
                yield crisis
                return
        conv = truncate_history(self.tokenizer, conversation, s.max_prompt_tokens)
        yield from self._decode_stream(conv, s, seed, out, started, assessment)
        if out.stop_reason == "screened":
            # Only screened-safe sentences were released; the rest is replaced by the fallback.
            yield "\n\n" + out.text
        elif assessment is not None:
            note = self.gate.note_for(assessment)
            if note:
                out.text = f"{out.text}\n\n{note}"
                yield "\n\n" + note

    @torch.inference_mode()
    def _decode_stream(self, conv, s: GenerationSettings, seed, out: GenerationResult, started: float, assessment):
        prompt_ids = encode_prompt(self.tokenizer, conv)
        input_ids = torch.tensor([prompt_ids], device=self.device)
        out.prompt_tokens = len(prompt_ids)
        generator = torch.Generator(device=self.device)
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
        procs = self._processors(s)
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        all_ids = input_ids
        next_input = input_ids
        new_ids: list[int] = []
        released = 0  # characters of decoded text already yielded
        text = ""
        out.stop_reason = "max_new_tokens"
        for step in range(s.max_new_tokens):
            logits = self.model(input_ids=next_input, past_key_values=cache, use_cache=True).logits[:, -1, :]
            scores = procs(all_ids, logits.float())
            if s.do_sample:
                token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)
            else:
                token = scores.argmax(dim=-1, keepdim=True)
            if step == 0:
                out.ttft_s = time.perf_counter() - started
            token_id = int(token)
            if token_id in self.stop_token_ids:
                out.stop_reason = "eos"
                break
            new_ids.append(token_id)
            all_ids = torch.cat([all_ids, token], dim=1)
            next_input = token
            text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
            cut = _find_stop(text, STOP_STRINGS)
            if cut >= 0:
                text = text[:cut]
                out.stop_reason = "stop_string"
                break
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
                continue
            safe_upto = len(text) - _held_back(text, STOP_STRINGS)
            # With a gate, release text a sentence at a time, each time after screening all of it.
            if self.gate is not None:
                last_end = max(text.rfind(c, 0, safe_upto) for c in _SENTENCE_END)
                safe_upto = last_end + 1 if last_end >= 0 else 0
                if safe_upto > released and not self._screen_ok(text[:safe_upto], out, assessment):
                    return
            if safe_upto > released:
                yield text[released:safe_upto]
                released = safe_upto
        out.new_tokens = len(new_ids)
        text = text.rstrip()
        if self.gate is not None and not self._screen_ok(text, out, assessment):
            return
        if len(text) > released:
            yield text[released:]
        out.text = text
        out.duration_s = time.perf_counter() - started

    def _screen_ok(self, text: str, out: GenerationResult, assessment) -> bool:
        screened = self.gate.screen(text, assessment)
        if screened.safe:
            return True
        out.text, out.stop_reason, out.screen_reasons = screened.text, "screened", list(screened.reasons)
        out.duration_s = 0.0
        return False

    def generate(self, conversation: Conversation, *, seed: int | None = None, **overrides) -> GenerationResult:
        """The whole reply at once (same code path as streaming)."""
        result = GenerationResult(text="", stop_reason="")
        for _ in self.stream(conversation, seed=seed, result=result, **overrides):
            pass
        return result
