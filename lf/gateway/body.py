"""A request's JSON body, read and parsed within bounds, so that no body slows another request's stream nor
takes the gateway's memory:

- read with a limit (`max_body`, 413 before or while reading), a deadline between two pieces
  (`read_timeout`, 408) and a least rate for the whole (MIN_BODY_RATE bytes a second after the first
  `read_timeout` seconds, as Apache's mod_reqtimeout does: 408), so a body trickled a byte at a time,
  never pausing long, cannot hold its connection for hours;
- a body past LARGE bytes holds one of MAX_LARGE places until it has been forwarded (or refused): the
  bodies held at once, hence their memory, are bounded; more wait, their connections paused;
- a small body with few values is parsed here (a few milliseconds at most); any other in a worker process
  (lf.gateway.jsonworker), so the event loop never waits for it, and what comes back is its top-level
  members, the big ones (messages, input, tools, …) as JSON text forwarded as it is, never decoded here.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import anyio
from starlette.requests import ClientDisconnect, Request

from lf.gateway import jsonworker
from lf.gateway.guard import HTTPProblem
from lf.gateway.jsonworker import BadBody

LARGE = 256 * 1024  # bytes: a body past this takes one of MAX_LARGE places
MAX_LARGE = 4
INLINE_VALUES = 20_000  # a body of at most LARGE bytes whose characters say it may hold more values goes to the worker
PIECE = 256 * 1024  # bytes: a big member comes back from the worker in pieces this large
PARSE_TIMEOUT = 60.0  # seconds the worker may take for one body
MIN_BODY_RATE = 500  # bytes a second: a body must come at least this fast, after its first read_timeout seconds


class Gone(Exception):
    """The client went away while its body was read."""


class RawJSON:
    """A member's JSON text, forwarded as it is: in the pieces it came in (one copy of 10 MB is some 10 ms of the
    event loop, so big texts are never copied but once, into the body sent upstream)."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces

    def decoded(self):
        return json.loads(b"".join(self.pieces))


class Payload:
    """A request's JSON object: its members, each decoded or (a big one) as JSON text. `get` decodes a text
    member when asked (do not ask for the big ones: that is the parse the worker spares the event loop);
    `forwarded` builds the body sent upstream."""

    def __init__(self, members: dict, release: Callable[[], None] | None = None):
        self.members = members
        self._release = release

    def get(self, key: str, default=None):
        value = self.members.get(key, default)
        return value.decoded() if isinstance(value, RawJSON) else value

    def __contains__(self, key: object) -> bool:
        return key in self.members

    def keys(self):
        return self.members.keys()

    def forwarded(self, defaults: Mapping | None = None, **overrides) -> bytes:
        """The object as JSON: `defaults` under its members, `overrides` over them."""
        merged = {**(defaults or {}), **self.members, **overrides}
        if not any(isinstance(v, RawJSON) for v in merged.values()):
            return json.dumps(merged).encode()
        pieces = [b"{"]
        for key, value in merged.items():
            pieces += [b", " if len(pieces) > 1 else b"", json.dumps(key).encode(), b": "]
            pieces += value.pieces if isinstance(value, RawJSON) else [json.dumps(value).encode()]
        pieces.append(b"}")
        return b"".join(pieces)

    def release(self) -> None:
        """Done with the body (forwarded or refused): its big members go, and its place to the next large body."""
        self.members = {k: v for k, v in self.members.items() if not isinstance(v, RawJSON)}
        release, self._release = self._release, None
        if release is not None:
            release()


def _shape(chunk: bytes) -> int:
    """What in a piece of JSON text may start a value or cost the parser work (an upper bound, C speed)."""
    return chunk.count(b",") + chunk.count(b"{") + chunk.count(b"[") + chunk.count(b'"') + chunk.count(b"\\")


class Bodies:
    """The gateway's body reader: its places for large bodies and its worker process."""

    def __init__(self, max_body: int, read_timeout: float, wait_timeout: float):
        self.max_body, self.read_timeout, self.wait_timeout = max_body, read_timeout, wait_timeout
        self.places = asyncio.Semaphore(MAX_LARGE)
        self.large = 0  # large bodies held
        self.worker = JsonWorker()

    async def json_object(self, request: Request, limit: int | None = None) -> Payload:
        """The request's body as a JSON object: HTTPProblem (400, 408, 413, 503) when it is none or too much,
        Gone when the client left."""
        held: list[bool] = []  # a place taken while reading
        try:
            body, size, shape = await self._read(request, limit or self.max_body, held)
            if size <= LARGE and shape <= INLINE_VALUES:
                members = jsonworker.parse_object(b"".join(body))
            else:
                members = await self.worker.parse(body, size)
        except BadBody as exc:
            self._give_back(held)
            raise HTTPProblem(exc.status, exc.message, exc.code) from None
        except BaseException:
            self._give_back(held)
            raise
        finally:
            body = []  # not kept by a traceback that outlives this call
        return Payload(members, (lambda: self._give_back(held)) if held else None)

    async def _read(self, request: Request, limit: int, held: list[bool]) -> tuple[list[bytes], int, int]:
        """The body's pieces, its size, and how many values it may hold at most (see _shape)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = shape = 0
        stream = request.stream().__aiter__()
        clock = asyncio.get_running_loop().time
        started = clock()
        while True:
            allowed = started + self.read_timeout + size / MIN_BODY_RATE - clock()  # the least rate's deadline
            wait = min(self.read_timeout, allowed)
            try:
                if wait <= 0:
                    raise TimeoutError
                with anyio.fail_after(wait):
                    chunk = await stream.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                said = (
                    f"stopped arriving ({self.read_timeout:g}s without a byte)"
                    if wait >= self.read_timeout
                    else f"arrives slower than {MIN_BODY_RATE} bytes a second"
                )
                raise HTTPProblem(
                    408, f"the request body {said}", "request_timeout", headers={"connection": "close"}
                ) from None
            except ClientDisconnect:
                raise Gone() from None
            size += len(chunk)
            if size > limit:
                chunks.clear()
                raise _too_large(limit)
            shape += _shape(chunk)
            chunks.append(chunk)
            if size > LARGE and not held:
                await self._take_place()
                held.append(True)
        return chunks, size, shape

    def _give_back(self, held: list[bool]) -> None:
        """A large body is done with: its place goes to the next one, and once none is left, the memory the
        bodies took goes back to the system."""
        if held:
            held.clear()
            self.places.release()
            self.large -= 1
            if self.large == 0:
                _return_freed_memory()

    async def _take_place(self) -> None:
        try:
            with anyio.fail_after(self.wait_timeout):
                await self.places.acquire()
            self.large += 1
        except TimeoutError:
            raise HTTPProblem(
                503,
                f"{MAX_LARGE} large requests are being handled; this one waited {self.wait_timeout:g}s for its turn",
                "overloaded",
                "server_error",
                headers={"retry-after": "5", "connection": "close"},
            ) from None

    async def close(self) -> None:
        await self.worker.close()


def _return_freed_memory() -> None:
    """Give the memory large bodies took back to the system: glibc keeps freed blocks for reuse, so a burst of
    10 MB bodies would leave the gateway hundreds of MB larger for good."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        pass


def _too_large(limit: int) -> HTTPProblem:
    return HTTPProblem(
        413, f"the request body is larger than {limit} bytes", "request_too_large", headers={"connection": "close"}
    )


class JsonWorker:
    """The worker process (started on the first body it is needed for; one body at a time)."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()

    async def parse(self, body: list[bytes], size: int) -> dict:
        """The members of the JSON object in the pieces `body` (`size` bytes in all); BadBody when it is none."""
        # shielded: a client that leaves mid-exchange must not leave the worker's pipe half read
        task = asyncio.get_running_loop().create_task(self._exchange(body, size))
        del body
        try:
            members, refusal = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its outcome is nobody's now
            raise
        finally:
            del task  # the task and a traceback through this frame would hold each other (and the body)
        if refusal is not None:
            raise refusal
        return members

    async def _exchange(self, body: list[bytes], size: int) -> tuple[dict, BadBody | None]:
        """The members, or the refusal (returned, not raised: an exception kept by the task would keep the body)."""
        async with self.lock:
            try:
                with anyio.fail_after(PARSE_TIMEOUT):
                    header, raw = await self._ask(body, size)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                await self._stop()
                return {}, BadBody(503, f"the request body could not be parsed ({type(exc).__name__})", "parse_failed")
            finally:
                body = []
        if not header["ok"]:
            return {}, BadBody(header["status"], header["message"], header["code"])
        return {**header["small"], **raw}, None

    async def _ask(self, body: list[bytes], size: int) -> tuple[dict, dict]:
        """Send the body, read the answer: piece by piece, never a copy of the whole on the event loop."""
        proc = await self._process()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(jsonworker.LENGTH.pack(size))
        for piece in body:
            proc.stdin.write(piece)
            await proc.stdin.drain()
        del body
        (length,) = jsonworker.LENGTH.unpack(await proc.stdout.readexactly(jsonworker.LENGTH.size))
        header = json.loads(await proc.stdout.readexactly(length))
        raw = {}
        for key, left in header.get("raw", []):
            pieces = []
            while left > 0:
                pieces.append(await proc.stdout.readexactly(min(left, PIECE)))
                left -= len(pieces[-1])
            raw[key] = RawJSON(pieces)
        return header, raw

    async def _process(self) -> asyncio.subprocess.Process:
        if self.proc is None or self.proc.returncode is not None:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",  # nothing from the environment, and not this package's folder on its path
                str(Path(jsonworker.__file__)),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd="/",
            )
        return self.proc

    async def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # it leaves at the end of its input
        try:
            with anyio.fail_after(2):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def close(self) -> None:
        async with self.lock:
            await self._stop()
