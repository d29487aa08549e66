"""Sources, formats, cleaning, dedup and the grouped split, on small files written per test.

Malformed input must end in a clear error (naming the file and what was found) or a counted
drop, never in an unexpected exception type.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import COUNSEL_CHAT

from warmline.data.cleaning import StageData, normalise_for_dedup, prepare_stage, prompt_key
from warmline.data.formats import FormatError
from warmline.data.sources import SourceError, read_source
from warmline.models import ModelNotAvailableError, resolve_model
from warmline.recipe import StageConfig

BOILERPLATE = (
    "You are a helpful mental health counselling assistant, please answer the mental health questions "
    "based on the patient's description."
)
COUNSELING_ROWS = [
    {
        "Context": "I feel anxious before every exam.",
        "Response": "That sounds stressful. What helps you calm down?",
    },
    {"Context": "My partner and I argue every night.", "Response": "Arguing that often is exhausting."},
    {"Context": "I can't sleep since my dog died.", "Response": "Losing a companion is a real grief."},
]


# --- helpers --------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    import csv

    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def prepare(
    source: Path | str,
    fmt: str = "auto",
    *,
    validation_fraction: float = 0.0,
    system: str | None = None,
    **kw,
) -> StageData:
    stage = StageConfig(
        name="s", source=str(source), format=fmt, validation_fraction=validation_fraction, **kw
    )
    return prepare_stage(stage, seed=0, system_prompt=system)


def conversations(data: StageData) -> list[list[dict]]:
    return data.train + data.validation


def expect_clear_error(source: Path | str, fmt: str = "auto", **kw) -> str:
    """Preparing the source fails with one of our error types; returns the message."""
    with pytest.raises((SourceError, FormatError)) as err:
        prepare(source, fmt, **kw)
    return str(err.value)


# --- formats --------------------------------------------------------------------------------


def test_counseling_format(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", COUNSELING_ROWS)
    data = prepare(path, "counseling", system="Be kind.")
    assert data.format == "counseling"
    assert data.rows_read == 3 and data.kept == 3 and data.dropped == {}
    first = conversations(data)[0]
    assert first == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": COUNSELING_ROWS[0]["Context"]},
        {"role": "assistant", "content": COUNSELING_ROWS[0]["Response"]},
    ]


def test_counseling_with_column_mapping(tmp_path):
    rows = [{"question": r["Context"], "answer": r["Response"]} for r in COUNSELING_ROWS]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    data = prepare(path, "counseling", columns={"Context": "question", "Response": "answer"})
    assert data.kept == 3
    assert conversations(data)[1][0] == {"role": "user", "content": rows[1]["question"]}


def test_alpaca_drops_boilerplate_instruction_keeps_specific_one(tmp_path):
    rows = [
        {
            "instruction": BOILERPLATE,
            "input": f"Question number {i} about my stress.",
            "output": f"Answer {i}.",
        }
        for i in range(4)
    ]
    rows += [
        {
            "instruction": "Summarise this worry in one line.",
            "input": "I keep replaying the meeting.",
            "output": "You keep going over the meeting.",
        },
        {
            "instruction": "Suggest one way to wind down before bed.",
            "input": "",
            "output": "Try dimming the lights.",
        },
        {
            "instruction": "Name a grounding exercise.",
            "output": "Try the 5-4-3-2-1 exercise.",
        },  # no input column
    ]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    data = prepare(path, "alpaca")
    assert data.kept == 7 and data.dropped == {}
    by_answer = {c[-1]["content"]: c[0]["content"] for c in conversations(data)}
    # Shared boilerplate: the user turn is the input alone.
    assert by_answer["Answer 0."] == "Question number 0 about my stress."
    assert all(BOILERPLATE not in user for user in by_answer.values())
    # A row-specific instruction is kept as part of the request.
    assert by_answer["You keep going over the meeting."] == (
        "Summarise this worry in one line.\n\nI keep replaying the meeting."
    )
    assert by_answer["Try dimming the lights."] == "Suggest one way to wind down before bed."
    assert by_answer["Try the 5-4-3-2-1 exercise."] == "Name a grounding exercise."


def test_alpaca_instruction_shared_by_too_few_rows_is_not_boilerplate(tmp_path):
    rows = [
        {"instruction": "Reply gently.", "input": f"Worry {i}.", "output": f"Reply {i}."} for i in range(2)
    ]
    data = prepare(write_jsonl(tmp_path / "a.jsonl", rows), "alpaca")
    assert conversations(data)[0][0]["content"].startswith("Reply gently.\n\nWorry")


def test_human_assistant_multi_turn(tmp_path):
    text = (
        "Human: I feel lonely.\nAssistant: That sounds hard.\nWhat has your week been like?\n"
        "Human: Quiet. Too quiet.\nAssistant: Would a short call with a friend help?"
    )
    data = prepare(write_jsonl(tmp_path / "h.jsonl", [{"text": text}]), "human_assistant")
    assert conversations(data) == [
        [
            {"role": "user", "content": "I feel lonely."},
            {"role": "assistant", "content": "That sounds hard.\nWhat has your week been like?"},
            {"role": "user", "content": "Quiet. Too quiet."},
            {"role": "assistant", "content": "Would a short call with a friend help?"},
        ]
    ]


def test_messages_openai_style(tmp_path):
    row = {
        "messages": [
            {"role": "system", "content": "You listen."},
            {"role": "user", "content": "I lost my job."},
            {"role": "assistant", "content": "I'm sorry, that is a lot to carry."},
            {"role": "user", "content": "Thanks."},
            {"role": "assistant", "content": "What would help most this week?"},
        ]
    }
    data = prepare(write_jsonl(tmp_path / "m.jsonl", [row]), "messages", system="ignored: row has its own")
    assert conversations(data) == [row["messages"]]


def test_messages_sharegpt_style(tmp_path):
    row = {
        "conversations": [
            {"from": "human", "value": "I can't focus."},
            {"from": "gpt", "value": "That's frustrating. When did it start?"},
        ]
    }
    data = prepare(write_jsonl(tmp_path / "s.jsonl", [row]), "messages")
    assert conversations(data) == [
        [
            {"role": "user", "content": "I can't focus."},
            {"role": "assistant", "content": "That's frustrating. When did it start?"},
        ]
    ]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (COUNSELING_ROWS, "counseling"),
        ([{"instruction": "Help.", "input": "", "output": "Sure."}], "alpaca"),
        ([{"text": "Human: hi\nAssistant: hello"}], "human_assistant"),
        (
            [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}],
            "messages",
        ),
        ([{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}], "messages"),
    ],
)
def test_auto_detection_is_logged_and_reported(tmp_path, caplog, rows, expected):
    caplog.set_level(logging.INFO, logger="warmline.data.cleaning")
    data = prepare(write_jsonl(tmp_path / "x.jsonl", rows), "auto")
    assert data.format == expected
    assert data.stats()["format"] == expected
    assert data.kept == len(rows)
    assert f"detected format '{expected}'" in caplog.text


def test_auto_detection_fails_naming_the_columns(tmp_path):
    message = expect_clear_error(write_jsonl(tmp_path / "x.jsonl", [{"question": "a", "reply": "b"}]))
    assert "could not detect the format" in message
    assert "question" in message and "reply" in message
    assert "`format`" in message


# --- local sources --------------------------------------------------------------------------


def test_json_list_and_wrapped_list(tmp_path):
    plain = tmp_path / "list.json"
    plain.write_text(json.dumps(COUNSELING_ROWS, indent=2), encoding="utf-8")
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"train": COUNSELING_ROWS}), encoding="utf-8")
    for path in (plain, wrapped):
        raw = read_source(str(path))
        assert raw.rows == COUNSELING_ROWS
        assert raw.columns == ["Context", "Response"]
        assert raw.files == [str(path)]


def test_jsonl_csv_parquet_read_the_same_rows(tmp_path):
    sources = [
        write_jsonl(tmp_path / "c.jsonl", COUNSELING_ROWS),
        write_csv(
            tmp_path / "c.csv",
            ["Context", "Response"],
            [[r["Context"], r["Response"]] for r in COUNSELING_ROWS],
        ),
        write_parquet(tmp_path / "c.parquet", COUNSELING_ROWS),
    ]
    for path in sources:
        raw = read_source(str(path))
        assert raw.rows == COUNSELING_ROWS, path.suffix
        data = prepare(path)
        assert data.format == "counseling" and data.kept == 3, path.suffix


def test_csv_with_quoted_newlines_and_commas(tmp_path):
    rows = [["I feel, well, tired.\nAnd sad.", 'Thank you for "saying" it.']]
    data = prepare(write_csv(tmp_path / "q.csv", ["Context", "Response"], rows), "counseling")
    assert conversations(data)[0][0]["content"] == "I feel, well, tired.\nAnd sad."
    assert conversations(data)[0][1]["content"] == 'Thank you for "saying" it.'


def test_folder_of_mixed_files(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    write_jsonl(folder / "a.jsonl", COUNSELING_ROWS[:1])
    write_csv(
        folder / "sub" / "b.csv", ["Context", "Response"], [[COUNSELING_ROWS[1]["Context"], "Csv reply."]]
    )
    write_parquet(folder / "c.parquet", COUNSELING_ROWS[2:])
    (folder / "README.md").write_text("not data", encoding="utf-8")
    raw = read_source(str(folder))
    assert len(raw.files) == 3 and not any(f.endswith(".md") for f in raw.files)
    assert raw.columns == ["Context", "Response"]
    data = prepare(folder)
    assert data.rows_read == 3 and data.kept == 3 and data.format == "counseling"


def test_max_rows_samples_with_the_seed(tmp_path):
    rows = [{"Context": f"Worry number {i}.", "Response": f"Reply {i}."} for i in range(20)]
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    a, b = prepare(path, max_rows=5), prepare(path, max_rows=5)
    assert a.kept == 5
    assert conversations(a) == conversations(b)


def test_rows_cut_by_max_rows_are_counted_apart_from_dropped(tmp_path):
    rows = [{"Context": f"Worry number {i}.", "Response": f"Reply {i}."} for i in range(20)]
    rows.append({"Context": "   ", "Response": "empty question"})
    data = prepare(write_jsonl(tmp_path / "many.jsonl", rows), max_rows=5)
    assert data.dropped == {"empty_turn": 1}  # only the unusable row
    assert data.cut_by_max_rows == 15 and data.stats()["cut_by_max_rows"] == 15
    assert data.rows_read == sum(data.dropped.values()) + data.duplicates + data.kept + data.cut_by_max_rows


# --- dedup and the grouped split ------------------------------------------------------------


def test_exact_and_near_duplicates_are_counted(tmp_path):
    rows = [
        {"Context": "I feel sad.", "Response": "I'm sorry you feel sad."},
        {"Context": "I feel sad.", "Response": "I'm sorry you feel sad."},  # exact
        {"Context": "  i FEEL   sad!! ", "Response": "I'm sorry, you feel sad"},  # case/punct/space
        {"Context": "I feel sad.", "Response": "What made today hard?"},  # same prompt, new answer
        {"Context": "I feel angry.", "Response": "Anger often hides hurt."},
    ]
    data = prepare(write_jsonl(tmp_path / "d.jsonl", rows), "counseling")
    assert data.duplicates == 2
    assert data.kept == 3
    assert data.stats()["duplicates"] == 2
    assert normalise_for_dedup("  i FEEL   sad!! ") == normalise_for_dedup("I feel sad.")


def test_grouped_split_keeps_all_answers_to_a_prompt_together(tmp_path):
    rows = [
        {"Context": f"Prompt {p}: I feel stuck.", "Response": f"Answer {a} to prompt {p}."}
        for p in range(10)
        for a in range(3)
    ]
    data = prepare(write_jsonl(tmp_path / "g.jsonl", rows), "counseling", validation_fraction=0.2)
    assert len(data.validation) == 6 and len(data.train) == 24  # 2 of 10 groups, 3 answers each
    train_keys = {prompt_key(c) for c in data.train}
    val_keys = {prompt_key(c) for c in data.validation}
    assert not train_keys & val_keys
    # Stable: the same seed gives the same split.
    again = prepare(write_jsonl(tmp_path / "g.jsonl", rows), "counseling", validation_fraction=0.2)
    assert again.validation == data.validation


def test_counsel_chat_grouped_split():
    if not COUNSEL_CHAT.is_file():
        pytest.skip(f"counsel-chat copy not found at {COUNSEL_CHAT} (../shared/datasets/counsel_chat)")
    data = prepare(COUNSEL_CHAT, "counseling", validation_fraction=0.1, system="Be kind.")
    assert data.rows_read == sum(1 for line in COUNSEL_CHAT.open(encoding="utf-8") if line.strip())
    assert data.kept > 0.8 * data.rows_read
    assert data.train and data.validation
    train_prompts = Counter(prompt_key(c) for c in data.train)
    val_prompts = Counter(prompt_key(c) for c in data.validation)
    assert not set(train_prompts) & set(val_prompts), "a prompt landed in both splits"
    # The dataset has several therapists' answers per question: the grouping is doing real work.
    assert max((train_prompts + val_prompts).values()) >= 2
    assert sum(n >= 2 for n in (train_prompts + val_prompts).values()) >= 10
    assert all(c[0] == {"role": "system", "content": "Be kind."} for c in data.train[:5])


# --- malformed input: a clear error or a counted drop ----------------------------------------


def test_missing_column_names_file_found_columns_and_fix(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "a", "answer": "b"}])
    message = expect_clear_error(path, "counseling")
    assert "column 'Context' not found" in message
    assert str(path) in message
    assert "found: question, answer" in message
    assert "columns: {Context: <your column>}" in message


def test_missing_messages_column(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"dialog": []}])
    message = expect_clear_error(path, "messages")
    assert "column 'messages' not found" in message and str(path) in message and "found: dialog" in message


@pytest.mark.parametrize(("name", "content"), [("empty.jsonl", ""), ("blank.json", "  \n\n "), ("e.csv", "")])
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    message = expect_clear_error(path)
    assert str(path) in message and "empty" in message


def test_invalid_json_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"Context": "a", "Response": "b"},\n {"Context": oops}]', encoding="utf-8")
    message = expect_clear_error(path)
    assert str(path) in message
    assert "not valid JSON" in message and "line 2" in message


def test_json_object_with_several_lists(tmp_path):
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"train": COUNSELING_ROWS, "test": COUNSELING_ROWS}), encoding="utf-8")
    message = expect_clear_error(path)
    assert str(path) in message and "exactly one list" in message


def test_some_invalid_jsonl_lines_are_counted(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(COUNSELING_ROWS[0]),
        '{"Context": "unterminated',
        json.dumps(COUNSELING_ROWS[1]),
        "not json at all",
        json.dumps(["a", "list"]),
        json.dumps(COUNSELING_ROWS[2]),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = prepare(path, "counseling")
    assert data.kept == 3
    assert data.dropped == {"invalid_json_line": 2, "not_an_object": 1}


def test_non_object_items_in_json_list_are_counted(tmp_path):
    path = tmp_path / "items.json"
    path.write_text(json.dumps([COUNSELING_ROWS[0], "stray text", 3, None]), encoding="utf-8")
    data = prepare(path, "counseling")
    assert data.kept == 1 and data.dropped == {"not_an_object": 3}


def test_non_text_values_are_counted(tmp_path):
    path = tmp_path / "types.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"Context": 42, "Response": "A number is not a question."}),
                json.dumps({"Context": ["a", "list"], "Response": "Nor is a list."}),
                json.dumps({"Context": {"nested": "x"}, "Response": "Nor a mapping."}),
                json.dumps({"Context": "A real question.", "Response": True}),
                json.dumps({"Context": None, "Response": "Null."}),
                '{"Context": NaN, "Response": "NaN from pandas."}',
                json.dumps({"Response": "Context key absent."}),
                json.dumps(COUNSELING_ROWS[0]),
            ]
        ),
        encoding="utf-8",
    )
    data = prepare(path, "counseling")
    assert data.kept == 1
    assert data.dropped == {"non_text_value": 4, "missing_value": 3}


def test_null_and_nan_in_parquet_are_counted(tmp_path):
    rows = [dict(COUNSELING_ROWS[0]), {"Context": None, "Response": "x"}, {"Context": "y", "Response": None}]
    data = prepare(write_parquet(tmp_path / "n.parquet", rows), "counseling")
    assert data.kept == 1 and data.dropped == {"missing_value": 2}


def test_whitespace_only_turns_are_counted(tmp_path):
    rows = [
        {"Context": "   \n\t ", "Response": "Reply."},
        {"Context": "A question.", "Response": "\u00a0 \n"},
        {"Context": "", "Response": "Reply."},
        COUNSELING_ROWS[0],
    ]
    data = prepare(write_jsonl(tmp_path / "w.jsonl", rows), "counseling")
    assert data.kept == 1 and data.dropped == {"empty_turn": 3}


def test_undecodable_bytes_drop_only_the_affected_rows(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(COUNSELING_ROWS[0]).encode("utf-8")
    bad = '{"Context": "I miss my caf\u00e9 job.", "Response": "Tell me about it."}'.encode("latin-1")
    path.write_bytes(good + b"\n" + bad + b"\n")
    data = prepare(path, "counseling")
    assert data.kept == 1
    assert data.dropped == {"undecodable": 1}  # rows; the file is noted apart
    assert data.files_with_undecodable_bytes == 1 and data.rows_read == 2
    assert "\ufffd" not in json.dumps(conversations(data))


def test_html_remnants_are_cleaned_and_counted(tmp_path):
    rows = [
        {
            "Context": "<p>I feel sad&nbsp;today.</p><p>What can I do?</p>",
            "Response": "It makes sense.<br>Try a short walk.<br/>Tell me how it goes &amp; what you notice.",
        },
        {"Context": "Plain   question   with    spaces.", "Response": "Plain answer."},
    ]
    data = prepare(write_jsonl(tmp_path / "h.jsonl", rows), "counseling")
    assert data.kept == 2
    user, assistant = conversations(data)[0]
    assert user["content"] == "I feel sad today.\n\nWhat can I do?"
    assert (
        assistant["content"] == "It makes sense.\nTry a short walk.\nTell me how it goes & what you notice."
    )
    text = json.dumps(conversations(data))
    assert "<p>" not in text and "<br" not in text and "&nbsp;" not in text and "\\u00a0" not in text
    assert data.cleaned["html_removed"] == 2  # one per turn that held HTML
    # Whitespace-only fixes are counted too, even after HTML was seen earlier in the stage.
    assert data.cleaned["whitespace_normalised"] == 1
    assert conversations(data)[1][0]["content"] == "Plain question with spaces."


def test_csv_row_with_extra_cells_is_counted(tmp_path):
    path = tmp_path / "extra.csv"
    path.write_text(
        "Context,Response\nI feel sad.,I'm sorry.\nToo,many,cells,here\nI feel tired.,Rest helps.\n",
        encoding="utf-8",
    )
    data = prepare(path, "counseling")
    assert data.kept == 2 and data.dropped == {"malformed_csv_row": 1}


def test_csv_row_with_missing_cells_is_counted(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("Context,Response\nI feel sad.,I'm sorry.\nOnly a question\n", encoding="utf-8")
    data = prepare(path, "counseling")
    assert data.kept == 1 and data.dropped == {"missing_value": 1}


def test_messages_with_unknown_role_are_counted(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "narrator", "content": "Once upon a time"},
                {"role": "assistant", "content": "x"},
            ]
        },
        {"messages": [{"content": "no role at all"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    data = prepare(write_jsonl(tmp_path / "r.jsonl", rows), "messages")
    assert data.kept == 1 and data.dropped == {"unknown_role": 2}


def test_messages_with_roles_not_alternating_are_counted(tmp_path):
    u = {"role": "user", "content": "I feel low."}
    a = {"role": "assistant", "content": "I'm here."}
    rows = [
        {"messages": [u, dict(u, content="Still low."), a]},  # user, user
        {"messages": [u, a, dict(a, content="Anything else?")]},  # assistant, assistant
        {"messages": [a, u, dict(a, content="Go on.")]},  # starts with the assistant
        {"messages": [u, a, dict(u, content="Bye.")]},  # ends with the user
        {"messages": [{"role": "system", "content": "Listen."}, u, a]},  # fine
        {"messages": "not a list"},
        {"messages": [u, "not a turn"]},
    ]
    data = prepare(write_jsonl(tmp_path / "alt.jsonl", rows), "messages")
    assert data.kept == 1
    assert data.dropped == {
        "roles_do_not_alternate": 2,
        "does_not_start_with_user": 1,
        "no_final_assistant_turn": 1,
        "non_text_value": 2,
    }


def test_human_assistant_text_without_role_markers_is_counted(tmp_path):
    rows = [
        {"text": "Just a paragraph about feelings, with no speakers."},
        {"text": "Preamble line\nHuman: hi\nAssistant: hello"},
        {"text": ""},
        {"text": "Human: hi\nAssistant: hello"},
    ]
    data = prepare(write_jsonl(tmp_path / "t.jsonl", rows), "human_assistant")
    assert data.kept == 1 and data.dropped == {"no_role_marker": 3}


def test_read_count_includes_unparseable_lines(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(COUNSELING_ROWS[0]), "{broken", json.dumps([1]), json.dumps(COUNSELING_ROWS[0])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = prepare(path, "counseling")
    assert data.rows_read == 4  # every non-blank line, parseable or not
    assert data.rows_read == sum(data.dropped.values()) + data.duplicates + data.kept


def test_pretty_printed_jsonl_names_the_real_problem(tmp_path):
    path = tmp_path / "pretty.jsonl"
    path.write_text("\n".join(json.dumps(r, indent=2) for r in COUNSELING_ROWS), encoding="utf-8")
    message = expect_clear_error(path, "counseling")
    assert str(path) in message and "pretty-printed JSON, not JSON Lines" in message
    assert "found: nothing" not in message


def test_jsonl_with_no_json_line_names_the_real_problem(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text("Context: I feel sad\nResponse: I hear you\n", encoding="utf-8")
    message = expect_clear_error(path, "counseling")
    assert str(path) in message and "no line is valid JSON" in message and "line 1" in message


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_files_with_a_byte_order_mark_are_read(tmp_path, encoding):
    path = tmp_path / "windows.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in COUNSELING_ROWS)
    bom = {"utf-16-le": "\ufeff", "utf-16-be": "\ufeff"}.get(encoding, "")  # utf-16/32 write their own
    path.write_bytes((bom + text).encode(encoding))
    data = prepare(path, "counseling")
    assert data.kept == 3 and data.dropped == {}


def test_utf16_without_a_byte_order_mark_names_the_encoding(tmp_path):
    path = tmp_path / "nobom.jsonl"
    path.write_bytes("".join(json.dumps(r) + "\n" for r in COUNSELING_ROWS).encode("utf-16-le"))
    message = expect_clear_error(path, "counseling")
    assert str(path) in message and "UTF-16" in message and "UTF-8" in message


def test_txt_files_in_a_source_folder_are_counted(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", COUNSELING_ROWS)
    (folder / "notes.txt").write_text("Human: hi\nAssistant: hello\n", encoding="utf-8")
    (folder / "more.txt").write_text("x", encoding="utf-8")
    data = prepare(folder, "counseling")
    assert data.kept == 3 and data.files_skipped == {".txt": 2}
    assert data.stats()["files_skipped"] == {".txt": 2}
    (folder / "a.jsonl").unlink()
    message = expect_clear_error(folder, "counseling")
    assert "holds no data files" in message and "2 .txt files" in message


@pytest.mark.parametrize("relative", ["data/missing", "data/sub/missing", "./missing"])
def test_missing_local_path_is_reported_as_a_missing_path(tmp_path, monkeypatch, relative):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    message = expect_clear_error(relative)
    assert "data source not found" in message and relative.lstrip("./") in message
    assert "hub" not in message


def test_missing_local_model_folder_is_reported_as_a_missing_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ModelNotAvailableError) as err:
        resolve_model("runs/offline")
    assert "model folder not found: runs/offline" in str(err.value) and "offline)" not in str(err.value)


def test_unsupported_file_extension(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Human: hi\nAssistant: hello\n", encoding="utf-8")
    message = expect_clear_error(path)
    assert str(path) in message and "unsupported file type '.txt'" in message and ".jsonl" in message


def test_nonexistent_path(tmp_path):
    path = tmp_path / "missing.jsonl"
    message = expect_clear_error(path)
    assert "not found" in message and str(path) in message


def test_folder_without_data_files(tmp_path):
    (tmp_path / "notes.md").write_text("hello", encoding="utf-8")
    message = expect_clear_error(tmp_path)
    assert str(tmp_path) in message and "holds no data files" in message


def test_corrupt_parquet_file(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    message = expect_clear_error(path)
    assert str(path) in message and "not a readable Parquet file" in message


# --- hub ids offline --------------------------------------------------------------------------


def test_hub_dataset_offline_fails_fast_naming_the_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(SourceError) as err:
        read_source("Amod/mental_health_counseling_conversations")
    elapsed = time.monotonic() - started
    message = str(err.value)
    assert "Amod/mental_health_counseling_conversations" in message
    assert "offline" in message and "local" in message and ".jsonl" in message
    assert elapsed < 10, "hang guard: the offline check must not wait on the network"


def test_hub_model_offline_fails_fast_naming_the_packaged_default(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    started = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as err:
        resolve_model("gpt2")
    assert time.monotonic() - started < 10, "hang guard"
    message = str(err.value)
    assert "'gpt2'" in message and "packaged:smollm2-135m-instruct" in message


def test_data_inspect_counts_max_rows_cuts_apart_from_dropped(tmp_path, tiny_llama_dir):
    from transformers import AutoTokenizer

    from warmline.data.inspection import format_table, inspect_recipe
    from warmline.recipe import load_recipe

    rows = [{"Context": f"Worry number {i}.", "Response": f"Reply {i}."} for i in range(20)]
    rows.append({"Context": "  ", "Response": "empty"})
    write_jsonl(tmp_path / "d.jsonl", rows)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: x\nbase_model: {tiny_llama_dir}\nstages:\n  - {{name: s, source: d.jsonl, max_rows: 5}}\n"
    )
    (row,) = inspect_recipe(load_recipe(recipe), AutoTokenizer.from_pretrained(tiny_llama_dir))
    assert row["dropped"] == {"empty_turn": 1} and row["cut_by_max_rows"] > 0
    assert row["rows_read"] == 1 + row["duplicates"] + row["kept"] + row["cut_by_max_rows"]
    table = format_table([row])
    assert (
        f"s: {row['cut_by_max_rows']} usable training rows not used (max_rows), not counted as dropped"
        in table
    )


def test_nothing_outside_the_run_folder_is_deleted(tmp_path):
    from warmline.training.train import remove_tree

    run, outside = tmp_path / "runs" / "x", tmp_path / "victim"
    (run / ".work" / "stage").mkdir(parents=True)
    outside.mkdir()
    for target in (outside, run / ".." / ".." / "victim", run):
        with pytest.raises(RuntimeError, match="not inside the run folder"):
            remove_tree(target, run)
    assert outside.is_dir() and run.is_dir()
    remove_tree(run / ".work" / "stage", run)
    assert not (run / ".work" / "stage").exists()
