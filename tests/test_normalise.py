"""Tests for warmline.safety.normalise: how people write, undone before the safety rules read it.

Lexicon only (no model load), plus property-based tests: nothing a user can send makes the
normaliser or the assessment raise.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmline.safety import RiskLevel, assess
from warmline.safety.normalise import MAX_CHARS, clean, clean_text, normalise, normalise_text


def level_of(text: str) -> RiskLevel:
    return assess([{"role": "user", "content": text}], use_classifier=False).level


# ---------------------------------------------------------------- disguised spellings


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("I want to KILL MYSELF", "i want to kill myself"),
        ("thinking about su1c1de", "thinking about suicide"),
        ("i want to k!ll myself", "i want to kill myself"),
        ("$uicide", "suicide"),
        ("s u i c i d e", "suicide"),
        ("k.i.l.l myself", "kill myself"),
        ("d-i-e", "die"),
        ("i want to diiiiie", "i want to die"),
        ("killllll myself", "kill myself"),
        ("sooo tired", "so tired"),
        ("thinking about sucide", "thinking about suicide"),
        ("suicde", "suicide"),
        ("kiling mysef", "killing myself"),
        ("I overdoes on my pills", "i overdose on my pills"),
        # Cyrillic і, ѕ, е look like Latin letters; a zero-width space splits the word
        ("\u0455u\u0456c\u0456d\u0435", "suicide"),
        ("sui\u200bci\u200dde", "suicide"),
        ("ＳＵＩＣＩＤＥ", "suicide"),
        ("sùïcìdé", "suicide"),
        ("I can\u2019t", "i can't"),
    ],
)
def test_disguised_spellings_read_as_plain_words(written: str, read: str) -> None:
    assert normalise_text(written) == read


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("i just want to kms", "i just want to kill myself"),
        ("i should just kys", "i should just kill myself"),
        ("thinking about unaliving myself", "thinking about killing myself"),
        ("sewerslide thoughts again", "suicide thoughts again"),
        ("sewer slide", "suicide"),
        ("gonna ctb tonight", "going to kill myself tonight"),
        ("i want to rope", "i want to hang myself"),
        ("yeet myself off the roof", "jump off the roof"),
        ("relapsed on sh last night", "relapsed on self-harm last night"),
        ("my sh scars", "my self-harm scars"),
        ("pro-ana tips", "pro-eating-disorder tips"),
        ("need thinspo", "need pro-eating-disorder content"),
        ("idk rn tbh", "i don't know right now to be honest"),
    ],
)
def test_slang_and_euphemisms_become_plain_words(written: str, read: str) -> None:
    assert normalise_text(written) == read


@pytest.mark.parametrize(
    "text",
    [
        "he overdoes it at the gym",
        "dyeing my hair blue",
        "the polls closed at ten",
        "can we rope in a volunteer",
        "I need to catch the bus to school",
        "Ana is my best friend",
        "sh, the baby is asleep",
        "run ./build.sh",
        "kill -9 1234",
        "b4 10am take 50mg",
        "help!!",
        "e.g. this one",
        "I'm 13 and I love football",
    ],
)
def test_ordinary_words_are_not_turned_into_risk_words(text: str) -> None:
    read = normalise_text(text)
    for risk_word in (
        "suicide",
        "kill myself",
        "overdose",
        "self-harm",
        "eating-disorder",
        "hang myself",
        "die",
    ):
        assert (risk_word in read) == (risk_word in text.lower()), (text, read)


@pytest.mark.parametrize(
    "text",
    [
        "i w@nt to d1e",
        "s u i c i d e is all i think about",
        "I've been thinking about sucide every night",
        "i wanna kms",
        "the sewerslide thoughts are back",
        "gonna ctb tonight",
        "honestly i want to diiiie",
        "\u0456 want t\u043e k\u0456ll m\u0443self",
    ],
)
def test_disguised_risk_is_flagged_by_the_lexicon(text: str) -> None:
    assert level_of(text).is_crisis


def test_masks_still_work_after_normalisation() -> None:
    # The idiom, technical and negation masks read the normalised text too.
    assert not level_of("this h0mework is k!lling me").is_crisis
    assert not level_of("how do I k1ll a zombie process").is_crisis
    assert not level_of("I would n3ver k1ll myself, I'm just tired").is_crisis


# ---------------------------------------------------------------- the boundary: clean_text


def test_invalid_bytes_and_lone_surrogates_are_replaced_and_counted() -> None:
    smuggled = b"ending my life \xff".decode("utf-8", "surrogateescape")
    text, events = clean(smuggled)
    assert text == "ending my life \ufffd" and events["invalid_replaced"] == 1
    text, events = clean("ending my life \udc80 \ud800")
    assert text == "ending my life \ufffd \ufffd" and events["invalid_replaced"] == 2
    # bytes of valid UTF-8 smuggled the same way are decoded back
    assert clean_text("caf\u00e9".encode().decode("ascii", "surrogateescape")) == "caf\u00e9"
    # a surrogate pair written as two code units is one real character, not two errors
    assert clean("\ud83d\udc80 lol") == ("\U0001f480 lol", {})


def test_bytes_none_and_control_characters() -> None:
    assert clean_text(b"I want to die \xff") == "I want to die \ufffd"
    assert clean_text(None) == ""
    text, events = clean("kill\x00 my\x1bself\r\n")
    assert text == "kill  my self\n\n" and events["control_removed"] == 2


def test_long_text_keeps_its_head_and_tail() -> None:
    text = "I want to die. " + "blah " * 40_000 + "I have the pills here."
    cleaned, events = clean(text)
    assert len(cleaned) <= MAX_CHARS + 10 and events["truncated"] == 1
    assert cleaned.startswith("I want to die.") and cleaned.endswith("I have the pills here.")
    assert level_of(text).is_crisis


def test_repairs_show_in_the_evidence() -> None:
    assessment = assess([{"role": "user", "content": "I want to end my life \udc80"}], use_classifier=False)
    assert assessment.is_crisis
    assert any("input repaired: invalid_replaced=1" in line for line in assessment.evidence)


def test_assess_accepts_what_a_surface_might_pass() -> None:
    odd = [{"role": "user", "content": None}, "not a message", {"role": "user", "content": b"kms \xfe"}]
    assert assess(odd, use_classifier=False).is_crisis  # type: ignore[arg-type]


# ---------------------------------------------------------------- properties: never raises

_ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=300)
_SURROGATE_TEXT = st.lists(
    st.one_of(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), st.characters(max_codepoint=0x7F)),
    max_size=80,
).map("".join)
_RISKY_WORDS = st.lists(
    st.sampled_from(
        [
            "kill",
            "myself",
            "su1c1de",
            "s u i",
            "d!e",
            "kms",
            "\u200b",
            "\x00",
            "\udc80",
            "lol",
            "not",
            "pills",
            ".",
        ]
    ),
    max_size=40,
).map(" ".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_ANY_TEXT, _SURROGATE_TEXT, _RISKY_WORDS, st.binary(max_size=200)))
def test_normalise_and_assess_never_raise(text: str | bytes) -> None:
    result = normalise(text)
    assert isinstance(result.text, str)
    assert all(count > 0 for count in result.events.values())
    assessment = assess([{"role": "user", "content": text}], use_classifier=False)
    assert assessment.level in set(RiskLevel)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.text(min_size=1, max_size=5).map(lambda piece: piece * (100_000 // len(piece))))
def test_hundred_thousand_characters_never_raise(text: str) -> None:
    assert len(text) >= 99_995
    assert len(normalise_text(text)) <= MAX_CHARS + 10
    assert assess([{"role": "user", "content": text}], use_classifier=False).level in set(RiskLevel)


def test_a_misspelling_equally_close_to_two_risk_terms_is_corrected_the_same_in_every_process():
    """ "suicida" is one edit from "suicidal" and from "suicide": the correction must not depend on
    the process's string hashing (PYTHONHASHSEED), or the classifier reads a different text and
    the same message scores differently from one run to the next."""
    import os
    import subprocess
    import sys

    script = "from warmline.safety.normalise import normalise_text; print(normalise_text('idea suicida'))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in range(1, 7)
    }
    assert len(outputs) == 1, outputs
    assert outputs.pop().split()[-1] in {"suicidal", "suicide"}
