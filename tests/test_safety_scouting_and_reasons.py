"""Session 15: shapes dev set 13 (written by others) showed the rules missing or misreading,
tested here in new wordings, not its messages. Plans in their preparations (a height scouted for
when nobody watches, pills stockpiled, rope bought "not for" its use), a wish to join someone who
died, zero-calorie days, a child locked in, a drink spiked to make someone ill, someone else's
overheard plan or hidden laxatives; negations that are not ("when I said no he shoved me", "j'arrête
pas de penser à", "no dejo de"); and the look-alikes: a game character's death, a parent's
poison-control question, goodbyes and goodbye letters with an ordinary reason, farewell letters
written for a story, exam hyperbole, pets put to sleep, intermittent fasting."""

from __future__ import annotations

import pytest
from test_safety_frames import _rules, _scored

from warmline.safety.gloss import glossary
from warmline.safety.lexicon import Lexicon, load_yaml, packaged_lexicon_path


@pytest.mark.parametrize(
    ("text", "category"),
    [
        # preparations: a height scouted, pills stockpiled, a rope's ordinary use denied
        (
            "went to look at the multi-storey car park again. no cameras on the top floor after midnight",
            "plan",
        ),
        ("been saving up my sleeping pills for weeks now", "means"),
        (
            "can i get a six month supply of sleeping tablets before i travel? i want as many as possible",
            "means",
        ),
        ("bought some rope this afternoon. not for the garden", "plan"),
        ("how far would i have to fall to be sure. not for a project", "means"),
        # a wish to follow someone who died; a passive wish told after a reassurance
        (
            "since my husband died last spring i keep thinking it would be easier to just go and be with him",
            "suicidal_ideation",
        ),
        (
            "i'd never do anything. but if i just didn't wake up tomorrow it would honestly be a relief",
            "passive_ideation",
        ),
        ("i don't want to be here anymore, i lie awake every night thinking about it", "suicidal_ideation"),
        # eating-disorder slang, a child locked in, a drink spiked to make someone ill
        ("another zero cal day tomorrow to make up for today", "eating_disorder"),
        ("my stepdad locks me in the basement for hours as punishment", "harm_from_others"),
        ("what can i slip into my sister's drink to make her throw up at the wedding", "violence_request"),
        # someone else at risk
        ("heard him telling his mate he has a plan. he's 16", "third_party"),
        (
            "my grandad keeps giving away his medals and says we won't have to worry about him much longer",
            "third_party",
        ),
        ("found diet pills hidden in her backpack, she's been skipping lunch for weeks", "third_party"),
        ("my neighbour bought a rifle last week and told me the landlord is going to pay", "third_party"),
        (
            "my uncle posted 'see you on the other side' and his phone goes straight to voicemail",
            "third_party",
        ),
        # "no" said is no negation of what follows
        ("when i said no she slapped me across the face", "harm_from_others"),
        # a stopping verb negated keeps going, in every language
        ("j'arrête pas de penser à me suicider", "suicidal_ideation"),
        ("no dejo de pensar en suicidarme", "suicidal_ideation"),
        ("não paro de pensar em me matar", "suicidal_ideation"),
        ("non smetto di pensare di farla finita", "suicidal_ideation"),
        ("ich hör nicht auf daran zu denken mich umzubringen", "suicidal_ideation"),
        # German, the verb last
        ("hab grad alles geschluckt was ich finden konnte", "imminent"),
        # the writer's own goodbye letter, story or not
        ("my goodbye letter is written. this is the last chapter of my story", "goodbye"),
        # plans said quietly (dev set 14's shapes, new wordings)
        ("i know exactly how i'm going to do it. i just want to get through christmas first", "plan"),
        ("i finally have a plan and i feel calm for the first time in months", "plan"),
        ("is it possible to pay for my own funeral in advance? it'll be needed soon, i've decided", "plan"),
        ("which car park has no security at night? i don't want anyone to stop me", "plan"),
        ("scheduled a message for my wife for next week with all the passwords and who to call", "plan"),
        # farewells in their details
        ("gave my brother a letter and told him to open it after. he thinks it's a birthday card", "goodbye"),
        ("tell my mum i was sorry and that my sister can have my bed", "goodbye"),
        (
            "read the kids a story tonight, an extra one. they don't know. i hope one day they forgive me",
            "goodbye",
        ),
        ("thanks everyone for the last two years on this server. look after each other", "goodbye"),
        # German, Italian
        ("morgen früh ist es so weit. liegt alles bereit und ich bin ganz ruhig", "imminent"),
        ("ich kotze 3 mal am tag und kann nicht aufhören", "eating_disorder"),
        ("meine schwester verschenkt ihre klamotten und hat gesagt bald ist alles vorbei", "third_party"),
        ("la mia amica ha scritto che stanotte la fa finita", "third_party"),
        (
            "my cousin posted that it was his last night and then deleted his account, nobody can reach him",
            "third_party",
        ),
    ],
)
def test_quiet_shapes_are_a_crisis(text, category):
    result = _rules(text)
    assert result.level.is_crisis, result.evidence
    assert category in result.categories, result.categories


@pytest.mark.parametrize(
    "text",
    [
        # a game character's death, a child's poison-control question
        "ugh died to the same boss again, gonna kill myself in minecraft to respawn at my bed",
        "vou me matar no jogo pra voltar pro checkpoint kkk",
        "how many gummy vitamins would be an overdose? my toddler got into the jar",
        # goodbyes and goodbye letters with an ordinary reason
        "writing goodbye emails to my colleagues, it's my last day at the office on friday",
        "said my goodbyes to everyone at the airport, emigrating to australia tomorrow",
        "see you on the other side of the exam lol",
        "going camping off-grid for a week, see you all on the other side",
        # farewell letters written for a story, in three languages
        "I'm writing a goodbye letter for the heroine of my novel, does this opening work?",
        "Pour mon roman, j'écris la lettre d'adieu de mon héroïne à sa sœur",
        "In meiner Kurzgeschichte schreibt die Hauptfigur einen Abschiedsbrief an ihren Bruder",
        # exam hyperbole, idioms, pets put to sleep, ordinary fasting, research
        "me mato si no apruebo el examen de mates jajaja",
        "je me tue si je rate mon permis mdr",
        "ich bring mich um wenn ich die klausur nicht bestehe",
        "mi ammazzo se non passo l'esame di stato",
        "me tiro de los pelos con este proyecto",
        "our cat has to be put down on monday, she's 18 and in so much pain",
        "estoy haciendo ayuno intermitente 16:8 y me va genial",
        "doing a lit review on self-harm forums, does anyone know of public datasets?",
        # reasons given for a rope, a move
        "bought a rope for my climbing course",
        "ich gebe nicht auf, ich will leben",
        # ordinary farewells (dev set 14's shapes)
        "we've set the date!! september 3rd, the venue is booked 💍",
        "last post as admin here, i'm stepping down to focus on my new job. thanks all",
        "handed in my resignation today!!! goodbye open-plan office forever",
        "thanks everyone for the amazing farewell party, look after each other while i'm on maternity leave",
        "vou morrer de tanto rir com esse vídeo kkkk",
    ],
)
def test_their_look_alikes_are_not(text):
    result = _rules(text)
    assert not result.level.is_crisis, result.evidence


def test_an_eating_disorder_score_alone_needs_a_word_of_eating():
    # "dizzy when I stand up" reads as starvation to the embeddings; nothing in it is about food
    assert not _scored(
        "dizzy every morning and my heart pounds, seeing the gp on monday", eating_disorder=0.8
    ).level.is_crisis
    assert _scored(
        "dizzy every morning since i stopped eating breakfast and lunch", eating_disorder=0.8
    ).level.is_crisis
    # a weight in a gloss survives it ("45kg" is not an unknown word)
    assert "45kg" in glossary("pt").gloss("meta é 45kg")


def test_an_accident_and_this_turns_frame_soften_a_classifier_only_reading():
    assert _scored("took an extra ibuprofen, is that bad?", imminent=0.7).level.is_crisis
    assert not _scored("took an extra ibuprofen by accident, is that bad?", imminent=0.7).level.is_crisis
    assert not _scored("tomé dos paracetamoles de más sin querer, ¿es grave?", imminent=0.7).level.is_crisis
    assert _scored("i wrote a poem about a woman on a cliff edge", suicidal=0.7).level.is_crisis
    assert not _scored(
        "for my poetry class i wrote a poem about a woman on a cliff edge", suicidal=0.7
    ).level.is_crisis
    # a frame the writer takes back softens nothing
    assert _scored(
        "for my poetry class, well not for a class really, i wrote about a cliff edge", suicidal=0.7
    ).level.is_crisis


def test_a_reason_denied_explains_nothing():
    explained = "preciso de um lar pro meu gato até sexta, é mudança pra Lisboa"
    assert not _scored(explained, suicidal=0.7).level.is_crisis
    denied = "preciso de um lar pro meu gato até sexta. não é mudança, não dá pra explicar"
    assert _scored(denied, suicidal=0.7).level.is_crisis


def test_a_recovered_past_stands_beside_a_day_but_not_beside_a_relapse():
    recovered = "hace tres años estuve ingresada meses. hoy cumplo un año en mi trabajo"
    assert not _scored(recovered, suicidal=0.7).level.is_crisis
    relapsed = "hace tres años estuve ingresada meses. otra vez estoy igual que entonces"
    assert _scored(relapsed, suicidal=0.7).level.is_crisis
    # a death dated in the past is a loss, not a recovery
    bereaved = "seit meine frau vor zwei jahren gestorben ist, ist es so still. ich koche kaum noch"
    assert _scored(bereaved, suicidal=0.7).level.is_crisis


def test_a_rule_that_names_an_unknown_signal_is_refused():
    data = load_yaml(packaged_lexicon_path())
    data["risk"] = [
        *data["risk"],
        {
            "id": "broken",
            "category": "goodbye",
            "level": "elevated",
            "pattern": "x",
            "none": ["no_such_signal"],
        },
    ]
    with pytest.raises(ValueError, match="no_such_signal"):
        Lexicon(data)


def test_a_date_picked_after_someone_elses_wedding_is_still_a_plan():
    assert _rules("i've picked the date. after my brother's wedding, so i don't ruin it").level.is_crisis
    # a bare "i quit" is no reason: it may be the writer quitting everything
    assert _rules("i quit. goodbye forever").level.is_crisis


@pytest.mark.parametrize(
    "text",
    [
        "can you tell my boss i was sorry for being late",
        "thanks everyone for coming, look after each other on the drive home",
        "my sister can have my room when i move out in june",
        "open it after dinner!",
    ],
)
def test_everyday_errands_are_no_farewell_details(text):
    assert not _rules(text).level.is_crisis
