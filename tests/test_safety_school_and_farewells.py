"""Session 14: shapes dev set 11 (written by others) showed the rules missing, tested here in new
wordings, not its messages. A pupil's school is the present, not a recovered past ("at school
they all laugh at me and i want to die" in five languages); a time tomorrow is not history;
farewells and preparations that are quiet (a pet rehomed to a date, letters finished "then i'll
be ready", the flatmate away "so that's when", a friend's goodbye text and silence, found days
later); self-harm urges named first; a plan named by its means; a one-way trip to a height; and
their look-alikes, including preparations with an ordinary reason given (a combination's
``none``)."""

from __future__ import annotations

import pytest
from test_safety_frames import _rules
from test_safety_indirect import _FixedScore

from warmline.safety.risk import assess_text


@pytest.mark.parametrize(
    ("text", "category"),
    [
        # a pupil's school is now, in every language
        ("in high school nobody talks to me and honestly i want to die", "suicidal_ideation"),
        ("au lycée personne ne me parle et j'ai envie de mourir", "suicidal_ideation"),
        ("na escola ninguém fala comigo e eu quero morrer", "suicidal_ideation"),
        ("en el instituto nadie me habla y quiero morirme", "suicidal_ideation"),
        ("al liceo nessuno mi parla e voglio morire", "suicidal_ideation"),
        # quiet farewells and preparations
        ("looking for a loving home for my two cats, i won't be able to feed them after friday", "plan"),
        ("finished my last letters tonight, then i'm ready.", "plan"),
        ("parents are away for the weekend. that's my window.", "plan"),
        ("make sure my pension goes to my brother, i need it sorted by friday", "plan"),
        ("my sister posted 'sorry for everything' on her story and isn't answering her phone", "third_party"),
        ("what happens to my dog if i die and no one finds me for days", "goodbye"),
        # someone else's farewell and the silence after it; signs seen on someone else
        ("my roommate left a note saying sorry for everything and his phone is switched off", "third_party"),
        ("my cousin messaged the family chat 'love you all' and now nobody can reach her", "third_party"),
        ("checked my son's browser history: lethal dose of paracetamol, how many tablets", "third_party"),
        ("my girlfriend keeps a stash of pills under her mattress for when it gets bad", "third_party"),
        ("she always wears sweatbands and i saw fresh cuts underneath", "third_party"),
        ("mein Sohn (15) ritzt sich", "third_party"),
        ("mi hermano me mandó un mensaje despidiéndose y no contesta", "third_party"),
        # the writer's own goodbye letters are the writer's, whoever they are for
        ("i've written a goodbye note for my mum", "goodbye"),
        ("typing my goodbye messages now", "goodbye"),
        ("ok that's the final update from me. thanks for reading all these years", "goodbye"),
        ("how do i memorialise my instagram, i need it sorted by tonight", "plan"),
        ("can you keep my cat forever? thanks for everything, honestly", "goodbye"),
        # self-harm, plans and means in few words
        ("self harm urges are unbearable tonight", "self_harm"),
        ("my plan is the pills in the bathroom cabinet", "plan"),
        ("one way drive to the bridge tonight", "plan"),
        ("is the exhaust method painless? i can't see any other way out", "means"),
        # a threat with the person's routine known (Spanish)
        ("le parto la cara a ese, sé a qué hora sale del gimnasio", "harm_to_others"),
        # Portuguese self-injury until bruised
        ("quando fico nervosa me soco até ficar roxa", "self_harm"),
    ],
)
def test_quiet_shapes_are_a_crisis(text, category):
    result = _rules(text)
    assert result.level.is_crisis, result.evidence
    assert category in result.categories, result.categories


@pytest.mark.parametrize(
    "text",
    [
        "when i was in high school i wanted to die, now i'm doing really well",
        "we need a new home for our dog because my daughter is allergic",
        "booked a one way ticket to the coast, moving to porto for my new job!",
        "my parents are away this weekend so that's when we're doing the party",
        "i want to make sure my savings go to my kids, we're flying to peru next week and i want it done by friday",
        "need to cut my hair so badly, any salon recommendations?",
        "self-harm urges in teenagers: what does the research say?",
        "my plan is the train to paris at nine",
        "j'ai failli me couper le doigt en coupant les oignons",
        "the exhaust fumes on this road make me cough",
        "my friend texted 'thanks for everything!' after the party",
        "my dad texted goodbye from the gate, his phone is off now because he's flying",
        "my son has a rope in his room for climbing club",
        "this is the last update from me for a while, exams!",
        "can you take my dog for good? my new flat doesn't allow pets",
        "in our d&d campaign my bard reads a goodbye letter to the party before the final battle",
        "i checked my own search history and it's all bridges in venice for our trip",
    ],
)
def test_their_look_alikes_are_not(text):
    result = _rules(text)
    assert not result.level.is_crisis, result.evidence


def test_an_ordinary_reason_cancels_preparations_but_not_a_farewell():
    prepared = "i rehomed my dog and i want it all done by friday"
    assert _rules(prepared).level.is_crisis
    assert not _rules(prepared + ", we're moving abroad").level.is_crisis
    # a farewell is not explained away by a trip
    assert _rules("got my affairs in order before the trip. i won't be around after this").level.is_crisis


def test_an_ordinary_reason_softens_a_classifier_only_farewell():
    sure = _FixedScore(suicidal=0.8)  # the embeddings of a giveaway sit near a goodbye's
    giveaway = "giving away my old desk and books, anyone want them? thanks for everything, this group"
    assert assess_text(giveaway, classifier=sure, multilingual=sure).level.is_crisis  # type: ignore[arg-type]
    explained = giveaway + ". decluttering before the move"
    assert not assess_text(explained, classifier=sure, multilingual=sure).level.is_crisis  # type: ignore[arg-type]
    # a retired writer is not a reason: their own words still count
    lonely = "retired teacher, 80, i live alone and honestly wouldn't mind not waking up"
    assert assess_text(lonely, classifier=sure, multilingual=sure).level.is_crisis  # type: ignore[arg-type]
