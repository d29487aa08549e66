"""A token engine on ONNX Runtime GenAI: its C++ forward passes and KV cache, our sampling.

`OnnxEngine` implements `warmline.serving.engine.TokenEngine` on a folder built by
`warmline.serving.onnx_build.build_onnx`. onnxruntime-genai runs the model (`og.Model`) and keeps
each KV cache (`og.Generator`: `append_tokens`, `get_logits`, `rewind_to`); choosing the tokens is
the torch engine's own code (`engine.Sampler`, `engine.seeded_rng`),
so the same settings and seed pick the same tokens from the same logits, and an fp32 build's
greedy reply equals the torch engine's.

KV reuse across turns: a conversation's next prompt begins with its previous prompt and reply,
so the engine keeps the generator state each reply left behind (`GeneratorStates`), rewinds it
to the part the new prompt shares and appends only the rest. States are checked out while a
reply is generated (one thread per state; the og.Model is shared), at most `max_states` idle ones
are kept (least recently used dropped first), each sized for one prompt budget plus one reply.

    engine = OnnxEngine(build_onnx("runs/offline/final", "fp32"), stop_token_ids={2})
    gen = Generator(None, tokenizer, engine=engine)

`onnx_generator` is the `warmline chat|serve --engine` choice: build (once), pick the quantisation
(`auto`: the fastest that passes `warmline.serving.onnx_quality`'s gate), or None when the model
cannot run here (one clear line logged; the caller uses the torch engine).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from warmline.serving.engine import decode_loop, reply_token_budget, seeded_rng

if TYPE_CHECKING:
    from warmline.serving.generator import GenerationResult, Generator
    from warmline.serving.settings import GenerationSettings

logger = logging.getLogger(__name__)

EngineChoice = Literal["auto", "torch", "onnx"]


@dataclass
class GeneratorState:
    """One og.Generator and the tokens its KV cache holds (in order)."""

    generator: Any
    max_length: int
    tokens: list[int] = field(default_factory=list)

    def read(self, prompt_ids: list[int]) -> int:
        """Make the cache hold exactly `prompt_ids` with the logits after them ready; returns the
        prompt tokens kept from before (not read again)."""
        # At least the last prompt token is read again: its logits are what the reply starts from.
        common = max(0, min(_common_prefix(self.tokens, prompt_ids), len(prompt_ids) - 1))
        if common < len(self.tokens):
            self.generator.rewind_to(common)
            del self.tokens[common:]
        self.append(prompt_ids[common:])
        return common

    def append(self, ids: Sequence[int]) -> None:
        """Run the model on `ids` after what the cache holds."""
        self.generator.append_tokens(np.asarray(ids, dtype=np.int32))
        self.tokens.extend(ids)

    def logits(self) -> torch.Tensor:
        """The next-token logits after the last token read, (1, vocab) float32."""
        return torch.from_numpy(np.asarray(self.generator.get_logits(), dtype=np.float32).reshape(1, -1))


class GeneratorStates:
    """Generator states of recent conversations, shared by one engine's threads (see the module
    docstring). `take` hands a state to one caller until `give_back`."""

    def __init__(self, og_model, max_states: int = 6):
        self.og_model = og_model
        self.max_states = max_states
        self._idle: OrderedDict[int, GeneratorState] = OrderedDict()  # id -> state, oldest first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._idle)

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()

    def take(self, prompt_ids: list[int], max_length: int, *, shared: int = 0) -> GeneratorState:
        """A state for this prompt: the idle one sharing the longest start with it when that is
        more than the `shared` tokens every first turn shares (template + system prompt): the
        same conversation's earlier turn. Else a new state while fewer than `max_states` are
        kept, so a new conversation does not take another's; else the least recently used."""
        with self._lock:
            chosen = None
            if self._idle:
                best = max(self._idle.values(), key=lambda st: _common_prefix(st.tokens, prompt_ids))
                if _common_prefix(best.tokens, prompt_ids) > shared:
                    chosen = best
                elif len(self._idle) >= self.max_states:
                    chosen = next(iter(self._idle.values()))
            if chosen is not None:
                del self._idle[id(chosen)]
        if chosen is not None and chosen.max_length >= max_length:
            return chosen
        return self._new_state(max_length)

    def give_back(self, state: GeneratorState) -> None:
        """Keep `state` for the conversation's next turn (dropping the least recently used beyond max)."""
        with self._lock:
            self._idle[id(state)] = state
            while len(self._idle) > self.max_states:
                self._idle.popitem(last=False)

    def _new_state(self, max_length: int) -> GeneratorState:
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.og_model)
        # The KV buffer is allocated for max_length tokens up front (past_present_share_buffer).
        params.set_search_options(max_length=max_length)
        return GeneratorState(og.Generator(self.og_model, params), max_length)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class OnnxEngine:
    """Reply tokens from an onnxruntime-genai model folder; see the module docstring.

    Thread-safe: the og.Model is shared, every reply has its own generator state and random
    generator."""

    model = None  # no torch model (Generator.model reads this)
    decode_model = None

    def __init__(
        self,
        onnx_dir: str | Path,
        *,
        stop_token_ids: set[int],
        max_states: int = 6,
        max_length: int | None = None,
        quant: str | None = None,
    ):
        """`onnx_dir`: a `build_onnx` folder. `max_states`: idle conversation states kept (each
        holds a KV buffer for `max_length` tokens). `max_length`: tokens one state holds (default:
        prompt budget + reply of the call that creates it, up to the model's context length;
        for SmolLM2-135M in fp32 that is about 80 MB per state).
        `quant`: the build's quantisation, for logs and benchmarks."""
        import json

        import onnxruntime_genai as og

        self.onnx_dir = Path(onnx_dir)
        self.og_model = og.Model(str(self.onnx_dir))
        genai_config = json.loads((self.onnx_dir / "genai_config.json").read_text())
        self.context_length: int | None = genai_config["model"].get("context_length")
        self.stop_token_ids = stop_token_ids
        self.max_length = max_length
        self.quant = quant
        # Named like TorchEngine's cache: the Generator passes the shared prefix when it is set.
        self.prompt_cache = GeneratorStates(self.og_model, max_states)

    def tokens(
        self,
        prompt_ids: list[int],
        settings: GenerationSettings,
        *,
        seed: int | None = None,
        shared_prefix: Sequence[int] = (),
        result: GenerationResult,
    ) -> Iterator[int]:
        """The decode loop (see `TokenEngine.tokens`); the same steps as `TorchEngine.tokens`."""
        s = settings
        max_new_tokens = reply_token_budget(prompt_ids, s, self.context_length, result)
        rng = seeded_rng(seed)
        # A state sized for any prompt within budget and a full reply, so the next turn fits too.
        max_length = self.max_length or max(s.max_prompt_tokens, len(prompt_ids)) + max_new_tokens
        if self.context_length is not None:
            max_length = min(max_length, self.context_length)
        max_length = max(max_length, len(prompt_ids) + max_new_tokens)
        state = self.prompt_cache.take(prompt_ids, max_length, shared=len(shared_prefix))
        try:
            result.reused_prompt_tokens = state.read(prompt_ids)

            def advance(token: torch.Tensor) -> torch.Tensor:
                state.append([int(token)])
                return state.logits()

            yield from decode_loop(
                state.logits(),
                advance,
                settings=s,
                max_new_tokens=max_new_tokens,
                stop_token_ids=self.stop_token_ids,
                rng=rng,
                result=result,
            )
        except GeneratorExit:  # the reply ended early (stop string, screen): the state is whole
            raise
        except BaseException:
            state = None  # an error (or Ctrl-C) mid-append may leave the cache unlike `tokens`
            raise
        finally:
            if state is not None:
                self.prompt_cache.give_back(state)


def onnx_stop_token_ids(tokenizer, hf_dir: str | Path) -> set[int]:
    """The torch engine's stop ids (`templates.stop_token_ids`) without loading the torch model:
    the generation config is all it reads from the model."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from warmline.templates import stop_token_ids, template_for

    try:
        generation_config = GenerationConfig.from_pretrained(str(hf_dir))
    except OSError:  # no generation_config.json: the tokenizer's EOS and the template's stops
        generation_config = None
    return stop_token_ids(
        tokenizer, template_for(tokenizer), SimpleNamespace(generation_config=generation_config)
    )


def pick_quant(hf_dir: str | Path) -> str:
    """The fastest quantisation whose build passes the quality gate (`onnx_quality.quality_verdict`,
    computed once per build and cached there); fp32 (lossless) when none does."""
    import sys

    from tqdm import tqdm

    from warmline.serving.onnx_build import SPEED_ORDER, build_dir

    try:
        from warmline.serving.onnx_quality import VERDICT_FILE, quality_verdict
    except ImportError:
        return "fp32"
    candidates = [quant for quant in SPEED_ORDER if quant != "fp32"]
    # Judging a build the first time takes minutes: say so on the terminal (the chat hides INFO logs).
    first_time = any(not (build_dir(hf_dir, q) / VERDICT_FILE).is_file() for q in candidates)
    desc = "judging the quantised ONNX builds against fp32, once"
    for quant in tqdm(candidates, desc=desc, unit="build", file=sys.stderr, disable=not first_time):
        try:
            verdict = quality_verdict(hf_dir, quant)
        except Exception as err:  # noqa: BLE001 - no verdict means not offered as default
            logger.warning("no quality verdict for the %s ONNX build (%s); not using it", quant, err)
            continue
        if verdict.ok:
            return quant
        logger.info("%s", verdict.summary())
    return "fp32"


def onnx_generator(
    reference: str,
    *,
    engine: EngineChoice = "auto",
    quant: str | None = None,
    gate=None,
    settings: GenerationSettings | None = None,
    max_states: int = 6,
) -> Generator | None:
    """A Generator on the ONNX engine for `--engine auto|onnx`, or None for the torch engine:
    `torch` asked, `auto` on a GPU, or a model onnxruntime-genai cannot run (logged, one line).

    `quant`: fp32, int8, int8-mlp or int4 (`onnx_build.QUANT_OPTIONS`); None: with `auto`, the
    fastest that passes the quality gate; with `onnx`, fp32. The build happens once per model and quantisation (`build_onnx`)."""
    from warmline.models import load_tokenizer, resolve_model
    from warmline.serving.generator import Generator
    from warmline.serving.onnx_build import OnnxBuildError, OnnxUnsupportedError, build_onnx, check_buildable

    if engine == "torch":
        return None
    if engine == "auto" and torch.cuda.is_available():
        return None  # the CPU build of onnxruntime-genai is installed; torch uses the GPU
    hf_dir = resolve_model(reference).path
    if not Path(hf_dir).is_dir():
        logger.warning("the ONNX engine needs a local model folder; %s is a hub id: using torch", reference)
        return None
    try:
        check_buildable(hf_dir)  # before judging any quantisation
        chosen = quant or (pick_quant(hf_dir) if engine == "auto" else "fp32")
        onnx_dir = build_onnx(hf_dir, chosen)
    except OnnxUnsupportedError as err:
        logger.warning("%s", err)
        return None
    except OnnxBuildError as err:
        if engine == "onnx":
            raise
        logger.warning("%s", err)
        return None
    if quant is not None and quant != "fp32":
        _warn_if_outside_gate(hf_dir, onnx_dir, quant)
    tokenizer = load_tokenizer(reference)
    stop_ids = onnx_stop_token_ids(tokenizer, hf_dir)
    onnx_engine = OnnxEngine(onnx_dir, stop_token_ids=stop_ids, max_states=max_states, quant=chosen)
    logger.info("ONNX engine (onnxruntime-genai, %s) on %s", chosen, onnx_dir)
    return Generator(None, tokenizer, gate=gate, settings=settings, engine=onnx_engine)


def _warn_if_outside_gate(hf_dir: str | Path, onnx_dir: Path, quant: str) -> None:
    """A quantisation asked for by name is used; when its judged verdict fails the gate, say so."""
    try:
        from warmline.serving.onnx_quality import VERDICT_FILE, quality_verdict

        if not (onnx_dir / VERDICT_FILE).is_file():
            return  # not judged yet: judging takes minutes, and the user chose it
        verdict = quality_verdict(hf_dir, quant, onnx_dir=onnx_dir)
    except Exception:  # noqa: BLE001 - only a notice
        return
    if not verdict.ok:
        logger.warning("%s; using it because --quant %s was asked for", verdict.summary(), quant)
