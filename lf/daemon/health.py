"""Health probes: small concurrent HTTP GETs with one shared deadline.

This sits on the path of `lf runtime status --json`, which scripts call in loops, so it speaks just
enough HTTP/1.1 over a plain socket instead of importing an HTTP client, and runs every probe in its
own thread so one hung server cannot hold up the others or the command.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

DEFAULT_PROBE_TIMEOUT = 1.0
MAX_BODY = 64 * 1024


@dataclass
class Health:
    reachable: bool
    healthy: bool
    model_loaded: bool | None
    latency_ms: float | None
    message: str
    status_code: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Probe:
    url: str
    ready: str = "http-ok"  # http-ok (200 = ready, model loaded) | json:<key> | answers | reachable | loaded-by-lf
    api_key: str | None = None


def local_url(host: str, port: int, path: str = "") -> str:
    """The URL lf uses to reach a server bound to host:port: a wildcard bind is reached over loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def origin(url: str) -> str:
    """scheme://host:port of a URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def http_get(url: str, timeout: float, api_key: str | None = None) -> tuple[int, bytes]:
    """GET `url`, returning (status, body). Raises OSError (incl. socket.timeout) on failure."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        import ssl

        context = ssl.create_default_context()
    else:
        context = None
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if context else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + timeout
    # a bytes host skips the IDNA codec (and its imports) that name resolution applies to str hosts
    address = (host.encode("idna") if not host.isascii() else host.encode(), port)
    sock = socket.create_connection(address, timeout=timeout)  # type: ignore[arg-type]  # bytes: as the C call takes
    try:
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=host)
        headers = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Accept: application/json", "Connection: close"]
        if api_key:
            headers.append(f"Authorization: Bearer {api_key}")
        sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1"))
        chunks: list[bytes] = []
        size = 0
        while size < MAX_BODY:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(remaining)
            chunk = sock.recv(16384)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if _complete(b"".join(chunks)):
                break
    finally:
        sock.close()
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise OSError("not an HTTP response")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return int(status_line[1]), body


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return len(body) >= int(value.strip())
            except ValueError:
                return False
    return head.lower().find(b"transfer-encoding: chunked") >= 0 and body.endswith(b"0\r\n\r\n")


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


def probe_once(probe: Probe, timeout: float) -> Health:
    started = time.perf_counter()
    try:
        status, body = http_get(probe.url, timeout, probe.api_key)
    except TimeoutError:
        return Health(False, False, None, None, f"no answer within {timeout:g}s")
    except ConnectionRefusedError:
        return Health(False, False, None, None, "connection refused")
    except OSError as exc:
        return Health(False, False, None, None, exc.strerror or str(exc) or type(exc).__name__)
    except ValueError as exc:  # a URL whose port is not a number, or out of range
        return Health(False, False, None, None, f"bad address {probe.url}: {exc}")
    latency = round((time.perf_counter() - started) * 1000, 1)
    return interpret(probe.ready, status, body, latency)


def interpret(ready: str, status: int, body: bytes, latency: float) -> Health:
    if ready == "reachable":
        return Health(True, status < 500, None, latency, f"HTTP {status}", status)
    if ready == "answers":  # an endpoint that says nothing about loaded models (an external API)
        ok = status == 200
        return Health(True, ok, None, latency, "ok" if ok else f"HTTP {status}", status)
    if ready == "loaded-by-lf":
        # a server whose health endpoint must not be polled: lf loaded the model at start and checked it
        ok = status == 200
        return Health(
            True, ok, True if ok else None, latency, "model loaded at start" if ok else f"HTTP {status}", status
        )
    if status == 503:
        return Health(True, False, False, latency, "loading model", status)
    if status != 200:
        return Health(True, False, None, latency, f"HTTP {status}", status)
    if ready.startswith("json:"):
        key = ready[5:]
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return Health(True, False, None, latency, "health answer is not JSON", status)
        value = data.get(key) if isinstance(data, dict) else None
        loaded = bool(value)
        detail = (
            f"model {value} loaded"
            if isinstance(value, str) and value
            else ("model loaded" if loaded else "no model loaded")
        )
        return Health(True, True, loaded, latency, detail, status)
    return Health(True, True, True, latency, "ok", status)


def probe_all(probes: list[Probe | None], timeout: float = DEFAULT_PROBE_TIMEOUT) -> list[Health | None]:
    """Run every probe at once; each result arrives within `timeout` (plus thread start-up)."""
    results: list[Health | None] = [None] * len(probes)
    threads = []
    for i, probe in enumerate(probes):
        if probe is None:
            continue

        def run(i: int = i, probe: Probe = probe) -> None:
            results[i] = probe_once(probe, timeout)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append((i, thread))
    deadline = time.monotonic() + timeout + 0.05
    for i, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if results[i] is None:
            results[i] = Health(False, False, None, None, f"no answer within {timeout:g}s")
    return results
