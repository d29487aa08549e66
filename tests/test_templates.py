"""The chat template registry: one entry per family, read alike by generation, screen and evaluation.

No model: tokenizers here are stand-ins carrying only a `chat_template` and a vocabulary.
"""

from __future__ import annotations

import pytest

from warmline import templates
from warmline.data.tokens import PLAIN_CHAT_TEMPLATE, neutralise_plain_markers
from warmline.evaluation.evaluate import has_role_marker
from warmline.safety.screen import screen_output
from warmline.serving.release import find_stop
from warmline.serving.settings import GenerationSettings
from warmline.templates import ANY, FAMILIES, LEAK_PATTERN, stop_token_ids, template_for


class FakeTokenizer:
    def __init__(self, chat_template=None, vocab=None, eos_token_id=None):
        self.chat_template = chat_template
        self._vocab = vocab or {}
        self.eos_token_id = eos_token_id

    def get_vocab(self):
        return self._vocab


CHAT_TEMPLATES = {
    "chatml": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    "llama3": "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}",
    "mistral": "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}",
    "gemma": "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}",
    "phi": "{% for m in messages %}{{ '<|user|>\n' + m['content'] + '<|end|>\n<|assistant|>\n' }}{% endfor %}",
    "alpaca": "### Instruction:\n{{ messages[0]['content'] }}\n\n### Response:\n",
}


@pytest.mark.parametrize("family", list(CHAT_TEMPLATES))
def test_each_family_is_recognised_from_its_chat_template(family: str) -> None:
    assert template_for(FakeTokenizer(CHAT_TEMPLATES[family])) is FAMILIES[family]


def test_plain_and_unknown_templates_get_the_union() -> None:
    assert template_for(FakeTokenizer(None)) is ANY
    assert template_for(FakeTokenizer(PLAIN_CHAT_TEMPLATE)) is ANY  # a base model: any family's markup
    assert template_for(FakeTokenizer("{{ messages[0]['content'] }}")) is ANY


def test_the_union_holds_every_familys_entries() -> None:
    for family in FAMILIES.values():
        for attr in ("role_markers", "stop_tokens", "stop_strings", "leak_markers"):
            assert set(getattr(family, attr)) <= set(getattr(ANY, attr)), (family.name, attr)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_familys_markup_stops_its_replies_and_counts_as_a_leak(family: str) -> None:
    entry = FAMILIES[family]
    for marker in entry.role_markers + entry.stop_tokens:
        reply = f"That sounds hard.{marker} more"
        assert find_stop(reply, entry.stop_strings) == len("That sounds hard."), marker
        assert find_stop(reply, ANY.stop_strings) == len("That sounds hard."), marker
        assert has_role_marker(reply), marker  # evaluation counts it
        assert screen_output(reply).reasons == ["role_leak"], marker  # the screen rejects it


def test_every_leak_marker_stops_generation_for_an_unknown_template() -> None:
    """The disagreement the registry removes: "[INST]" and "<|start_header_id|>" used to be
    screened and counted as leaks without ending a reply."""
    for marker in ANY.leak_markers:
        assert find_stop(f"ok {marker}", ANY.stop_strings) >= 0, marker
        assert LEAK_PATTERN.search(f"ok {marker}"), marker
    for marker in ("[INST]", "<|start_header_id|>"):
        assert marker in ANY.stop_strings


def test_a_fabricated_transcript_turn_stops_every_family() -> None:
    for family in FAMILIES.values():
        for reply in ("Sure.\nHuman: hi", "Sure. User: hi", "Sure.\nassistant: hi", "Sure.\nTherapist: hi"):
            assert find_stop(reply, family.stop_strings) >= 0, (family.name, reply)
            assert has_role_marker(reply) and screen_output(reply).reasons == ["role_leak"]


def test_ordinary_replies_are_not_leaks() -> None:
    for clean in ("The user of this app: you.", "a human being", "As an assistant, I", "Our system: broken."):
        assert find_stop(clean, ANY.stop_strings) == -1, clean
        assert not has_role_marker(clean) and screen_output(clean).safe, clean


def test_stop_token_ids_are_the_eos_ids_and_the_familys_tokens_in_the_vocabulary() -> None:
    vocab = {"<|im_start|>": 5, "<|im_end|>": 6, "<|eot_id|>": 7, "hello": 8}
    tokenizer = FakeTokenizer(CHAT_TEMPLATES["chatml"], vocab, eos_token_id=2)
    assert stop_token_ids(tokenizer, templates.CHATML) == {2, 5, 6}
    assert stop_token_ids(tokenizer, ANY) == {2, 5, 6, 7}


def test_generation_defaults_to_the_templates_stop_strings() -> None:
    assert GenerationSettings().stop_strings is None  # resolved per model: template_for(tokenizer)


def test_user_typed_plain_markers_are_neutralised_for_every_plain_role() -> None:
    for role in templates.PLAIN_ROLES:
        assert neutralise_plain_markers(f"hi {role}: x") == f"hi {role}\uff1a x"
        assert neutralise_plain_markers(f"hi {role.lower()} : x") == f"hi {role.lower()}\uff1a x"
