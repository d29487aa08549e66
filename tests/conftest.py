"""Shared fixtures: tiny randomly initialised GPT-2 and Llama models with real or fixture-trained
tokenizers, built offline in seconds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
# Headless Chromium for the browser tests (tests/test_browser.py, test_sheet_browser.py,
# test_feedback.py); they skip with this reason where it is missing (.ci/run installs it).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
needs_chromium = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
    reason=f"headless Chromium not installed ({CHROMIUM}, {CHROMEDRIVER}); "
    "install it with: apt-get install -y chromium chromium-driver",
)


def chromium_options(webdriver, tmp_path: Path):
    """Chrome options for a headless, offline, throwaway-profile Chromium."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    return options


# The real GPT-2 vocabulary, committed (tests/fixtures/gpt2_tokenizer/LICENSE): no ../shared needed.
GPT2_TOKENIZER_DIR = REPO / "tests" / "fixtures" / "gpt2_tokenizer"
COUNSEL_CHAT = SHARED / "counsel_chat" / "counsel_chat_amod_format.jsonl"

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOKENIZER_CORPUS = [
    "Human: I feel lonely and tired.\nAssistant: That sounds hard. What has your week been like?",
    "I failed my exam and I feel like a failure. It makes sense to feel low after that.",
    "My best friend stopped talking to me. Would it help to write down what you miss?",
    "Work stress keeps me awake at night. Try putting your phone in another room tonight.",
    "You are a helpful mental health counselling assistant. Please answer the question.",
] * 20


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The real GPT-2 byte-level BPE tokenizer (no chat template)."""
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(str(GPT2_TOKENIZER_DIR))
    tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="session")
def chatml_tokenizer():
    """A small BPE tokenizer trained here, with ChatML special tokens and template (Llama-style chat)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TOKENIZER_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _save_tiny(model_type: str, tokenizer, folder: Path, seed: int = 0, **config_overrides) -> Path:
    """A randomly initialised 2-layer model saved with `tokenizer`; `config_overrides` replace
    config fields (e.g. hidden_size=64 for an attention head size of 16)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(seed)
    vocab = len(tokenizer)
    if model_type == "gpt2":
        fields = dict(
            vocab_size=vocab,
            n_positions=1024,
            n_embd=32,
            n_layer=2,
            n_head=2,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
        config = GPT2Config(**{**fields, **config_overrides})
    else:
        fields = dict(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        config = LlamaConfig(**{**fields, **config_overrides})
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, gpt2_tokenizer) -> Path:
    """A saved 2-layer GPT-2 (hidden 32) with the real GPT-2 tokenizer."""
    return _save_tiny("gpt2", gpt2_tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, chatml_tokenizer) -> Path:
    """A saved 2-layer Llama (hidden 32) with a ChatML chat template."""
    return _save_tiny("llama", chatml_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep tests from writing into the user's ~/.cache/warmline (the safety classifier cache is shared)."""
    cache = tmp_path_factory.getbasetemp() / "warmline-cache"
    if "WARMLINE_CACHE" not in os.environ:
        monkeypatch.setenv("WARMLINE_CACHE", str(cache))
