"""The OpenAI-compatible API: `warmline serve MODEL --api` and `warmline gateway`.

    POST /v1/chat/completions   streaming (server-sent events, OpenAI's chunk format) or not
    GET  /v1/models             the one model this server answers with
    GET  /v1/warmline/counts    request and safety-event counts (numbers only, never text)

The routes are plain Starlette routes handed to Gradio's FastAPI app (`web.launch(routes=...)`),
so the API and the web chat share one server, one port and one process.

Every request runs the one gate flow (`warmline.safety.gate.turn`, through the streamer's
`stream`): the conversation is assessed, a crisis turn gets the fixed crisis reply (the model is
never asked) and anything else is released sentence by sentence after screening, with the
resources note at distress level. The model is reached only from inside the flow's `reply`
callable, and a request waits for one of the model's `ModelSlots` only there: a crisis turn is
answered without waiting for the model's queue.

Each response carries a `warmline` field (on the response, on its choice, and on the last
streamed chunk): `risk_level`, `reply_kind` (the crisis reply's kind, else null), `language`,
`stop_reason` and the AI notice. The first reply of a conversation (no assistant turn in the
request) starts with the AI notice as a paragraph of its own; it is removed again from
assistant turns sent back.

Sampling: `temperature` (0..2; 0 = greedy), `top_p` (0..1], `max_tokens` or
`max_completion_tokens` (1..the server's limit), `seed`, `stop` (up to 4 strings) map onto
`GenerationSettings`. Fields that change the response's shape (`n` > 1, `tools`, `functions`,
`logprobs`, a non-text `response_format`) are refused with a 400; fields with no effect here
(`presence_penalty`, `frequency_penalty`, `logit_bias`, `user`, `store`, `metadata`, ...) are
ignored. Nothing of a request is logged or stored.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from warmline.data.formats import Conversation
from warmline.safety.notice import strip_notice, with_notice
from warmline.safety.replies import AI_NOTICE
from warmline.serving.generator import GenerationResult, ReplyStreamer

logger = logging.getLogger(__name__)

API_KEY_ENV = "WARMLINE_API_KEY"
ROLES = ("system", "user", "assistant")
# Fields that would change what a response holds; silently ignoring them would mislead a client.
_REFUSED = ("tools", "functions", "tool_choice", "function_call", "audio", "modalities", "prediction")
_KNOWN = {
    "messages",
    "model",
    "stream",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "n",
    "logprobs",
    "top_logprobs",
    "response_format",
    "stream_options",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "store",
    "metadata",
    "parallel_tool_calls",
    "service_tier",
    "reasoning_effort",
}


class ApiError(Exception):
    """A request the API refuses: the HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        """The error as OpenAI sends one: {"error": {message, type, param, code}}."""
        return JSONResponse(self.body(), status_code=self.status)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BindError(ValueError):
    """The API would listen beyond loopback without a key."""


@dataclass(frozen=True)
class ApiLimits:
    """What one request may hold; anything over it is refused with a 400 naming the limit."""

    max_messages: int = 64
    """Messages in one request (the system message included)."""
    max_message_chars: int = 8_000
    """Characters in one message."""
    max_total_chars: int = 32_000
    """Characters in all messages together."""
    max_tokens: int = 1_024
    """The largest `max_tokens` a client may ask for."""
    max_body_bytes: int = 256_000
    """The request body's size."""


class Busy(Exception):
    """Every model slot is taken and the waiting line is full."""


class ModelSlots:
    """How many replies the model generates at once (`concurrency`), and how many requests may
    wait for a slot (`max_waiting`; more get a 429). Taken only inside the gate flow's `reply`,
    after the assessment, so a crisis reply never waits here."""

    def __init__(self, concurrency: int = 4, max_waiting: int = 16):
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._waiting = 0
        self.max_waiting = max_waiting
        self.taken = 0
        """Slots taken so far: replies the model (or backend) was asked for."""

    def hold(self, texts: Callable[[], Iterator[Any]]) -> Iterator[Any]:
        """Wait for a slot, then yield from `texts()`; the slot is released when it ends or closes."""
        if not self._slots.acquire(blocking=False):  # all taken: join the line, if there is room
            with self._lock:
                if self._waiting >= self.max_waiting:
                    raise Busy
                self._waiting += 1
            try:
                self._slots.acquire()
            finally:
                with self._lock:
                    self._waiting -= 1
        with self._lock:
            self.taken += 1
        try:
            yield from texts()
        finally:
            self._slots.release()


class SlotEngine:
    """A token engine that takes a `ModelSlots` slot before its first token (see `TokenEngine`).
    Everything else (model, prompt cache) is the wrapped engine's."""

    def __init__(self, engine, slots: ModelSlots):
        self._engine, self._slots = engine, slots

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("_engine", "_slots"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._engine, name, value)

    def tokens(self, prompt_ids, settings, **kwargs) -> Iterator[int]:
        """The wrapped engine's tokens, once a slot is free."""
        return self._slots.hold(lambda: self._engine.tokens(prompt_ids, settings, **kwargs))


def limited(generator, slots: ModelSlots):
    """A copy of `generator` (same weights, gate and prompt cache) whose engine waits for `slots`."""
    import copy

    copied = copy.copy(generator)
    copied.engine = SlotEngine(generator.engine, slots)
    return copied


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve beyond this machine


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to serve the API beyond loopback without a key."""
    if not is_loopback(host) and not api_key:
        raise BindError(
            f"the API would be reachable beyond this machine on {host} without a key; pass --api-key KEY "
            f"(or set {API_KEY_ENV}), or bind 127.0.0.1"
        )


# --- the request --------------------------------------------------------------------------


@dataclass
class ChatRequest:
    """A validated chat completion request."""

    conversation: Conversation
    stream: bool
    overrides: dict[str, Any]
    """GenerationSettings fields for this request (temperature, top_p, max_new_tokens)."""
    seed: int | None
    stop: tuple[str, ...]
    include_usage: bool
    first_turn: bool
    """No assistant turn yet: the reply starts with the AI notice."""


def _number(body: dict, name: str, low: float, high: float, *, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        kind = "an integer" if integer else "a number"
        raise ApiError(
            400, f"'{name}' must be {kind} in [{low}, {high}], got {json.dumps(value)[:40]}", param=name
        )
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be in [{low}, {high}], got {value}", param=name)
    return value


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                raise ApiError(
                    400,
                    f"messages[{index}].content: only text parts are supported",
                    param=f"messages[{index}].content",
                )
            parts.append(part["text"])
        return "\n".join(parts)
    raise ApiError(
        400,
        f"messages[{index}].content must be a string or a list of text parts",
        param=f"messages[{index}].content",
    )


def parse_request(raw: bytes, limits: ApiLimits, *, system_prompt: str | None) -> ChatRequest:
    """The request body as a `ChatRequest`, or an `ApiError` that says what to change."""
    if len(raw) > limits.max_body_bytes:
        raise ApiError(
            413, f"the request body is over {limits.max_body_bytes} bytes", code="request_too_large"
        )
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if any(body.get(name) for name in _REFUSED):
        name = next(n for n in _REFUSED if body.get(n))
        raise ApiError(400, f"'{name}' is not supported: warmline replies with text only", param=name)
    if body.get("n", 1) != 1:
        raise ApiError(400, "'n' must be 1: one reply per request", param="n")
    if body.get("logprobs"):
        raise ApiError(400, "'logprobs' is not supported", param="logprobs")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise ApiError(400, "'response_format' must be text", param="response_format")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' is required: a non-empty list of {role, content}", param="messages")
    if len(messages) > limits.max_messages:
        raise ApiError(
            400, f"too many messages: {len(messages)} (at most {limits.max_messages})", param="messages"
        )
    conversation: Conversation = []
    total = 0
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise ApiError(
                400,
                f"messages[{i}].role must be one of {', '.join(ROLES)}, got {json.dumps(role)[:40]}",
                param=f"messages[{i}].role",
            )
        if role == "system" and i != 0:
            raise ApiError(
                400, f"messages[{i}]: a system message may only come first", param=f"messages[{i}].role"
            )
        text = _content_text(message.get("content"), i)
        if len(text) > limits.max_message_chars:
            raise ApiError(
                400,
                f"messages[{i}] has {len(text)} characters (at most {limits.max_message_chars})",
                param=f"messages[{i}].content",
                code="message_too_long",
            )
        total += len(text)
        if role == "assistant":
            text = strip_notice(text)  # the notice is ours, not the model's
        if conversation and conversation[-1]["role"] == role:  # consecutive turns of one role: one turn
            conversation[-1] = {"role": role, "content": f"{conversation[-1]['content']}\n{text}"}
        else:
            conversation.append({"role": role, "content": text})
    if total > limits.max_total_chars:
        raise ApiError(
            400,
            f"the messages have {total} characters in all (at most {limits.max_total_chars})",
            param="messages",
            code="messages_too_long",
        )
    if conversation[-1]["role"] != "user" or not conversation[-1]["content"].strip():
        raise ApiError(400, "the last message must be the user's, with text", param="messages")
    if conversation[0]["role"] != "system" and system_prompt:
        conversation.insert(0, {"role": "system", "content": system_prompt})

    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    if top_p == 0:
        raise ApiError(400, "'top_p' must be in (0, 1]", param="top_p")
    max_tokens = _number(body, "max_completion_tokens", 1, limits.max_tokens, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", 1, limits.max_tokens, integer=True)
    seed = _number(body, "seed", -(2**63), 2**63 - 1, integer=True)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of up to 4 non-empty strings", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    options = body.get("stream_options") or {}
    return ChatRequest(
        conversation=conversation,
        stream=stream,
        overrides={"temperature": temperature, "top_p": top_p, "max_new_tokens": max_tokens},
        seed=None if seed is None else seed % 2**63,
        stop=tuple(stop),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        first_turn=not any(t["role"] == "assistant" for t in conversation),
    )


# --- the service ----------------------------------------------------------------------------


class ChatAPI:
    """The API's routes around one `ReplyStreamer`; see the module docstring.

    `base_stop_strings`: the stop strings a request's `stop` is added to (the chat template's for
    a local model; none for a backend, which stops at its own template). `slots`: the streamer's
    `ModelSlots`, whose count of replies asked of the model `/v1/warmline/counts` reports.
    """

    def __init__(
        self,
        streamer: ReplyStreamer,
        *,
        model_id: str,
        api_key: str | None = None,
        system_prompt: str | None = None,
        limits: ApiLimits | None = None,
        base_stop_strings: Sequence[str] = (),
        slots: ModelSlots | None = None,
    ):
        self.streamer = streamer
        self.slots = slots
        self.model_id = model_id
        self.api_key = api_key or None
        self.system_prompt = system_prompt
        self.limits = limits or ApiLimits()
        self.base_stop_strings = tuple(base_stop_strings)
        self.created = int(time.time())
        self.counts: Counter[str] = Counter()
        """chat_completions (valid requests), crisis_replies, screened_replies, errors:<status>."""
        self._lock = threading.Lock()

    def routes(self) -> list[BaseRoute]:
        """The Starlette routes to serve (next to the web app: `web.launch(app, routes=...)`)."""
        return [
            Route("/v1/chat/completions", self._guarded(self.chat_completions), methods=["POST"]),
            Route("/v1/models", self._guarded(self.models), methods=["GET"]),
            Route("/v1/warmline/counts", self._guarded(self.counts_endpoint), methods=["GET"]),
        ]

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def _guarded(self, handler: Callable) -> Callable:
        """Key check, then the handler; any failure becomes an OpenAI-shaped error, never a traceback."""

        async def endpoint(request: Request) -> Response:
            try:
                self._check_key(request)
                return await handler(request)
            except ApiError as err:
                self._count(f"errors:{err.status}")
                return err.response()
            except Exception as err:  # noqa: BLE001 - the client gets one line; the log gets the type only
                logger.error("API request failed: %s", type(err).__name__)
                logger.debug("API failure", exc_info=True)
                self._count("errors:500")
                return ApiError(
                    500, "the server could not answer this request", type="server_error"
                ).response()

        return endpoint

    def _check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            given.strip().encode(), self.api_key.encode()
        ):
            raise ApiError(
                401,
                "a valid API key is required: send 'Authorization: Bearer KEY'",
                type="authentication_error",
                code="invalid_api_key",
            )

    async def models(self, request: Request) -> Response:
        """GET /v1/models."""
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "warmline"}
                ],
            }
        )

    async def counts_endpoint(self, request: Request) -> Response:
        """GET /v1/warmline/counts: this API's request counts and the safety gate's event counts."""
        with self._lock:
            counts = dict(sorted(self.counts.items()))
        if self.slots is not None:
            counts["model_calls"] = self.slots.taken
        gate = getattr(self.streamer, "gate", None)
        return JSONResponse({"api": counts, "gate": gate.snapshot() if gate is not None else {}})

    async def chat_completions(self, request: Request) -> Response:
        """POST /v1/chat/completions."""
        parsed = parse_request(await request.body(), self.limits, system_prompt=self.system_prompt)
        self._count("chat_completions")
        result = GenerationResult()
        pieces = self.streamer.stream(
            parsed.conversation,
            seed=parsed.seed,
            result=result,
            stop_strings=self.base_stop_strings + parsed.stop if parsed.stop else None,
            **parsed.overrides,
        )
        notice = AI_NOTICE if parsed.first_turn else None
        # The first piece is taken before anything is sent, so a refusal (a full queue, a prompt
        # that does not fit, a backend that is down) is still an error response, not a broken stream.
        first = await run_in_threadpool(_first_piece, pieces)
        if not parsed.stream:
            if first is not None:
                # result.text is the reply to keep (for a screened reply: the fallback alone).
                await run_in_threadpool(_drain, pieces)
            return JSONResponse(self._completion(result, notice))
        return StreamingResponse(
            self._events(pieces, first, result, notice, parsed.include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    def _warmline(self, result: GenerationResult) -> dict[str, Any]:
        assessment = result.assessment or {}
        if result.stop_reason == "crisis":
            self._count("crisis_replies")
        elif result.stop_reason == "screened":
            self._count("screened_replies")
        return {
            "risk_level": assessment.get("level"),
            "reply_kind": assessment.get("reply_kind") if result.stop_reason == "crisis" else None,
            "language": assessment.get("language"),
            "categories": assessment.get("categories", []),
            "stop_reason": result.stop_reason,
            "notice": AI_NOTICE,
        }

    def _completion(self, result: GenerationResult, notice: str | None) -> dict[str, Any]:
        extra = self._warmline(result)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": with_notice(result.text, notice)},
            "finish_reason": finish_reason(result.stop_reason),
            "logprobs": None,
            "warmline": extra,
        }
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [choice],
            "usage": _usage(result),
            "warmline": extra,
        }

    def _events(
        self,
        pieces: Iterator[str],
        first: str | None,
        result: GenerationResult,
        notice: str | None,
        include_usage: bool,
    ) -> Iterator[str]:
        """The server-sent events: a role chunk, content chunks, a finishing chunk, [DONE].

        A sync iterator: Starlette runs each step in its thread pool, as the engine needs."""
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def event(delta: dict, finish: str | None = None, **extra: Any) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            if "warmline" in extra:
                choice["warmline"] = extra["warmline"]
            data = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model_id,
                "choices": [choice],
                **extra,
            }
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        yield event({"role": "assistant", "content": ""})
        try:
            if notice:
                yield event({"content": f"{notice}\n\n"})
            if first is not None:
                yield event({"content": first})
                for piece in pieces:
                    yield event({"content": piece})
        except Exception as err:  # noqa: BLE001 - the stream has started: end it with an error event
            logger.error("API stream failed: %s", type(err).__name__)
            self._count("errors:stream")
            yield f"data: {json.dumps(ApiError(500, 'the reply could not be finished', type='server_error').body())}\n\n"
            return
        finally:
            pieces.close()  # a client that went away: end the engine's reply (and free its slot) now
        extra = self._warmline(result)
        yield event({}, finish_reason(result.stop_reason), warmline=extra)
        if include_usage:
            data = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model_id,
                "choices": [],
                "usage": _usage(result),
            }
            yield f"data: {json.dumps(data)}\n\n"
        yield "data: [DONE]\n\n"


def _first_piece(pieces: Iterator[str]) -> str | None:
    """The flow's first piece (None: the reply is empty); refusals become `ApiError`s."""
    from warmline.serving.gateway import BackendError

    try:
        return next(pieces, None)
    except Busy:
        raise ApiError(
            429,
            "the model is busy with other replies; try again shortly",
            type="rate_limit_error",
            code="busy",
        ) from None
    except BackendError as err:
        raise ApiError(502, str(err), type="server_error", code="backend_error") from None
    except ValueError as err:  # the conversation cannot be answered as sent (generator's checks)
        raise ApiError(400, str(err)) from None


def _drain(pieces: Iterator[str]) -> None:
    for _ in pieces:
        pass


def finish_reason(stop_reason: str) -> str:
    """OpenAI's finish_reason for a warmline stop reason: length, content_filter or stop."""
    if stop_reason == "max_new_tokens":
        return "length"
    if stop_reason == "screened":
        return "content_filter"
    return "stop"  # eos, stop_string, crisis


def _usage(result: GenerationResult) -> dict[str, int]:
    prompt, completion = getattr(result, "prompt_tokens", 0), getattr(result, "new_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
