"""An OpenAI-compatible chat client: streamed (SSE, read with httpx-sse) or one-shot, through httpx."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from lf.errors import RequestError

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 300.0  # a slow CPU model may think for a while before the first token


@dataclass
class ChatResult:
    text: str = ""
    finish_reason: str | None = None
    model: str | None = None
    id: str | None = None
    usage: dict | None = None
    response: dict = field(default_factory=dict)

    def as_response(self) -> dict:
        """The final response object, assembled from the stream when there was one."""
        if self.response:
            return self.response
        return {
            "id": self.id,
            "object": "chat.completion",
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text}, "finish_reason": self.finish_reason}],
            "usage": self.usage,
        }


def _headers(api_key: str | None) -> dict:
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def chat(
    base_url: str,
    payload: dict,
    *,
    api_key: str | None = None,
    stream: bool = True,
    on_token: Callable[[str], None] | None = None,
) -> ChatResult:
    import httpx
    from httpx_sse import EventSource, SSEError

    url = base_url.rstrip("/") + "/chat/completions"
    payload = {**payload, "stream": stream}
    timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
    result = ChatResult()
    try:
        with httpx.Client(timeout=timeout, headers=_headers(api_key), trust_env=False) as client:
            if not stream:
                response = client.post(url, json=payload)
                _raise_for_status(response, url)
                _one_answer(result, response, url)
                return result
            with client.stream("POST", url, json=payload) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_status(response, url)
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    # a server that ignores `stream` answers in one piece: take it as such
                    response.read()
                    _one_answer(result, response, url)
                    if result.text and on_token:
                        on_token(result.text)
                    return result
                done = False
                for sse in EventSource(response).iter_sse():
                    if sse.data == "[DONE]":
                        done = True
                        break
                    if not sse.data:
                        continue
                    try:
                        event = json.loads(sse.data)
                    except ValueError:
                        continue
                    if sse.event == "error" or "error" in event:
                        raise RequestError(f"the runtime reported an error: {_error_text(event.get('error', event))}")
                    _add_event(result, event, on_token)
                if not done and result.finish_reason is None:
                    raise RequestError("the runtime closed the stream before the answer was complete")
    except RequestError as exc:
        if api_key and api_key in exc.message:  # servers quote a rejected key back: never show it
            raise RequestError(exc.message.replace(api_key, "***"), hint=exc.hint) from None
        raise
    except SSEError as exc:
        raise RequestError(f"the runtime did not answer with an event stream ({exc})") from None
    except httpx.ConnectError as exc:
        raise RequestError(f"cannot connect to {base_url}: {exc}", hint="is the runtime running? lf runtime status") from None
    except httpx.TimeoutException:
        raise RequestError(f"{base_url} did not answer in time") from None
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise RequestError(f"the connection to the runtime broke mid-answer ({exc})", hint="the runtime may have died: lf runtime status") from None
    return result


def _one_answer(result: ChatResult, response, url: str) -> None:
    try:
        data = response.json()
    except ValueError:
        raise RequestError(f"{url} answered with something that is not a chat completion (content type {response.headers.get('content-type') or 'none'})") from None
    if not isinstance(data, dict):
        raise RequestError(f"{url} answered with something that is not a chat completion")
    result.response = data
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    result.text = content if isinstance(content, str) else ""
    result.finish_reason = choice.get("finish_reason")


def _add_event(result: ChatResult, event: dict, on_token: Callable[[str], None] | None) -> None:
    result.id = event.get("id", result.id)
    result.model = event.get("model", result.model)
    result.usage = event.get("usage") or result.usage
    for choice in event.get("choices") or []:
        token = (choice.get("delta") or {}).get("content")
        if token:
            result.text += token
            if on_token:
                on_token(token)
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]


def _error_text(error) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _raise_for_status(response, url: str) -> None:
    if response.status_code < 400:
        return
    try:
        detail = _error_text(response.json().get("error") or response.json())
    except ValueError:
        detail = response.text[:300]
    hint = "check the api_key" if response.status_code in (401, 403) else None
    raise RequestError(f"{url} answered HTTP {response.status_code}: {detail}", hint=hint)
