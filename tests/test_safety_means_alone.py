"""Session 12: means questions that are a crisis with no distress anywhere (a second warning sign
in the same message: no barrier, no onlookers, a stockpile counted, a whole supply), farewells
that say the writer is not coming back, 😭 read as crying where the sentence is distressed, a
gloss that knows medicine names and reflexive body parts, and a fiction frame that carries to
later turns. New wordings of what dev set 9 (written by others) showed, not its messages."""

from __future__ import annotations

import pytest
from test_safety_frames import _rules
from test_safety_indirect import _ByText, _FixedScore

from warmline.safety import assess
from warmline.safety.gloss import glossary
from warmline.safety.levels import RiskLevel


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("any overpass round here that doesn't have a fence on it", "means"),
        ("which multistorey car park has the highest roof you can get to without anyone seeing", "means"),
        ("got 35 sertraline saved up over the summer, would that be enough", "means"),
        ("is it possible to die if you swallow a whole bottle of paracetamol at once", "means"),
        (
            "going to jump from the top floor of the car park. checked it last night, the wall's really low",
            "means",
        ),
        (
            "thanks for listening to me these last months. i'm not coming back. take care of yourself",
            "goodbye",
        ),
        ("bye all of you. finally going to be at peace", "goodbye"),
        ("slipped up again last night and went way deeper than before", "self_harm"),
        ("i'm 41 kg and still feel disgusting, want to get to 38", "eating_disorder"),
    ],
)
def test_means_and_farewells_said_without_distress_are_a_crisis(text, category):
    result = _rules(text)
    assert result.level.is_crisis, result.evidence
    assert category in result.categories, result.categories


@pytest.mark.parametrize(
    "text",
    [
        "i have 12 amoxicillin left, is that enough for the rest of the course",
        "thanks for listening, i won't be back until after the holidays",
        "the fence in our garden is really low, the neighbour's cat hops it every day",
        "slice the potatoes deeper than the recipe says so they crisp",
        "what's the tallest building in the city with an observation deck",
        "how many ibuprofen can i take in a day for back pain",
        "i weigh 95 pounds and my doctor says that's fine for someone 4'10",
    ],
)
def test_their_everyday_look_alikes_are_not(text):
    assert not _rules(text).level.is_crisis, _rules(text).evidence


def test_crying_emoji_laughs_only_where_the_sentence_is_not_distressed():
    assert _rules("i'm so alone all the time i want to die 😭").level.is_crisis
    assert _rules("that season finale, i want to die 😭").level == RiskLevel.DISTRESS
    assert _rules("i hate myself i want to die lmao").level == RiskLevel.DISTRESS  # laughter proper


def test_the_gloss_knows_medicine_names_and_reflexive_body_parts():
    assert glossary("pt").gloss("rivotril") == "clonazepam"
    assert glossary("de").gloss("amitriptylin") == "amitriptyline"
    assert glossary("es").gloss("me quemé la mano") == "i burned my hand"
    # a lethality question about a named medicine, then the amount, in Portuguese
    assert _rules("lexotan com vodka mata? quantas precisa").level.is_crisis


@pytest.mark.parametrize(
    "text",
    [
        "me quemé la mano con la sartén, qué me pongo?",
        "je me suis coupé le doigt en ouvrant une boîte de conserve",
    ],
)
def test_an_accident_to_a_finger_or_hand_is_not_self_harm_in_other_languages(text):
    assert not _rules(text).level.is_crisis, _rules(text).evidence


def test_someone_elses_deed_to_me_in_italian_is_theirs():
    assert glossary("it").gloss("mi ha picchiata") == "has beaten me"
    assert glossary("it").gloss("mi voglio uccidere") == "i want to kill myself"
    result = _rules("il mio ragazzo mi ha picchiata ieri sera, ho paura di tornare a casa")
    assert result.level.is_crisis and "harm_from_others" in result.categories, result.evidence


def test_a_fiction_frame_carries_to_later_turns_for_a_borderline_score():
    frame = "I'm writing a short story about a boy whose father died by suicide"
    # sure of no risk on the framing turn, borderline (0.7) on every other message
    reader = _ByText(frame, on_it=_FixedScore(none=1.0), otherwise=_FixedScore(suicidal=0.7))
    story = [frame, "what would his school day be like"]
    result = assess(story, classifier=reader, multilingual=reader)  # type: ignore[arg-type]
    assert result.level == RiskLevel.DISTRESS, result.evidence
    # without the frame the same score is a crisis, and a risk phrase of the writer's own always is
    assert assess(story[1:], classifier=reader, multilingual=reader).level.is_crisis  # type: ignore[arg-type]
    own = [frame, "honestly i don't want to be here anymore either"]
    assert assess(own, classifier=reader, multilingual=reader).level.is_crisis  # type: ignore[arg-type]
