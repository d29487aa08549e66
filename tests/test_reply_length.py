"""`max_reply_sentences`: a stage can cut its training replies to their first N sentences.

Recipes use it to steer reply length by data (recipes/offline.yaml cuts the long counseling and
psychology replies to 4 sentences); validation rows must stay whole so held-out loss and the
evaluation's reference replies are the source's own.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from warmline.data.cleaning import first_sentences, prepare_stage, shorten_replies
from warmline.recipe import RecipeError, StageConfig, load_recipe

LONG_REPLY = (
    "That sounds exhausting.  A wind-down hour is worth a try! "
    "Sleep often follows worry... It can ease with time. What keeps you up most?"
)


def test_first_sentences_keeps_the_text_up_to_the_nth_boundary():
    assert first_sentences(LONG_REPLY, 1) == "That sounds exhausting."
    # "!" ends a sentence, an ellipsis before a capital does not; the spacing is the original's.
    assert first_sentences(LONG_REPLY, 2) == "That sounds exhausting.  A wind-down hour is worth a try!"
    assert first_sentences(LONG_REPLY, 3).endswith("Sleep often follows worry... It can ease with time.")
    assert first_sentences(LONG_REPLY, 50) == LONG_REPLY
    assert first_sentences("No final stop here", 1) == "No final stop here"


def test_shorten_replies_cuts_only_assistant_turns_and_counts_them():
    conv = [
        {"role": "system", "content": "Be kind. Be brief. Ask."},
        {"role": "user", "content": "One. Two. Three."},
        {"role": "assistant", "content": "Yes. No. Maybe."},
        {"role": "user", "content": "Four."},
        {"role": "assistant", "content": "Sure."},
    ]
    counts: Counter = Counter()
    (out,) = shorten_replies([conv], 1, counts)
    assert [t["content"] for t in out] == [
        "Be kind. Be brief. Ask.",
        "One. Two. Three.",
        "Yes.",
        "Four.",
        "Sure.",
    ]
    assert counts == {"reply_cut_to_max_reply_sentences": 1}
    assert conv[2]["content"] == "Yes. No. Maybe."  # the caller's conversation is not mutated


def _stage_file(tmp_path):
    rows = [
        {"Context": f"Worry number {i} keeps me up.", "Response": f"I hear you {i}. Second. Third. Fourth?"}
        for i in range(20)
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_stage_option_cuts_training_replies_and_keeps_validation_whole(tmp_path):
    stage = StageConfig(
        name="s", source=str(_stage_file(tmp_path)), format="counseling", validation_fraction=0.2
    )
    whole = prepare_stage(stage, seed=1)
    cut = prepare_stage(StageConfig(**{**stage.__dict__, "max_reply_sentences": 2}), seed=1)
    assert [c[-1]["content"] for c in whole.train] != [c[-1]["content"] for c in cut.train]
    for conv in cut.train:
        reply = conv[-1]["content"]
        assert reply.startswith("I hear you") and reply.endswith(". Second.")
    assert cut.validation == whole.validation  # same split, replies untouched
    assert all(c[-1]["content"].endswith("Fourth?") for c in cut.validation)
    assert cut.cleaned["reply_cut_to_max_reply_sentences"] == len(cut.train)
    assert "reply_cut_to_max_reply_sentences" not in whole.cleaned


@pytest.mark.parametrize("value", [0, -1, 2.5])
def test_recipe_rejects_a_bad_max_reply_sentences(tmp_path, value):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: x\nbase_model: gpt2\nstages:\n"
        f"  - {{name: s, source: d.jsonl, max_reply_sentences: {value}}}\n"
    )
    with pytest.raises(RecipeError, match="stages.0.max_reply_sentences"):
        load_recipe(recipe)


def test_offline_recipe_cuts_the_long_stages_only():
    stages = {s.name: s for s in load_recipe("recipes/offline.yaml").stages}
    assert stages["counseling"].max_reply_sentences == stages["psychology"].max_reply_sentences == 4
    assert stages["empathetic"].max_reply_sentences is None
    assert all(s.max_rows is None for s in stages.values())  # every shipped conversation trains


def test_a_reply_that_gives_crisis_lines_after_the_cut_stays_whole():
    crisis = (
        "I'm glad you told me. That sounds unbearably heavy. You matter. Are you safe right now? "
        "If you might act on these thoughts, call or text 988 in the US, or Samaritans on 116 123."
    )
    calm = "I'm glad you told me. That sounds heavy. You matter. What helps? Try a walk. Call a friend."
    counts: Counter = Counter()
    convs = [
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": text}] for text in (crisis, calm)
    ]
    kept, cut = shorten_replies(convs, 3, counts)
    assert kept[-1]["content"] == crisis
    assert cut[-1]["content"] == "I'm glad you told me. That sounds heavy. You matter."
    assert counts == {"reply_kept_whole_for_its_crisis_lines": 1, "reply_cut_to_max_reply_sentences": 1}
    # A number that merely contains a line's digits is not a crisis line.
    (other,) = shorten_replies(
        [[{"role": "assistant", "content": "One. Two. Room 19880 is upstairs."}]], 2, Counter()
    )
    assert other[0]["content"] == "One. Two."


def test_the_shipped_crisis_replies_keep_their_lines():
    stages = {s.name: s for s in load_recipe("recipes/offline.yaml").stages}
    data = prepare_stage(stages["counseling"], seed=42, system_prompt=None)
    with_lines = [c[-1]["content"] for c in data.train if "988" in c[-1]["content"]]
    assert with_lines and all("findahelpline.com" in reply for reply in with_lines)
    assert data.cleaned["reply_kept_whole_for_its_crisis_lines"] == len(with_lines)
