"""`assess` takes what a caller naturally passes: a message list, a list of user messages, or one
message as a plain string. A string once came back "none" (read as an empty conversation)."""

from warmline.safety import assess
from warmline.safety.levels import RiskLevel


def test_a_plain_string_is_one_user_message() -> None:
    text = "i am going to kill myself tonight"
    as_string = assess(text, use_classifier=False)
    as_messages = assess([{"role": "user", "content": text}], use_classifier=False)
    assert as_string.level == as_messages.level
    assert as_string.is_crisis


def test_a_list_of_strings_is_the_user_turns_in_order() -> None:
    turns = ["everything feels hopeless lately", "how tall is the bridge on main street"]
    as_strings = assess(turns, use_classifier=False)
    as_messages = assess([{"role": "user", "content": t} for t in turns], use_classifier=False)
    assert as_strings.level == as_messages.level
    assert as_strings.categories == as_messages.categories


def test_an_ordinary_string_is_not_a_crisis_and_empty_input_is_none() -> None:
    assert not assess("what a lovely sunny day", use_classifier=False).is_crisis
    assert assess("", use_classifier=False).level == RiskLevel.NONE
    assert assess([], use_classifier=False).level == RiskLevel.NONE
