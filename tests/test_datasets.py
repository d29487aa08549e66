"""Checks on the data we ship: data/empathetic_100.jsonl and the two format samples in data/samples/.

Every file is read through the real data layer (`prepare_stage` with its format), so a test
here fails the same way training would. The checks follow issue 4's acceptance: schemas,
exact and near duplicates, lengths, topics, banned content and crisis handling. The statistics
they measure are recorded in data/DATA_CARD.md; update both together.

Only the MiniLM near-duplicate test loads a model (marked slow, about a minute on 2 busy cores);
the rest take a few seconds.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from warmline.data.cleaning import StageData, normalise_for_dedup, prepare_stage
from warmline.data.formats import Conversation
from warmline.recipe import StageConfig
from warmline.safety import assess

REPO = Path(__file__).resolve().parents[1]
EMPATHETIC = REPO / "data" / "empathetic_100.jsonl"
COUNSELING = REPO / "data" / "samples" / "counseling.jsonl"
PSYCHOLOGY = REPO / "data" / "samples" / "psychology.json"

CRISIS_RESOURCES = ("988", "116 123", "findahelpline.com")

# Near-duplicate thresholds, chosen from measurements on these files (see DATA_CARD.md):
# - MiniLM cosine: the highest pair within a file is 0.725 (two different replies about telling
#   a child a grandparent died); across files 0.777 (two independently written messages from a
#   14-year-old mocked in a school group chat); two counsellors' independent answers to the same
#   question score 0.41-0.72. A hand-written sentence-by-sentence paraphrase of one of our replies
#   scores 0.83, light edits of it (a dropped or replaced sentence, swapped sentences, synonyms)
#   0.92-0.99. 0.80 sits between the two groups: a reworded copy fails, distinct texts pass. The
#   margin is thin for texts about the same scenario, so a failure means "read the pair", and the
#   shingle test below is the sharper check for copy-and-edit.
# - 5-gram Jaccard (on normalised words): the highest pair is 0.084, two crisis replies sharing
#   the resources sentence; independent answers to the same question score 0.0. Copies with one
#   sentence replaced or eight words swapped for synonyms score 0.6-0.74. 0.2 leaves room for
#   shared stock phrases while catching any copy-and-edit.
MAX_COSINE = 0.80
MAX_JACCARD = 0.20
SHINGLE_WORDS = 5

# The recipes train with max_length 512 tokens. GPT-2's tokenizer spends 1.28 tokens per word
# on these files (measured); 320 words of conversation is ~410 tokens, which leaves ~100 for
# the system prompt and the chat template's role markers. Longest measured: 434 tokens.
MAX_CONVERSATION_WORDS = 320


@dataclass(frozen=True)
class Shipped:
    """One data file as the data layer reads it, with its raw rows for the fields it drops."""

    name: str
    stage: StageData
    raw: list[dict]

    @property
    def conversations(self) -> list[Conversation]:
        # validation_fraction=0 keeps every conversation in `train`, in file order
        return self.stage.train


def _read(name: str, path: Path, fmt: str) -> Shipped:
    stage = prepare_stage(
        StageConfig(name=name, source=str(path), format=fmt, validation_fraction=0.0), seed=0
    )
    text = path.read_text(encoding="utf-8")
    raw = (
        json.loads(text)
        if path.suffix == ".json"
        else [json.loads(line) for line in text.splitlines() if line]
    )
    return Shipped(name, stage, raw)


@pytest.fixture(scope="module")
def empathetic() -> Shipped:
    return _read("empathetic", EMPATHETIC, "human_assistant")


@pytest.fixture(scope="module")
def counseling() -> Shipped:
    return _read("counseling", COUNSELING, "counseling")


@pytest.fixture(scope="module")
def psychology() -> Shipped:
    return _read("psychology", PSYCHOLOGY, "alpaca")


@pytest.fixture(scope="module")
def shipped(empathetic: Shipped, counseling: Shipped, psychology: Shipped) -> dict[str, Shipped]:
    return {s.name: s for s in (empathetic, counseling, psychology)}


def turns(conversations: list[Conversation], role: str) -> list[str]:
    return [t["content"] for conv in conversations for t in conv if t["role"] == role]


def words(text: str) -> int:
    return len(text.split())


def texts_for_near_duplicates(data: Shipped, role: str) -> list[str]:
    """A file's turns of one role, each distinct text once.

    The counseling sample repeats 10 Contexts on purpose (two counsellors answering the same
    question, as in the real dataset); those Contexts are compared once.
    """
    return list(dict.fromkeys(turns(data.conversations, role)))


# ------------------------------------------------------------------------------ schemas


def test_empathetic_loads_as_human_assistant(empathetic: Shipped) -> None:
    stats = empathetic.stage.stats()
    assert (stats["rows_read"], stats["kept"], stats["dropped"], stats["duplicates"]) == (100, 100, {}, 0)
    assert all(
        set(r) == {"text", "topic", "crisis"} and isinstance(r["crisis"], bool) for r in empathetic.raw
    )
    exchanges = Counter()
    for conv in empathetic.conversations:
        assert [t["role"] for t in conv] == ["user", "assistant"] * (len(conv) // 2), conv[0]["content"][:60]
        exchanges[len(conv) // 2] += 1
    assert set(exchanges) <= {1, 2, 3}  # one to three exchanges
    assert sum(n for k, n in exchanges.items() if k > 1) >= 10


def test_counseling_loads_with_the_amod_schema(counseling: Shipped) -> None:
    stats = counseling.stage.stats()
    assert (stats["rows_read"], stats["kept"], stats["dropped"], stats["duplicates"]) == (90, 90, {}, 0)
    assert all(set(r) == {"Context", "Response"} for r in counseling.raw)
    for conv, row in zip(counseling.conversations, counseling.raw, strict=True):
        assert [t["role"] for t in conv] == ["user", "assistant"]
        assert conv[0]["content"] == row["Context"].strip()


def test_psychology_loads_with_the_alpaca_schema(psychology: Shipped) -> None:
    stats = psychology.stage.stats()
    assert (stats["rows_read"], stats["kept"], stats["dropped"], stats["duplicates"]) == (90, 90, {}, 0)
    assert all(set(r) == {"instruction", "input", "output"} for r in psychology.raw)
    by_instruction = Counter(r["instruction"] for r in psychology.raw)
    boilerplate, n_boilerplate = by_instruction.most_common(1)[0]
    assert n_boilerplate == 60 and all(n == 1 for text, n in by_instruction.items() if text != boilerplate)
    for conv, row in zip(psychology.conversations, psychology.raw, strict=True):
        assert [t["role"] for t in conv] == ["user", "assistant"]
        user = conv[0]["content"]
        if row["instruction"] == boilerplate:
            # the shared instruction is boilerplate: the recipe's system prompt replaces it
            assert user == row["input"].strip() and boilerplate not in user
        else:
            assert user.startswith(row["instruction"].strip())


# ------------------------------------------------------------------------------ duplicates


@pytest.mark.parametrize("name", ["empathetic", "counseling", "psychology"])
def test_no_exact_duplicate_turns(shipped: dict[str, Shipped], name: str) -> None:
    data = shipped[name]
    replies = Counter(normalise_for_dedup(t) for t in turns(data.conversations, "assistant"))
    assert [t for t, n in replies.items() if n > 1] == []
    prompts = Counter(normalise_for_dedup(t) for t in turns(data.conversations, "user"))
    repeated = [t for t, n in prompts.items() if n > 1]
    if name == "counseling":
        # the 10 intentional doubles, each answered by two different counsellors
        assert len(repeated) == 10 and all(prompts[t] == 2 for t in repeated)
    else:
        assert repeated == []


def test_no_turn_is_shared_between_files(shipped: dict[str, Shipped]) -> None:
    seen: dict[str, str] = {}
    for name, data in shipped.items():
        every_turn = turns(data.conversations, "user") + turns(data.conversations, "assistant")
        for text in {normalise_for_dedup(t) for t in every_turn}:
            assert seen.setdefault(text, name) == name, f"turn in both {seen[text]} and {name}: {text[:80]}"


def shingles(text: str) -> set[tuple[str, ...]]:
    tokens = normalise_for_dedup(text).split()
    return {tuple(tokens[i : i + SHINGLE_WORDS]) for i in range(len(tokens) - SHINGLE_WORDS + 1)}


def max_jaccard(texts: list[str]) -> tuple[float, str, str]:
    """The most overlapping pair of texts by 5-gram Jaccard, with the pair."""
    sets = [shingles(t) for t in texts]
    best = (0.0, "", "")
    for (i, a), (j, b) in itertools.combinations(enumerate(sets), 2):
        union = len(a | b)
        score = len(a & b) / union if union else 0.0
        if score > best[0]:
            best = (score, texts[i], texts[j])
    return best


def test_jaccard_threshold_catches_an_edited_copy(empathetic: Shipped) -> None:
    reply = empathetic.conversations[0][1]["content"]
    sentences = re.split(r"(?<=[.?!])\s+", reply)
    one_sentence_replaced = " ".join([*sentences[:2], "Try calling a friend this weekend.", *sentences[3:]])
    assert max_jaccard([reply, one_sentence_replaced])[0] > MAX_JACCARD


@pytest.mark.parametrize("role", ["user", "assistant"])
@pytest.mark.parametrize("name", ["empathetic", "counseling", "psychology", "all files"])
def test_no_near_duplicates_by_shingles(shipped: dict[str, Shipped], name: str, role: str) -> None:
    sources = list(shipped.values()) if name == "all files" else [shipped[name]]
    texts = list(dict.fromkeys(t for data in sources for t in texts_for_near_duplicates(data, role)))
    score, a, b = max_jaccard(texts)
    assert score < MAX_JACCARD, f"5-gram Jaccard {score:.3f}:\n  {a[:120]}\n  {b[:120]}"


@pytest.fixture(scope="module")
def encoder():
    from warmline.safety.classifier import Encoder

    return Encoder()


# A hand-written paraphrase of the first reply in empathetic_100.jsonl: the kind of reworded
# copy the cosine threshold must catch.
PARAPHRASE = (
    "That isn't pathetic. Spending a week where your only spoken conversation is a brief chat with a "
    "cashier is really isolating, and your own voice sounding odd shows how little contact your days "
    "give you at the moment. Working remotely can silently remove the casual greetings that used to fill "
    "your day. This weekend, choose one person and call them rather than texting, even for ten minutes "
    "about nothing much. Hearing someone answer live does something chat cannot. Thinking of the people "
    "in your life, close by or far away, who would you really like to hear from?"
)


@pytest.mark.slow
def test_no_near_duplicates_by_minilm(encoder, shipped: dict[str, Shipped]) -> None:
    groups = {
        (name, role): texts_for_near_duplicates(data, role)
        for name, data in shipped.items()
        for role in ("user", "assistant")
    }
    reply = shipped["empathetic"].conversations[0][1]["content"]
    everything = [t for texts in groups.values() for t in texts] + [PARAPHRASE]
    # Encode once, shortest first: batches of similar length waste little on padding.
    order = sorted(range(len(everything)), key=lambda i: len(everything[i]))
    embeddings = np.empty((len(everything), 384), dtype=np.float32)
    embeddings[order] = encoder.encode([everything[i] for i in order], batch_size=64)
    vectors = dict(zip(everything, embeddings, strict=False))

    assert float(vectors[reply] @ vectors[PARAPHRASE]) > MAX_COSINE  # the threshold catches rewording

    failures = []
    for role in ("user", "assistant"):
        per_file = [((name,), groups[name, role]) for name in shipped]
        for names, texts in [*per_file, (tuple(shipped), [t for _, ts in per_file for t in ts])]:
            matrix = np.stack([vectors[t] for t in texts])
            similarity = matrix @ matrix.T  # rows are unit length: cosine
            np.fill_diagonal(similarity, -1.0)
            i, j = np.unravel_index(similarity.argmax(), similarity.shape)
            if similarity[i, j] >= MAX_COSINE:
                failures.append(
                    f"{'+'.join(names)} {role}: {similarity[i, j]:.3f}\n  {texts[i][:120]}\n  {texts[j][:120]}"
                )
    assert failures == []


# ------------------------------------------------------------------------------ lengths and topics

# Words per turn, (min, max). empathetic_100's replies follow its spec (50-180 words); the other
# ranges are the measured ones with some slack, so a truncated or runaway row stands out.
# Measured: empathetic user 17-56 / replies 55-137; counseling Context 50-68 / Response 172-199;
# psychology user 7-63 / output 48-189.
WORD_RANGES = {
    ("empathetic", "user"): (10, 120),
    ("empathetic", "assistant"): (50, 180),
    ("counseling", "user"): (30, 120),
    ("counseling", "assistant"): (100, 220),
    ("psychology", "user"): (5, 120),
    ("psychology", "assistant"): (40, 220),
}


@pytest.mark.parametrize(("name", "role"), list(WORD_RANGES))
def test_turn_lengths(shipped: dict[str, Shipped], name: str, role: str) -> None:
    low, high = WORD_RANGES[name, role]
    outside = [
        (words(t), t[:60]) for t in turns(shipped[name].conversations, role) if not low <= words(t) <= high
    ]
    assert outside == []


@pytest.mark.parametrize("name", ["empathetic", "counseling", "psychology"])
def test_conversations_fit_the_recipes_max_length(shipped: dict[str, Shipped], name: str) -> None:
    longest = max(sum(words(t["content"]) for t in conv) for conv in shipped[name].conversations)
    assert longest <= MAX_CONVERSATION_WORDS


def test_topics_are_varied(empathetic: Shipped) -> None:
    topics = Counter(r["topic"] for r in empathetic.raw)
    assert len(topics) >= 25
    assert max(topics.values()) <= 10  # no topic holds more than a tenth of the records
    assert all(re.fullmatch(r"[a-z_]+", t) for t in topics)


# ------------------------------------------------------------------------------ banned content

DOSAGE = re.compile(
    r"\b\d+(?:\.\d+)?\s*(?:mg|mcg|milligrams?|ml|millilit(?:er|re)s?)\b|\bmg\b", re.IGNORECASE
)
DIAGNOSIS = re.compile(
    r"\byou(?: have|'ve got| suffer from| are suffering from)\s+"
    r"(?:depression|anxiety|bipolar|ptsd|ocd|adhd|schizophrenia|borderline|an? [\w-]+ disorder)\b"
    r"|\b(?:you are|you're) (?:clinically depressed|bipolar)\b",
    re.IGNORECASE,
)
AI_SELF_REFERENCE = re.compile(r"\bas an ai\b|\blanguage model\b", re.IGNORECASE)
ROLE_MARKER_LEAK = re.compile(
    r"\b(?:Human|Assistant)\s*:|<\|im_(?:start|end)\|>|<\|endoftext\|>|###|\[/?INST\]|</?s>", re.IGNORECASE
)
# Only in empathetic_100.jsonl, whose spec rules out promises and any talk of medication. The
# counseling-style samples may mention that medication exists (as real counsellors do), never doses.
PROMISE = re.compile(
    r"\b(?:I promise|I guarantee|guaranteed to|(?:it|everything|things) will (?:definitely )?(?:be (?:fine|okay|ok|alright)|get better))\b",
    re.IGNORECASE,
)
MEDICATION = re.compile(
    r"\b(?:medications?|pills?|dose|dosage|prescri\w+|antidepressants?|ssris?|sertraline|"
    r"fluoxetine|prozac|zoloft|xanax|benzodiazepines?|melatonin|sleeping tablets?)\b",
    re.IGNORECASE,
)


def matches(pattern: re.Pattern, texts: list[str]) -> list[str]:
    return [
        f"{m.group(0)!r} in: {t[max(0, m.start() - 50) : m.end() + 30]}"
        for t in texts
        for m in pattern.finditer(t)
    ]


@pytest.mark.parametrize("name", ["empathetic", "counseling", "psychology"])
def test_no_banned_content(shipped: dict[str, Shipped], name: str) -> None:
    conversations = shipped[name].conversations
    every_turn = turns(conversations, "user") + turns(conversations, "assistant")
    replies = turns(conversations, "assistant")
    assert matches(DOSAGE, every_turn) == []
    assert matches(ROLE_MARKER_LEAK, every_turn) == []
    assert matches(DIAGNOSIS, replies) == []
    assert matches(AI_SELF_REFERENCE, replies) == []
    if name == "empathetic":
        assert matches(PROMISE, replies) == []
        assert matches(MEDICATION, replies) == []


def test_banned_patterns_match_what_they_should() -> None:
    assert DOSAGE.search("take 50mg at night") and DOSAGE.search("2.5 ml") and DOSAGE.search("10 mg")
    assert DIAGNOSIS.search("It sounds like you have an anxiety disorder")
    assert DIAGNOSIS.search("I think you have PTSD")
    assert ROLE_MARKER_LEAK.search("Sure. Human: and then") and ROLE_MARKER_LEAK.search("<|im_start|>user")
    assert not DOSAGE.search("I ran 5 miles") and not DIAGNOSIS.search("you have every right to be upset")


# ------------------------------------------------------------------------------ crisis records

# A direct question about safety or suicide, as the crisis replies ask it.
SAFETY_QUESTION = re.compile(
    r"\bare you (?:safe|thinking about ending your life|having (?:any )?thoughts of ending your life)\b[^.?!]*\?",
    re.IGNORECASE,
)

# The safety lexicon (warmline.safety.assess without the classifier) rates these user turns
# elevated or imminent; each was read and is not a crisis. Keyed by the start of the first user turn.
REVIEWED_NOT_CRISIS = {
    "I rewrote a two-line email to my boss": "'It took 40 minutes' matches the act-taken rule; perfectionism",
    "I have eleven unfinished paintings": "'can't go on' is about finishing paintings",
    "I posted an opinion online and it went viral": "'deleted my accounts' to escape harassment; the reply covers safety from threats",
    "I keep replaying decisions from years ago": "'punishing myself' means rumination, not self-harm",
    "My younger brother drinks almost every night": "risk to others from drink-driving; the reply covers taking keys, police, Al-Anon",
}
# Crisis patterns in the samples that the lexicon rates only distress: their replies must still
# carry the crisis resources.
REVIEWED_CRISIS = (
    "I don't want to die exactly, but most nights I go to sleep hoping I won't wake up",
    "I can't do this anymore. I've been looking up ways to make it all stop",
)


def first_user_turn(conv: Conversation) -> str:
    return next(t["content"] for t in conv if t["role"] == "user")


def lexicon_crisis(conv: Conversation) -> bool:
    return assess(conv, use_classifier=False).level.is_crisis


def reviewed_not_crisis(conv: Conversation) -> bool:
    return first_user_turn(conv).startswith(tuple(REVIEWED_NOT_CRISIS))


def test_crisis_records_ask_about_safety_and_give_resources(empathetic: Shipped) -> None:
    crisis = [
        conv for conv, row in zip(empathetic.conversations, empathetic.raw, strict=True) if row["crisis"]
    ]
    assert len(crisis) >= 6
    for conv in crisis:
        reply = conv[-1]["content"]
        assert [r for r in CRISIS_RESOURCES if r not in reply] == [], reply[:80]
        assert SAFETY_QUESTION.search(reply), reply[:80]


def test_records_not_marked_crisis_show_no_risk(empathetic: Shipped) -> None:
    flagged = [
        first_user_turn(conv)[:80]
        for conv, row in zip(empathetic.conversations, empathetic.raw, strict=True)
        if not row["crisis"] and lexicon_crisis(conv) and not reviewed_not_crisis(conv)
    ]
    assert flagged == [], "rated elevated or higher but not marked crisis: mark it, or review and list it"


def test_resources_appear_only_in_crisis_records(empathetic: Shipped) -> None:
    for conv, row in zip(empathetic.conversations, empathetic.raw, strict=True):
        text = " ".join(t["content"] for t in conv)
        if not row["crisis"]:
            assert not any(r in text for r in CRISIS_RESOURCES), first_user_turn(conv)[:80]


@pytest.mark.parametrize("name", ["counseling", "psychology"])
def test_sample_crisis_patterns_give_resources(shipped: dict[str, Shipped], name: str) -> None:
    crisis = [
        conv
        for conv in shipped[name].conversations
        if (lexicon_crisis(conv) and not reviewed_not_crisis(conv))
        or first_user_turn(conv).startswith(REVIEWED_CRISIS)
    ]
    assert len(crisis) >= 2
    for conv in crisis:
        assert [r for r in CRISIS_RESOURCES if r not in conv[-1]["content"]] == [], first_user_turn(conv)[:80]


def test_reviewed_lists_name_existing_records(shipped: dict[str, Shipped]) -> None:
    firsts = [first_user_turn(conv) for data in shipped.values() for conv in data.conversations]
    for start in [*REVIEWED_NOT_CRISIS, *REVIEWED_CRISIS]:
        assert sum(f.startswith(start) for f in firsts) == 1, start
