"""DPO stages: preference formats, bad pairs, tokens, data inspect, and training on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from warmline.data.preferences import PreferencePair, prepare_preference_stage, tokenize_pair
from warmline.data.tokens import IGNORE_INDEX, encode_prompt, tokenize_conversation
from warmline.recipe import RecipeError, StageConfig, load_recipe
from warmline.training.preference import FORGETTING_LIMIT, over_forgetting_limit

FEELINGS = ["lonely", "tired", "anxious", "sad", "stressed", "angry", "lost", "numb"]
PLACES = ["at work", "at home", "at school", "with friends", "at night", "on weekends"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _pair_rows(n: int) -> list[dict]:
    """Pairs a tiny model can learn to rank: a short question back (chosen) vs a lecture (rejected)."""
    rows = []
    for i in range(n):
        feeling, place = FEELINGS[i % len(FEELINGS)], PLACES[(i * 3) % len(PLACES)]
        rows.append(
            {
                "prompt": f"I feel {feeling} {place}, day {i}.",
                "chosen": f"That sounds hard. What helps you {place}?",
                "rejected": "You must sleep more. Exercise daily. Eat well. Read books. Stop worrying.",
            }
        )
    return rows


def _stage(source: Path, **kwargs) -> StageConfig:
    return StageConfig(name="prefs", source=str(source), method="dpo", **kwargs)


# --- formats -------------------------------------------------------------------------------------


def test_each_preference_format_parses(tmp_path):
    """TRL's explicit prompt (string and messages), implicit prompt, and rated sheet items."""
    explicit = _write_jsonl(
        tmp_path / "explicit.jsonl",
        [
            {
                "prompt": "I can't sleep.",
                "chosen": "That is hard. What keeps you up?",
                "rejected": "Take pills.",
            },
            {
                "prompt": [
                    {"role": "user", "content": "Hi."},
                    {"role": "assistant", "content": "Hello. How are you?"},
                    {"role": "user", "content": "Sad today."},
                ],
                "chosen": [{"role": "assistant", "content": "I'm sorry. What happened?"}],
                "rejected": [{"role": "assistant", "content": "Cheer up!"}],
            },
        ],
    )
    data = prepare_preference_stage(_stage(explicit, validation_fraction=0.5), seed=0)
    assert data.format == "preference" and data.dropped == {}
    pairs = {p.chosen: p for p in data.train_pairs + data.validation_pairs}
    assert pairs["That is hard. What keeps you up?"].prompt == [{"role": "user", "content": "I can't sleep."}]
    assert pairs["That is hard. What keeps you up?"].rejected == "Take pills."
    multi = pairs["I'm sorry. What happened?"]
    assert [t["role"] for t in multi.prompt] == [
        "user",
        "assistant",
        "user",
    ] and multi.rejected == "Cheer up!"

    shared = [{"role": "user", "content": "My friend ignores me."}]
    implicit = _write_jsonl(
        tmp_path / "implicit.jsonl",
        [
            {
                "chosen": [*shared, {"role": "assistant", "content": "That hurts. Have you asked why?"}],
                "rejected": [*shared, {"role": "assistant", "content": "Get new friends."}],
            },
            {
                "chosen": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "Tell me more?"},
                ],
                "rejected": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "No."}],
            },
        ],
    )
    data = prepare_preference_stage(_stage(implicit, validation_fraction=0.5), seed=0)
    assert data.format == "chosen_rejected" and data.dropped == {}
    by_chosen = {p.chosen: p for p in data.train_pairs + data.validation_pairs}
    assert by_chosen["That hurts. Have you asked why?"].prompt == shared
    assert by_chosen["That hurts. Have you asked why?"].rejected == "Get new friends."

    ratings = tmp_path / "ratings.json"
    item = {
        "prompt": "Exams scare me.",
        "reply_a": "Lecture about study plans.",
        "reply_b": "Scary. Which exam?",
    }
    ratings.write_text(
        json.dumps(
            {
                "format": "warmline-ratings",
                "items": [
                    {"id": "p1", **item, "preference": "B"},  # three raters: B, B, A -> B wins
                    {"id": "p1", **item, "preference": "b"},
                    {"id": "p1", **item, "preference": "A"},
                    {"id": "p2", "prompt": "Hi", "reply_a": "Hello!", "reply_b": "Hey.", "preference": "tie"},
                    {
                        "id": "p3",
                        "prompt": "Tired",
                        "reply_a": "Rest?",
                        "reply_b": "Sleep.",
                        "preference": "A",
                    },
                    {
                        "id": "p3",
                        "prompt": "Tired",
                        "reply_a": "Rest?",
                        "reply_b": "Sleep.",
                        "preference": "B",
                    },
                    {
                        "id": "p4",
                        "prompt": "Alone",
                        "reply_a": "I'm here. What's up?",
                        "reply_b": "Ok.",
                        "preference": "A",
                    },
                ],
            }
        )
    )
    data = prepare_preference_stage(_stage(ratings, validation_fraction=0.5), seed=0)
    assert data.format == "ratings"
    assert data.dropped == {"tie": 1, "raters_split": 1}
    assert data.duplicates == 3  # the other raters' rows of p1 and p3, merged into one item each
    by_chosen = {p.chosen: p for p in data.train_pairs + data.validation_pairs}
    assert set(by_chosen) == {"Scary. Which exam?", "I'm here. What's up?"}
    assert by_chosen["Scary. Which exam?"].rejected == "Lecture about study plans."
    assert data.rows_read == sum(data.dropped.values()) + data.duplicates + data.kept


def test_a_rating_study_folder_becomes_pairs(tmp_path):
    """`warmline eval sheet`'s key and the raters' saved answers: unblinded by the key, the
    preferred model's reply is chosen; ties and an even split are dropped; an unknown sheet counted."""
    from warmline.evaluation.sheet import RATINGS_FORMAT, SHEET_FORMAT

    def item(name, a, prompt, text_a, text_b):
        other = "run-b" if a == "run-a" else "run-a"
        return {
            "item": name,
            "A": a,
            "B": other,
            "prompt": [{"role": "user", "content": prompt}],
            "replies": {
                a: {"text": text_a, "stop_reason": "eos"},
                other: {"text": text_b, "stop_reason": "eos"},
            },
        }

    key = {
        "format": SHEET_FORMAT,
        "sheet_id": "s1",
        "models": ["run-a", "run-b"],
        "items": [
            item(
                "i1", "run-b", "Exams scare me.", "Scary. Which exam?", "Make a study plan and sleep 8 hours."
            ),
            item("i2", "run-a", "I feel alone.", "I'm here. What's been happening?", "Join a club."),
            item("i3", "run-a", "Hi", "Hello!", "Hey."),
        ],
    }
    (tmp_path / "key-s1.json").write_text(json.dumps(key))

    def answers(rater, prefs, sheet="s1"):
        items = [{"item": k, "preference": v} for k, v in prefs.items()]
        data = {"format": RATINGS_FORMAT, "sheet_id": sheet, "rater_id": rater, "items": items}
        (tmp_path / f"ratings-{sheet}-{rater}.json").write_text(json.dumps(data))

    answers("r1", {"i1": "A", "i2": "A", "i3": "tie"})  # i1's A is run-b's "Scary. Which exam?"
    answers("r2", {"i1": "A", "i2": "B", "i3": "tie"})
    answers("r3", {"i1": "B"})
    answers("r9", {"x": "A", "y": "B"}, sheet="other-sheet")
    data = prepare_preference_stage(_stage(tmp_path, validation_fraction=0.5), seed=0)
    assert data.format == "ratings"
    assert data.dropped == {"raters_split": 1, "tie": 1, "no_key_for_sheet": 2}
    (pair,) = data.train_pairs + data.validation_pairs
    assert pair.chosen == "Scary. Which exam?" and pair.rejected == "Make a study plan and sleep 8 hours."
    assert data.rows_read == sum(data.dropped.values()) + data.duplicates + data.kept


def test_bad_pairs_are_counted_and_dropped_with_reasons(tmp_path):
    good = _pair_rows(4)
    bad = [
        {"prompt": "a", "chosen": "Fine. Why?"},  # no rejected key
        {"prompt": "b", "chosen": "Fine. Why?", "rejected": None},
        {"prompt": "c", "chosen": "Same reply.", "rejected": "same   reply"},  # identical once normalised
        {"prompt": "d", "chosen": "   ", "rejected": "Something."},
        {"prompt": "", "chosen": "Something.", "rejected": "Other."},
        {"prompt": "f", "chosen": 3, "rejected": "Other."},
        {
            "prompt": [{"role": "user", "content": "g"}, {"role": "assistant", "content": "h"}],
            "chosen": "x",
            "rejected": "y",
        },
        {"prompt": "i", "chosen": [{"role": "user", "content": "x"}], "rejected": "y"},
        {"prompt": "k", "chosen": "Caf\ufffd.", "rejected": "y"},
        {"chosen": "no prompt", "rejected": "at all"},
        good[0],  # an exact duplicate
    ]
    source = tmp_path / "bad.jsonl"
    _write_jsonl(source, good + bad)
    with source.open("a") as f:
        f.write("{not json\n")
    data = prepare_preference_stage(_stage(source), seed=0)
    assert data.dropped == {
        "invalid_json_line": 1,
        "missing_rejected": 2,
        "identical_chosen_rejected": 1,
        "empty_text": 2,
        "non_text_value": 1,
        "prompt_does_not_end_with_user": 1,
        "reply_is_not_one_assistant_turn": 1,
        "undecodable": 1,
        "missing_prompt": 1,
    }
    assert data.duplicates == 1
    assert len(data.train_pairs) + len(data.validation_pairs) == 4
    assert data.rows_read == sum(data.dropped.values()) + data.duplicates + data.kept


def test_implicit_prompt_pairs_with_bad_lists_are_dropped(tmp_path):
    user = {"role": "user", "content": "x"}
    source = _write_jsonl(
        tmp_path / "implicit.jsonl",
        [
            {
                "chosen": [user, {"role": "assistant", "content": "Same"}],
                "rejected": [user, {"role": "assistant", "content": "Same"}],
            },
            {"chosen": [user, {"role": "assistant", "content": "A?"}]},
            {"chosen": "plain text", "rejected": "other text"},
            {
                "chosen": [user, {"role": "wizard", "content": "A?"}],
                "rejected": [user, {"role": "assistant", "content": "B"}],
            },
        ],
    )
    data = prepare_preference_stage(_stage(source), seed=0)
    assert data.dropped == {
        "identical_chosen_rejected": 1,
        "missing_rejected": 1,
        "not_a_message_list": 1,
        "unknown_role": 1,
    }
    assert data.kept == 0


def test_recipe_checks_method_format_and_dpo_settings(tmp_path):
    source = _write_jsonl(tmp_path / "p.jsonl", _pair_rows(4))

    def recipe(stage: str) -> Path:
        path = tmp_path / "r.yaml"
        path.write_text(f"name: r\nbase_model: gpt2\nstages:\n  - {stage}\n")
        return path

    loaded = load_recipe(
        recipe(f"{{name: p, source: {source}, method: dpo, dpo: {{beta: 0.2, loss_type: ipo}}}}")
    )
    assert loaded.stages[0].dpo.beta == 0.2 and loaded.stages[0].dpo.loss_type == "ipo"
    bad = {
        f"{{name: p, source: {source}, format: preference}}": "set 'stages.0.method: dpo'",
        f"{{name: p, source: {source}, dpo: {{beta: 0.5}}}}": "'stages.0.dpo' is set but 'stages.0.method' is sft",
        f"{{name: p, source: {source}, method: dpo, format: counseling}}": "a dpo stage reads preference pairs",
        f"{{name: p, source: {source}, method: dpo, dpo: {{beta: 0}}}}": "'stages.0.dpo.beta' is 0.0",
        f"{{name: p, source: {source}, method: dpo, dpo: {{loss_type: sigmod}}}}": "did you mean 'sigmoid'",
        f"{{name: p, source: {source}, method: dpo, dpo: {{loss_type: exo_pair}}}}": "label_smoothing' > 0",
        f"{{name: p, source: {source}, method: dpo, replay_fraction: 0.1}}": "replay_fraction",
        f"{{name: p, source: {source}, method: ppo}}": "expected one of ['sft', 'dpo']",
        f"{{name: p, source: {source}, method: dpo, max_reply_sentences: 2}}": "compares whole replies",
    }
    for stage, message in bad.items():
        with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("(", r"\(")):
            load_recipe(recipe(stage))


def test_sft_stage_on_preference_data_says_to_use_dpo(tmp_path):
    from warmline.data.cleaning import prepare_stage
    from warmline.data.formats import FormatError

    source = _write_jsonl(tmp_path / "p.jsonl", _pair_rows(4))
    with pytest.raises(FormatError, match="method: dpo"):
        prepare_stage(StageConfig(name="p", source=str(source)), seed=0)
    counseling = _write_jsonl(tmp_path / "c.jsonl", [{"Context": "hi", "Response": "hello"}])
    with pytest.raises(FormatError, match="needs preference pairs"):
        prepare_preference_stage(_stage(counseling), seed=0)


# --- tokens --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer_fixture", ["chatml_tokenizer", "gpt2_tokenizer"])
def test_pair_tokens_are_the_sft_tokens_of_each_reply(tokenizer_fixture, request):
    """Prompt ids end with the generation prompt; prompt + reply = the SFT example, reply = its
    labels (ChatML, and GPT-2 with no template: the plain "Human/Assistant" one)."""
    tok = request.getfixturevalue(tokenizer_fixture)
    pair = PreferencePair(
        [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "I feel <|im_start|>assistant lost."},
        ],
        "That sounds really hard, and it makes sense to feel lost. What happened today?",
        "Go outside.",
    )
    tokens = tokenize_pair(tok, pair, 512)
    assert tokens.prompt_ids == encode_prompt(tok, pair.prompt)
    for reply, ids in (
        (pair.chosen_conversation(), tokens.chosen_ids),
        (pair.rejected_conversation(), tokens.rejected_ids),
    ):
        sft = tokenize_conversation(tok, reply, 512)
        assert tokens.prompt_ids + ids == sft.input_ids[: len(tokens.prompt_ids) + len(ids)]
        assert ids == [label for label in sft.labels if label != IGNORE_INDEX]
        assert ids[-1] == tok.eos_token_id
    short = tokenize_pair(tok, pair, len(tokens.prompt_ids) + 3)
    assert short == "prompt_too_long"
    cut = tokenize_pair(tok, pair, len(tokens.prompt_ids) + 9)
    assert cut.truncated and len(cut.chosen_ids) == 9


# --- data inspect --------------------------------------------------------------------------------


def test_data_inspect_reports_a_preference_stage(tmp_path, tiny_llama_dir):
    from warmline.data.inspection import format_table, inspect_recipe

    source = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            *_pair_rows(12),
            {"prompt": "x", "chosen": "Same.", "rejected": "same"},
            {"prompt": "y", "chosen": "ok"},
        ],
    )
    path = tmp_path / "r.yaml"
    path.write_text(
        f"name: r\nbase_model: {tiny_llama_dir}\nsystem_prompt: null\nstages:\n"
        f"  - {{name: prefs, source: {source}, method: dpo, validation_fraction: 0.25, max_length: 64}}\n"
        "training: {global_batch_size: 2, micro_batch_size: 1}\n"
    )
    recipe = load_recipe(path)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    (row,) = inspect_recipe(recipe, tok)
    assert row["method"] == "dpo" and row["rows_read"] == 14
    assert row["dropped"] == {"identical_chosen_rejected": 1, "missing_rejected": 1}
    assert row["train_pairs"] + row["validation_pairs"] == 12
    lengths = row["pair_tokens"]
    first = _pair_rows(1)[0]
    ref = tokenize_pair(
        tok,
        PreferencePair([{"role": "user", "content": first["prompt"]}], first["chosen"], first["rejected"]),
        10**9,
    )
    assert lengths["rejected"]["max"] == len(ref.rejected_ids)  # every rejected reply is the same text
    assert lengths["prompt"]["p50"] > 0 and lengths["chosen"]["max"] >= lengths["chosen"]["p50"]
    table = format_table([row])
    assert "prefs: pairs" in table and "identical_chosen_rejected" in table and "rejected tokens" in table


# --- training ------------------------------------------------------------------------------------


def _dpo_recipe(
    tmp_path: Path, base: Path, *, lora: bool = False, pairs: int = 16, sft_epochs: int = 1
) -> Path:
    sft_rows = [
        {"text": f"Human: I feel {f} {p}.\nAssistant: Feeling {f} {p} is hard. What helps?"}
        for f in FEELINGS
        for p in PLACES[:2]
    ]
    sft = _write_jsonl(tmp_path / "sft.jsonl", sft_rows)
    prefs = _write_jsonl(tmp_path / "prefs.jsonl", _pair_rows(pairs))
    lines = [
        "name: tiny-dpo",
        f"base_model: {base}",
        f"output_dir: {tmp_path / 'runs'}",
        "system_prompt: null",
        "stages:",
        f"  - {{name: sft, source: {sft}, epochs: {sft_epochs}, learning_rate: 3.0e-3, max_length: 64, validation_fraction: 0.2}}",
        f"  - {{name: prefs, source: {prefs}, method: dpo, epochs: 3, learning_rate: 5.0e-3, max_length: 64,"
        " validation_fraction: 0.25, dpo: {beta: 0.5}}",
        "training:",
        "  micro_batch_size: 2",
        "  global_batch_size: 4",
        "  precision: fp32",
        "  warmup_ratio: 0.0",
        "  logging_steps: 1",
        "  save_steps: 100",
    ]
    if lora:
        lines += ["  lora: {enabled: true, r: 8, alpha: 16, dropout: 0.0}"]
    path = tmp_path / "dpo.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _margins(folder: Path, pairs, precision="fp32") -> float:
    from warmline.models import load_model
    from warmline.training.preference import reply_logprobs

    chosen, rejected = reply_logprobs(load_model(str(folder)), pairs, precision=precision)
    return sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)


@pytest.mark.slow  # two stages, every evaluation: about a minute on 2 shared cores
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dpo_stage_raises_the_chosen_minus_rejected_margin(tmp_path, tiny_llama_dir, lora):
    """After an SFT stage, the DPO stage ranks its training pairs' chosen replies higher (policy
    log-probability margin up against the SFT stage's), and is a row and a column of the matrix."""
    from warmline.training.train import load_training_tokenizer, prepare_stages, train_recipe

    recipe = load_recipe(_dpo_recipe(tmp_path, tiny_llama_dir, lora=lora))
    final = train_recipe(recipe)
    run = recipe.run_dir
    stages = prepare_stages(recipe, load_training_tokenizer(recipe))
    train_pairs = stages[1].train_pairs
    before = _margins(run / "stage-01-sft", train_pairs)
    after = _margins(run / "stage-02-prefs", train_pairs)
    assert after > before + 1.0, (before, after)

    forgetting = json.loads((run / "forgetting.json").read_text())
    assert list(forgetting) == ["base", "sft", "prefs"]
    assert all(set(row) == {"sft", "prefs"} for row in forgetting.values())
    scores = json.loads((run / "preferences.json").read_text())["prefs"]
    assert scores["pairs"] == len(stages[1].validation_pairs) > 0
    assert scores["reference_model"] == str(run / "stage-01-sft")
    assert set(scores) >= {"reference", "policy", "rewards"}
    changes = scores["validation_loss_change"]
    assert set(changes) == {"sft"}  # the earlier stage's split, what DPO may have cost it
    assert scores["forgetting_limit"] == FORGETTING_LIMIT
    assert scores["over_forgetting_limit"] == [
        name for name, rise in changes.items() if rise > FORGETTING_LIMIT
    ]
    assert (final / "config.json").is_file()
    stats = json.loads((run / "stage-02-prefs" / "data_stats.json").read_text())
    assert stats["method"] == "dpo" and stats["train_pairs"] == len(train_pairs)
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("stage") == "prefs" and "rewards/margins" in r for r in logs)


def _built_dpo_stage(tmp_path, base, *, lora: bool):
    """Stage 2's DPO trainer built (not trained) on a stage-1 folder: the base model's weights
    moved off their initialisation (so they differ from the base) and saved as a stage is."""
    from transformers import AutoModelForCausalLM

    from warmline.training.train import (
        build_stage_trainer,
        load_training_tokenizer,
        prepare_stages,
        stage_dir,
    )

    recipe = load_recipe(_dpo_recipe(tmp_path, base, lora=lora, pairs=8))
    tok = load_training_tokenizer(recipe)
    stages = prepare_stages(recipe, tok)
    previous = stage_dir(recipe.run_dir, stages[0])
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model.save_pretrained(previous)
    tok.save_pretrained(previous)
    built = build_stage_trainer(recipe, stages[1], stages, str(previous), tok, "fp32", recipe.run_dir)
    return built, previous


def test_dpo_training_raises_the_margin_on_its_pairs(tmp_path, tiny_llama_dir):
    """The built DPO stage, trained: its training pairs' chosen-minus-rejected log-probability
    margin rises above the starting (reference) model's."""
    from warmline.training.train import run_stage_training

    built, previous = _built_dpo_stage(tmp_path, tiny_llama_dir, lora=False)
    pairs = built.stage.train_pairs
    before = _margins(previous, pairs)
    model = run_stage_training(built, resume=False)
    from warmline.training.preference import reply_logprobs

    chosen, rejected = reply_logprobs(model, pairs, precision="fp32")
    after = sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)
    assert after > before + 1.0, (before, after)


def test_full_dpo_reference_is_the_previous_stage_frozen(tmp_path, tiny_llama_dir):
    from trl import DPOTrainer

    built, previous = _built_dpo_stage(tmp_path, tiny_llama_dir, lora=False)
    trainer = built.trainer
    assert isinstance(trainer, DPOTrainer) and trainer.ref_model is not None
    saved = load_file(str(previous / "model.safetensors"))
    ref = trainer.ref_model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(ref[name], tensor), name
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    policy = trainer.model.state_dict()
    assert all(torch.equal(policy[name], tensor) for name, tensor in saved.items())  # starts there too
    assert trainer.ref_model is not trainer.model


def test_lora_dpo_reference_is_the_previous_stage_with_adapters_off(tmp_path, tiny_llama_dir):
    """With LoRA TRL keeps no ref_model: the adapter-disabled model is the reference, and it is
    exactly the previous stage's saved weights (same tensors, same logits)."""
    from warmline.models import load_model

    built, previous = _built_dpo_stage(tmp_path, tiny_llama_dir, lora=True)
    trainer = built.trainer
    assert trainer.ref_model is None
    peft_model = trainer.model
    saved = load_file(str(previous / "model.safetensors"))
    base = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in peft_model.state_dict().items()
        if "lora_" not in k
    }
    for name, tensor in saved.items():
        assert torch.equal(base[name], tensor), name
    ids = torch.tensor([built.stage.train_pairs[0].prompt_ids + built.stage.train_pairs[0].chosen_ids])
    # Move the adapters away from their zero start, so "adapters off" is a real difference.
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    with torch.no_grad():
        with peft_model.disable_adapter():
            off = peft_model(input_ids=ids).logits
        on = peft_model(input_ids=ids).logits
        expected = load_model(str(previous))(input_ids=ids).logits
    torch.testing.assert_close(off, expected)
    assert not torch.allclose(on, expected)


def test_preference_scores_compare_the_policy_with_its_reference(tiny_llama_dir, chatml_tokenizer):
    """Scores of a model against itself: rewards are 0 and the two rankings agree."""
    from warmline.models import load_model
    from warmline.training.preference import preference_scores, reply_logprobs

    pairs = [
        tokenize_pair(
            chatml_tokenizer,
            PreferencePair([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"]),
            64,
        )
        for r in _pair_rows(6)
    ]
    model = load_model(str(tiny_llama_dir))
    scores = preference_scores(model, load_model(str(tiny_llama_dir)), pairs, beta=0.1, precision="fp32")
    assert scores["pairs"] == 6 and scores["policy"] == scores["reference"]
    assert scores["rewards"]["margin"] == pytest.approx(0.0, abs=1e-9)
    # The summed log-probability of one reply equals minus its token-weighted loss x tokens.
    from warmline.data.preferences import reply_example
    from warmline.evaluation.loss import evaluate_loss

    chosen, _ = reply_logprobs(model, pairs[:1], precision="fp32")
    loss = evaluate_loss(model, [reply_example(pairs[0], "chosen")])
    assert chosen[0] == pytest.approx(-loss["loss"] * loss["tokens"], rel=1e-4)


def test_report_has_a_preference_section_with_before_and_after():
    from warmline.evaluation.report import preference_section

    assert preference_section({}) == []
    scores = {
        "pairs": 32,
        "beta": 0.1,
        "reference": {"accuracy": 0.5, "margin": -1.25},
        "policy": {"accuracy": 0.75, "margin": 2.5},
        "rewards": {"accuracy": 0.8125, "margin": 0.375, "chosen": 0.1, "rejected": -0.275},
        "validation_loss_change": {"counseling": 0.012, "empathetic": -0.004},
    }
    title, text, table = preference_section({"preferences": scores})
    assert title == "## Preference stages" and "pre-DPO" in text
    row = table.splitlines()[2]
    assert row.startswith("| preferences | 32 | 0.500 / -1.25 | 0.750 / 2.50 | 0.812 | 0.375 |")
    assert "counseling +0.012, empathetic -0.004" in row


def test_plan_counts_both_replies_and_the_reference_copy(tmp_path, tiny_llama_dir):
    from warmline.training.plan import format_plan, plan_recipe

    recipe = load_recipe(_dpo_recipe(tmp_path, tiny_llama_dir, pairs=8))
    result = plan_recipe(recipe)
    sft, dpo = result["stages"]
    assert "reference" not in sft.memory and dpo.memory["reference"] == result["parameters"]["total"] * 4
    assert dpo.examples == 6 and dpo.optimizer_steps == 3 * 2  # 6 pairs, 4 a step, 3 epochs
    prompt = 0
    from warmline.training.train import load_training_tokenizer, prepare_stages

    pairs = prepare_stages(recipe, load_training_tokenizer(recipe))[1].train_pairs
    prompt = sum(len(p.prompt_ids) for p in pairs)
    assert dpo.tokens == 2 * prompt + sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    assert "dpo reference" in format_plan(result, recipe)


def test_resume_accepts_a_folder_trained_before_stages_had_a_method(tmp_path):
    """recipe.yaml written before `method`/`dpo` existed reads them as their defaults (sft)."""
    from warmline.recipe import recipe_to_dict
    from warmline.training.checks import recipe_differences

    source = _write_jsonl(tmp_path / "c.jsonl", [{"Context": "hi", "Response": "hello"}])
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\nbase_model: gpt2\nstages:\n  - {{name: a, source: {source}}}\n")
    current = recipe_to_dict(load_recipe(path))
    old = json.loads(json.dumps(current))
    for stage in old["stages"]:
        del stage["method"], stage["dpo"]
    assert recipe_differences(old, current, 1) == []
    old["stages"][0]["method"] = "dpo"
    assert recipe_differences(old, current, 1) == ["stages.0.method: 'dpo' -> 'sft'"]


def test_over_forgetting_limit_names_only_the_stages_past_it():
    assert over_forgetting_limit({"counseling": 0.022, "psychology": 0.051, "empathetic": -0.01}) == [
        "psychology"
    ]
    assert over_forgetting_limit({"a": 0.05}) == []  # at the limit is within it
    assert over_forgetting_limit({"a": 0.2}, limit=0.3) == []
