"""The quality gate for an ONNX build: does a quantised model still predict the replies the fp32
torch model predicts?

Teacher-forced on validation conversations (the run's own validation split, rebuilt from the
recipe it saved; else the offline recipe's), scored on the reply tokens only (the labels that
training scores: assistant content and its EOS; `data.tokens.tokenize_conversation`):

- loss delta: the ONNX build's mean reply-token loss minus the fp32 torch model's, in nats;
- top-1 agreement: how often the two models' most likely next token is the same there.

A build passes when loss delta <= MAX_LOSS_DELTA and top-1 agreement >= MIN_TOP1_AGREEMENT. The
thresholds were set (issue 15) before anything was measured; a build outside them is not offered
as the default engine. The ONNX side runs through onnxruntime-genai itself, the runtime that
serves the chat: the whole conversation appended at once, logits read at every position.

Verdicts are cached as `quality.json` in the build folder, so `--engine auto` reads them instead of
recomputing; the cache is keyed by the model's weight files, the build's files, the recipe files
that name the conversations, the thresholds and the evaluation settings (not by the data files).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MAX_LOSS_DELTA = 0.02
"""Largest rise in mean reply-token loss (nats) over the fp32 torch model that still passes."""
MIN_TOP1_AGREEMENT = 0.97
"""Smallest share of reply tokens where the build's top-1 prediction equals fp32 torch's."""
VERDICT_FILE = "quality.json"
# Bump when the way a verdict is computed changes, so cached verdicts are recomputed.
VERDICT_VERSION = 1
REPO = Path(__file__).resolve().parents[3]
OFFLINE_RECIPE = REPO / "recipes" / "offline.yaml"
"""Where a model folder without a recipe of its own takes its validation conversations from."""


class QualityDataError(RuntimeError):
    """No validation conversations can be found to judge a build with."""


@dataclass(frozen=True)
class TokenScores:
    """Per reply token, in order: the model's loss on the true next token and its top-1 prediction."""

    nll: np.ndarray  # (reply_tokens,) float64, nats
    top1: np.ndarray  # (reply_tokens,) int64 token ids

    @staticmethod
    def concat(parts: list[TokenScores]) -> TokenScores:
        return TokenScores(
            np.concatenate([p.nll for p in parts]) if parts else np.zeros(0),
            np.concatenate([p.top1 for p in parts]) if parts else np.zeros(0, dtype=np.int64),
        )


@dataclass(frozen=True)
class QualityVerdict:
    """How a build compares with the fp32 torch model on reply tokens, and whether it passes."""

    quant: str
    loss_fp32: float
    loss: float
    loss_delta: float
    top1_agreement: float
    reply_tokens: int
    conversations: int
    data: str
    """Where the conversations came from (the run's validation split, or the offline recipe's)."""
    ok: bool
    max_loss_delta: float = MAX_LOSS_DELTA
    min_top1_agreement: float = MIN_TOP1_AGREEMENT

    def summary(self) -> str:
        """One line: the figures and the verdict."""
        return (
            f"{self.quant}: reply-token loss {self.loss:.4f} ({self.loss_delta:+.4f} vs fp32 torch), top-1"
            f" agreement {self.top1_agreement:.1%} on {self.reply_tokens} reply tokens ->"
            f" {'passes' if self.ok else 'FAILS'} the gate (loss +{self.max_loss_delta}, agreement"
            f" >= {self.min_top1_agreement:.0%})"
        )


# ---------------------------------------------------------------------------------------------
# The arithmetic


def score_reply_tokens(logits: np.ndarray, labels: list[int] | np.ndarray) -> TokenScores:
    """Scores at the reply tokens of one conversation: position t's logits predict labels[t+1], and
    only labelled targets (not IGNORE_INDEX) count. `logits` is (seq, vocab) for the whole
    conversation, or (seq - 1, vocab) already cut to the predicting positions."""
    from warmline.data.tokens import IGNORE_INDEX

    labels = np.asarray(labels, dtype=np.int64)
    targets = labels[1:]
    logits = np.asarray(logits)[: len(targets)]
    keep = targets != IGNORE_INDEX
    return score_targets(logits[keep], targets[keep])


def score_targets(logits: np.ndarray, targets: np.ndarray) -> TokenScores:
    """Loss (log-softmax in float64, so large logits neither overflow nor lose the small ones) and
    top-1 for rows of logits (n, vocab) against their true next tokens (n,)."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if logits.shape[0] == 0:
        return TokenScores(np.zeros(0), np.zeros(0, dtype=np.int64))
    peak = logits.max(axis=-1, keepdims=True)
    log_norm = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=-1))
    nll = log_norm - logits[np.arange(len(targets)), targets]
    return TokenScores(nll, logits.argmax(axis=-1).astype(np.int64))


def passes_gate(
    loss_delta: float,
    top1_agreement: float,
    *,
    max_loss_delta: float = MAX_LOSS_DELTA,
    min_top1_agreement: float = MIN_TOP1_AGREEMENT,
) -> bool:
    """The gate: loss no more than max_loss_delta above fp32, agreement at least min_top1_agreement
    (both bounds inclusive; NaN fails)."""
    return bool(loss_delta <= max_loss_delta and top1_agreement >= min_top1_agreement)


def compare_scores(
    reference: TokenScores,
    candidate: TokenScores,
    *,
    quant: str,
    conversations: int,
    data: str,
    max_loss_delta: float = MAX_LOSS_DELTA,
    min_top1_agreement: float = MIN_TOP1_AGREEMENT,
) -> QualityVerdict:
    """The verdict for a candidate's reply-token scores against the reference's (same tokens, same order)."""
    if reference.nll.shape != candidate.nll.shape:
        raise ValueError(
            f"reference and candidate scored different tokens ({reference.nll.size} vs {candidate.nll.size}):"
            " score both on the same conversations"
        )
    n = int(reference.nll.size)
    if n == 0:
        raise QualityDataError(
            "no reply tokens to judge the build on: the conversations have no assistant turns"
        )
    loss_fp32, loss = float(reference.nll.mean()), float(candidate.nll.mean())
    delta = loss - loss_fp32
    agreement = float((reference.top1 == candidate.top1).mean())
    return QualityVerdict(
        quant=quant,
        loss_fp32=loss_fp32,
        loss=loss,
        loss_delta=delta,
        top1_agreement=agreement,
        reply_tokens=n,
        conversations=conversations,
        data=data,
        ok=passes_gate(
            delta, agreement, max_loss_delta=max_loss_delta, min_top1_agreement=min_top1_agreement
        ),
        max_loss_delta=max_loss_delta,
        min_top1_agreement=min_top1_agreement,
    )


# ---------------------------------------------------------------------------------------------
# The conversations


def validation_examples(hf_dir: str | Path, max_per_stage: int | None = None):
    """Tokenised validation conversations for the model in `hf_dir`, and where they came from.

    The recipe the run saved next to its weights (`recipe.yaml`, as every stage folder has), its
    stages' validation splits rebuilt as training built them; else the offline recipe's
    (recipes/offline.yaml, data shipped in the repository). Tokenised with the model's own
    tokenizer and chat template, which is what the chat serves."""
    from warmline.data.cleaning import prepare_stage
    from warmline.data.tokens import tokenize_conversation
    from warmline.models import load_tokenizer
    from warmline.recipe import load_recipe

    hf_dir = Path(hf_dir)
    candidates = [
        (hf_dir / "recipe.yaml", f"validation split of the recipe in {hf_dir}"),
        (OFFLINE_RECIPE, ""),
    ]
    problems = []
    for path, label in candidates:
        if not path.is_file():
            problems.append(f"{path} not found")
            continue
        try:
            recipe = load_recipe(path)
            for stage in recipe.stages:
                # Recipes name data relative to the repository root (`data/...`): find it from any folder.
                if not Path(stage.source).exists() and (REPO / stage.source).exists():
                    stage.source = str(REPO / stage.source)
            stages = [
                (stage, prepare_stage(stage, seed=recipe.training.seed, system_prompt=recipe.system_prompt))
                for stage in recipe.stages
            ]
        except (OSError, ValueError) as err:  # a moved data file, an unreadable recipe
            problems.append(f"{path}: {err}")
            continue
        tokenizer = load_tokenizer(str(hf_dir))
        examples = [
            tokenize_conversation(tokenizer, conv, stage.max_length)
            for stage, data in stages
            for conv in data.validation[:max_per_stage]
        ]
        return examples, label or f"validation split of {path.name} ({recipe.name} recipe)"
    raise QualityDataError(
        "no validation conversations to judge an ONNX build with (" + "; ".join(problems) + "): run from the"
        " warmline repository (recipes/offline.yaml and data/), or judge a run folder whose recipe's data exists"
    )


def _fingerprint(examples) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(np.asarray(ex.input_ids, dtype=np.int64).tobytes())
        digest.update(np.asarray(ex.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The two models' scores


def torch_scores(hf_dir: str | Path, examples) -> TokenScores:
    """The fp32 torch model's reply-token scores (the reference), one conversation per forward."""
    import torch

    from warmline.data.tokens import IGNORE_INDEX
    from warmline.models import load_model

    model = load_model(str(hf_dir), dtype=torch.float32).eval()
    backbone = getattr(model, model.base_model_prefix, None)
    head = model.get_output_embeddings()
    parts = []
    with torch.inference_mode():
        for ex in examples:
            ids = torch.tensor([ex.input_ids])
            targets = torch.tensor(ex.labels[1:])  # position t predicts token t+1
            keep = targets != IGNORE_INDEX
            if backbone is not None and head is not None:
                # Project to the vocabulary only where a reply token is predicted (as loss.py does).
                hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]  # (seq-1, hidden)
                logits = head(hidden[keep])  # (reply_tokens, vocab)
            else:
                logits = model(input_ids=ids, use_cache=False).logits[0, :-1][keep]
            parts.append(score_targets(logits.float().numpy(), targets[keep].numpy()))
    return TokenScores.concat(parts)


def onnx_scores(onnx_dir: str | Path, examples) -> TokenScores:
    """An ONNX build's reply-token scores through onnxruntime-genai: each conversation appended in
    one call, the logits of every position read back (a build that returns the last position's
    only, `prune_lm_head`, is read a token at a time from the first reply token: slow, for small
    models and builds passed in by hand)."""
    import onnxruntime_genai as og

    from warmline.serving.onnx_build import returns_all_logits

    if not returns_all_logits(onnx_dir):
        return _onnx_scores_stepwise(onnx_dir, examples)
    model = og.Model(str(onnx_dir))
    parts = []
    for ex in examples:
        params = og.GeneratorParams(model)
        # The KV cache is sized by max_length: the conversation and no more.
        params.set_search_options(max_length=len(ex.input_ids) + 1)
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray(ex.input_ids, dtype=np.int32))
        logits = generator.get_output("logits")[0]  # (seq, vocab)
        parts.append(score_reply_tokens(logits, ex.labels))
        del generator
    return TokenScores.concat(parts)


def _onnx_scores_stepwise(onnx_dir: str | Path, examples) -> TokenScores:
    """`onnx_scores` for a build that returns the last position's logits only: the conversation
    up to the first scored position in one call, then one token a call."""
    import onnxruntime_genai as og

    from warmline.data.tokens import IGNORE_INDEX

    model = og.Model(str(onnx_dir))
    parts = []
    for ex in examples:
        ids = np.asarray(ex.input_ids, dtype=np.int32)
        labels = np.asarray(ex.labels)
        scored = [t for t in range(len(ids) - 1) if labels[t + 1] != IGNORE_INDEX]
        if not scored:
            continue
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 1)
        generator = og.Generator(model, params)
        generator.append_tokens(ids[: scored[0] + 1])
        rows, read = [], scored[0] + 1
        for t in scored:
            if read <= t:
                generator.append_tokens(ids[read : t + 1])
                read = t + 1
            rows.append(np.asarray(generator.get_logits(), dtype=np.float32).reshape(-1))
        parts.append(score_targets(np.stack(rows), labels[[t + 1 for t in scored]]))
        del generator
    return TokenScores.concat(parts)


def _weights_fingerprint(folder: Path, patterns: tuple[str, ...]) -> list[list]:
    files = sorted(f for pattern in patterns for f in folder.glob(pattern))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


@functools.lru_cache(maxsize=4)
def _reference(hf_dir: str, weights: str, max_per_stage: int | None):
    """The data and the fp32 reference, once per process per model (several builds are judged in a row)."""
    del weights  # part of the cache key only: retrained weights are scored again
    examples, source = validation_examples(hf_dir, max_per_stage)
    return examples, source, torch_scores(hf_dir, examples)


def quality_verdict(
    hf_dir: str | Path,
    quant: str,
    *,
    onnx_dir: str | Path | None = None,
    max_per_stage: int | None = None,
    refresh: bool = False,
) -> QualityVerdict:
    """Judge the ONNX build of `hf_dir` at `quant` against the fp32 torch model (see the module docstring).

    `onnx_dir` is the build folder (default: `build_onnx(hf_dir, quant)`, built once and cached);
    `max_per_stage` caps the validation conversations per recipe stage (default: all). The verdict
    is read from `quality.json` in the build folder when it was computed for these weights, this
    build and these settings, else computed and written there (`refresh` recomputes it)."""
    from warmline.serving.onnx_build import build_onnx, returns_all_logits

    hf_dir = Path(hf_dir)
    default_build = onnx_dir is None
    if onnx_dir is None:
        onnx_dir = build_onnx(hf_dir, quant)
    onnx_dir = Path(onnx_dir)
    weights = _weights_fingerprint(hf_dir, ("*.safetensors", "*.bin"))
    key = {
        "version": VERDICT_VERSION,
        "quant": quant,
        "weights": weights,
        "build": _weights_fingerprint(onnx_dir, ("*.onnx", "*.onnx.data")),
        "max_per_stage": max_per_stage,
        # The recipe that names the conversations (a changed split is judged again).
        "recipes": [
            # resolved: one key however the model folder is named (relative or absolute)
            [str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns]
            for path in (hf_dir / "recipe.yaml", OFFLINE_RECIPE)
            if path.is_file()
        ],
        "max_loss_delta": MAX_LOSS_DELTA,
        "min_top1_agreement": MIN_TOP1_AGREEMENT,
    }
    cache = onnx_dir / VERDICT_FILE
    if not refresh and cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                return QualityVerdict(**saved["verdict"])
        except (ValueError, TypeError, KeyError):
            pass  # an unreadable or older cache is recomputed below
    logger.info(
        "judging the %s ONNX build in %s against fp32 torch on validation reply tokens", quant, onnx_dir
    )
    examples, source, reference = _reference(str(hf_dir), json.dumps(weights), max_per_stage)
    scored_dir, twin = onnx_dir, None
    if not returns_all_logits(onnx_dir) and default_build:
        # A serving build computes the head at the last position only (onnx_build.PRUNE_LM_HEAD):
        # its every-position twin (same weights, same quantisation) is built, scored and removed.
        scored_dir = twin = build_onnx(hf_dir, quant, all_logits=True)
    try:
        scores = onnx_scores(scored_dir, examples)
    finally:
        if twin is not None:
            shutil.rmtree(twin, ignore_errors=True)
    verdict = compare_scores(reference, scores, quant=quant, conversations=len(examples), data=source)
    if not (math.isfinite(verdict.loss) and math.isfinite(verdict.top1_agreement)):
        logger.warning("the %s build's scores are not finite: it fails the gate", quant)
    record = {"key": key, "verdict": asdict(verdict)}
    cache.write_text(json.dumps(record, indent=2) + "\n")
    logger.info("%s", verdict.summary())
    return verdict
