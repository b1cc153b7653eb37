"""A fake OpenAI-compatible runtime server for fault tests, misbehaving on request.

Raw sockets and threads only, so it starts in a few tens of milliseconds (the soak test starts it 200
times). Serves GET /health, GET /v1/models and POST /v1/chat/completions (SSE or one JSON answer).
Every flag is one fault: ignore SIGTERM, fork workers, hang after accept, die mid-stream, ...
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time

TOKENS = ["Hello", " from", " the", " fake", " runtime", "."]


def log(text: str) -> None:
    print(f"fake: {text}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fakes.server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM (needs SIGKILL)")
    parser.add_argument(
        "--workers",
        action="store_true",
        help="fork workers: one plain, one in its own session, one orphaned grandchild",
    )
    parser.add_argument("--hang", action="store_true", help="accept connections, never answer")
    parser.add_argument("--ready-after", type=float, default=0.0, help="answer /health with 503 for this many seconds")
    parser.add_argument("--die-after", type=int, default=None, help="die (exit 1) after streaming this many tokens")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed tokens")
    parser.add_argument("--tokens", type=int, default=len(TOKENS), help="how many tokens an answer has")
    parser.add_argument(
        "--reject-key", action="store_true", help="answer 401, echoing the key it was sent (as careless servers do)"
    )
    parser.add_argument(
        "--log-requests", action="store_true", help="log a line per request; GET /burst/N logs N numbered lines at once"
    )
    parser.add_argument(
        "--engine-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="everything after it: flags a real engine would take (logged with argv)",
    )
    return parser.parse_args(argv)


# -- workers -------------------------------------------------------------------------------------
def _worker_loop() -> None:
    while True:
        time.sleep(1)


def fork_workers() -> None:
    """Children a real server might have: a plain fork, one that left for its own session, an orphan."""
    pid = os.fork()
    if pid == 0:
        _worker_loop()
    log(f"worker pid {pid}")
    pid = os.fork()
    if pid == 0:
        os.setsid()  # out of the process group: only a descendant walk finds it
        _worker_loop()
    log(f"worker pid {pid}")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a double fork: the grandchild is reparented away, but stays in the process group
        grandchild = os.fork()
        if grandchild == 0:
            os.close(read_end)
            os.close(write_end)
            _worker_loop()
        os.write(write_end, f"{grandchild}\n".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        log(f"worker pid {int(fh.readline())}")


# -- HTTP ----------------------------------------------------------------------------------------
def read_request(conn: socket.socket) -> tuple[str, str, dict, bytes] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return method, path, headers, body


def respond(conn: socket.socket, status: int, body: dict) -> None:
    raw = json.dumps(body).encode()
    reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 503: "Service Unavailable"}.get(status, "OK")
    conn.sendall(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}\r\nConnection: close\r\n\r\n".encode()
        + raw
    )


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def event(model: str, token: str | None, finish: str | None = None) -> bytes:
    delta = {"content": token} if token is not None else {}
    payload = {
        "id": "fake-1",
        "object": "chat.completion.chunk",
        "model": model,
        "system_fingerprint": f"fp-{model}",  # names the instance that answered, whatever a gateway calls the model
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(payload)}\n\n".encode()


def tokens(n: int) -> list[str]:
    return [TOKENS[i % len(TOKENS)] for i in range(n)]


def handle(conn: socket.socket, args: argparse.Namespace, started: float) -> None:
    with conn:
        request = read_request(conn)
        if request is None:
            return
        method, path, headers, body = request
        if args.log_requests:
            log_request(conn, method, path)
            if method == "GET" and path.startswith("/burst/"):
                return
        if args.reject_key:
            sent = headers.get("authorization", "").removeprefix("Bearer ")
            respond(
                conn,
                401,
                {"error": {"message": f"Incorrect API key provided: {sent}", "type": "invalid_request_error"}},
            )
            return
        if method == "GET" and path == "/health":
            if time.monotonic() - started < args.ready_after:
                respond(conn, 503, {"error": {"message": "Loading model"}})
            else:
                respond(conn, 200, {"status": "ok"})
        elif method == "GET" and path == "/v1/models":
            respond(conn, 200, {"object": "list", "data": [{"id": args.model, "object": "model"}]})
        elif method == "POST" and path == "/v1/chat/completions":
            chat(conn, args, json.loads(body or b"{}"))
        else:
            respond(conn, 404, {"error": {"message": f"no route {method} {path}"}})


_requests = iter(range(1, 1 << 62))
_requests_lock = threading.Lock()


def log_request(conn: socket.socket, method: str, path: str) -> None:
    """One numbered line per request (a test counts them in the log); /burst/N prints N more at once."""
    with _requests_lock:
        log(f"request {next(_requests)} {method} {path}")
        if method == "GET" and path.startswith("/burst/"):
            count = int(path.rsplit("/", 1)[1])
            sys.stderr.write("".join(f"fake: burst line {i} of {count} {'.' * 60}\n" for i in range(1, count + 1)))
            sys.stderr.flush()
    if method == "GET" and path.startswith("/burst/"):
        respond(conn, 200, {"lines": count})


def chat(conn: socket.socket, args: argparse.Namespace, request: dict) -> None:
    log(f"chat max_tokens={request.get('max_tokens')} stream={bool(request.get('stream'))}")
    words = tokens(args.tokens)
    if not request.get("stream"):
        respond(
            conn,
            200,
            {
                "id": "fake-1",
                "object": "chat.completion",
                "model": args.model,
                "system_fingerprint": f"fp-{args.model}",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}
                ],
            },
        )
        return
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    for i, word in enumerate(words):
        if args.die_after is not None and i == args.die_after:
            log(f"dying after {i} tokens")
            os._exit(1)
        conn.sendall(chunk(event(args.model, word)))
        if args.token_delay:
            time.sleep(args.token_delay)
    conn.sendall(chunk(event(args.model, None, "stop")) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


def serve(args: argparse.Namespace) -> None:
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((args.host, args.port))
    server.listen(64)
    log(f"model {args.model} loaded; listening on {args.host}:{args.port}")
    started = time.monotonic()
    held = []
    while True:
        conn, _ = server.accept()
        if args.hang:
            held.append(conn)  # accepted, never read, never answered
            continue
        threading.Thread(target=handle, args=(conn, args, started), daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    log(f"argv {json.dumps(sys.argv[1:])}")
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: (log("SIGTERM: shutting down"), os._exit(0)))
    if args.workers:
        fork_workers()
    serve(args)


if __name__ == "__main__":
    main()
