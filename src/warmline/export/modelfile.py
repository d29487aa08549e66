"""The Ollama side of a GGUF export: a Modelfile whose TEMPLATE renders like the model's chat
template, and the README that says the file runs without warmline's safety gate.

The Go TEMPLATE is derived from the Jinja chat template itself, not from a table of known
templates: rendering one-message-at-a-time conversations with placeholder contents gives each
role's prefix and suffix and the generation prompt (the way `warmline.data.tokens` splits a
rendered prompt into markup and content). The result is checked before it is written: the Go
template, rendered by `render_ollama_template`, must reproduce the Jinja rendering of a longer
conversation exactly, or the export stops with a clear error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from warmline.data.formats import Conversation
from warmline.export.gguf_file import ExportError, GenerationDefaults

_PLACEHOLDER = "\u2063WLEXPORT{}\u2063"
ROLES = ("system", "user", "assistant")
# A conversation the derived template must reproduce exactly (every role, more than one turn).
CHECK_CONVERSATION: Conversation = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "I feel lonely."},
    {"role": "assistant", "content": "That sounds hard. What happened?"},
    {"role": "user", "content": "My friend moved away."},
    {"role": "assistant", "content": "Missing someone close hurts."},
    {"role": "user", "content": "Thanks."},
]


@dataclass(frozen=True)
class TurnWrappers:
    """The markup around each role's content, and the text that opens the assistant's reply."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation_prompt: str


def _render(tokenizer, template: str, conversation: Conversation, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        conversation, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _after(text: str, start: str, what: str) -> str:
    if not text.startswith(start):
        raise ExportError(
            f"the chat template does not render {what} as role-by-role markup; "
            "write the Modelfile TEMPLATE by hand"
        )
    return text[len(start) :]


def chat_turn_wrappers(tokenizer, template: str) -> TurnWrappers:
    """Each role's prefix and suffix in `template`, found by rendering placeholder conversations."""
    s, u, a = (_PLACEHOLDER.format(i) for i in range(3))
    system = [{"role": "system", "content": s}]
    user = system + [{"role": "user", "content": u}]
    assistant = user + [{"role": "assistant", "content": a}]
    prefix: dict[str, str] = {}
    suffix: dict[str, str] = {}
    one = _render(tokenizer, template, system, False)
    prefix["system"], suffix["system"] = one.split(s)
    two = _after(_render(tokenizer, template, user, False), one, "a user turn")
    prefix["user"], suffix["user"] = two.split(u)
    three = _after(_render(tokenizer, template, assistant, False), one + two, "an assistant turn")
    prefix["assistant"], suffix["assistant"] = three.split(a)
    prompt = _after(_render(tokenizer, template, user, True), one + two, "the generation prompt")
    return TurnWrappers(prefix, suffix, prompt)


def ollama_template(wrappers: TurnWrappers) -> str:
    """A Go template for Ollama's `.Messages`, on one line so no newline is added or trimmed."""
    branches = "{{ else if ".join(
        f'eq .Role "{role}" }}}}{wrappers.prefix[role]}{{{{ .Content }}}}{wrappers.suffix[role]}'
        for role in ROLES
    )
    template = (
        f"{{{{- range .Messages }}}}{{{{ if {branches}{{{{ end }}}}{{{{ end }}}}{wrappers.generation_prompt}"
    )
    if '"""' in template or "{{" in "".join([*wrappers.prefix.values(), *wrappers.suffix.values()]):
        raise ExportError(
            "the chat template's markup cannot be quoted in a Modelfile; write the Modelfile TEMPLATE by hand"
        )
    return template


# --- a renderer for the Go template subset written above -------------------------------------

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _lex(template: str) -> list[tuple[str, str]]:
    """Text and actions in order, with the `{{-` / `-}}` trim markers applied to the text."""
    pieces: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        text = text.lstrip() if trim_next else text
        pieces.append(("text", text.rstrip() if m.group(1) else text))
        pieces.append(("action", m.group(2)))
        pos, trim_next = m.end(), bool(m.group(3))
    tail = template[pos:]
    pieces.append(("text", tail.lstrip() if trim_next else tail))
    return pieces


def _parse(pieces: list[tuple[str, str]], i: int = 0, until: tuple[str, ...] = ()) -> tuple[list, int, str]:
    """A tree of ("text", s) | ("field", name) | ("range", body) | ("if", [(role, body)], else_body)."""
    nodes: list = []
    while i < len(pieces):
        kind, value = pieces[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
        elif value in until or (value.startswith("else if ") and "else" in until):
            return nodes, i, value
        elif value == "range .Messages":
            body, i, _ = _parse(pieces, i, ("end",))
            nodes.append(("range", body))
        elif value.startswith("if "):
            branches, otherwise, condition = [], [], value[3:]
            while True:
                match = re.fullmatch(r'eq \.Role "(\w+)"', condition)
                if match is None:
                    raise ValueError(f"unsupported condition {condition!r}")
                body, i, stop = _parse(pieces, i, ("else", "end"))
                branches.append((match.group(1), body))
                if stop == "else":
                    otherwise, i, _ = _parse(pieces, i, ("end",))
                if not stop.startswith("else if "):
                    break
                condition = stop[len("else if ") :]
            nodes.append(("if", branches, otherwise))
        elif value in (".Content", ".Role"):
            nodes.append(("field", value[1:].lower()))
        else:
            raise ValueError(f"unsupported template action {{{{ {value} }}}}")
    if until:
        raise ValueError(f"template ends before {{{{ {until[-1]} }}}}")
    return nodes, i, ""


def _evaluate(nodes: list, messages: Sequence[dict[str, str]], message: dict[str, str]) -> str:
    out: list[str] = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "field":
            out.append(message.get(node[1], ""))
        elif node[0] == "range":
            out.extend(_evaluate(node[1], messages, m) for m in messages)
        else:
            body = next((b for role, b in node[1] if message.get("role") == role), node[2])
            out.append(_evaluate(body, messages, message))
    return "".join(out)


def render_ollama_template(template: str, messages: Sequence[dict[str, str]]) -> str:
    """Render `template` as Ollama would for `messages`.

    Covers the Go text/template subset `ollama_template` writes (range .Messages, if / else if
    eq .Role, .Role, .Content, and the `{{-` / `-}}` trim markers); anything else raises.
    """
    nodes, _, _ = _parse(_lex(template))
    return _evaluate(nodes, messages, {})


def check_template(tokenizer, template: str, go_template: str) -> None:
    """Stop the export unless the Go template renders `CHECK_CONVERSATION` like the Jinja one."""
    expected = _render(tokenizer, template, CHECK_CONVERSATION, True)
    got = render_ollama_template(go_template, CHECK_CONVERSATION)
    if got != expected:
        at = next(
            (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
            min(len(got), len(expected)),
        )
        raise ExportError(
            "the chat template does not split into per-role markup an Ollama TEMPLATE can express "
            f"(from character {at}: {got[at : at + 30]!r} vs {expected[at : at + 30]!r}); write the Modelfile TEMPLATE by hand"
        )


def stop_strings(tokenizer, eos_token: str | None) -> list[str]:
    """The stop strings `warmline chat` uses for this template family (`warmline.templates`), plus EOS.

    Strings with a newline are left out: a Modelfile PARAMETER holds one line.
    """
    from warmline.templates import template_for

    stops = [s for s in template_for(tokenizer).stop_strings if "\n" not in s and '"' not in s]
    if eos_token and eos_token not in stops:
        stops.insert(0, eos_token)
    return stops


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ExportError('the system prompt contains """, which a Modelfile cannot quote; change it')
    return f'"""{text}"""'


def modelfile_text(
    gguf_name: str,
    go_template: str,
    system_prompt: str | None,
    stops: list[str],
    defaults: GenerationDefaults,
) -> str:
    """The Ollama Modelfile for the exported GGUF file."""
    lines = [
        "# Written by `warmline export`. This model runs WITHOUT warmline's safety gate: see README.md.",
        f"FROM ./{gguf_name}",
        f"TEMPLATE {_quoted(go_template)}",
    ]
    if system_prompt:
        lines.append(f"SYSTEM {_quoted(system_prompt)}")
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines += [
        f"PARAMETER temperature {defaults.temperature:g}",
        f"PARAMETER top_p {defaults.top_p:g}",
        f"PARAMETER top_k {defaults.top_k}",
        f"PARAMETER repeat_penalty {defaults.repetition_penalty:g}",
        f"PARAMETER num_predict {defaults.max_new_tokens}",
    ]
    return "\n".join(lines) + "\n"


def readme_text(gguf_name: str, model_name: str, quant: str, source: str) -> str:
    """The export folder's README: how to run the file, and that the safety gate is not in it."""
    return f"""# {model_name} ({quant} GGUF), exported by warmline

**This file runs WITHOUT warmline's safety gate.** llama.cpp, Ollama and LM Studio run the model
alone: no crisis detection, no fixed crisis reply with real crisis lines, no screening of replies
for method details, diagnoses or medication doses, and no AI notice. The model is an AI, not a
therapist and not a crisis service. To keep the gate, put `warmline gateway` in front of the
server and let people talk to the gateway only:

```bash
ollama create {model_name} -f Modelfile        # or: llama-server -m {gguf_name} --port 8080
warmline gateway --backend http://127.0.0.1:11434/v1   # Ollama's OpenAI-compatible API
```

Files:
- `{gguf_name}`: weights ({quant}), tokenizer, chat template (`tokenizer.chat_template`) and
  sampling defaults (`general.sampling.*`); exported from `{source}`.
- `Modelfile`: the same chat template as an Ollama TEMPLATE, the system prompt the model was
  trained with, stop strings and sampling defaults.

If you are in danger now, call your local emergency number; in the US call or text 988, in the
UK and Ireland call Samaritans on 116 123, elsewhere see findahelpline.com.
"""
