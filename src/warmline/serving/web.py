"""The web chat: `warmline serve MODEL`, a Gradio app around the streaming generator.

Private by default: it binds 127.0.0.1, makes no share link, sends no Gradio analytics, loads
no web fonts, keeps no conversation in the browser's storage and stores no transcripts unless
the operator passes --save-transcripts DIR (the page then says so; files 0600 in a 0700 folder).
Thumbs up/down on replies appear only with --feedback DIR (`warmline.serving.feedback`): a
rating is stored with the conversation only when the user ticks "include this conversation".
Each browser session (and each API client) has its own history, held by Gradio per session.

Crisis replies never wait for the model: Gradio's queue runs every event at once (no
concurrency limit there), and the model's limit is a `ModelSlots` taken by the generator's
engine inside the gate flow's ``reply``, which `turn` calls only after the assessment found
no crisis. So a crisis message is answered while long replies hold every slot. Messages are
cleaned at this boundary (`clean`: invalid bytes, lone surrogates, control characters), and
empty ones get a gentle prompt instead of a model call.

Programmatic clients use the named endpoint:

    from gradio_client import Client
    client = Client("http://127.0.0.1:7860/")
    for text in client.submit("I feel lonely.", api_name="/chat"):  # the reply so far, growing
        ...
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from warmline.data.formats import Conversation
from warmline.recipe import DEFAULT_SYSTEM_PROMPT
from warmline.safety.normalise import clean
from warmline.safety.notice import SessionNotices, strip_notice, with_notice
from warmline.serving.feedback import FeedbackStore
from warmline.serving.generator import SAMPLE_PROMPTS, GenerationResult, GenerationSettings, ReplyStreamer

logger = logging.getLogger(__name__)

API_NAME = "chat"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_CONCURRENCY_LIMIT = 4
# System fonts only: a web font would tell a third party who opened a mental-health chat.
_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
_MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
EMPTY_MESSAGE = "Take your time. Type what's on your mind, in your own words, and press Enter."
BUSY_MESSAGE = "Many people are chatting right now. Please send your message again in a minute."
_CSS = "#ai-notice { border-left: 4px solid #d97706; padding: 0.25rem 0.75rem; background: #fffbeb; }"


def notice_markdown(locale: str, *, transcripts_saved: bool = False, feedback: bool = False) -> str:
    """The banner: this is an AI, not a therapist; where to get urgent help; what is stored."""
    from warmline.safety import AI_NOTICE
    from warmline.safety.replies import resources_for

    found = resources_for(locale)
    lines = "\n".join(f"  {line.render()}" for line in found.crisis)
    stored = (
        "**Conversations on this server are saved** for review by its operator."
        if transcripts_saved
        else "Conversations are not stored, unless you tick \u201cinclude this conversation\u201d when you rate a"
        " reply."
        if feedback
        else "Conversations are not stored."
    )
    return (
        f"**{AI_NOTICE}**\n\n"
        f"Urgent help: call **{found.emergency}** in an emergency, or reach a crisis line:\n{lines}\n\n"
        f"{stored}"
    )


def message_text(content: Any) -> str:
    """The text of a Gradio chat message's content (a string, a list of parts, or a text dict)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "") if content.get("type", "text") == "text" else ""
    if isinstance(content, Sequence):
        return "\n".join(t for t in (message_text(part) for part in content) if t)
    return ""  # files and components carry no text for the model


def history_to_conversation(history: list[dict[str, Any]]) -> Conversation:
    """Gradio's per-session history as user and assistant turns (nothing else is trusted from it),
    each text cleaned (`clean_text`)."""
    turns: Conversation = []
    for message in history if isinstance(history, list) else []:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("user", "assistant"):
            text = clean(message_text(message.get("content")))[0]
            text = strip_notice(text) if role == "assistant" else text  # a 3-hour notice is not the model's
            if turns and turns[-1]["role"] == role:  # grouped bubbles: one turn
                turns[-1] = {"role": role, "content": f"{turns[-1]['content']}\n{text}"}
            else:
                turns.append({"role": role, "content": text})
    return turns


class TranscriptWriter:
    """One JSON file per session, rewritten after every turn (only when the operator asked)."""

    def __init__(self, folder: Path, *, locale: str):
        from warmline.serving.chat import make_private_dirs

        self.folder = folder
        self.locale = locale
        make_private_dirs(folder)  # 0700: transcripts are the operator's alone

    def path_for(self, session: str) -> Path:
        """The session's transcript file."""
        safe = "".join(c for c in session if c.isalnum() or c in "-_")[:40] or "anonymous"
        return self.folder / f"{safe}.json"

    def write(self, session: str, conversation: Conversation, result: GenerationResult) -> None:
        """Write the whole conversation so far, atomically."""
        path = self.path_for(session)
        data = {
            "session": session,
            "locale": self.locale,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "last_stop_reason": result.stop_reason,
            "messages": conversation,
        }
        tmp = path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            os.fchmod(fd, 0o600)  # the umask cannot widen it; a leftover tmp keeps no old mode
            f.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, path)


def build_app(
    generator: ReplyStreamer,
    *,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    locale: str | None = None,
    transcripts_dir: str | Path | None = None,
    concurrency_limit: int = DEFAULT_CONCURRENCY_LIMIT,
    examples: list[str] | None = None,
    title: str = "warmline",
    notices: SessionNotices | None = None,
    slots: Any = None,
    feedback: FeedbackStore | None = None,
) -> gr.Blocks:
    """The chat app: notice, streaming chat with examples, settings accordion, `/chat` endpoint.

    `locale` picks the crisis resources shown (default: the generator's safety gate's locale).
    `notices` times the AI notice's 3-hourly repeat per session (a fake clock in tests).
    `slots`: the `warmline.serving.api.ModelSlots` bounding replies generated at once (pass the
    API's to share one limit; default: `concurrency_limit` slots of the app's own).
    `feedback`: where thumbs up/down on replies are stored (None: no buttons, nothing stored).
    Launch it with `launch(app, ...)`.
    """
    from warmline.serving.api import Busy, ModelSlots

    slots = ModelSlots(concurrency_limit, max_waiting=_MAX_WAITING) if slots is None else slots
    generator = _behind_slots(generator, slots)
    # Gradio reads this when an app is built; analytics_enabled=False is passed as well.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    gate = getattr(generator, "gate", None)
    locale = locale or getattr(gate, "locale", None) or "us"
    if gate is None:
        logger.warning("the generator has no safety gate: replies are not screened")
    writer = TranscriptWriter(Path(transcripts_dir), locale=locale) if transcripts_dir else None
    notices = SessionNotices() if notices is None else notices  # the AI notice again after 3 hours of use
    defaults = getattr(generator, "settings", None) or GenerationSettings()
    system: Conversation = [{"role": "system", "content": system_prompt}] if system_prompt else []

    def respond(
        message: str,
        history: list[dict[str, Any]],
        temperature: float,
        top_k: float,
        top_p: float,
        repetition_penalty: float,
        max_new_tokens: float,
        seed: float | None,
        request: gr.Request,
    ) -> Iterator[str]:
        """Stream the reply to `message` as the growing text; end with the text to keep."""
        message, repairs = clean(message_text(message))  # raw JSON may carry lone surrogates
        if repairs and gate is not None:
            gate.count_repairs(repairs)
        if not message.strip():
            yield EMPTY_MESSAGE  # nothing for the model to answer
            return
        conversation = system + history_to_conversation(history) + [{"role": "user", "content": message}]
        result = GenerationResult()
        pieces = generator.stream(
            conversation,
            seed=None if seed is None or seed < 0 else int(seed),
            result=result,
            temperature=temperature,
            top_k=None if top_k is None else int(top_k),
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            max_new_tokens=None if max_new_tokens is None else int(max_new_tokens),
        )
        session = getattr(request, "session_hash", None) or "anonymous"
        notice = notices.due(session, shown_at_start=True)
        shown = ""
        try:
            for piece in pieces:
                shown += piece
                yield with_notice(shown, notice)
        except Busy:  # more waiting for the model than the app queues (never a crisis reply)
            yield BUSY_MESSAGE
            return
        if result.text != shown or not shown:
            yield with_notice(result.text, notice)  # a screened reply is replaced by the fallback
        if writer is not None:
            writer.write(session, conversation + [{"role": "assistant", "content": result.text}], result)

    settings_inputs = [
        gr.Slider(0.0, 1.5, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)"),
        gr.Slider(0, 200, value=defaults.top_k, step=1, label="Top-k (0 = off)"),
        gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.01, label="Top-p"),
        gr.Slider(1.0, 2.0, value=defaults.repetition_penalty, step=0.05, label="Repetition penalty"),
        gr.Slider(
            1,
            max(512, defaults.max_new_tokens),
            value=defaults.max_new_tokens,
            step=1,
            label="Max new tokens",
        ),
        gr.Number(
            value=-1, precision=0, minimum=-1, label="Seed (-1 = random; the same seed repeats a reply)"
        ),
    ]
    with gr.Blocks(title=title, analytics_enabled=False, fill_height=True) as app:
        gr.Markdown(f"# {title}")
        gr.Markdown(
            notice_markdown(locale, transcripts_saved=writer is not None, feedback=feedback is not None),
            elem_id="ai-notice",
        )
        chatbot = gr.Chatbot(
            label=title,
            placeholder="Say what's on your mind. Replies are written by an AI.",
            elem_id="chatbot",
            feedback_options=("Like", "Dislike") if feedback is not None else None,  # thumbs: opt-in only
            buttons=["copy", "copy_all"],  # no "share": it posts the conversation to Hugging Face
            watermark="(Written by an AI, not a therapist.)",
        )
        gr.ChatInterface(
            respond,
            chatbot=chatbot,
            textbox=gr.Textbox(
                placeholder="Type a message and press Enter", elem_id="message", submit_btn=True
            ),
            additional_inputs=settings_inputs,
            additional_inputs_accordion=gr.Accordion("Generation settings", open=False, render=False),
            # One-item lists: with settings inputs Gradio wants a list per example; the settings
            # stay as they are when an example is clicked.
            examples=[[prompt] for prompt in (SAMPLE_PROMPTS if examples is None else examples)],
            cache_examples=False,
            flagging_mode="never",
            save_history=False,
            api_name=API_NAME,
            concurrency_limit=None,  # the model's limit is `slots` (see the module docstring)
            analytics_enabled=False,
        )
        if feedback is not None:
            _feedback_controls(chatbot, settings_inputs, feedback)
    # No limit in Gradio's queue: a crisis message must not wait behind long replies there.
    # The model's limit is `slots`, taken after the assessment (see the module docstring).
    app.queue(default_concurrency_limit=None)
    return app


def _feedback_controls(chatbot: gr.Chatbot, settings_inputs: list, feedback: FeedbackStore) -> None:
    """The consent line, the "include this conversation" box, and the thumbs' handler."""
    from warmline.serving.feedback import CONSENT_NOTICE, INCLUDE_LABEL

    gr.Markdown(CONSENT_NOTICE, elem_id="feedback-notice")
    include = gr.Checkbox(value=False, label=INCLUDE_LABEL, elem_id="feedback-include")

    def rate(
        history: list[dict[str, Any]],
        include_conversation: bool,
        temperature: float,
        top_k: float,
        top_p: float,
        repetition_penalty: float,
        max_new_tokens: float,
        seed: float | None,
        data: gr.LikeData,
        request: gr.Request,
    ) -> None:
        """Store one thumb: the conversation up to the rated reply only when the box is ticked."""
        rating = "up" if data.liked is True else "down" if data.liked is False else "cleared"
        index = data.index if isinstance(data.index, int) else data.index[0]
        history = history if isinstance(history, list) else []
        feedback.record(
            rating,
            settings={
                "temperature": temperature,
                "top_k": None if top_k is None else int(top_k),
                "top_p": top_p,
                "repetition_penalty": repetition_penalty,
                "max_new_tokens": None if max_new_tokens is None else int(max_new_tokens),
                "seed": None if seed is None or seed < 0 else int(seed),
            },
            session=getattr(request, "session_hash", None),
            message_index=index,
            conversation=history_to_conversation(history[: index + 1])
            if include_conversation is True
            else None,
        )

    chatbot.like(rate, inputs=[chatbot, include, *settings_inputs], outputs=None, api_name="feedback")


# Requests that may wait for a model slot; Gradio runs each waiting one on a thread of its
# pool of 40, which must keep room for the crisis replies that never wait.
_MAX_WAITING = 24


def _behind_slots(generator: Any, slots: Any) -> Any:
    """`generator` with its model calls bounded by `slots`, taken after the gate's assessment."""
    from warmline.serving.api import limited

    if getattr(generator, "engine", None) is not None:  # a Generator: its engine waits for a slot
        return limited(generator, slots)
    if getattr(generator, "slots", None) is not None:  # takes its own slots inside the flow (gateway)
        return generator
    return _HeldStreamer(generator, slots)


class _HeldStreamer:
    """Any other streamer (a scripted one in tests): the whole stream holds a slot."""

    def __init__(self, streamer: Any, slots: Any):
        self._streamer, self._slots = streamer, slots

    def __getattr__(self, name: str) -> Any:
        return getattr(self._streamer, name)

    def stream(self, conversation: Conversation, **kwargs: Any) -> Iterator[str]:
        """The wrapped streamer's pieces, once a slot is free."""
        return self._slots.hold(lambda: self._streamer.stream(conversation, **kwargs))


def launch(
    app: gr.Blocks,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    block: bool = True,
    routes: Sequence[Any] = (),
) -> str:
    """Start the server (no share link, system fonts, no server-side rendering); return its URL.

    With `block=False` the call returns once the server is up (tests); `app.close()` stops it.
    `routes`: Starlette routes served by the same server ahead of Gradio's own (the OpenAI API
    of `warmline.serving.api`).
    """
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s: anyone who can reach this machine can use the chat", host)
    theme = gr.themes.Soft(font=_FONTS, font_mono=_MONO_FONTS)
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=not block,
        quiet=not block,
        theme=theme,
        css=_CSS,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        enable_monitoring=False,
        show_error=False,
        app_kwargs={"routes": list(routes)} if routes else None,
    )
    return url
