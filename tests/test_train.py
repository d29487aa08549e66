"""The sequential training engine on tiny randomly initialised models (GPT-2 and Llama)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import warmline.training.train as train_mod
from warmline.data.tokens import IGNORE_INDEX, tokenize_conversation
from warmline.evaluation.loss import collate_padding_free, evaluate_loss
from warmline.recipe import load_recipe

FEELINGS = ["lonely", "tired", "anxious", "sad", "stressed", "angry", "lost", "numb"]
PLACES = ["at work", "at home", "at school", "with friends", "at night", "on weekends"]


def _write_stage_data(folder: Path, name: str, n: int, offset: int) -> Path:
    rows = []
    for i in range(n):
        feeling = FEELINGS[(i + offset) % len(FEELINGS)]
        place = PLACES[(i * 3 + offset) % len(PLACES)]
        rows.append(
            {
                "text": f"Human: I feel {feeling} {place}, day {i + offset}.\n"
                f"Assistant: Feeling {feeling} {place} is hard. What helps you?"
            }
        )
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _recipe(tmp_path: Path, base: Path, **training) -> Path:
    a = _write_stage_data(tmp_path, "alpha", 16, 0)
    b = _write_stage_data(tmp_path, "beta", 16, 100)
    opts = {
        "micro_batch_size": 4,
        "global_batch_size": 4,
        "save_steps": 2,
        "logging_steps": 1,
        "precision": "fp32",
        "warmup_ratio": 0.0,
        **training,
    }
    lines = [
        "name: tiny",
        f"base_model: {base}",
        f"output_dir: {tmp_path / 'runs'}",
        "system_prompt: null",
        "stages:",
        f"  - {{name: alpha, source: {a}, epochs: 2, learning_rate: 3.0e-3, max_length: 64}}",
        f"  - {{name: beta, source: {b}, epochs: 2, learning_rate: 3.0e-3, max_length: 64, replay_fraction: 0.25}}",
        "training:",
        *[f"  {k}: {v}" for k, v in opts.items()],
    ]
    path = tmp_path / "tiny.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(params=["tiny_llama_dir", "tiny_gpt2_dir"])
def base_dir(request) -> Path:
    return request.getfixturevalue(request.param)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_packed_examples_attend_only_within_themselves(model_fixture, request):
    """Logits of an example packed after another equal its logits alone (SDPA and eager)."""
    folder = request.getfixturevalue(model_fixture)
    tok = AutoTokenizer.from_pretrained(folder)
    conv_a = [
        {"role": "user", "content": "I feel lonely at night."},
        {"role": "assistant", "content": "That is hard."},
    ]
    conv_b = [
        {"role": "user", "content": "Work is stressful."},
        {"role": "assistant", "content": "What helps you?"},
    ]
    ex_a, ex_b = (tokenize_conversation(tok, c, 64) for c in (conv_a, conv_b))
    for attn in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attn).eval()
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([ex_b.input_ids]), use_cache=False).logits[0]
            packed = collate_padding_free([ex_a, ex_b])
            both = model(
                input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
            ).logits[0]
        in_packed = both[len(ex_a.input_ids) :]
        assert torch.allclose(alone, in_packed, atol=1e-4), f"{attn}: packed example saw its neighbour"
        # Guard against a vacuous pass: without position ids the neighbour does leak in.
        with torch.no_grad():
            leaky = model(input_ids=packed["input_ids"], use_cache=False).logits[0][len(ex_a.input_ids) :]
        assert not torch.allclose(alone, leaky, atol=1e-4)


def test_trl_collator_batches_match_our_packing(tiny_llama_dir):
    """SFTTrainer's padding-free collator gives the same ids, position ids and labels as ours."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    convs = [
        [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]
        for i in range(3)
    ]
    exs = [tokenize_conversation(tok, c, 64) for c in convs]
    collator = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)
    batch = collator([{"input_ids": e.input_ids, "labels": e.labels} for e in exs])
    ours = collate_padding_free(exs)
    assert "attention_mask" not in batch
    for key in ("input_ids", "position_ids", "labels"):
        assert torch.equal(batch[key], ours[key]), key


def test_sequential_training_end_to_end(tmp_path, base_dir, monkeypatch):
    """Loss goes down, weights change, stage 2 starts from stage 1's weights, artifacts load."""
    loads: list[tuple[str, dict[str, torch.Tensor]]] = []
    real_load = train_mod.load_model

    def recording_load(reference, **kwargs):
        model = real_load(reference, **kwargs)
        loads.append((str(reference), {k: v.detach().clone() for k, v in model.state_dict().items()}))
        return model

    monkeypatch.setattr(train_mod, "load_model", recording_load)
    recipe = load_recipe(_recipe(tmp_path, base_dir))
    final = train_mod.train_recipe(recipe)
    run = recipe.run_dir
    stage1, stage2 = run / "stage-01-alpha", run / "stage-02-beta"

    # Stage 2 was initialised from exactly the weights stage 1 saved.
    init_refs = [ref for ref, _ in loads]
    assert str(stage1) in init_refs
    stage2_init = dict(loads[init_refs.index(str(stage1))][1])
    saved1 = _weights(stage1)
    for name, tensor in saved1.items():
        assert torch.equal(stage2_init[name], tensor), name

    # Weights changed in each stage.
    base_weights = loads[0][1]
    saved2 = _weights(stage2)
    changed1 = [n for n, t in saved1.items() if n in base_weights and not torch.equal(base_weights[n], t)]
    changed2 = [n for n, t in saved2.items() if not torch.equal(saved1[n], t)]
    assert changed1 and changed2

    # Loss went down: the forgetting matrix row of each stage beats the row before it on its own split.
    forgetting = json.loads((run / "forgetting.json").read_text())
    assert forgetting["alpha"]["alpha"]["loss"] < forgetting["base"]["alpha"]["loss"]
    assert forgetting["beta"]["beta"]["loss"] < forgetting["alpha"]["beta"]["loss"]
    assert set(forgetting) == {"base", "alpha", "beta"}

    # Artifacts describe themselves and load with plain transformers.
    for folder in (stage1, stage2, final):
        for name in ("config.json", "model.safetensors", "recipe.yaml", "data_stats.json", "manifest.json"):
            assert (folder / name).is_file(), f"{folder.name}/{name}"
        model = AutoModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert tok.chat_template, "saved tokenizer must carry a chat template"
        assert model.config.use_cache
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["seed"] == 42 and manifest["data_files"] and "torch" in manifest["packages"]
    stats = json.loads((stage2 / "data_stats.json").read_text())
    assert stats["replay_examples"] == round(0.25 * stats["train_examples"])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logs = [m for m in metrics if m.get("event") == "log" and "loss" in m]
    assert logs and all("learning_rate" in m for m in logs)
    assert any("tokens_per_s" in m for m in logs)
    assert any(m.get("event") == "validation" for m in metrics)  # end of the first epoch


def test_labels_mask_prompt_and_train_eos(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    conv = [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "I feel sad"},
        {"role": "assistant", "content": "I hear you"},
    ]
    ex = tokenize_conversation(tok, conv, 128)
    labelled = [i for i, lbl in enumerate(ex.labels) if lbl != IGNORE_INDEX]
    assert tok.decode([ex.input_ids[i] for i in labelled]) == "I hear you<|im_end|>"
    assert ex.labels[labelled[-1]] == tok.eos_token_id


def test_replay_mixes_the_asked_fraction():
    from warmline.data.tokens import TokenizedExample
    from warmline.recipe import StageConfig
    from warmline.training.train import PreparedStage, replay_examples

    def stage(i, n, frac):
        exs = [TokenizedExample([i, k], [i, k]) for k in range(n)]
        return PreparedStage(i, StageConfig(name=f"s{i}", source="x", replay_fraction=frac), None, exs, [])

    s1, s2, s3 = stage(1, 50, 0.0), stage(2, 40, 0.25), stage(3, 20, 0.5)
    assert replay_examples([s1, s2, s3], s1, seed=0) == []
    r2 = replay_examples([s1, s2, s3], s2, seed=0)
    assert len(r2) == 10 and all(ex.input_ids[0] == 1 for ex in r2)
    r3 = replay_examples([s1, s2, s3], s3, seed=0)
    assert len(r3) == 10 and {ex.input_ids[0] for ex in r3} <= {1, 2}
    assert replay_examples([s1, s2, s3], s3, seed=0) == r3  # seeded


def test_resume_after_an_interrupted_stage(tmp_path, tiny_llama_dir, monkeypatch):
    """Kill stage 2 right after a checkpoint; --resume skips stage 1 and finishes from the checkpoint."""
    from warmline.training.callbacks import CheckpointMarker

    real_on_save = CheckpointMarker.on_save

    def crash_in_stage_two(self, args, state, control, **kwargs):
        real_on_save(self, args, state, control, **kwargs)
        if "stage-02" in str(args.output_dir) and state.global_step == 2:
            raise KeyboardInterrupt("simulated kill")
        return control

    monkeypatch.setattr(CheckpointMarker, "on_save", crash_in_stage_two)
    recipe_path = _recipe(tmp_path, tiny_llama_dir)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train_recipe(load_recipe(recipe_path))
    run = load_recipe(recipe_path).run_dir
    assert (run / "stage-01-alpha" / "config.json").is_file()
    assert not (run / "stage-02-beta").exists()
    work = run / ".work" / "stage-02-beta"
    assert train_mod.latest_complete_checkpoint(work).name == "checkpoint-2"
    (work / "checkpoint-3").mkdir()  # a half-written checkpoint (no marker) is never trusted
    assert train_mod.latest_complete_checkpoint(work).name == "checkpoint-2"
    stage1_mtime = (run / "stage-01-alpha" / "model.safetensors").stat().st_mtime

    monkeypatch.setattr(CheckpointMarker, "on_save", real_on_save)
    resumed_from: list[str | None] = []
    from transformers import Trainer

    real_train = Trainer.train

    def spy_train(self, resume_from_checkpoint=None, **kwargs):
        resumed_from.append(resume_from_checkpoint)
        return real_train(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(Trainer, "train", spy_train)
    final = train_mod.train_recipe(load_recipe(recipe_path), resume=True)
    assert resumed_from == [str(work / "checkpoint-2")]  # stage 1 skipped, stage 2 resumed
    assert (run / "stage-01-alpha" / "model.safetensors").stat().st_mtime == stage1_mtime
    assert (final / "config.json").is_file() and (run / "stage-02-beta" / "config.json").is_file()


def test_validation_loss_is_token_weighted(tiny_llama_dir):
    """evaluate_loss = exp-able mean over every labelled token, however examples are batched."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    convs = [
        [{"role": "user", "content": "hi " * (i + 1)}, {"role": "assistant", "content": "ok " * (3 * i + 1)}]
        for i in range(4)
    ]
    exs = [tokenize_conversation(tok, c, 128) for c in convs]
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in exs:
            logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1]
            labels = torch.tensor(ex.labels[1:])
            total += torch.nn.functional.cross_entropy(
                logits, labels, ignore_index=-100, reduction="sum"
            ).item()
            count += int((labels != -100).sum())
    for max_tokens in (8, 10_000):
        result = evaluate_loss(model, exs, max_tokens=max_tokens)
        assert result["tokens"] == count
        assert result["loss"] == pytest.approx(total / count, rel=1e-4)
        assert result["perplexity"] == pytest.approx(torch.exp(torch.tensor(total / count)).item(), rel=1e-4)


def test_lora_stage_merges_adapters_into_plain_weights(tmp_path, tiny_llama_dir):
    """With LoRA on, each stage saves merged full weights that plain transformers loads."""
    recipe = load_recipe(
        _recipe(tmp_path, tiny_llama_dir),
        ["training.lora.enabled=true", "training.lora.r=4", "stages.0.epochs=1", "stages.1.epochs=1"],
    )
    final = train_mod.train_recipe(recipe)
    saved = _weights(final)
    assert not any("lora" in name for name in saved), "adapters must be merged before saving"
    base = _weights(tiny_llama_dir)
    changed = [n for n in base if "proj" in n and not torch.equal(base[n], saved[n])]
    assert changed, "merged LoRA updates must change the projection weights"
    AutoModelForCausalLM.from_pretrained(final)


def _built_first_stage(tmp_path, base, overrides=(), callbacks=()):
    """The first stage's trainer, built by the real builder (nothing trained yet)."""
    recipe = load_recipe(_recipe(tmp_path, base), list(overrides))
    tokenizer = train_mod.load_training_tokenizer(recipe)
    stages = train_mod.prepare_stages(recipe, tokenizer)
    built = train_mod.build_stage_trainer(
        recipe, stages[0], stages, recipe.base_model, tokenizer, "fp32", recipe.run_dir, callbacks=callbacks
    )
    return recipe, stages, built


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_checkpointing_follows_the_recipe(tmp_path, tiny_llama_dir, checkpointing):
    """TRL's SFTConfig turns activation checkpointing on by default; the recipe's
    `gradient_checkpointing` must decide (off by default: it costs ~1/3 more compute)."""
    _, _, built = _built_first_stage(
        tmp_path, tiny_llama_dir, [f"training.gradient_checkpointing={str(checkpointing).lower()}"]
    )
    assert built.trainer.args.activation_checkpointing is checkpointing
    if not checkpointing:  # the Trainer enables it on the model when train() starts
        assert built.trainer.model.is_gradient_checkpointing is False


def test_builder_gives_the_trainer_our_examples_and_callbacks(tmp_path, tiny_llama_dir):
    from warmline.training.callbacks import CheckpointMarker, MetricsLogger

    recipe, stages, built = _built_first_stage(tmp_path, tiny_llama_dir)
    dataset = built.trainer.train_dataset
    assert dataset["input_ids"] == [e.input_ids for e in stages[0].train]
    assert dataset["labels"] == [e.labels for e in stages[0].train]
    kinds = {type(cb) for cb in built.trainer.callback_handler.callbacks}
    assert {MetricsLogger, CheckpointMarker} <= kinds
    args = built.trainer.args
    assert args.save_total_limit is None  # CheckpointMarker rotates, crash-safe
    assert (args.learning_rate, args.num_train_epochs) == (3.0e-3, 2.0)


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant_with_warmup"])
def test_first_optimizer_step_does_not_run_at_learning_rate_zero(tmp_path, tiny_llama_dir, scheduler):
    """transformers' warm-up multiplier is step / warmup: 0 at the first step of every stage."""
    from transformers import TrainerCallback

    seen: list[float] = []

    class LearningRates(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            seen.append(optimizer.param_groups[0]["lr"])

    _, _, built = _built_first_stage(
        tmp_path,
        tiny_llama_dir,
        ["training.warmup_ratio=0.5", f"training.lr_scheduler={scheduler}"],
        callbacks=(LearningRates(),),
    )
    built.trainer.train()
    peak = 3.0e-3
    warmup = built.trainer.args.get_warmup_steps(len(seen))
    assert len(seen) == 8 and warmup == 4
    assert seen[0] == pytest.approx(peak / warmup)  # not 0
    assert seen[:warmup] == pytest.approx([peak * (s + 1) / warmup for s in range(warmup)])  # linear warm-up
    assert max(seen) == pytest.approx(peak)


def test_padding_waste_is_exact_only_when_the_order_cannot_change_it():
    lengths = [10, 50, 12, 48, 11, 52, 9, 49]
    assert train_mod.padding_stats(lengths, 4, padding_free=True, pad_to_multiple_of=None) == {
        "padding_waste": 0.0
    }
    one = train_mod.padding_stats(lengths, 1, padding_free=False, pad_to_multiple_of=None)
    assert one == {"padding_waste": 0.0}
    padded = train_mod.padding_stats(lengths, 2, padding_free=False, pad_to_multiple_of=512)
    assert padded["padding_waste"] == pytest.approx(1 - sum(lengths) / (512 * len(lengths)), abs=1e-4)
    # Batches of 2 in order would pair short with long; the Trainer shuffles, so it is an estimate.
    shuffled = train_mod.padding_stats(lengths, 2, padding_free=False, pad_to_multiple_of=None, seed=0)
    assert "padding_waste" not in shuffled and "random batch orders" in shuffled["padding_waste_method"]
    in_order = 1 - sum(lengths) / sum(2 * max(lengths[i : i + 2]) for i in range(0, 8, 2))
    sorted_pairs = sorted(lengths)
    best = 1 - sum(lengths) / sum(2 * max(sorted_pairs[i : i + 2]) for i in range(0, 8, 2))
    assert best < shuffled["padding_waste_estimate"] <= in_order


# Validation losses of the tiny run (the forgetting matrix), pinned as torchtune pins its
# recipes' losses: a change in numerics (tokenisation, labels, schedule, optimizer, data order)
# shows up here. Recompute them only for an intended change, and say why in the commit.
PINNED_FORGETTING = {
    "tiny_llama_dir": {
        "base": {"alpha": 6.1229, "beta": 6.1454},
        "alpha": {"alpha": 5.4041, "beta": 5.5457},
        "beta": {"alpha": 4.6579, "beta": 4.7168},
    },
    "tiny_gpt2_dir": {
        "base": {"alpha": 10.8483, "beta": 10.865},
        "alpha": {"alpha": 9.9864, "beta": 10.0503},
        "beta": {"alpha": 9.1992, "beta": 9.2061},
    },
}


@pytest.mark.parametrize("model_fixture", list(PINNED_FORGETTING))
def test_tiny_run_losses_are_pinned(tmp_path, model_fixture, request):
    recipe = load_recipe(_recipe(tmp_path, request.getfixturevalue(model_fixture)))
    train_mod.train_recipe(recipe)
    forgetting = json.loads((recipe.run_dir / "forgetting.json").read_text())
    losses = {row: {split: v["loss"] for split, v in cols.items()} for row, cols in forgetting.items()}
    expected = PINNED_FORGETTING[model_fixture]
    assert losses.keys() == expected.keys()
    for row, cols in expected.items():
        assert losses[row] == pytest.approx(cols, abs=1e-4), row


def _log_steps(run: Path) -> list[tuple[str, int]]:
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(m["stage"], m["step"]) for m in metrics if m.get("event") == "log" and "loss" in m]


def test_resume_writes_a_forgetting_row_that_a_kill_after_publish_left_out(tmp_path, tiny_llama_dir):
    recipe_path = _recipe(tmp_path, tiny_llama_dir)
    train_mod.train_recipe(load_recipe(recipe_path))
    run = load_recipe(recipe_path).run_dir
    complete = json.loads((run / "forgetting.json").read_text())
    # The state a kill leaves after stage 2's folder is renamed into place, before its row is written.
    (run / "forgetting.json").write_text(json.dumps({k: v for k, v in complete.items() if k != "beta"}))
    train_mod.train_recipe(load_recipe(recipe_path), resume=True)
    resumed = json.loads((run / "forgetting.json").read_text())
    assert list(resumed) == ["base", "alpha", "beta"]
    for split in ("alpha", "beta"):
        assert resumed["beta"][split]["loss"] == pytest.approx(complete["beta"][split]["loss"], abs=1e-6)


def test_resume_drops_the_killed_attempts_metrics_after_the_checkpoint(tmp_path, tiny_llama_dir, monkeypatch):
    """Killed at step 3 of stage 2 (checkpoint at step 2): steps 3.. are logged again on resume, once."""
    from warmline.training.callbacks import MetricsLogger

    real_on_log = MetricsLogger.on_log

    def killed_after_logging_step_three(self, args, state, control, logs=None, **kwargs):
        real_on_log(self, args, state, control, logs=logs, **kwargs)
        if self.stage_name == "beta" and state.global_step == 3 and logs and "loss" in logs:
            raise KeyboardInterrupt("simulated kill")
        return control

    monkeypatch.setattr(MetricsLogger, "on_log", killed_after_logging_step_three)
    recipe_path = _recipe(tmp_path, tiny_llama_dir)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train_recipe(load_recipe(recipe_path))
    run = load_recipe(recipe_path).run_dir
    assert ("beta", 3) in _log_steps(run)
    monkeypatch.setattr(MetricsLogger, "on_log", real_on_log)
    train_mod.train_recipe(load_recipe(recipe_path), resume=True)
    steps = _log_steps(run)
    assert len(steps) == len(set(steps)), "a killed attempt's steps were kept next to the resumed run's"
    beta = [s for stage, s in steps if stage == "beta"]
    assert beta == list(range(1, len(beta) + 1)) and len(beta) > 3


def test_resume_with_a_different_recipe_refuses_unless_forced(tmp_path, tiny_llama_dir):
    from warmline.recipe import RecipeError

    recipe_path = _recipe(tmp_path, tiny_llama_dir)
    final = train_mod.train_recipe(load_recipe(recipe_path))
    with pytest.raises(
        RecipeError, match=r"stage-01-alpha was trained with a different recipe \(training\.seed: 42 -> 7"
    ):
        train_mod.train_recipe(load_recipe(recipe_path, ["training.seed=7"]), resume=True)
    # Values that don't change the weights may differ.
    train_mod.train_recipe(load_recipe(recipe_path, ["training.logging_steps=3"]), resume=True)
    train_mod.train_recipe(load_recipe(recipe_path, ["training.seed=7"]), resume=True, force=True)
    # Every stage was skipped: the final manifest describes the weights beside it (seed 42), not the command line.
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["seed"] == 42 and manifest["source_stage"] == "stage-02-beta"
    stage_manifest = json.loads((final.parent / "stage-02-beta" / "manifest.json").read_text())
    assert (
        stage_manifest["stage"] == "beta" and "source_stage" not in stage_manifest
    )  # not written through a link


def test_new_checkpoint_is_marked_before_an_old_one_is_deleted(tmp_path, tiny_llama_dir, monkeypatch):
    """A kill during rotation must leave a complete, marked checkpoint (the Trainer's own rotation
    deletes the old checkpoint before the new one is marked)."""
    import shutil

    real_rmtree = shutil.rmtree
    deletions: list[tuple[str, bool]] = []

    def watching_rmtree(path, *args, **kwargs):
        path = Path(path)
        if path.name.startswith("checkpoint-"):
            others = [p for p in path.parent.glob("checkpoint-*") if p != path]
            deletions.append((path.name, any((p / train_mod.COMPLETE_MARKER).is_file() for p in others)))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", watching_rmtree)
    recipe = load_recipe(_recipe(tmp_path, tiny_llama_dir), ["stages.1.epochs=1"])
    train_mod.train_recipe(recipe)
    rotations = [d for d in deletions if d[0] != "checkpoint-8"]
    assert rotations, "the run should rotate checkpoints (save_steps 2, 8 steps)"
    assert all(newer_marked for _, newer_marked in rotations), deletions


# --- QLoRA: what runs without CUDA (the 4-bit load itself needs a GPU and bitsandbytes) ----------


def test_qlora_without_cuda_fails_before_any_weights_load(tmp_path, tiny_llama_dir, monkeypatch):
    """`quantize: 4bit` here (no CUDA): one line naming plain LoRA, raised by the recipe check."""
    from warmline.recipe import RecipeError

    recipe = load_recipe(
        _recipe(tmp_path, tiny_llama_dir), ["training.lora.enabled=true", "training.lora.quantize=4bit"]
    )
    assert recipe.training.lora.quantize == "4bit"

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the recipe check failed")

    monkeypatch.setattr(train_mod, "load_model", no_weights)
    monkeypatch.setattr(train_mod, "load_training_tokenizer", no_weights)
    with pytest.raises(
        RecipeError, match=r"needs a CUDA GPU .*use plain LoRA instead: set 'training.lora.quantize: null'"
    ) as err:
        train_mod.train_recipe(recipe)
    assert "\n" not in str(err.value)
    assert not recipe.run_dir.exists()


def test_quantize_without_lora_is_a_recipe_error(tmp_path, tiny_llama_dir):
    from warmline.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"'training.lora.quantize' is '4bit' but LoRA is off"):
        load_recipe(_recipe(tmp_path, tiny_llama_dir), ["training.lora.quantize=4bit"])
    with pytest.raises(RecipeError, match=r"expected one of \['4bit'\]"):
        load_recipe(
            _recipe(tmp_path, tiny_llama_dir), ["training.lora.enabled=true", "training.lora.quantize=8bit"]
        )


def test_qlora_config_is_nf4_double_quantised_with_bf16_compute():
    from warmline.recipe import LoraSettings

    assert train_mod.quantization_config(LoraSettings(enabled=True)) is None
    config = train_mod.quantization_config(LoraSettings(enabled=True, quantize="4bit"))
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant is True
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def test_adapters_merge_into_a_fresh_full_precision_copy(tmp_path, tiny_llama_dir):
    """QLoRA's merge: the trained adapters, copied onto the fp32 weights loaded afresh from the
    stage's start, give exactly the weights that merging in place gives (here the trained base is
    fp32, so the two must agree), and a plain fp32 transformers model."""
    _, _, built = _built_first_stage(
        tmp_path, tiny_llama_dir, ["training.lora.enabled=true", "training.lora.r=4", "stages.0.epochs=1"]
    )
    built.trainer.train()
    peft_model = built.trainer.model
    fresh = train_mod.merge_into_full_precision(peft_model, built.init_from)
    in_place = peft_model.merge_and_unload()
    fresh_sd, in_place_sd = fresh.state_dict(), in_place.state_dict()
    assert fresh_sd.keys() == in_place_sd.keys()
    assert not any("lora" in k for k in fresh_sd)
    for name, tensor in in_place_sd.items():
        assert fresh_sd[name].dtype == torch.float32, name
        torch.testing.assert_close(fresh_sd[name], tensor, rtol=0, atol=1e-6, msg=name)
    base = _weights(tiny_llama_dir)
    assert any(not torch.equal(base[n], fresh_sd[n]) for n in base if "proj" in n), "the adapters trained"


def test_shipped_qlora_recipe_fails_here_naming_plain_lora_before_the_hub():
    from warmline.recipe import RecipeError

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "mistral-7b-qlora.yaml")
    assert recipe.training.lora.enabled and recipe.training.lora.quantize == "4bit"
    with pytest.raises(RecipeError, match="needs a CUDA GPU.*use plain LoRA instead"):
        train_mod.train_recipe(recipe)  # the hub is not asked: the check comes first


# --- warmline train --plan ------------------------------------------------------------------------


def test_plan_step_counts_equal_what_the_trainer_then_does(tmp_path, tiny_llama_dir):
    """The plan's optimizer steps and examples per stage, against a real run of the same recipe
    (1.5 epochs and a last, short accumulation step: the rounding the Trainer does)."""
    from warmline.training.plan import plan_recipe

    recipe = load_recipe(
        _recipe(tmp_path, tiny_llama_dir),
        ["training.micro_batch_size=2", "stages.0.epochs=1.5", "stages.1.epochs=1"],
    )
    planned = {s.name: s for s in plan_recipe(recipe)["stages"]}
    train_mod.train_recipe(recipe)
    steps: dict[str, int] = {}
    for stage, step in _log_steps(recipe.run_dir):
        steps[stage] = max(steps.get(stage, 0), step)
    assert steps == {name: s.optimizer_steps for name, s in planned.items()}
    assert steps["alpha"] == 6  # 14 examples / micro 2 = 7 batches, accumulation 2 -> 4 per epoch x 1.5
    for i, name in enumerate(["alpha", "beta"], start=1):
        stats = json.loads((recipe.run_dir / f"stage-0{i}-{name}" / "data_stats.json").read_text())
        assert planned[name].examples == stats["train_examples"] + stats["replay_examples"]
        assert planned[name].accumulation_steps == 2 and planned[name].processes == 1


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_plan_steps_follow_accelerates_even_shards(processes):
    from warmline.training.plan import optimizer_steps

    # 18 examples, micro 2, global 8: 9 micro-batches; with 2 processes 5 each (accelerate tops up
    # the last shard), accumulation 2 -> 3 steps; with 4 processes 3 each, accumulation 1 -> 3.
    accumulation = 8 // (2 * processes)
    assert optimizer_steps(18, 2, accumulation, processes, 1.0) == {1: 3, 2: 3, 4: 3}[processes]
    assert optimizer_steps(18, 2, accumulation, processes, 2.5) == {1: 8, 2: 8, 4: 8}[processes]


@pytest.mark.parametrize(
    "overrides",
    [
        ["training.lora.enabled=true", "training.lora.r=4"],
        ["training.lora.enabled=true", "training.lora.r=8", "training.lora.target_modules=[q_proj, v_proj]"],
        ["training.trainable_layers=1"],
        [],
    ],
)
def test_plan_counts_the_parameters_the_trainer_trains(tmp_path, tiny_llama_dir, overrides):
    from warmline.training.plan import count_parameters

    recipe = load_recipe(_recipe(tmp_path, tiny_llama_dir), overrides)
    counted = count_parameters(recipe)
    _, _, built = _built_first_stage(tmp_path, tiny_llama_dir, overrides)
    model = built.trainer.model
    trained = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
    assert counted["trained"] == trained
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert counted["total"] == sum(p.numel() for p in {id(p): p for p in base.parameters()}.values())


def test_plan_says_does_not_fit_and_names_the_setting(tmp_path, tiny_llama_dir, monkeypatch):
    import warmline.hardware as hardware
    from warmline.training.plan import estimate_memory, format_plan, plan_recipe

    recipe = load_recipe(_recipe(tmp_path, tiny_llama_dir), ["training.micro_batch_size=2"])
    monkeypatch.setattr(hardware, "device_memory", lambda: ("cuda", 10 * 1024**2))  # a 10 MiB "GPU"
    result = plan_recipe(recipe)
    text = format_plan(result, recipe)
    assert text.count("DOES NOT FIT") == 2
    assert "lower training.micro_batch_size (now 2" in text  # activations + logits lead at this size
    monkeypatch.setattr(hardware, "device_memory", lambda: ("cuda", 1 << 40))
    assert "DOES NOT FIT" not in format_plan(plan_recipe(recipe), recipe)
    # The parts move the way they must: LoRA trains less, 4-bit shrinks the weights, checkpointing
    # the activations, and a longer max_length costs more.
    params = result["parameters"]
    full = estimate_memory(params, recipe, 64, "fp32", "cuda")
    longer = estimate_memory(params, recipe, 128, "fp32", "cuda")
    assert longer["activations"] > full["activations"] and longer["weights"] == full["weights"]
    ck = load_recipe(
        _recipe(tmp_path, tiny_llama_dir),
        ["training.micro_batch_size=2", "training.gradient_checkpointing=true"],
    )
    assert estimate_memory(params, ck, 64, "fp32", "cuda")["activations"] < full["activations"]
    q = load_recipe(
        _recipe(tmp_path, tiny_llama_dir), ["training.lora.enabled=true", "training.lora.quantize=4bit"]
    )
    assert estimate_memory(params, q, 64, "bf16", "cuda")["weights"] < full["weights"]


def test_cli_plan_prints_every_stage_and_trains_nothing(tmp_path, tiny_llama_dir):
    from typer.testing import CliRunner

    from warmline.cli import app

    path = _recipe(tmp_path, tiny_llama_dir)
    result = CliRunner().invoke(app, ["train", str(path), "--plan"])
    assert result.exit_code == 0, result.output
    assert "stage 'alpha'" in result.output and "stage 'beta'" in result.output
    assert "optimizer steps 8: global batch 4 = micro 4 x accumulation 1 x 1 process(es)" in result.output
    assert not (tmp_path / "runs").exists()
