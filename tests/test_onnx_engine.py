"""The ONNX engine (onnxruntime-genai) against the torch engine on the same tiny Llama, offline.

The conftest tiny Llama has attention head size 8, which ONNX Runtime's CPU attention kernel
refuses (it needs a multiple of 16), so the engine tests use a Llama of the same shape with
hidden size 64 (head size 16) and a wider weight initialisation: at the default 0.02 a random
model's greedy reply is one token repeated, which would make "the replies are equal" a weak check.
The ONNX build (one builder run, about 15-30 s) happens once for the module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import _save_tiny

from warmline.safety import SafetyGate
from warmline.serving.engine import TorchEngine
from warmline.serving.generator import GenerationResult, GenerationSettings, Generator
from warmline.serving.onnx_build import (
    QUANT_OPTIONS,
    OnnxUnsupportedError,
    build_key,
    build_onnx,
    builder_architectures,
    builder_options,
)
from warmline.serving.onnx_engine import OnnxEngine, onnx_generator, onnx_stop_token_ids, pick_quant

SYSTEM = {"role": "system", "content": "You are a kind listener."}


def ask(text: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}]


@pytest.fixture(scope="module")
def llama16_dir(tmp_path_factory, chatml_tokenizer) -> Path:
    """A saved 2-layer Llama, hidden 64, 4 heads of size 16, ChatML template."""
    folder = tmp_path_factory.mktemp("runs") / "llama16"
    return _save_tiny(
        "llama", chatml_tokenizer, folder, hidden_size=64, intermediate_size=128, initializer_range=0.2
    )


@pytest.fixture(scope="module")
def onnx_dir(llama16_dir: Path) -> Path:
    return build_onnx(llama16_dir, "fp32")


@pytest.fixture(scope="module")
def torch_gen(llama16_dir: Path) -> Generator:
    """The torch engine in fp32 (no fp16 decode copy), with its PromptCache."""
    return Generator.from_pretrained(
        str(llama16_dir), fp16_decode=False, settings=GenerationSettings(max_new_tokens=40)
    )


def onnx_gen(llama16_dir: Path, onnx_dir: Path, **kwargs) -> Generator:
    """A fresh ONNX-engine generator (its own, empty generator states)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama16_dir)
    engine = OnnxEngine(onnx_dir, stop_token_ids=onnx_stop_token_ids(tokenizer, llama16_dir), **kwargs)
    return Generator(None, tokenizer, settings=GenerationSettings(max_new_tokens=40), engine=engine)


@pytest.fixture
def onnx(llama16_dir: Path, onnx_dir: Path) -> Generator:
    return onnx_gen(llama16_dir, onnx_dir)


@pytest.fixture(autouse=True)
def _cold_torch_cache(request):
    if "torch_gen" in request.fixturenames:
        request.getfixturevalue("torch_gen").prompt_cache.clear()


def token_ids(gen: Generator, conversation, **settings) -> tuple[list[int], str]:
    result = GenerationResult()
    s = GenerationSettings(max_new_tokens=40, **settings)
    ids = list(gen.engine.tokens(gen.prompt_ids(conversation, s), s, seed=0, result=result))
    return ids, result.stop_reason


# ---------------------------------------------------------------- same replies as torch


def test_fp32_greedy_reply_equals_the_torch_engines(torch_gen: Generator, onnx: Generator) -> None:
    assert isinstance(torch_gen.engine, TorchEngine) and torch_gen.decode_model is torch_gen.model
    conversation = ask("I feel lonely and tired.")
    expected, expected_stop = token_ids(torch_gen, conversation, do_sample=False)
    got, got_stop = token_ids(onnx, conversation, do_sample=False)
    assert len(set(expected)) > 5  # a varied reply, not one token repeated
    assert (got, got_stop) == (expected, expected_stop)
    # The whole Generator path too: template, release, stop reason and counts.
    a, b = torch_gen.generate(conversation, do_sample=False), onnx.generate(conversation, do_sample=False)
    assert (b.text, b.stop_reason, b.new_tokens, b.prompt_tokens) == (
        a.text,
        a.stop_reason,
        a.new_tokens,
        a.prompt_tokens,
    )


def test_the_repetition_penalty_looks_at_the_reply_only_on_both(
    torch_gen: Generator, onnx: Generator
) -> None:
    conversation = ask("Work stress keeps me awake at night.")
    plain = token_ids(onnx, conversation, do_sample=False, repetition_penalty=1.0)
    penalised = token_ids(onnx, conversation, do_sample=False, repetition_penalty=1.5)
    assert penalised != plain  # the setting reaches the ONNX engine
    assert penalised == token_ids(torch_gen, conversation, do_sample=False, repetition_penalty=1.5)


def test_seeds_give_the_same_reply_on_both_engines(torch_gen: Generator, onnx: Generator) -> None:
    conversation = ask("My best friend stopped talking to me.")
    replies = {}
    for seed in range(3):
        first = onnx.generate(conversation, seed=seed, max_new_tokens=16).text
        assert (
            onnx.generate(conversation, seed=seed, max_new_tokens=16).text == first
        )  # same seed, same reply
        assert torch_gen.generate(conversation, seed=seed, max_new_tokens=16).text == first  # as on torch
        replies[seed] = first
    assert len(set(replies.values())) > 1  # different seeds can differ


def test_a_stop_string_ends_the_reply_on_both_engines(torch_gen: Generator, onnx: Generator) -> None:
    conversation = ask("I feel lonely and tired.")
    full = torch_gen.generate(conversation, do_sample=False, stop_strings=()).text
    assert len(full) > 12
    stop = full[8:11]
    cut = full[: full.index(stop)]
    a = torch_gen.generate(conversation, do_sample=False, stop_strings=(stop,))
    b = onnx.generate(conversation, do_sample=False, stop_strings=(stop,))
    assert (b.text, b.stop_reason, b.new_tokens) == (a.text, a.stop_reason, a.new_tokens)
    assert b.stop_reason == "stop_string" and stop not in b.text and b.text == cut.strip()


def test_max_new_tokens_and_eos_stop_reasons_match(torch_gen: Generator, onnx: Generator) -> None:
    conversation = ask("Hello.")
    for n in (1, 3):
        a = torch_gen.generate(conversation, do_sample=False, max_new_tokens=n, stop_strings=())
        b = onnx.generate(conversation, do_sample=False, max_new_tokens=n, stop_strings=())
        assert (b.text, b.stop_reason, b.new_tokens) == (a.text, a.stop_reason, a.new_tokens)
        assert b.stop_reason == "max_new_tokens" and b.new_tokens == n


# ---------------------------------------------------------------- safety gate


def test_a_crisis_message_gets_the_crisis_reply_without_the_engine(
    torch_gen: Generator, onnx: Generator, monkeypatch
) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("the ONNX model was run for a crisis message")

    monkeypatch.setattr(onnx.engine.prompt_cache, "take", forbidden)
    crisis = ask("I want to kill myself tonight")
    gate = SafetyGate(use_classifier=False)
    result = GenerationResult()
    pieces = list(onnx.stream(crisis, gate=gate, result=result))
    assert result.stop_reason == "crisis" and "988" in result.text and "".join(pieces) == result.text
    assert result.new_tokens == 0 and result.prompt_tokens == 0
    assert result.text == torch_gen.generate(crisis, gate=gate).text  # the same fixed reply


# ---------------------------------------------------------------- KV reuse across turns


def test_the_next_turn_reuses_the_conversations_state(
    torch_gen: Generator, onnx: Generator, llama16_dir, onnx_dir
) -> None:
    first = ask("My flatmate never cleans up.")
    turn1 = onnx.generate(first, do_sample=False, max_new_tokens=8)
    assert turn1.reused_prompt_tokens == 0
    second = first + [
        {"role": "assistant", "content": turn1.text},
        {"role": "user", "content": "What should I say?"},
    ]
    turn2 = onnx.generate(second, do_sample=False, max_new_tokens=12)
    assert turn2.reused_prompt_tokens >= len(onnx.prompt_ids(first))  # only the reply and new message read
    cold = onnx_gen(llama16_dir, onnx_dir).generate(second, do_sample=False, max_new_tokens=12)
    assert cold.reused_prompt_tokens == 0
    assert turn2.text == cold.text  # reuse changes nothing in the reply
    torch_gen.generate(first, do_sample=False, max_new_tokens=8)
    torch_turn2 = torch_gen.generate(second, do_sample=False, max_new_tokens=12)
    assert torch_turn2.reused_prompt_tokens > 0 and torch_turn2.text == turn2.text  # as on torch


def test_a_regenerated_reply_rewinds_and_matches(onnx: Generator) -> None:
    conversation = ask("I keep worrying about my exams.")
    first = onnx.generate(conversation, seed=5)
    again = onnx.generate(conversation, seed=5)  # the state now holds prompt + reply: rewound
    assert again.reused_prompt_tokens == len(onnx.prompt_ids(conversation)) - 1
    assert again.text == first.text


def test_states_are_bounded_and_a_new_conversation_does_not_take_anothers(llama16_dir, onnx_dir) -> None:
    gen = onnx_gen(llama16_dir, onnx_dir, max_states=3)
    topics = ["Work", "Sleep", "Family", "Money", "School", "Health"]  # first turns that share no text
    for topic in topics:
        gen.generate(ask(f"{topic} is on my mind."), do_sample=False, max_new_tokens=3)
        assert len(gen.engine.prompt_cache) <= 3
    assert len(gen.engine.prompt_cache) == 3
    # The newest conversations keep their states: their next turn is a continuation.
    last = ask("Health is on my mind.")
    reply = gen.generate(last, do_sample=False, max_new_tokens=3).text
    nxt = last + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}]
    assert gen.generate(nxt, do_sample=False, max_new_tokens=3).reused_prompt_tokens >= len(
        gen.prompt_ids(last)
    )


def test_concurrent_conversations_get_the_replies_they_get_alone(llama16_dir, onnx_dir) -> None:
    gen = onnx_gen(llama16_dir, onnx_dir, max_states=2)  # fewer kept states than threads
    conversations = [ask(f"I can't sleep, night {i}.") for i in range(4)]
    alone = [onnx_gen(llama16_dir, onnx_dir).generate(c, seed=i).text for i, c in enumerate(conversations)]
    together: dict[int, list[str]] = {i: [] for i in range(4)}
    errors: list[BaseException] = []

    def chat(i: int) -> None:
        try:
            for _ in range(3):
                together[i].append(gen.generate(conversations[i], seed=i).text)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(together[i] == [alone[i]] * 3 for i in range(4))


# ---------------------------------------------------------------- building and choosing


def test_the_build_is_cached_and_keyed_by_weights_and_options(
    llama16_dir: Path, onnx_dir: Path, monkeypatch
) -> None:
    assert onnx_dir.parent == llama16_dir.parent / "onnx"  # next to the model folder
    assert (onnx_dir / "genai_config.json").is_file() and (onnx_dir / "build.log").is_file()

    def no_builder(*args, **kwargs):
        raise AssertionError("the builder ran again")

    monkeypatch.setattr(subprocess, "Popen", no_builder)
    assert build_onnx(llama16_dir, "fp32") == onnx_dir  # reused, not rebuilt
    key = build_key(llama16_dir, "fp32")
    assert onnx_dir.name.endswith(key[:12])
    monkeypatch.setitem(QUANT_OPTIONS, "fp32", {"precision": "fp32", "extra_options": {"block_size": "16"}})
    assert build_key(llama16_dir, "fp32") != key  # changed options: a new build


def test_an_architecture_the_builder_cannot_convert_falls_back_to_torch(tiny_gpt2_dir: Path, caplog) -> None:
    assert "LlamaForCausalLM" in builder_architectures() and "GPT2LMHeadModel" not in builder_architectures()
    with pytest.raises(OnnxUnsupportedError, match="cannot convert GPT2LMHeadModel models") as err:
        build_onnx(tiny_gpt2_dir, "fp32")
    assert "\n" not in str(err.value) and "--engine torch" in str(err.value)
    with caplog.at_level("WARNING"):
        assert onnx_generator(str(tiny_gpt2_dir), engine="onnx") is None
    assert "cannot convert GPT2LMHeadModel" in caplog.text


def test_a_head_size_onnx_runtime_cannot_run_falls_back_to_torch(tiny_llama_dir: Path, monkeypatch) -> None:
    import functools

    from warmline import cli, safety

    with pytest.raises(OnnxUnsupportedError, match="head size is 8"):
        build_onnx(tiny_llama_dir, "fp32")
    monkeypatch.setattr(safety, "SafetyGate", functools.partial(SafetyGate, use_classifier=False))
    for engine in ("auto", "onnx"):  # what `warmline chat|serve --engine ENGINE` loads
        generator = cli._load_generator(str(tiny_llama_dir), None, GenerationSettings(), engine=engine)
        assert isinstance(generator.engine, TorchEngine) and generator.gate is not None


def test_auto_stays_on_torch_on_a_gpu(llama16_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert onnx_generator(str(llama16_dir), engine="auto") is None
    assert onnx_generator(str(llama16_dir), engine="torch") is None


def test_onnx_engine_on_request(llama16_dir: Path, onnx_dir: Path) -> None:
    gen = onnx_generator(str(llama16_dir), engine="onnx", gate=SafetyGate(use_classifier=False))
    assert (
        isinstance(gen.engine, OnnxEngine) and gen.engine.onnx_dir == onnx_dir and gen.engine.quant == "fp32"
    )
    assert gen.generate(ask("I want to kill myself tonight")).stop_reason == "crisis"


def test_auto_picks_the_fastest_build_that_passes_the_gate(llama16_dir: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    from warmline.serving import onnx_quality

    asked = []

    def verdict(hf_dir, quant, **kwargs):
        asked.append(quant)
        return SimpleNamespace(ok=quant in passing, summary=lambda: f"{quant} verdict")

    monkeypatch.setattr(onnx_quality, "quality_verdict", verdict)
    passing = {"int8"}
    assert pick_quant(llama16_dir) == "int8" and asked == ["int4", "int8"]
    passing = set()
    assert pick_quant(llama16_dir) == "fp32"  # lossless when no quantisation passes
    passing = {"int4", "int8"}
    assert pick_quant(llama16_dir) == "int4"
    asked.clear()
    passing = {"int8-mlp"}  # int8 in the MLP blocks only: after every-MatMul int8, before fp32
    assert pick_quant(llama16_dir) == "int8-mlp" and asked == ["int4", "int8", "int8-mlp"]


@pytest.mark.slow
def test_warmline_chat_on_the_onnx_engine_as_a_real_process(
    llama16_dir: Path, onnx_dir: Path, torch_gen
) -> None:
    """`warmline chat MODEL --engine onnx` in a real process gives the torch engine's greedy reply."""
    message = "I feel lonely and tired."
    expected = torch_gen.generate(
        [{"role": "system", "content": _default_system()}, {"role": "user", "content": message}],
        temperature=0,
        max_new_tokens=20,
    )
    process = subprocess.run(
        [sys.executable, "-m", "warmline", "chat", str(llama16_dir), "--engine", "onnx"]
        + ["--temperature", "0", "--max-new-tokens", "20", "-v"],
        input=f"{message}\n/quit\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    assert expected.text and expected.text in process.stdout
    assert "ONNX engine (onnxruntime-genai, fp32)" in process.stderr


def _default_system() -> str:
    from warmline.recipe import DEFAULT_SYSTEM_PROMPT

    return DEFAULT_SYSTEM_PROMPT


def test_quant_options_are_the_builders_own_arguments() -> None:
    assert set(QUANT_OPTIONS) == {"fp32", "int8", "int8-mlp", "int4"}
    for quant, options in QUANT_OPTIONS.items():
        assert options["precision"] == quant.split("-")[0]
        assert all(isinstance(v, str) for v in options["extra_options"].values())
    json.dumps(QUANT_OPTIONS)  # part of the build key


def test_int8_mlp_names_every_blocks_attention_and_the_head_to_keep_in_fp32() -> None:
    options = builder_options("int8-mlp", {"num_hidden_layers": 2})
    kept = options["nodes_to_exclude"].split(",")
    assert "/lm_head/MatMul" in kept
    assert {"/model/layers.0/attn/qkv_proj/MatMul", "/model/layers.1/attn/o_proj/MatMul"} <= set(kept)
    assert not any("/mlp/" in name for name in kept)
    assert "nodes_to_exclude" not in builder_options("int8", {"num_hidden_layers": 2})


def test_an_int8_mlp_build_quantises_the_mlp_and_nothing_else(llama16_dir: Path, tmp_path: Path) -> None:
    """The builder really leaves attention and the head in fp32, and the build chats."""
    import onnx as onnx_lib

    built = build_onnx(llama16_dir, "int8-mlp", root=tmp_path)
    graph = onnx_lib.load(str(built / "model.onnx"), load_external_data=False).graph
    quantised = [node.name for node in graph.node if node.op_type == "MatMulNBits"]
    assert len(quantised) == 2 * 3, quantised  # gate, up and down projections of 2 blocks
    assert all("/mlp/" in name for name in quantised), quantised
    assert any(node.op_type == "MatMul" and "lm_head" in node.name for node in graph.node)
    reply = onnx_gen(llama16_dir, built).generate(ask("I feel lonely."), temperature=0, max_new_tokens=8)
    assert reply.new_tokens > 0 and reply.stop_reason in ("eos", "max_new_tokens", "stop")


def test_a_serving_build_computes_the_head_at_the_last_position_only(
    llama16_dir: Path, onnx_dir: Path, tmp_path
):
    """PRUNE_LM_HEAD: the serving build returns one position's logits, the gate's twin every
    position's, and the two agree at the last position (same weights, same graph otherwise)."""
    import onnxruntime_genai as og

    from warmline.serving.onnx_build import returns_all_logits

    twin = build_onnx(llama16_dir, "fp32", root=tmp_path, all_logits=True)
    assert not returns_all_logits(onnx_dir) and returns_all_logits(twin)
    assert twin.name.split("-")[-2] == "all" and onnx_dir.name != twin.name
    prompt = np.arange(3, 40, dtype=np.int32)
    last = {}
    for name, folder in (("pruned", onnx_dir), ("all", twin)):
        model = og.Model(str(folder))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=64)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)
        last[name] = np.asarray(generator.get_logits(), dtype=np.float32).reshape(-1)
        if name == "all":
            assert generator.get_output("logits").shape[1] == len(prompt)
    np.testing.assert_allclose(last["pruned"], last["all"], atol=1e-4)


def test_the_gate_reads_a_pruned_build_a_token_at_a_time_with_the_same_scores(
    llama16_dir: Path, onnx_dir: Path, tmp_path
):
    from warmline.serving import onnx_quality

    examples, _ = onnx_quality.validation_examples(llama16_dir, max_per_stage=1)
    twin = build_onnx(llama16_dir, "fp32", root=tmp_path, all_logits=True)
    stepwise, whole = onnx_quality.onnx_scores(onnx_dir, examples), onnx_quality.onnx_scores(twin, examples)
    assert len(stepwise.nll) == len(whole.nll) > 0
    np.testing.assert_allclose(stepwise.nll, whole.nll, atol=1e-4)
    assert stepwise.top1.tolist() == whole.top1.tolist()


def test_a_build_of_one_quantisation_leaves_the_others_alone(llama16_dir: Path, tmp_path: Path) -> None:
    """ "-int8-" must not match "-int8-mlp-" when an older build is cleared away."""
    other = tmp_path / f"{llama16_dir.name}-int8-mlp-0123456789ab"
    twin = tmp_path / f"{llama16_dir.name}-fp32-all-0123456789ab"
    stale = tmp_path / f"{llama16_dir.name}-fp32-0123456789ab"
    for folder in (other, twin, stale):
        folder.mkdir()
    build_onnx(llama16_dir, "fp32", root=tmp_path)
    assert other.is_dir() and twin.is_dir() and not stale.exists()
