"""Parsing a request's JSON body, in the gateway or in a process of its own.

Python's json parser holds the interpreter's lock for the whole parse (a thread does not help): 10 MB of
`{}` objects take most of a second and some 30 times their size in memory. The gateway parses a small body
itself (`parse_object`) and sends any other to this module run as a worker process (`main`), which parses it,
counts its values first (so its memory stays bounded), and answers with the object's top-level members: the
small ones decoded (model, stream, max_tokens, …), every other one as JSON text to forward as it is.

Only the standard library: the worker runs as `python -I <this file>`, without lf's imports.

The worker's protocol, on its stdin and stdout: a request is an 8-byte big-endian length and that many bytes
of body; an answer is an 8-byte length, a JSON header of that length ({"ok": true, "small": {...}, "raw":
[[key, length], ...]} or {"ok": false, "status": 400, "message": ..., "code": ...}), then
each raw member's JSON text, in the header's order.
"""

from __future__ import annotations

import json
import os
import struct
import sys

MAX_VALUES = 1_000_000  # values and keys a body may hold: what bounds a parse's memory (~64 bytes each)
MAX_MEMBERS = 1024  # top-level fields: an OpenAI request has a few dozen
MAX_DEPTH = 128  # levels of nesting (a strict JSON schema in response_format has at most 10)
SMALL_STRING = 4096  # characters: a longer string member stays JSON text
SMALL_OTHER = 256  # bytes of JSON text: a longer list or object member stays text
LENGTH = struct.Struct(">Q")


class BadBody(Exception):
    """A body the gateway refuses, with the status and words to refuse it with."""

    def __init__(self, status: int, message: str, code: str = "invalid_json"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def parse_object(body: bytes) -> dict:
    """The JSON object `body` holds; BadBody when it holds anything else, or nests deeper than Python parses."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise BadBody(400, f"the request body is JSON nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise BadBody(400, f"the request body is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BadBody(400, "the request body must be a JSON object")
    if len(value) > MAX_MEMBERS:
        raise BadBody(400, f"the request body has {len(value)} top-level fields; at most {MAX_MEMBERS} are accepted")
    # deeper JSON cannot be written again where the gateway forwards it (its stack is deeper than here)
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _deeper_than(body, MAX_DEPTH):
        raise BadBody(400, f"the request body is JSON nested more than {MAX_DEPTH} levels deep")
    return value


def _deeper_than(body: bytes, limit: int) -> bool:
    """Does the (valid) JSON text nest lists and objects more than `limit` levels deep? Its brackets alone, outside
    strings, lose their innermost level with each pass of a replace (C speed, no recursion)."""
    brackets = _outside_strings(body).translate(_AS_BRACKETS, _NOT_BRACKETS)
    for _ in range(limit):
        brackets = brackets.replace(b"[]", b"")
        if not brackets:
            return False
    return True


_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def _outside_strings(body: bytes) -> bytes:
    """What lies between the JSON text's strings (escapes taken out first, so every quote left is a string's end)."""
    plain = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(plain.split(b'"')[::2])


def count_values(body: bytes) -> int:
    """About how many values and keys `body` holds (exact for strings and containers, commas for the rest),
    without parsing it: strings are found by their quotes once escapes are taken out."""
    quotes = body.replace(b"\\\\", b"").replace(b'\\"', b"").count(b'"')
    if quotes // 2 > MAX_VALUES:
        return quotes // 2
    outside = _outside_strings(body)
    return quotes // 2 + outside.count(b"{") + outside.count(b"[") + outside.count(b",") + 1


def members(obj: dict) -> tuple[dict, list[tuple[str, bytes]]]:
    """The object's small members decoded, every other one as its JSON text."""
    small: dict = {}
    raw: list[tuple[str, bytes]] = []
    for key, value in obj.items():
        if value is None or isinstance(value, (bool, int, float)):
            small[key] = value
        elif isinstance(value, str) and len(value) <= SMALL_STRING:
            small[key] = value
        else:
            text = json.dumps(value).encode()
            if isinstance(value, str) or len(text) > SMALL_OTHER:
                raw.append((key, text))
            else:
                small[key] = value
    return small, raw


def answer(body: bytes) -> tuple[dict, list[bytes]]:
    """The worker's answer to one body: its header and the raw members' text."""
    try:
        values = count_values(body)
        if values > MAX_VALUES:
            raise BadBody(413, f"the request body holds about {values} JSON values; at most {MAX_VALUES} are accepted")
        small, raw = members(parse_object(body))
    except BadBody as exc:
        return {"ok": False, "status": exc.status, "message": exc.message, "code": exc.code}, []
    except MemoryError:
        return {
            "ok": False,
            "status": 413,
            "message": "the request body is too large to parse",
            "code": "invalid_json",
        }, []
    return {"ok": True, "small": small, "raw": [[k, len(t)] for k, t in raw]}, [t for _, t in raw]


def _read(stream, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def main() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the gateway's terminal: the gateway decides
    os.nice(10)  # a big body's parse yields the CPU to the gateway and its models
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = _read(stdin, LENGTH.size)
        if head is None:
            return  # the gateway is gone, or done with this worker
        body = _read(stdin, LENGTH.unpack(head)[0])
        if body is None:
            return
        header, texts = answer(body)
        del body
        encoded = json.dumps(header).encode()
        stdout.write(LENGTH.pack(len(encoded)) + encoded)
        for text in texts:
            stdout.write(text)
        stdout.flush()
        del texts
        _trim()


def _trim() -> None:
    """Give what a parse took back to the system (glibc keeps freed memory for reuse)."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


if __name__ == "__main__":
    main()
