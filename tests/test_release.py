"""The model-free layers of generation: the text releaser and the gate flow, driven with plain strings.

No model, no tokenizer: an "engine" here is a list of reply-so-far strings, as the Generator's
decode step produces them after every token.
"""

from __future__ import annotations

from itertools import accumulate

import pytest

from warmline.safety import SafetyGate
from warmline.safety.gate import TurnResult, turn
from warmline.safety.screen import FALLBACK_REPLY
from warmline.serving.release import TextReleaser, find_stop, held_back, release

STOPS = ("Human:", "<|im_start|>")


def grow(text: str, step: int = 1) -> list[str]:
    """The reply so far after every `step` characters, as a decoder would give it."""
    return [text[:i] for i in range(step, len(text) + step, step)]


def shown(texts, releaser: TextReleaser) -> list[str]:
    return list(release(texts, releaser))


def test_pieces_add_up_to_the_reply_without_a_screen() -> None:
    releaser = TextReleaser(STOPS)
    pieces = shown(grow("I hear you. That sounds hard."), releaser)
    assert "".join(pieces) == releaser.text == "I hear you. That sounds hard."
    assert len(pieces) > 2 and not releaser.stopped and not releaser.rejected


def test_a_stop_string_cuts_the_reply_and_is_never_half_shown() -> None:
    releaser = TextReleaser(STOPS)
    pieces = shown(grow("That sounds hard.\nHuman: thanks\nAssistant: bye"), releaser)
    assert releaser.stopped and releaser.text == "That sounds hard."
    assert "".join(pieces) == "That sounds hard."
    assert not any("H" in piece for piece in pieces)  # "Hu", "Hum", ... were held back


def test_reading_stops_at_the_stop_string() -> None:
    consumed = []

    def engine():
        for text in grow("Okay.<|im_start|>user\nhi there"):
            consumed.append(text)
            yield text

    releaser = TextReleaser(STOPS)
    assert "".join(release(engine(), releaser)) == "Okay."
    assert consumed[-1] == "Okay.<|im_start|>"  # nothing was asked of the engine after it


def test_a_possible_stop_start_is_held_back_then_released() -> None:
    releaser = TextReleaser(STOPS)
    assert releaser.update("Hello <|im") == "Hello"  # the space waits too: it may end the reply
    assert releaser.update("Hello <|im not a marker") == " <|im not a marker"
    assert held_back("abc <|i", STOPS) == 3 and held_back("abc", STOPS) == 0
    assert find_stop("a Human: b <|im_start|>", STOPS) == 2 and find_stop("none", STOPS) == -1


def test_control_characters_and_leading_space_never_reach_the_user() -> None:
    releaser = TextReleaser()
    assert "".join(shown(["  Hi\x1b[2J", "  Hi\x1b[2J there\r.\x07"], releaser)) == "Hi[2J there."


def test_an_incomplete_character_waits_for_the_rest() -> None:
    releaser = TextReleaser()
    assert releaser.update("caf\ufffd") == ""
    assert releaser.update("café") == "café"


def test_with_a_screen_whole_sentences_are_released_after_screening() -> None:
    seen: list[str] = []

    def screen(text: str) -> bool:
        seen.append(text)
        return True

    releaser = TextReleaser(STOPS, screen=screen)
    pieces = shown(grow("One. Two three! Four"), releaser)
    assert pieces == ["One.", " Two three!", " Four"]
    # Each sentence was screened with all the text before it, then the final reply as a whole.
    assert seen == ["One.", "One. Two three!", "One. Two three! Four"]


def test_a_rejected_sentence_is_never_shown_and_stops_the_engine() -> None:
    consumed = []

    def engine():
        for text in grow("I hear you. You have bipolar disorder. Rest now."):
            consumed.append(text)
            yield text

    releaser = TextReleaser(screen=lambda text: "bipolar" not in text)
    pieces = list(release(engine(), releaser))
    assert pieces == ["I hear you."] and releaser.rejected
    assert consumed[-1] == "I hear you. You have bipolar disorder."
    assert releaser.finish() == ""


def test_text_deltas_work_like_snapshots() -> None:
    deltas = ["That ", "sounds ", "hard.", "\nHu", "man: more"]
    by_delta = TextReleaser(STOPS)
    pieces = [by_delta.add(d) for d in deltas] + [by_delta.finish()]
    assert "".join(pieces) == "That sounds hard."
    by_snapshot = TextReleaser(STOPS)
    assert "".join(release(accumulate(deltas), by_snapshot)) == by_delta.text


# --- the gate flow: one turn over any engine's text -------------------------------------------


class RecordingGate(SafetyGate):
    """The real gate (lexicon only) that records which of its steps ran, in order."""

    def __init__(self, **kwargs) -> None:
        super().__init__(use_classifier=False, **kwargs)
        self.steps: list[str] = []

    def check_input(self, conversation):
        self.steps.append("check_input")
        return super().check_input(conversation)

    def reply_for(self, assessment):
        self.steps.append("reply_for")
        return super().reply_for(assessment)

    def screen(self, text, assessment=None):
        self.steps.append("screen")
        return super().screen(text, assessment)

    def note_for(self, assessment):
        self.steps.append("note_for")
        return super().note_for(assessment)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_crisis_gets_the_fixed_reply_and_the_engine_is_never_asked() -> None:
    gate = RecordingGate()
    result = TurnResult()
    pieces = list(
        gate.stream(user("I want to kill myself tonight"), lambda: pytest.fail("engine asked"), result=result)
    )
    assert result.stop_reason == "crisis" and pieces == [result.text]
    assert result.text == gate.reply_for(gate.check_input(user("I want to kill myself tonight")))
    assert gate.steps[:2] == ["check_input", "reply_for"] and "screen" not in gate.steps


def test_an_ordinary_turn_is_assessed_streamed_screened_then_noted() -> None:
    gate = RecordingGate()
    result = TurnResult()
    pieces = list(gate.stream(user("Can you suggest a book?"), lambda: grow("Sure. Try one."), result=result))
    assert "".join(pieces) == result.text == "Sure. Try one."
    assert gate.steps == ["check_input", "reply_for", "screen", "screen", "screen", "note_for"]
    assert result.assessment["level"] == "none"


def test_a_screened_turn_shows_the_safe_part_then_the_fallback() -> None:
    gate = RecordingGate()
    result = TurnResult()
    pieces = list(
        gate.stream(
            user("I can't sleep"), lambda: grow("I hear you. You have bipolar disorder. Rest."), result=result
        )
    )
    assert result.stop_reason == "screened" and result.screen_reasons == ["diagnosis"]
    assert result.text == FALLBACK_REPLY and pieces == ["I hear you.", "\n\n" + FALLBACK_REPLY]
    assert "note_for" not in gate.steps


def test_distress_adds_the_gates_note_after_the_reply() -> None:
    gate = RecordingGate()
    conversation = user("I have been feeling really down and hopeless lately")
    note = SafetyGate(use_classifier=False).note_for(gate.check_input(conversation))
    assert note  # distress level: the gate has a note for it
    result = TurnResult()
    pieces = list(gate.stream(conversation, lambda: grow("That sounds heavy."), result=result))
    assert result.text == f"That sounds heavy.\n\n{note}" and "".join(pieces) == result.text
    assert gate.steps[-1] == "note_for"


def test_respond_is_the_same_flow_without_streaming() -> None:
    gate = RecordingGate()
    assert gate.respond(user("Can you suggest a book?"), lambda conv: "Sure. Try one.") == "Sure. Try one."
    assert gate.steps == ["check_input", "reply_for", "screen", "screen", "note_for"]


def test_without_a_gate_only_the_text_layer_runs() -> None:
    result = TurnResult()
    text = "That sounds hard.\nHuman: hi"
    pieces = list(
        turn(user("I want to kill myself"), lambda: grow(text), gate=None, stop_strings=STOPS, result=result)
    )
    assert "".join(pieces) == result.text == "That sounds hard." and result.stop_reason == "stop_string"
    assert result.assessment is None
