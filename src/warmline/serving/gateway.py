"""`warmline gateway --backend URL`: warmline's safety gate in front of any OpenAI-compatible
server (llama.cpp's server, Ollama, vLLM, LM Studio, a hosted API, or another warmline).

    client = BackendClient("http://127.0.0.1:11434/v1", model="warmline")
    streamer = BackendStreamer(client, gate=SafetyGate())
    for piece in streamer.stream(conversation):   # the one gate flow (`warmline.safety.gate.turn`)
        show(piece)

The backend is a text source for the gate flow, as `TorchEngine` is a token source for the
`Generator`: `BackendClient.texts` streams the backend's reply (server-sent events) and yields
the whole reply so far after every delta, which `turn` passes through the `TextReleaser` and the
screen. So the backend is asked only below crisis level (a crisis message never leaves this
machine), an unsafe reply is cut at the first unsafe sentence and replaced by the fallback, and
the distress note is added, exactly as for a local model. `BackendStreamer` has the `stream`
method the web app and the API call, so both serve a backend unchanged.

The client is httpx (already installed with Gradio), not the `openai` package: one streamed POST
and a line parser are all it needs, and the runtime stays smaller. Nothing is logged but the
backend's address and status codes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx

from warmline.data.formats import Conversation
from warmline.safety.gate import turn
from warmline.safety.notice import strip_notice
from warmline.safety.replies import AI_NOTICE
from warmline.serving.generator import GenerationResult
from warmline.serving.settings import GenerationSettings

logger = logging.getLogger(__name__)

BACKEND_KEY_ENV = "WARMLINE_BACKEND_API_KEY"
# A warmline backend (`warmline serve --api`) starts a conversation's first reply with the AI
# notice; the gateway shows its own, so the backend's is removed.
_WARMLINE_NOTICE = f"{AI_NOTICE}\n\n"


class BackendError(RuntimeError):
    """The backend could not be reached or answered with an error."""


def base_url(url: str) -> str:
    """The backend's OpenAI base URL: `url` as given when it has a path (".../v1"), else `url` + "/v1"."""
    url = url.rstrip("/")
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise BackendError(f"--backend must be an http(s) URL such as http://127.0.0.1:8080/v1, got {url!r}")
    return url if parsed.path not in ("", "/") else f"{url}/v1"


class BackendClient:
    """Streams chat completions from an OpenAI-compatible server; see the module docstring."""

    def __init__(
        self, url: str, *, model: str | None = None, api_key: str | None = None, timeout_s: float = 120.0
    ):
        self.base_url = base_url(url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Connect quickly; a slow model may take long between tokens.
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0))
        self.model = model or self.first_model()

    def close(self) -> None:
        self._http.close()

    def first_model(self) -> str:
        """The first model the backend lists (used when --backend-model is not given)."""
        try:
            response = self._http.get(f"{self.base_url}/models")
            response.raise_for_status()
            models = [m["id"] for m in response.json().get("data", []) if isinstance(m, dict) and "id" in m]
        except (httpx.HTTPError, ValueError, AttributeError) as err:
            raise BackendError(
                f"could not list the models of the backend at {self.base_url} ({type(err).__name__}); "
                "check --backend, or name the model with --backend-model"
            ) from None
        if not models:
            raise BackendError(
                f"the backend at {self.base_url} lists no models; name one with --backend-model"
            )
        return models[0]

    def request_body(
        self, conversation: Conversation, s: GenerationSettings, seed: int | None
    ) -> dict[str, Any]:
        """The chat completion request for `conversation` with the settings OpenAI's API has
        (top_k and repetition_penalty have no OpenAI field and are not sent)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": t["role"], "content": t["content"]} for t in conversation],
            "stream": True,
            "temperature": s.temperature if s.do_sample else 0.0,
            "top_p": s.top_p,
            "max_tokens": s.max_new_tokens,
        }
        if seed is not None:
            body["seed"] = seed
        if s.stop_strings:
            body["stop"] = list(s.stop_strings)[:4]
        return body

    def texts(
        self,
        conversation: Conversation,
        s: GenerationSettings,
        *,
        seed: int | None = None,
        result: GenerationResult | None = None,
    ) -> Iterator[str]:
        """The backend's reply so far after every streamed delta; `result.stop_reason` from its
        finish_reason ("length" -> max_new_tokens, else eos), token counts when it sends usage."""
        url = f"{self.base_url}/chat/completions"
        text = ""
        try:
            with self._http.stream("POST", url, json=self.request_body(conversation, s, seed)) as response:
                if response.status_code != 200:
                    response.read()
                    raise BackendError(
                        f"the backend at {self.base_url} answered HTTP {response.status_code}"
                        f"{_error_message(response)}"
                    )
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue  # comments, event names, keep-alives
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise BackendError(
                            f"the backend at {self.base_url} failed mid-reply{_error_text(chunk)}"
                        )
                    if result is not None and isinstance(chunk.get("usage"), dict):
                        result.prompt_tokens = chunk["usage"].get("prompt_tokens", 0) or 0
                        result.new_tokens = chunk["usage"].get("completion_tokens", 0) or 0
                    for choice in chunk.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content")
                        if result is not None and choice.get("finish_reason"):
                            result.stop_reason = (
                                "max_new_tokens" if choice["finish_reason"] == "length" else "eos"
                            )
                        if delta:
                            text += delta
                            if _WARMLINE_NOTICE.startswith(text):
                                continue  # perhaps a warmline backend's own AI notice: wait and see
                            yield strip_notice(text)
                if text and _WARMLINE_NOTICE.startswith(text):  # a reply that only looked like one
                    yield strip_notice(text)
        except httpx.HTTPError as err:
            raise BackendError(
                f"could not reach the backend at {self.base_url} ({type(err).__name__})"
            ) from None
        except (ValueError, AttributeError, TypeError):
            raise BackendError(
                f"the backend at {self.base_url} sent a reply that is not OpenAI's stream format"
            ) from None


def _error_message(response: httpx.Response) -> str:
    try:
        return _error_text(response.json())
    except ValueError:
        return ""


def _error_text(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return f": {str(message)[:200]}" if message else ""


class BackendStreamer:
    """A backend behind the safety gate, with the `stream` method of `Generator` (so the web app
    and the API use it unchanged)."""

    def __init__(
        self, client: BackendClient, *, gate, settings: GenerationSettings | None = None, slots=None
    ):
        """`slots`: an `api.ModelSlots` that bounds the replies asked of the backend at once
        (taken inside the gate flow's reply, so a crisis reply never waits for it)."""
        self.client = client
        self.gate = gate
        self.settings = settings or GenerationSettings()
        self.slots = slots

    def stream(
        self,
        conversation: Conversation,
        *,
        seed: int | None = None,
        result: GenerationResult | None = None,
        **overrides: Any,
    ) -> Iterator[str]:
        """The one gate flow over the backend's reply; see `Generator.stream` (same arguments).
        `top_k` and `repetition_penalty` overrides are accepted and not sent (OpenAI has neither)."""
        if not conversation or conversation[-1]["role"] != "user":
            raise ValueError("the conversation must end with a user turn")
        s = replace(self.settings, **{k: v for k, v in overrides.items() if v is not None})
        out = result if result is not None else GenerationResult()

        def reply() -> Iterator[str]:
            texts = lambda: self.client.texts(conversation, s, seed=seed, result=out)  # noqa: E731
            return self.slots.hold(texts) if self.slots is not None else texts()

        yield from turn(conversation, reply, gate=self.gate, stop_strings=s.stop_strings or (), result=out)

    def warm_up(self, system_prompt: str | None = None) -> None:
        """Nothing to warm up here (the backend keeps its own model loaded)."""
