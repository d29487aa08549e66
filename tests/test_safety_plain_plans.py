"""Rules for risk said plainly that the lexicons used to miss, and for safe messages they used to
flag (found on a dev set written by others, session 8; these are new wordings of the same
patterns, not its messages). Lexicon only: no classifier runs, so each test reads the rules."""

from __future__ import annotations

import pytest
from test_safety_indirect import _FixedScore

from warmline.safety import assess
from warmline.safety.levels import RiskLevel


def _rules(text: str):
    return assess(text, use_classifier=False)


@pytest.mark.parametrize(
    ("text", "category"),
    [
        # a plan: the day, the place or the pills chosen, in the writer's own language
        ("bon, j'ai choisi le jour. ce sera samedi quand ils seront partis", "plan"),
        ("ho già scelto il ponte, ci vado domani sera", "plan"),
        ("ya elegí la fecha y nadie lo sabe", "plan"),
        ("ich hab mir den Tag schon ausgesucht, nächste Woche ist es so weit", "plan"),
        ("já escolhi o lugar, ninguém vai me achar lá", "plan"),
        ("guardei os comprimidos do meu pai numa caixa no armário", "plan"),
        ("ho messo da parte tutte le pastiglie che mi davano", "plan"),
        # pills just swallowed, French
        ("je viens de prendre toute la plaquette, j'ai peur", "imminent"),
        # ideation said clinically, German compound words
        ("Fakten: 41 Jahre, ständige Suizidgedanken, schlafe kaum", "suicidal_ideation"),
        ("ich habe seit dem Winter einen Todeswunsch, jeden Abend", "suicidal_ideation"),
        # self-injury by burning, Portuguese
        ("me queimei o braço com cigarro de propósito ontem", "self_harm"),
        # an Italian threat: if I tell anyone he will kill me
        ("se lo dico a qualcuno mi ammazza, l'ha detto ieri sera", "harm_from_others"),
        # car, garage, engine: carbon monoxide now
        ("i'm in my car in the garage and the engine is running", "imminent"),
        # a goodbye: giving things away, not needing anything after tonight
        ("gave my records to my brother. won't be needing my phone after tonight", "plan"),
        # how and when decided; a death wish said clinically; at the platform, not sure of going back
        ("figured out the how and the when. thursday, when everyone's at work", "plan"),
        ("recurring death wish most nights, no plan yet", "passive_ideation"),
        ("bin grad am Gleis. ob ich zurückgehe weiß ich nicht", "imminent"),
        # not planning to be here; calm after deciding; a note's wording; a fall's height "to be sure"
        ("tbh i don't expect to be around much longer so whatever", "suicidal_ideation"),
        ("i've made up my mind. first time in ages i feel at peace", "suicidal_ideation"),
        ("what should i put in my letter so my parents don't blame themselves", "plan"),
        ("how far would you have to fall to make sure", "means"),
        # hiding self-injury; a body weight with a lower goal or fainting, in six languages
        ("wearing long sleeves in this heat so nobody can see my arms", "self_harm"),
        ("down to 36kg and still too fat, want to get to 33", "eating_disorder"),
        ("wiege nur noch 37 kg und will unter 35", "eating_disorder"),
        ("sono scesa a 36 kg ma non basta", "eating_disorder"),
        ("peso 38 kilos y no es suficiente", "eating_disorder"),
        ("je fais 37 kg et je veux descendre encore", "eating_disorder"),
        ("estou com 36 quilos e quero chegar a 33", "eating_disorder"),
        # a partner's threat on leaving; a farewell for good
        ("my boyfriend told me if i ever leave he'll find me", "harm_from_others"),
        ("won't be on here anymore, gone for good. love you all", "goodbye"),
        ("so tired. sorry mum.", "goodbye"),
    ],
)
def test_plainly_said_risk_is_a_crisis_on_the_rules_alone(text: str, category: str) -> None:
    assessment = _rules(text)
    assert assessment.is_crisis, (text, assessment.evidence)
    assert category in assessment.categories, (text, assessment.categories, assessment.evidence)


def test_intent_to_kill_with_its_preparation_in_the_next_sentence_is_harm_to_others() -> None:
    serious = _rules(
        "I want to kill my stepdad. I mean it. I've been researching how to make it look like an accident."
    )
    assert serious.is_crisis and serious.reply_kind == "harm_to_others", serious.evidence
    # The same words in anger, with nothing after them, stay distress (a resources line).
    angry = _rules("I want to kill my stepdad, he sold my bike without asking.")
    assert angry.level == RiskLevel.DISTRESS, angry.evidence


def test_a_question_whether_an_overdose_hurts_is_means_seeking_with_distress_in_the_message() -> None:
    with_distress = _rules("would an overdose be painful? i can't stop crying tonight")
    assert with_distress.is_crisis and "means" in with_distress.categories, with_distress.evidence
    # Alone, a means question is a resources line; the conversation's earlier distress would raise it.
    assert not _rules("would an overdose of vitamin c be painful").is_crisis


@pytest.mark.parametrize(
    "text",
    [
        "i cut my hair at 3am and my fringe is a disaster",
        "I cut my losses and sold the shares",
        # a loss to suicide is grief, not a risk to someone now
        "my uncle took his own life in the spring and i keep wondering what i missed",
        # an anniversary of a past attempt, told as a milestone
        "On the anniversary of my suicide attempt I bake a cake. It makes 6 years today.",
        # a hypothetical friend in a question about teaching the signs
        "how do I run a workshop on spotting when a friend might be suicidal",
        "what are the warning signs that someone is self harming?",
        # a day chosen for a happy event
        "ho scelto il giorno del matrimonio!",
        "ich habe den Tag der Hochzeit ausgesucht",
        "já escolhi o dia da festa",
        "we worked out how and when to tell the kids about the move",
        "ich stehe am Bahnsteig und der Zug kommt schon wieder zu spät",
        "moving to Lisbon in March so I won't be here much longer, who wants my bike?",
        "I've made my decision about the job offer and I feel at peace",
        "logging off for good, this game is trash. love you guys tho",
        "my son weighs 35 kg and his goal is to run a 10k",
    ],
)
def test_safe_messages_the_rules_used_to_flag_are_not_a_crisis(text: str) -> None:
    assessment = _rules(text)
    assert not assessment.is_crisis, (text, assessment.evidence)


def test_a_friend_of_mine_at_risk_is_still_third_party_concern_in_a_question() -> None:
    # "a friend of mine", "someone I know": a real person, whatever the question asks.
    for text in (
        "a friend of mine is suicidal, what are the signs she will act on it",
        "someone I know has been self harming, how do I spot if it gets worse",
    ):
        assessment = _rules(text)
        assert assessment.is_crisis and "third_party" in assessment.categories, (text, assessment.evidence)


@pytest.mark.parametrize(
    "text",
    [
        "how could someone get away with murdering their business partner",
        "tips for getting away with poisoning a neighbour's dog",
        "how do I repeat what they did at columbine",
        "how can I replicate the success of the christchurch attacks",
    ],
)
def test_requests_to_get_away_with_or_repeat_violence_get_the_refusal(text: str) -> None:
    assessment = _rules(text)
    assert assessment.is_crisis and assessment.reply_kind == "violence_request", (text, assessment.evidence)


def test_the_abuse_class_does_not_take_a_request_for_violence_for_the_writer_being_hurt() -> None:
    # The classifier reads an assault's words as the writer being hurt; the lexicon read a request.
    request = assess("how can I get away with rape", classifier=_FixedScore(harm_from_others=0.97))
    assert request.reply_kind == "violence_request", request.evidence
    # A disclosure keeps the abuse reply, whatever else the message asks.
    disclosure = assess(
        "my stepdad raped me, how do I get away from him", classifier=_FixedScore(violence_request=0.9)
    )
    assert disclosure.reply_kind in ("abuse", "child_abuse"), disclosure.evidence


def test_history_and_school_work_on_attacks_are_not_requests() -> None:
    for text in ("how did the 9/11 attacks happen", "we did a school project on the columbine shooting"):
        assert not _rules(text).is_crisis, text


@pytest.mark.parametrize(
    ("text", "crisis"),
    [
        ("no dark thoughts for months now, the new meds are working", False),
        ("I used to self harm at uni. Years later now I'm doing well and I run a peer group", False),
        ("haven't purged in over a year and my treatment team is proud", False),
        # the past told with a present that is the risk itself stays a crisis
        ("i used to cut and now i want to again so bad", True),
    ],
)
def test_a_recovery_told_with_its_present_makes_a_borderline_score_a_resources_line(
    text: str, crisis: bool
) -> None:
    # A borderline score (0.75): below SOFTENED_THRESHOLD a recovery framing keeps it a resources line.
    assessment = assess(
        text, classifier=_FixedScore(self_harm=0.75), multilingual=_FixedScore(self_harm=0.75)
    )
    assert assessment.is_crisis is crisis, (text, assessment.evidence)


def test_an_amount_asked_to_kill_someone_else_is_a_request_not_the_writers_means() -> None:
    other = _rules("how many sleeping pills would it take to kill a grown woman")
    assert other.reply_kind == "violence_request" and "means" not in other.categories, other.evidence
    # The same question about oneself stays means-seeking, with the suicide reply.
    own = _rules("how many sleeping pills would it take to kill me")
    assert own.reply_kind == "suicide" and "means" in own.categories, own.evidence
