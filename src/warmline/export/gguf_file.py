"""A saved Hugging Face model -> one GGUF file (llama.cpp, Ollama, LM Studio), written with gguf-py.

Everything about the file format is gguf-py's: `GGUFWriter` writes it, `get_tensor_name_map`
names the tensors, `gguf.quants.quantize` packs them, `SpecialVocab` reads the merges, special
token ids and chat template from the model folder. What is ours is the per-architecture layout,
which follows llama.cpp's `convert_hf_to_gguf.py` (ggml-org/llama.cpp, `conversion/llama.py`
`LlamaModel`, `conversion/gpt2.py` `GPT2Model`, `TextModel.set_gguf_parameters`,
`ModelBase.prepare_tensors`, `TextModel.get_vocab_base` and `_set_vocab_gpt2`):

- Llama family (Llama, SmolLM2, Mistral -> architecture `llama`): q_proj and k_proj rows are
  permuted from Hugging Face's rotate-half layout to llama.cpp's interleaved RoPE layout;
  `rope.dimension_count` is the head dimension; tied embeddings write no `output.weight`.
- GPT-2 (`gpt2`): the Conv1D weights (c_attn, c_proj, c_fc) are stored (in, out) by Hugging Face
  and transposed to (out, in); c_attn stays fused as `attn_qkv`; `feed_forward_length` is 4 x n_embd.
- Types: 1-D tensors, norms and biases stay F32; the rest become the requested type (F16 or
  Q8_0); a tensor whose rows are not a whole number of Q8_0 blocks (32 values) stays F16, as
  llama.cpp does when `quantize` raises `QuantError`.
- Tokenizer: byte-level BPE as `tokenizer.ggml.model = gpt2` with tokens, token types
  (NORMAL / CONTROL for special added tokens / USER_DEFINED / UNUSED padding), merges and `pre`.

transformers' GGUF loader (the path warmline uses for its packaged model) undoes each of these
transforms, which is what tests/test_export.py checks: logits before and after agree.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

Quant = Literal["f16", "q8_0"]
# Hugging Face model_type -> gguf-py architecture name (the `general.architecture` value).
SUPPORTED_ARCHITECTURES: dict[str, str] = {"llama": "llama", "mistral": "llama", "gpt2": "gpt2"}


class ExportError(ValueError):
    """A model or option that cannot be exported, with a message that says what to do instead."""


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling defaults written into the GGUF (`general.sampling.*`) and the Modelfile."""

    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    max_new_tokens: int


@dataclass(frozen=True)
class WrittenTensor:
    """One tensor as written: its GGUF name and type (what the export summary reports)."""

    name: str
    type_name: str
    shape: tuple[int, ...]


def gguf_architecture(model_type: str) -> str:
    """The GGUF architecture for a Hugging Face `model_type`, or a one-line error naming the supported ones."""
    if model_type not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(f"{k} (as {v})" for k, v in SUPPORTED_ARCHITECTURES.items())
        raise ExportError(
            f"cannot export a '{model_type}' model to GGUF; supported architectures: {supported}"
        )
    return SUPPORTED_ARCHITECTURES[model_type]


# --- tensors --------------------------------------------------------------------------------


def _permute_for_rope(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotate-half q/k rows -> llama.cpp's interleaved pairs (LlamaModel.permute)."""
    # (heads * head_dim, in) -> (heads, 2, head_dim / 2, in) -> swap the two middle axes
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _llama_tensors(state: dict[str, np.ndarray], config) -> Iterator[tuple[str, np.ndarray]]:
    n_head = config.num_attention_heads
    n_kv_head = getattr(config, "num_key_value_heads", None) or n_head
    for name, data in state.items():
        if name.endswith("rotary_emb.inv_freq"):  # recomputed from rope.freq_base
            continue
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: the loader reuses token_embd when output.weight is absent
        if name.endswith("q_proj.weight"):
            data = _permute_for_rope(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = _permute_for_rope(data, n_kv_head)
        yield name, data


def _gpt2_tensors(state: dict[str, np.ndarray], config) -> Iterator[tuple[str, np.ndarray]]:
    for name, data in state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers, not weights
            continue
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            data = data.T  # Conv1D keeps (in, out); GGUF wants (out, in) like a Linear
        yield name, data


def _tensor_type(gguf_name: str, data: np.ndarray, quant: Quant):
    """The GGML type for one tensor, following llama.cpp's `prepare_tensors` rules."""
    import gguf

    if data.ndim <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32  # llama.cpp reads 1-D tensors and norms as F32 only
    return gguf.GGMLQuantizationType.F16 if quant == "f16" else gguf.GGMLQuantizationType.Q8_0


def _add_tensors(writer, arch, state, config, quant: Quant) -> list[WrittenTensor]:
    import gguf

    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    source = _llama_tensors if arch == gguf.MODEL_ARCH.LLAMA else _gpt2_tensors
    written: list[WrittenTensor] = []
    for hf_name, data in source(state, config):
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"no GGUF name for tensor '{hf_name}'; this checkpoint layout is not supported")
        qtype = _tensor_type(gguf_name, data, quant)
        data = np.ascontiguousarray(data, dtype=np.float32)
        try:
            packed = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:
            # Rows that are not whole Q8_0 blocks: llama.cpp keeps such a tensor F16.
            qtype = gguf.GGMLQuantizationType.F16
            packed = gguf.quants.quantize(data, qtype)
        writer.add_tensor(gguf_name, packed, raw_dtype=qtype)
        written.append(WrittenTensor(gguf_name, qtype.name, tuple(data.shape)))
    return written


# --- hyperparameters ------------------------------------------------------------------------


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise ExportError(
            f"RoPE scaling '{rope_type}' is not supported by warmline's GGUF export; "
            "export a model without rope scaling, or use llama.cpp's convert_hf_to_gguf.py"
        )
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _add_llama_parameters(writer, config) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)


def _add_gpt2_parameters(writer, config) -> None:
    writer.add_block_count(config.n_layer)
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)


def _add_sampling(writer, defaults: GenerationDefaults) -> None:
    # llama.cpp reads these as the model's default sampling settings; Ollama takes the Modelfile's.
    writer.add_sampling_temp(defaults.temperature)
    writer.add_sampling_top_k(defaults.top_k)
    writer.add_sampling_top_p(defaults.top_p)
    writer.add_sampling_penalty_repeat(defaults.repetition_penalty)


# --- tokenizer ------------------------------------------------------------------------------


def bpe_pre_tokenizer(tokenizer) -> str:
    """llama.cpp's `tokenizer.ggml.pre` name for a byte-level BPE tokenizer's pre-tokenizer.

    llama.cpp recognises a pre-tokenizer by hashing how it splits a test text; we recognise the
    two shapes warmline's models have instead: GPT-2's regex (`gpt2`), and the same regex after
    splitting digits one by one (`smollm`, as in SmolLM2's own tokenizer.json).
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = state.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if (
        byte_level is not None
        and byte_level.get("use_regex", True)
        and not byte_level.get("add_prefix_space")
    ):
        if kinds == ["ByteLevel"]:
            return "gpt2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
            return "smollm"
    raise ExportError(
        f"tokenizer pre-tokenizer {kinds or 'none'} is not one warmline can describe in GGUF "
        "(supported: byte-level BPE as in GPT-2 or SmolLM2); use llama.cpp's convert_hf_to_gguf.py"
    )


def _vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and token types by id, as llama.cpp's `get_vocab_base` builds them."""
    import gguf

    by_id = {i: tok for tok, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows beyond the tokenizer: padding llama.cpp never emits
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _adds_token(tokenizer, token_id: int | None, position: int) -> bool:
    if token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return (
        bool(ids)
        and ids[position] == token_id
        and ids != tokenizer("a", add_special_tokens=False)["input_ids"]
    )


def _add_tokenizer(writer, model_dir: Path, tokenizer, vocab_size: int, chat_template: str) -> None:
    import gguf

    tokens, types = _vocab(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(bpe_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise ExportError(
            f"no BPE merges found in {model_dir} (tokenizer.json or merges.txt); save the tokenizer"
        )
    # What the Hugging Face tokenizer really does, rather than what its config files may omit.
    special.add_special_token["bos"] = _adds_token(tokenizer, tokenizer.bos_token_id, 0)
    special.add_special_token["eos"] = _adds_token(tokenizer, tokenizer.eos_token_id, -1)
    special.chat_template = chat_template
    special.add_to_gguf(writer, quiet=True)


# --- the file -------------------------------------------------------------------------------


def write_gguf(
    model_dir: Path,
    out_path: Path,
    *,
    quant: Quant = "f16",
    chat_template: str,
    defaults: GenerationDefaults,
    name: str | None = None,
) -> list[WrittenTensor]:
    """Write the model saved in `model_dir` as one GGUF file; return the tensors as written.

    `chat_template` is the Jinja template stored as `tokenizer.chat_template` (the model's own,
    or warmline's plain "Human/Assistant" one for models without one).
    """
    import gguf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if quant not in ("f16", "q8_0"):
        raise ExportError(f"unknown --quant '{quant}'; choose f16 or q8_0")
    config = AutoConfig.from_pretrained(model_dir)
    arch_name = gguf_architecture(config.model_type)
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    del model

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    writer = gguf.GGUFWriter(path=None, arch=arch_name)
    writer.add_type(gguf.GGUFType.MODEL)
    # transformers reads a llama-architecture file as Mistral when the name says so.
    label = name or model_dir.name
    if config.model_type == "mistral" and "mistral" not in label.lower():
        label = f"{label} (mistral)"
    writer.add_name(label)
    if arch == gguf.MODEL_ARCH.LLAMA:
        _add_llama_parameters(writer, config)
    else:
        _add_gpt2_parameters(writer, config)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    _add_sampling(writer, defaults)
    _add_tokenizer(writer, model_dir, tokenizer, config.vocab_size, chat_template)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    written = _add_tensors(writer, arch, state, config, quant)
    writer.write_header_to_file(path=tmp)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_path)  # a half-written file never carries the final name
    logger.info("wrote %s (%d tensors, %s)", out_path, len(written), quant)
    return written
