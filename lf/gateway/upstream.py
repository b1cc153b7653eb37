"""A lean HTTP/1.1 client for the gateway's hot path: plain-HTTP upstreams (the runtimes lf runs on this
machine), one connection per request, a streamed body read straight off an asyncio stream.

Measured on these 2-core machines, httpx's streamed read (httpcore, h11, anyio) cost ~0.3 ms of CPU per SSE
event against llama.cpp: CPU the engine then lacks on the same cores (P7b: 0.95× direct). This reads the
same events for a fraction of that. It answers with the few parts of httpx.Response the gateway uses
(status_code, headers, aiter_raw, aread, aclose) and raises httpx's exception types, so one proxy path
serves both; https and remote upstreams keep httpx.

Connections are not kept alive: llama.cpp's server (cpp-httplib) advertises keep-alive but closes the
connection after a streamed answer, and a request sent on it in that moment was seen read and never
answered (the client waited minutes). A fresh loopback connection costs ~0.1 ms.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

MAX_HEAD = 64 * 1024


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


class UpstreamResponse:
    def __init__(self, conn: _Connection, status: int, headers: dict[str, str]):
        self._conn = conn
        self.status_code = status
        self.headers = headers
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._remaining = None if chunked or length is None else int(length)
        self._chunked = chunked

    async def aiter_raw(self):
        reader = self._conn.reader
        try:
            if self._chunked:
                while True:
                    size_line = await reader.readline()
                    if not size_line.endswith(b"\n"):
                        raise httpx.RemoteProtocolError("the upstream closed the connection mid-answer")
                    size = int(size_line.split(b";", 1)[0], 16)
                    if size == 0:
                        await reader.readline()  # the empty trailer line
                        break
                    data = await reader.readexactly(size + 2)
                    yield data[:-2]
            elif self._remaining is not None:
                while self._remaining > 0:
                    data = await reader.read(min(self._remaining, 65536))
                    if not data:
                        raise httpx.RemoteProtocolError("the upstream closed the connection mid-answer")
                    self._remaining -= len(data)
                    yield data
            else:
                while data := await reader.read(65536):
                    yield data
        except asyncio.IncompleteReadError:
            raise httpx.RemoteProtocolError("the upstream closed the connection mid-answer") from None
        except (ConnectionError, OSError) as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from None
        except ValueError:
            raise httpx.RemoteProtocolError("the upstream sent a malformed chunk") from None

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None  # type: ignore[assignment]  # closed: no connection any more
        if conn is not None:
            conn.close()


class UpstreamClient:
    def __init__(self, connect_timeout: float = 5.0):
        self.connect_timeout = connect_timeout

    async def send(self, method: str, url: str, headers: dict[str, str], body: bytes) -> UpstreamResponse:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [
            f"{method} {path} HTTP/1.1",
            f"Host: {parts.netloc}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        head += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection")]
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=MAX_HEAD), self.connect_timeout
            )
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {self.connect_timeout:g}s") from None
        except OSError as exc:
            raise httpx.ConnectError(f"{exc.strerror or exc}") from None
        conn = _Connection(reader, writer)
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            writer.write(body)  # not joined to the head: a copy of a 10 MB body is some 10 ms of the event loop
            await writer.drain()
            status_line = await reader.readline()
            if not status_line:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            fields = status_line.split(None, 2)
            if len(fields) < 2 or not fields[1].isdigit():
                raise httpx.RemoteProtocolError("the upstream did not answer with HTTP")
            headers_out: dict[str, str] = {}
            size = len(status_line)
            while True:
                line = await reader.readline()
                size += len(line)
                if size > MAX_HEAD:
                    raise httpx.RemoteProtocolError("the upstream's headers are too large")
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers_out[name.strip().lower()] = value.strip()
            return UpstreamResponse(conn, int(fields[1]), headers_out)
        except (ConnectionError, OSError) as exc:
            conn.close()
            raise httpx.ReadError(str(exc) or type(exc).__name__) from None
        except BaseException:
            conn.close()
            raise
