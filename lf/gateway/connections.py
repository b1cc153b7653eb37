"""The gateway's connections: uvicorn's httptools protocol, with the bounds it lacks.

uvicorn closes a kept-alive connection after its `timeout_keep_alive`, but a connection that never sends a
request, or sends its headers a byte at a time (slowloris), is held forever, before any key is checked; and it
has no limit on connections but the open-file limit, past which every new client is refused. So:

- a request's headers must be in within `read_timeout` seconds of the connection opening, or of its previous
  answer ending; a silent or trickling client is closed then;
- headers past MAX_HEAD bytes get 431 and the connection closed;
- at most `limit` connections: a newcomer past it closes the connection that has waited for a request the
  longest (idle, or still sending its headers: never one being answered); when every one is being answered,
  the newcomer gets 503 at once;
- a client that stops reading an answer for `read_timeout` seconds is dropped (its answer ends as a hang-up);
- an HTTP/1.0 client, which cannot read chunked encoding, gets a body delimited by the connection's close.

`Server` is uvicorn's, telling the gateway when it starts to stop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD = 64 * 1024  # bytes of request line and headers


class Connections:
    """What every connection of one server shares: the limit, the deadline, and who waits for a request."""

    def __init__(self, limit: int, header_timeout: float):
        self.limit = limit
        self.header_timeout = header_timeout
        self.open = 0
        self.waiting: dict[GuardedProtocol, None] = {}  # waiting for a request's headers, longest first
        self.evicted = 0  # closed to make room (read by tests and the log)

    def make_room(self) -> bool:
        """Close the connection that has waited for a request the longest; False when every one is busy."""
        for conn in self.waiting:
            del self.waiting[conn]
            conn.close_waiting()
            self.evicted += 1
            return True
        return False


class Server(uvicorn.Server):
    """uvicorn's server, saying where it listens once it does, and telling the gateway when it begins to stop
    (its answers in flight then get their grace and are ended cleanly, instead of cancelled)."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None], on_stopping: Callable[[], None]):
        super().__init__(config)
        self.on_listening, self.on_stopping = on_listening, on_stopping

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_listening()

    async def shutdown(self, sockets=None) -> None:
        if self.started:
            self.on_stopping()
        await super().shutdown(sockets)


def protocol(limit: int, header_timeout: float) -> type[GuardedProtocol]:
    """The protocol class for one server (uvicorn's `http` setting), with its own Connections."""
    shared = Connections(limit, header_timeout)
    return type("Protocol", (GuardedProtocol,), {"shared": shared})


class GuardedProtocol(HttpToolsProtocol):
    shared: Connections

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        shared = self.shared
        shared.open += 1
        self._timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # received while waiting for a request's headers
        self._head_size = 0  # of the request line and headers themselves
        self._refused = False
        if shared.open > shared.limit and not shared.make_room():
            self._refuse(503, "the gateway has as many connections as it holds, all busy: try again shortly")
            return
        self._wait_for_request()

    def connection_lost(self, exc) -> None:
        self._disarm()
        self.shared.waiting.pop(self, None)
        self.shared.open -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        waiting = self in self.shared.waiting
        if waiting:
            self._head_bytes += len(data)
        super().data_received(data)
        if waiting and self in self.shared.waiting and self._head_bytes > MAX_HEAD:  # headers without end
            self._refuse(431, f"the request's headers are larger than {MAX_HEAD} bytes")

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.shared.waiting.pop(self, None)
        self._disarm()
        if self._head_size > MAX_HEAD:  # refused before the application sees the request
            self._refuse(431, f"the request's headers are larger than {MAX_HEAD} bytes")
            return
        super().on_headers_complete()
        if self.cycle is not None:
            if self.scope.get("http_version") == "1.0":
                _close_delimited(self.cycle)
            _bounded_writes(self.cycle, self.flow, self.transport, self.shared.header_timeout)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        next_one = bool(self.pipeline)
        super().on_response_complete()
        if not next_one and not self.transport.is_closing():
            self._wait_for_request()

    # -- the deadline ------------------------------------------------------------------------------------
    def _wait_for_request(self) -> None:
        self.shared.waiting.pop(self, None)
        self.shared.waiting[self] = None  # the most recent at the end
        self._head_bytes = self._head_size = 0
        self._disarm()
        self._timer = self.loop.call_later(self.shared.header_timeout, self.close_waiting)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close_waiting(self) -> None:
        """Close the connection (it waits for a request: nothing is lost)."""
        self._disarm()
        self.shared.waiting.pop(self, None)
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        self._refused = True
        self._disarm()
        self.shared.waiting.pop(self, None)
        body = json.dumps(
            {"error": {"message": message, "type": "server_error", "param": None, "code": "connection_refused"}}
        ).encode()
        reason = {431: "Request Header Fields Too Large", 503: "Service Unavailable"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n" + ("retry-after: 1\r\n" if status == 503 else "") + "\r\n"
        )
        if not self.transport.is_closing():
            self.transport.write(head.encode() + body)
            self.transport.close()


def _bounded_writes(cycle, flow, transport, stall: float) -> None:
    """A client that stops reading an answer (its buffers full, the connection's writing paused) has `stall`
    seconds to read again; then its connection is dropped, so the answer ends as a hang-up (499) and lets go of
    its model's place and engine, instead of holding them for as long as the client likes. Costs nothing while
    the client keeps up (no timer unless writing is paused)."""
    send = cycle.send
    loop = asyncio.get_running_loop()

    async def send_bounded(message) -> None:
        if cycle.disconnected:
            # the client is gone (it hung up, or was dropped here): the send is a no-op, and without a pause an
            # answer whose upstream has more at hand would never let the response see it and stop
            await asyncio.sleep(0)
            return
        if not flow.write_paused:
            await send(message)
            return
        timer = loop.call_later(stall, transport.abort)
        try:
            await send(message)
        finally:
            timer.cancel()

    cycle.send = send_bounded


def _close_delimited(cycle) -> None:
    """Answer an HTTP/1.0 request without chunked encoding: uvicorn chunks every body of unknown length, which
    an HTTP/1.0 client cannot read; here such a body is written as it is and ends with the connection."""
    send = cycle.send
    framed = False

    async def send_plain(message) -> None:
        nonlocal framed
        if message["type"] == "http.response.start":
            names = {name.lower() for name, _ in message.get("headers", [])}
            if b"content-length" not in names and b"transfer-encoding" not in names:
                framed = True
                cycle.chunked_encoding = False  # uvicorn writes the body as it comes
                cycle.keep_alive = False  # and closes the connection after it
        elif message["type"] == "http.response.body" and framed:
            cycle.expected_content_length = len(message.get("body", b""))  # what uvicorn checks it was sent
        await send(message)

    cycle.send = send_plain
