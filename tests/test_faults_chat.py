"""`lf chat` against a hostile or broken server: each fault provoked for real, the real `lf` in a subprocess.

The server is a small raw-socket HTTP server in this process, configured in ./llamafarm.yaml as an external
OpenAI endpoint. It misbehaves by the first part of the request's path (`/<mode>/v1/chat/completions`):
silent, trickling, endless, lines that never end, JSON of the wrong shape, keys quoted back. Each test was
checked to fail with its protection taken out of lf (said in the test's docstring).
"""

from __future__ import annotations

import base64
import json
import os
import pty
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import psutil
import pytest
from test_chat_repl import CTRL_D, PROMPT, Terminal

from fakes import wait_until
from fakes.server import read_request

BUG = "this is a bug in lf"  # what the error boundary says about an unexpected exception
KEY = "sk-hostile-0123456789abcdef"  # the api_key in llamafarm.yaml, which some modes quote back
MiB = 1 << 20


# -- the hostile server ------------------------------------------------------------------------------
def sse(data) -> bytes:
    return b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"


def piece(text: str, **extra) -> bytes:
    return sse({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}], **extra})


FINISH = sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + b"data: [DONE]\n\n"
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"

# streamed events that are JSON (or not) of a shape no chat completion chunk has; each follows one good piece
EVENTS = {
    "number": b"42",
    "null": b"null",
    "list": b"[1, 2]",
    "text": b'"hello"',
    "choice null": b'{"choices": [null]}',
    "choices text": b'{"choices": "abc"}',
    "delta text": b'{"choices": [{"index": 0, "delta": "x"}]}',
    "content number": b'{"choices": [{"index": 0, "delta": {"content": 5}}]}',
    "finish_reason number": b'{"choices": [{"index": 0, "delta": {}, "finish_reason": 7}]}',
    "not json": b"<html>oops</html>",
    "nested deep": b"[" * 50_000 + b"]" * 50_000,
}
# one-piece answers to a request with "stream": false: (content type, body)
BODIES = {
    "html": ("text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    "sse": ("text/event-stream", piece("Hi") + FINISH),
    "json list": ("application/json", b"[1, 2, 3]"),
    "json null": ("application/json", b"null"),
    "json number": ("application/json", b"42"),
    "choices text": ("application/json", b'{"choices": "abc"}'),
    "choice number": ("application/json", b'{"choices": [5]}'),
    "message text": ("application/json", b'{"choices": [{"message": "hi"}]}'),
    "content number": ("application/json", b'{"choices": [{"message": {"content": 5}}]}'),
    "not utf-8": ("application/json", b'\xff\xfe{"choices'),
    "nested deep": (
        "application/json",
        b'{"choices": [{"message": {"content": "hi"}}], "x": ' + b"[" * 900 + b"]" * 900 + b"}",
    ),
    "empty": ("application/json", b""),
}


class Hostile(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), HostileHandler)
        self.closing = threading.Event()
        self.requests: list[tuple[str, str, dict, bytes]] = []

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, mode: str, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}/{mode}/v1"


class HostileHandler(socketserver.BaseRequestHandler):
    server: Hostile

    def handle(self) -> None:
        request = self.read_request()
        if request is None:
            return
        method, path, headers, body = request
        self.server.requests.append(request)
        mode = unquote(path.split("/")[1])
        try:
            if path.endswith("/models"):
                self.json(200, {"object": "list", "data": [{"id": "hostile-model", "object": "model"}]})
            else:
                getattr(self, "mode_" + mode.split(":")[0].replace("-", "_"))(
                    mode.partition(":")[2], headers, json.loads(body or b"{}")
                )
        except OSError:  # lf went away: what a hostile server does not care about either
            pass

    def read_request(self):
        return read_request(self.request)  # the fakes' own HTTP request reader

    def send(self, data: bytes) -> None:
        self.request.sendall(data)

    def json(self, status: int, data, content_type: str = "application/json") -> None:
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.send(
            f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )

    def hold(self) -> None:
        self.server.closing.wait(120)

    def mode_ok(self, arg, headers, request) -> None:
        if not request.get("stream"):
            self.json(
                200,
                {
                    "id": "ok-1",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "Hello world"},
                            "finish_reason": "stop",
                        }
                    ],
                },
            )
            return
        self.send(STREAM_HEAD + piece("Hello") + piece(" world") + FINISH)

    def mode_silent(self, arg, headers, request) -> None:
        self.hold()  # the question was read; no answer ever comes

    def mode_trickle_head(self, arg, headers, request) -> None:
        self.send(b"HTTP/1.1 200 OK\r\n")
        while not self.server.closing.is_set():  # a header byte now and then: every read gets something
            self.send(b"X")
            time.sleep(0.2)

    def mode_stall(self, arg, headers, request) -> None:
        self.send(STREAM_HEAD + piece("Hello") + piece(" world"))
        self.hold()

    def mode_endless(self, arg, headers, request) -> None:
        self.send(STREAM_HEAD)
        while not self.server.closing.is_set():
            self.send(piece(" more"))
            time.sleep(0.01)

    def mode_ignore_max(self, arg, headers, request) -> None:
        """3000 pieces, whatever max_tokens says (the issue saw 2,848 for --max-tokens 5)."""
        self.send(STREAM_HEAD + b"".join(piece(f" t{i}") for i in range(3000)) + FINISH)

    def mode_no_newline(self, arg, headers, request) -> None:
        self.send(STREAM_HEAD + b"data: ")
        block = b"x" * 65536
        while not self.server.closing.is_set():
            self.send(block)

    def mode_no_blank_line(self, arg, headers, request) -> None:
        self.send(STREAM_HEAD)
        block = b"data: " + b"y" * 1000 + b"\n"
        while not self.server.closing.is_set():
            self.send(block * 64)

    def mode_event(self, arg, headers, request) -> None:
        self.send(STREAM_HEAD + piece("Hi") + sse(EVENTS[arg]) + FINISH)

    def mode_body(self, arg, headers, request) -> None:
        content_type, body = BODIES[arg]
        self.json(200, body, content_type)

    def mode_echo_key(self, arg, headers, request) -> None:
        """The key it was sent, quoted back in the id, the fingerprint and the text (split across pieces)."""
        key = headers.get("authorization", "").removeprefix("Bearer ")
        if not request.get("stream"):
            self.json(
                200,
                {
                    "id": key,
                    "system_fingerprint": key,
                    "model": f"model-{key}",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"your key is {key}"},
                            "finish_reason": "stop",
                        }
                    ],
                },
            )
            return
        events = [
            piece("your key is ", id=key, system_fingerprint=key),
            piece(key[:7], id=key),
            piece(key[7:15]),
            piece(key[15:]),
            piece(", and its start "),
            piece(key[:9]),
        ]
        self.send(STREAM_HEAD + b"".join(events) + FINISH)

    def mode_error_text(self, arg, headers, request) -> None:
        """An error whose text has the key where lf used to cut it (at 300 characters)."""
        key = headers.get("authorization", "").removeprefix("Bearer ")
        self.json(500, ("x" * 290 + key + " was refused").encode(), "text/plain")

    def mode_error_json(self, arg, headers, request) -> None:
        key = headers.get("authorization", "").removeprefix("Bearer ")
        self.json(400, {"error": {"message": "y" * 295 + key + " is not valid", "type": "invalid_request_error"}})


@pytest.fixture
def hostile():
    server = Hostile()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.closing.set()
    server.shutdown()
    server.server_close()


def configure(*entries: dict) -> None:
    """./llamafarm.yaml with these external entries (provider openai); the first is the default."""
    lines = ["version: v1", "name: hostile", "namespace: default", "runtime:", "  models:"]
    for entry in entries:
        lines.append("    - " + json.dumps({"provider": "openai", "model": "hostile-model", **entry}))
    Path("llamafarm.yaml").write_text("\n".join(lines) + "\n")


def use(server: Hostile, mode: str, **entry) -> None:
    configure({"name": "hostile", "base_url": server.url(mode), **entry})


def lf(*args, timeout: float = 60, input: bytes | None = None):
    """The real `lf` with bytes in and text out (arguments may be bytes too), and its wall time."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "lf", *args], input=input, capture_output=True, timeout=timeout, env=dict(os.environ)
    )
    proc.stdout, proc.stderr = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    proc.elapsed = time.monotonic() - started
    return proc


def assert_failed_cleanly(proc, code: int = 9) -> str:
    """Exit `code`, no traceback, no "bug in lf", and one `Error:` line (hint lines are indented). Returns it."""
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    assert "Traceback" not in proc.stderr and BUG not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and all(line.startswith("  ") for line in lines if line not in errors), proc.stderr
    return errors[0]


# -- 6. one deadline, bounded memory, max_tokens -----------------------------------------------------
@pytest.mark.parametrize("mode", ["silent", "trickle-head"])
@pytest.mark.parametrize("no_stream", [False, True], ids=["stream", "no-stream"])
def test_a_runtime_that_never_answers_fails_at_the_deadline(hostile, mode, no_stream):
    """Without the deadline, `silent` waits out the 300 s read timeout and `trickle-head` forever (each
    read gets a byte): both overran this test's 60 s limit."""
    use(hostile, mode)
    proc = lf("chat", "hi", "--timeout", "2", *(["--no-stream"] if no_stream else []))
    error = assert_failed_cleanly(proc)
    assert "no complete answer" in error and "within 2s" in error and "--timeout" in proc.stderr
    assert proc.elapsed < 8, proc.elapsed
    assert proc.stdout == ""


@pytest.mark.parametrize("mode", ["stall", "endless"])
def test_a_stalled_or_endless_stream_ends_at_the_deadline_keeping_the_text(hostile, mode):
    """Without the deadline: `stall` waited 300 s, `endless` never ended (killed at this test's 60 s)."""
    use(hostile, mode)
    proc = lf("chat", "hi", "--timeout", "3")
    error = assert_failed_cleanly(proc)
    assert "within 3s" in error
    assert 3 <= proc.elapsed < 9, proc.elapsed
    assert proc.stdout.endswith("\n") and proc.stdout.count("\n") == 1  # what was printed stays, its line ended
    assert proc.stdout.startswith("Hello world" if mode == "stall" else " more more")


def test_no_deadline_when_asked_and_a_healthy_answer_is_not_cut(hostile):
    use(hostile, "ok")
    assert lf("chat", "hi", "--timeout", "0").stdout == "Hello world\n"
    assert lf("chat", "hi", "--timeout", "0.5", "--no-stream").stdout == "Hello world\n"


def peak_rss_mb(proc: subprocess.Popen, limit_mb: float, seconds: float) -> float:
    """Sample the process's memory until it exits; kill it (and fail) past `limit_mb` or `seconds`."""
    peak = 0.0
    deadline = time.monotonic() + seconds
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss / MiB)
        except psutil.Error:
            break
        if peak > limit_mb or time.monotonic() > deadline:
            proc.kill()
            proc.wait(10)
            raise AssertionError(
                f"lf chat still running after {time.monotonic() - deadline + seconds:.1f}s with {peak:.0f} MB"
            )
        time.sleep(0.01)
    return peak


@pytest.mark.parametrize("mode", ["no-newline", "no-blank-line"])
def test_a_line_or_event_that_never_ends_is_refused_in_bounded_memory(hostile, mode):
    """Without the 1 MiB bound, lf's memory grew past the 200 MB this test allows within seconds (it reads
    the server's bytes as fast as they come, and kept them all waiting for a line end)."""
    use(hostile, mode)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lf", "chat", "hi", "--timeout", "30"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        peak = peak_rss_mb(proc, limit_mb=200, seconds=25)
        out, errs = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), errs.decode())
    error = assert_failed_cleanly(result)
    assert "more than 1 MiB without ending a line or an event" in error
    assert peak < 120, f"{peak:.0f} MB"


def test_a_stream_that_ignores_max_tokens_is_cut_after_a_margin(hostile):
    """Without the cut, lf printed all 3000 pieces and exited 0."""
    use(hostile, "ignore-max")
    proc = lf("chat", "hi", "--max-tokens", "5")
    error = assert_failed_cleanly(proc)
    assert "max_tokens" in error
    assert proc.stdout.count(" t") == 5 + 16 and proc.stdout.endswith(" t20\n")  # max_tokens + the margin, line ended
    proc = lf("chat", "hi", "--max-tokens", "1000")
    assert_failed_cleanly(proc)
    assert proc.stdout.count(" t") == 1000 + 100
    use(hostile, "ok")  # an answer within max_tokens is not touched
    assert lf("chat", "hi", "--max-tokens", "2").stdout == "Hello world\n"


# -- 7. answers of the wrong shape, messages that are not text ----------------------------------------
@pytest.mark.parametrize("shape", EVENTS)
def test_a_streamed_event_of_the_wrong_shape_is_a_chat_failure(hostile, shape):
    """Before: "unexpected TypeError/AttributeError … this is a bug in lf" (exit 1), or for some shapes a
    silent exit 0 (non-JSON data was skipped)."""
    use(hostile, f"event:{shape}")
    proc = lf("chat", "hi")
    error = assert_failed_cleanly(proc)
    assert "lf cannot read" in error or "nested more than" in error, error
    assert proc.stdout == "Hi\n"  # the good piece before it stays, its line ended
    assert len(error) < 400


@pytest.mark.parametrize("shape", BODIES)
def test_a_one_piece_answer_of_the_wrong_shape_is_a_chat_failure(hostile, shape):
    """Before: a bug in lf (exit 1) for some, a silent empty answer (exit 0) for others."""
    use(hostile, f"body:{shape}")
    for args in (["--no-stream"], ["--json"]):
        proc = lf("chat", "hi", *args)
        error = assert_failed_cleanly(proc)
        assert "not a chat completion" in error or "nested more than" in error, error
        assert "\x1b" not in error and len(error) < 400
        if args == ["--json"]:
            assert json.loads(proc.stdout)["error"]["exit_code"] == 9


@pytest.mark.parametrize("how", ["argument", "stdin", "system"])
def test_a_message_that_is_not_utf8_is_refused_before_anything_is_sent(hostile, how):
    """Before: "unexpected UnicodeEncodeError/UnicodeDecodeError … this is a bug in lf" (exit 1)."""
    use(hostile, "ok")
    if how == "argument":
        proc = lf("chat", b"caf\xe9 au lait")
    elif how == "stdin":
        proc = lf("chat", input=b"caf\xe9 au lait\n")
    else:
        proc = lf("chat", "hi", "--system", b"\xff")
    error = assert_failed_cleanly(proc, 2)
    assert "is not UTF-8 text" in error and ("0xe9" in error or "0xff" in error)
    assert "iconv" in proc.stderr
    assert hostile.requests == []  # refused before anything was sent
    assert lf("chat", "café au lait").stdout == "Hello world\n"  # UTF-8 text is fine
    assert lf("chat", input="café au lait".encode()).stdout == "Hello world\n"


def test_an_interactive_line_that_is_not_utf8_is_not_sent_and_the_session_goes_on(hostile, tmp_path):
    """stdin a terminal, stdout and stderr files (`lf chat > answers 2> log`): lines are read without readline,
    so a byte that is not UTF-8 reaches lf. Before: the session ended with "this is a bug in lf" (exit 1)."""
    use(hostile, "ok")
    master, slave = pty.openpty()
    out, log = tmp_path / "answers", tmp_path / "log"
    with open(out, "wb") as stdout, open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lf", "chat"], stdin=slave, stdout=stdout, stderr=stderr, env=dict(os.environ)
        )
    os.close(slave)
    try:
        assert wait_until(lambda: PROMPT in log.read_text(errors="replace"), 20), log.read_text(errors="replace")
        os.write(master, b"caf\xe9\n")
        assert wait_until(lambda: "not UTF-8 text: not sent" in log.read_text(errors="replace"), 20), log.read_text(
            errors="replace"
        )
        os.write(master, b"hi\n")
        assert wait_until(lambda: "Hello world" in out.read_text(errors="replace"), 20), log.read_text(errors="replace")
        os.write(master, b"\x04")  # Ctrl-D: leave
        assert proc.wait(20) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    assert BUG not in log.read_text(errors="replace")
    assert len(hostile.requests) == 1


# -- 10. secrets ---------------------------------------------------------------------------------------
def test_a_key_the_server_quotes_back_is_masked_in_every_output(hostile):
    """Without the masking: --json printed the key in id, system_fingerprint and model, and the streamed
    text showed it (split across pieces) and its first 9 characters at the end."""
    use(hostile, "echo-key", api_key=KEY)
    answer = lf("chat", "hi", "--json")
    assert answer.returncode == 0, answer.stderr
    data = json.loads(answer.stdout)
    assert data["id"] == data["system_fingerprint"] == "***" and data["model"] == "model-***"
    assert data["choices"][0]["message"]["content"] == "your key is ***"
    streamed = lf("chat", "hi")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == "your key is ***, and its start ***\n"
    whole = lf("chat", "hi", "--no-stream")
    assert whole.stdout == "your key is ***\n"
    for proc in (answer, streamed, whole):
        assert KEY[:8] not in proc.stdout + proc.stderr


@pytest.mark.parametrize("mode", ["error-text", "error-json"])
def test_an_error_that_quotes_the_key_is_masked_before_it_is_cut(hostile, mode):
    """Without masking first: the 300-character cut left the key's start ("sk-hostil…") in the message."""
    use(hostile, mode, api_key=KEY)
    for args in ([], ["--no-stream"], ["--json"]):
        proc = lf("chat", "hi", *args)
        error = assert_failed_cleanly(proc)
        assert "***" in error and KEY[:5] not in proc.stdout + proc.stderr, error


# as written, and as the Basic authorization header made of them (which the `error-text` mode quotes back)
CREDENTIALS = (
    "alice",
    "hunter2-secret",
    "bob-the-user",
    "bobs-secret-pass",
    base64.b64encode(b"alice:hunter2-secret").decode(),
)


def test_credentials_in_base_url_are_never_shown_nor_cached(hostile, isolated):
    """Without the redaction: status, status --json, config show (both), config validate's warning, chat's
    errors and its banner showed `alice:hunter2-secret@`, an error quoting the Authorization header showed
    its base64, and the cache in the state dir held the URL."""
    cache = isolated / "state" / "cache"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    entries = [
        {"name": "primary", "base_url": hostile.url("ok", "alice:hunter2-secret")},
        {
            "name": "nopath",
            "base_url": f"http://bob-the-user:bobs-secret-pass@127.0.0.1:{hostile.port}",
        },  # no API path: a warning quotes it
        {"name": "failing", "base_url": hostile.url("error-text", "alice:hunter2-secret")},
        {"name": "down", "base_url": f"http://alice:hunter2-secret@127.0.0.1:{closed.getsockname()[1]}/v1"},
    ]
    configure({"name": "primary", "base_url": hostile.url("ok")})
    assert lf("runtime", "status").returncode == 0
    assert list(cache.glob("*.json")), "a file without secrets is cached"
    configure(*entries)  # the same file, now with credentials: its cached form must go, not be rewritten
    outputs = {}
    try:
        for args, code in [
            (("runtime", "status"), 6),
            (("runtime", "status", "--json"), 6),
            (("runtime", "status", "primary", "--json"), 0),  # 6: "down" is down
            (("config", "show"), 0),
            (("config", "show", "--json"), 0),
            (("config", "validate"), 0),
            (("config", "validate", "--json"), 0),
            (("chat", "hi"), 0),
            (("chat", "hi", "-m", "failing"), 9),
            (("chat", "hi", "-m", "failing", "--json"), 9),
            (("chat", "hi", "-m", "down"), 9),
            (("chat", "hi", "-m", "down", "--no-stream"), 9),
        ]:
            proc = lf(*args)
            assert proc.returncode == code, f"lf {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            assert "Traceback" not in proc.stderr
            outputs[" ".join(args)] = proc.stdout + proc.stderr
    finally:
        closed.close()
    bad = Path("bad.yaml")
    bad.write_text(
        Path("llamafarm.yaml").read_text()
        + '    - {"name": "ftp", "provider": "openai", "model": "m", "base_url": "ftp://alice:hunter2-secret@host/v1"}\n'
    )
    outputs["validate bad"] = (lambda p: p.stdout + p.stderr)(lf("config", "validate", str(bad)))
    with Terminal() as term:
        term.expect(PROMPT)
        term.type(CTRL_D)
        term.wait()
        outputs["interactive chat"] = term.transcript()

    for where, text in outputs.items():
        for secret in CREDENTIALS:
            assert secret not in text, f"{secret} shown by lf {where}:\n{text}"
    status = json.loads(lf("runtime", "status", "--json").stdout)
    urls = {i["name"]: i["base_url"] for i in status["instances"]}
    assert (
        urls["primary"] == f"http://***@127.0.0.1:{hostile.port}/ok/v1"
        and urls["nopath"] == f"http://***@127.0.0.1:{hostile.port}/v1"
    )
    assert f"http://***@127.0.0.1:{hostile.port}/ok/v1" in outputs["config show"]
    assert "cannot connect to http://***@127.0.0.1:" in outputs["chat hi -m down"]
    assert "does not match the pattern" in outputs["validate bad"] and "ftp://***@host/v1" in outputs["validate bad"]
    assert "Chatting with hostile-model at http://***@127.0.0.1" in outputs["interactive chat"]
    for path in cache.rglob("*") if cache.exists() else []:
        if path.is_file():
            assert not any(s in path.read_text(errors="replace") for s in CREDENTIALS), f"{path} holds a credential"
