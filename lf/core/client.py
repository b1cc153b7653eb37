"""An OpenAI-compatible chat client: streamed (SSE) or one-shot, through httpx.

It expects a broken or hostile server: the whole answer has one deadline, memory is bounded (an SSE line
or event, a one-piece answer, an error body), a stream that ignores `max_tokens` is cut off, anything
that is not a chat completion is a RequestError with a one-line reason, and neither the API key nor
credentials in the URL reach anything it hands back (messages, text, the response object).

The SSE reader is its own (the WHATWG rules, a few lines): httpx-sse buffers a line without limit.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from lf.errors import RequestError
from lf.secrets import StreamMasker, mask, mask_data, redact_url, secrets_of

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 300.0  # no byte for this long, within the deadline: a slow CPU model may think for a while first
DEFAULT_TIMEOUT = (
    600  # the whole answer: OpenAI's own client waits as long; a CPU model writes a few thousand tokens in it
)
MAX_EVENT = 1 << 20  # bytes of one SSE line or event (a chunk is a few hundred)
MAX_ANSWER = 16 << 20  # bytes of a one-piece answer; characters of a streamed one
MAX_ERROR_BODY = 64 << 10  # bytes of an error answer read for its message
MAX_DEPTH = 64  # nesting of a JSON answer (a chat completion has about 6 levels)
REASON_CHARS = 300  # of a server's words quoted in a message
_NEWLINE = re.compile(rb"\r\n|\r|\n")


@dataclass
class ChatResult:
    text: str = ""
    finish_reason: str | None = None
    model: str | None = None
    id: str | None = None
    usage: dict | None = None
    response: dict = field(default_factory=dict)
    secrets: tuple = field(default=(), repr=False)  # the endpoint's, masked in as_response()

    def as_response(self) -> dict:
        """The final response object, assembled from the stream when there was one; secrets masked."""
        if self.response:
            return mask_data(self.response, self.secrets)
        return mask_data(
            {
                "id": self.id,
                "object": "chat.completion",
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.text},
                        "finish_reason": self.finish_reason,
                    }
                ],
                "usage": self.usage,
            },
            self.secrets,
        )


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
    timeout: float | None = DEFAULT_TIMEOUT,
) -> ChatResult:
    """Ask for one answer. `timeout`: seconds from sending the question to the answer's last byte (None or 0:
    no deadline). Streamed text goes to `on_token` as it comes, masked; what it was given stays given."""
    import httpx

    secrets = secrets_of(api_key, base_url)
    shown = redact_url(base_url.rstrip("/"))
    payload = {**payload, "stream": stream}
    deadline = _Deadline(timeout)
    read = min(READ_TIMEOUT, timeout) if timeout else READ_TIMEOUT
    result = ChatResult(secrets=secrets)
    masker = StreamMasker(secrets)

    def emit(piece: str) -> None:
        piece = masker.feed(piece)
        if piece:
            result.text += piece
            if on_token:
                on_token(piece)

    try:
        with (
            deadline,
            httpx.Client(
                timeout=httpx.Timeout(read, connect=min(CONNECT_TIMEOUT, read)),
                headers=_headers(api_key),
                trust_env=False,
            ) as client,
        ):
            url = base_url.rstrip("/") + "/chat/completions"
            with client.stream("POST", url, json=payload, extensions={"trace": deadline.trace}) as response:
                _exchange(response, result, stream, emit, _piece_limit(payload), deadline, shown, secrets)
    except Exception as exc:
        failure = _failure(exc, deadline, read, shown, secrets)
        if failure is None:
            raise
        raise failure from None
    finally:
        rest = masker.flush()  # the end of a piece held back in case a secret began there
        if rest:
            result.text += rest
            if on_token:
                on_token(rest)
    return result


def _exchange(
    response, result: ChatResult, stream: bool, emit, limit: int | None, deadline: _Deadline, shown: str, secrets
) -> None:
    if response.status_code >= 300:
        _raise_for_status(response, shown, secrets, deadline)
    content_type = response.headers.get("content-type", "")
    if "text/event-stream" not in content_type:
        # a server that ignores `stream` answers in one piece: take it as such
        _one_answer(result, _read_capped(response, deadline), content_type, shown, secrets)
        if stream and result.text:
            text, result.text = result.text, ""
            emit(text)
        return
    if not stream:
        raise RequestError(f'{shown} answered with an event stream, not a chat completion (it ignored "stream": false)')
    _read_stream(response, result, emit, limit, deadline, secrets)


def _read_stream(response, result: ChatResult, emit, limit: int | None, deadline: _Deadline, secrets) -> None:
    pieces = 0
    for name, data in _sse_events(response.iter_bytes(), deadline):
        if data == "[DONE]":
            return
        if name == "error":
            raise RequestError(f"the runtime reported an error: {_error_text(_json_or_text(data), secrets)}")
        try:
            event = _parse(data)
        except ValueError:
            raise _malformed("not JSON", data, secrets) from None
        if isinstance(event, dict) and event.get("error"):
            raise RequestError(f"the runtime reported an error: {_error_text(event['error'], secrets)}")
        for piece, counted in _event_pieces(result, event, data, secrets):
            pieces += counted
            if limit is not None and pieces > limit:
                raise RequestError(
                    f"the runtime went on past max_tokens: lf stopped reading after {limit} pieces of the answer (max_tokens plus a margin)"
                )
            if piece:
                emit(piece)
                if len(result.text) > MAX_ANSWER:
                    raise RequestError(f"the answer passed {MAX_ANSWER >> 20} MiB: lf stopped reading it")
    if result.finish_reason is None:
        raise RequestError("the runtime closed the stream before the answer was complete")


def _sse_events(chunks, deadline: _Deadline):
    """(event name, data) of each event of a server-sent event stream (lines end with \\r\\n, \\r or \\n; a
    blank line ends an event; `:` starts a comment), refusing a line or event of more than MAX_EVENT bytes."""
    buffer = bytearray()
    name, size = "", 0  # size: bytes of the event so far
    data: list[str] = []
    for chunk in chunks:
        deadline.check()
        search_from = max(0, len(buffer) - 1)  # what is left holds no line end, but maybe a \r before a \n
        buffer += chunk
        start = 0
        while (match := _NEWLINE.search(buffer, max(start, search_from))) is not None:
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # maybe half of a \r\n: the next chunk tells
            line, start = buffer[start : match.start()], match.end()
            if not line:
                if data:
                    yield name, "\n".join(data)
                name, data, size = "", [], 0
                continue
            size += len(line)
            if size > MAX_EVENT:
                break
            key, _, value = line.decode("utf-8", "replace").partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "data":
                data.append(value)
            elif key == "event":
                name = value
        del buffer[:start]
        if size + len(buffer) > MAX_EVENT:
            raise RequestError(
                f"the runtime sent more than {MAX_EVENT >> 20} MiB without ending a line or an event: lf stopped reading"
            )


def _piece_limit(payload: dict) -> int | None:
    """How many pieces of text a stream may bring: max_tokens (per choice) plus 10%, at least 16 more (a
    piece is one token or more; a few servers send a piece or two more than they count)."""
    limit = payload.get("max_tokens", payload.get("max_completion_tokens"))
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        return None
    n = payload.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    return (limit + max(16, limit // 10)) * choices


def _parse(text: str | bytes):
    """JSON, refusing what is nested deeper than a chat completion ever is (lf would fail printing it)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if _depth(value) > MAX_DEPTH:
        raise RequestError(
            f"the runtime sent JSON nested more than {MAX_DEPTH} levels deep, which no chat completion is"
        )
    return value


def _depth(value, level: int = 1) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _malformed(what: str, data, secrets) -> RequestError:
    return RequestError(f"the runtime sent an event lf cannot read ({what}): {_excerpt(data, secrets, 80)}")


def _event_pieces(result: ChatResult, event, data: str, secrets) -> list[tuple[str, int]]:
    """The text pieces of one chunk of a streamed answer, each with 1 when it counts against max_tokens;
    the chunk's id, model, usage and finish reason go into `result`. A chunk of the wrong shape is an error."""
    if not isinstance(event, dict):
        raise _malformed(f"{_kind(event)} instead of an object", data, secrets)
    choices = event.get("choices")
    if choices is None:
        choices = []
    if not isinstance(choices, list):
        raise _malformed(f"`choices` is {_kind(choices)}, not a list", data, secrets)
    pieces = []
    for choice in choices:
        if not isinstance(choice, dict):
            raise _malformed(f"a choice is {_kind(choice)}, not an object", data, secrets)
        delta = choice.get("delta")
        if delta is None:
            delta = {}
        if not isinstance(delta, dict):
            raise _malformed(f"`delta` is {_kind(delta)}, not an object", data, secrets)
        content = delta.get("content")
        if content is not None and not isinstance(content, str):
            raise _malformed(f"`content` is {_kind(content)}, not text", data, secrets)
        finish = choice.get("finish_reason")
        if finish is not None and not isinstance(finish, str):
            raise _malformed(f"`finish_reason` is {_kind(finish)}, not text", data, secrets)
        thinking = any(isinstance(delta.get(k), str) and delta[k] for k in ("reasoning_content", "reasoning"))
        if content or thinking:
            pieces.append((content or "", 1))
        if finish:
            result.finish_reason = finish
    if isinstance(event.get("id"), str):
        result.id = event["id"]
    if isinstance(event.get("model"), str):
        result.model = event["model"]
    if isinstance(event.get("usage"), dict):
        result.usage = event["usage"]
    return pieces


def _one_answer(result: ChatResult, body: bytes, content_type: str, shown: str, secrets) -> None:
    def bad(what: str) -> RequestError:
        return RequestError(
            f"{shown} answered with {what}, not a chat completion (content type {content_type or 'none'}): {_excerpt(body, secrets, 80)}"
        )

    try:
        data = _parse(body)
    except ValueError:
        raise bad("something that is not JSON") from None
    if not isinstance(data, dict):
        raise bad(f"JSON {_kind(data)}")
    if data.get("error"):
        raise RequestError(f"the runtime reported an error: {_error_text(data['error'], secrets)}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise bad("no choices" if not choices else "choices that are not objects")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(message, dict) or not (content is None or isinstance(content, str)):
        raise bad("a choice whose message is not text")
    finish = choices[0].get("finish_reason")
    result.response = data
    result.text = mask(content or "", secrets)
    result.finish_reason = finish if isinstance(finish, str) else None


def _read_capped(response, deadline: _Deadline) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        deadline.check()
        body += chunk
        if len(body) > MAX_ANSWER:
            raise RequestError(f"the answer passed {MAX_ANSWER >> 20} MiB without ending: lf stopped reading it")
    return bytes(body)


def _json_or_text(data: str):
    try:
        return _parse(data)
    except (ValueError, RequestError):
        return data


def _error_text(error, secrets) -> str:
    """A server's error as one short line: masked first, then cut (a key across the cut shows no part)."""
    if isinstance(error, dict) and error.get("message"):
        error = error["message"]
    return _excerpt(error if isinstance(error, str) else json.dumps(error), secrets, REASON_CHARS)


def _excerpt(text, secrets, limit: int) -> str:
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text[: limit * 8 + 4096]).decode("utf-8", "replace")
    text = " ".join("".join(c if c.isprintable() else " " for c in mask(text, secrets)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _raise_for_status(response, shown: str, secrets, deadline: _Deadline) -> None:
    body = bytearray()
    for chunk in response.iter_bytes():  # the start of an error body says what went wrong: no more is read
        deadline.check()
        body += chunk
        if len(body) >= MAX_ERROR_BODY:
            break
    try:
        data = _parse(bytes(body))
        detail = (
            _error_text(data.get("error") or data, secrets)
            if isinstance(data, dict)
            else _excerpt(body, secrets, REASON_CHARS)
        )
    except (ValueError, RequestError):
        detail = _excerpt(body, secrets, REASON_CHARS)
    hint = "check the api_key" if response.status_code in (401, 403) else None
    raise RequestError(f"{shown} answered HTTP {response.status_code}: {detail or '(no message)'}", hint=hint)


def _failure(exc: Exception, deadline: _Deadline, read: float, shown: str, secrets) -> RequestError | None:
    """The RequestError an exception during a request means (None: not a failure of the request, a bug)."""
    import httpx

    if deadline.expired:  # whatever the shut-down connection raised, the deadline is the reason
        return RequestError(
            f"no complete answer from {shown} within {deadline.seconds:g}s",
            hint="give it longer with --timeout SECONDS (0: no limit); lf runtime status shows whether it is frozen",
        )
    if isinstance(exc, RequestError):
        return RequestError(
            _excerpt(exc.message, secrets, 10 * REASON_CHARS), hint=exc.hint, exit_status=exc.exit_status
        )
    if isinstance(exc, httpx.ConnectError):
        return RequestError(
            f"cannot connect to {shown}: {_excerpt(str(exc), secrets, REASON_CHARS)}",
            hint="is the runtime running? lf runtime status",
        )
    if isinstance(exc, httpx.TimeoutException):
        waited = min(CONNECT_TIMEOUT, read) if isinstance(exc, httpx.ConnectTimeout) else read
        return RequestError(
            f"{shown} sent nothing for {waited:g}s", hint="lf runtime status shows whether it is frozen"
        )
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return RequestError(
            f"the connection to the runtime broke mid-answer ({_excerpt(str(exc), secrets, REASON_CHARS)})",
            hint="the runtime may have died: lf runtime status",
        )
    if isinstance(exc, (httpx.HTTPError, httpx.InvalidURL)):
        return RequestError(
            f"the request to {shown} failed: {_excerpt(str(exc) or type(exc).__name__, secrets, REASON_CHARS)}"
        )
    return None


class _Deadline:
    """One deadline for a whole answer. When it passes, the connection is shut down: that wakes a read
    blocked on a silent server at once, wherever it is (headers, body, a trickle), not a read timeout later."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds or None
        self.expired = False
        self._socket = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def __enter__(self) -> _Deadline:
        if self.seconds:
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def trace(self, event: str, info: dict) -> None:
        """httpcore's `trace` extension: keep the socket as soon as it is connected (or wrapped in TLS)."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            with self._lock:
                self._socket = stream.get_extra_info("socket") if stream is not None else None
                if self.expired:
                    self._shut()

    def check(self) -> None:
        if self.expired:
            raise RequestError("deadline")  # replaced by the deadline's own message in _failure

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shut()

    def _shut(self) -> None:
        import socket

        if self._socket is not None:
            try:  # the plain socket's shutdown, also under TLS: the reader sees the end of the stream
                socket.socket.shutdown(self._socket, socket.SHUT_RDWR)
            except OSError:
                pass
