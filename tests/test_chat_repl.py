"""The interactive `lf chat`, driven on a real pseudo-terminal: keys, commands, history, where output goes.

Each test runs the real `python -m lf chat` under pty.fork and types at it. The model is either a fake
runtime lf starts itself (tests/fakes) or a small OpenAI-compatible server in this process that records
every request, so a test can tell exactly what was sent to the model, and what was not.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import run_lf

from fakes import read_record, use_fakes

UP = "\x1b[A"
CTRL_C = "\x03"
CTRL_D = "\x04"
CTRL_U = "\x15"  # readline: delete the line
PROMPT = ">>> "


class Terminal:
    """`lf chat ARGS…` on a pseudo-terminal. Every wait is bounded; close() kills what is left."""

    def __init__(self, *args: str, stdout_file: Path | None = None):
        # a known terminal, and no user inputrc (a vi mode would change what the keys do)
        env = {**os.environ, "TERM": "xterm", "INPUTRC": os.devnull}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: lf on the terminal, as a user starts it
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)  # whoever runs the tests may ignore SIGINT: lf must not
                if stdout_file is not None:
                    os.dup2(os.open(stdout_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
                os.execve(sys.executable, [sys.executable, "-m", "lf", "chat", *args], env)
            finally:
                os._exit(127)
        self.seen = b""
        self.pos = 0  # what expect() has consumed
        self.eof = False
        self.status: int | None = None

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                data = os.read(self.fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                data = b""
            self.seen += data
            self.eof = not data

    def expect(self, text: str, timeout: float = 30) -> str:
        """Wait for `text` after what was consumed; return what came before it."""
        wanted = text.encode()
        deadline = time.monotonic() + timeout
        while (at := self.seen.find(wanted, self.pos)) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise AssertionError(f"{text!r} not shown within {timeout}s; the terminal showed:\n{self.transcript()}")
            self._read(min(left, 0.2))
        before = self.seen[self.pos : at].decode("utf-8", "replace")
        self.pos = at + len(wanted)
        return before

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def ctrl_c_at_prompt(self) -> None:
        # a person presses a key a moment after the prompt shows, never microseconds later: CPython's readline
        # holds back a SIGINT that lands between drawing the prompt and waiting for a key (until the next key)
        time.sleep(0.3)
        self.type(CTRL_C)

    def enter(self, line: str) -> None:
        self.type(line + "\r")

    def alive(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status is None

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"lf chat still running after {timeout}s; the terminal showed:\n{self.transcript()}"
                )
            self._read(0.05)  # keep draining: a child blocked on a full terminal never exits
        return self.status

    def transcript(self) -> str:
        return self.seen.decode("utf-8", "replace")

    def close(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
            self.status = os.waitstatus_to_exitcode(status)
        os.close(self.fd)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Recorder(ThreadingHTTPServer):
    """An OpenAI-compatible chat endpoint that keeps every request. Answer n is "Answer n."; a message
    asking for it "slowly" streams words for a minute (time enough to press Ctrl-C)."""

    daemon_threads = True
    requests: list[dict]

    def messages(self, n: int) -> list[dict]:
        return self.requests[n]["messages"]


class RecorderHandler(BaseHTTPRequestHandler):
    server: Recorder

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._json({"object": "list", "data": [{"id": "rec-model", "object": "model"}]})

    def do_POST(self):  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(request)
        slowly = "slowly" in request["messages"][-1]["content"]
        tokens = [" word"] * 1200 if slowly else ["Answer", f" {len(self.server.requests)}", "."]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for token in tokens:
                self._event({"choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]})
                if slowly:
                    time.sleep(0.05)
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            self.wfile.write(b"data: [DONE]\n\n")
        except OSError:  # the client went away (Ctrl-C)
            pass

    def _event(self, data: dict) -> None:
        self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()

    def _json(self, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    """The recording endpoint, configured in ./llamafarm.yaml as the project's only model."""
    server = Recorder(("127.0.0.1", 0), RecorderHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Path("llamafarm.yaml").write_text(
        f"""\
version: v1
name: p
namespace: default
runtime:
  models:
    - name: recorder
      provider: openai
      model: rec-model
      base_url: http://127.0.0.1:{server.server_address[1]}/v1
"""
    )
    yield server
    server.shutdown()
    server.server_close()


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def test_ctrl_c_stops_a_streaming_answer_and_the_session_goes_on(monkeypatch, free_port):
    use_fakes(monkeypatch)
    try:
        run_lf(
            "runtime", "start", "fake-slow-stream", "--port", str(free_port), check=True
        )  # not the default port: tests may run side by side
        with Terminal("--runtime", "fake-slow-stream") as term:
            term.expect(PROMPT)
            term.enter("Tell me a long story")
            term.expect("Hello from")  # streaming: 300 tokens, 0.2 s apart
            term.type(CTRL_C)
            term.expect("(cancelled")
            term.expect(PROMPT)
            assert term.alive()
            term.enter("And another one")
            term.expect("And another one")
            term.expect("Hello from the fake runtime.")  # a new answer, after the question
            term.type(CTRL_C)
            term.expect("(cancelled")
            term.expect(PROMPT)
            term.type(CTRL_D)
            assert term.wait() == 0
            assert "Interrupted" not in term.transcript()
    finally:
        run_lf("runtime", "stop", "--all")


def test_a_cancelled_turn_is_left_out_and_the_conversation_is_kept(recorder):
    with Terminal() as term:
        term.expect(PROMPT)
        term.enter("Say one")
        term.expect("Answer 1.")
        term.expect(PROMPT)
        term.enter("Tell it slowly")
        term.expect(" word word")
        term.type(CTRL_C)
        term.expect("(cancelled")
        term.expect(PROMPT)
        term.enter("Say three")
        term.expect("Answer 3.")
        term.expect(PROMPT)
        term.enter("/exit")
        assert term.wait() == 0
    assert len(recorder.requests) == 3
    assert recorder.messages(2) == [user("Say one"), assistant("Answer 1."), user("Say three")]


def test_ctrl_c_while_typing_discards_the_line_and_at_an_empty_prompt_leaves(recorder):
    with Terminal() as term:
        term.expect(PROMPT)
        term.type("half a thought")
        term.expect("half a thought")  # echoed: lf has read it, so Ctrl-C finds it typed
        term.ctrl_c_at_prompt()
        term.expect("^C")
        term.expect(PROMPT)
        assert term.alive()
        term.ctrl_c_at_prompt()
        assert term.wait() == 0
    assert recorder.requests == []


def test_up_arrow_recalls_earlier_lines_also_in_a_new_session(recorder, isolated):
    with Terminal() as term:
        term.expect(PROMPT)
        term.enter("What is two plus two?")
        term.expect("Answer 1.")
        term.expect(PROMPT)
        term.type(UP)
        term.expect("What is two plus two?")  # recalled onto the prompt line
        term.enter("")
        term.expect("Answer 2.")
        term.expect(PROMPT)
        term.type(CTRL_D)
        assert term.wait() == 0
    assert recorder.messages(1) == [
        user("What is two plus two?"),
        assistant("Answer 1."),
        user("What is two plus two?"),
    ]

    history = isolated / "state" / "chat_history"
    assert history.stat().st_mode & 0o777 == 0o600
    assert history.parent.stat().st_mode & 0o777 == 0o700
    assert history.read_text().splitlines() == ["What is two plus two?"]  # a repeat is kept once

    with Terminal() as term:
        term.expect(PROMPT)
        term.type(UP)
        term.expect("What is two plus two?")
        term.enter("")
        term.expect("Answer 3.")
        term.expect(PROMPT)
        term.type(CTRL_D)
        assert term.wait() == 0
    assert recorder.messages(2) == [user("What is two plus two?")]  # a new session: a new conversation


def test_the_history_file_is_made_private_and_kept_bounded(recorder, isolated):
    history = isolated / "state" / "chat_history"
    history.parent.mkdir(mode=0o700)
    history.write_text("an older line\n")
    history.chmod(0o644)  # as another tool, or an older lf, may have left it
    with Terminal() as term:
        term.expect(PROMPT)
        term.type(UP)
        term.expect("an older line")
        term.type(CTRL_U + CTRL_D)  # on a line with text Ctrl-D deletes a character: clear it first
        assert term.wait() == 0
    assert history.stat().st_mode & 0o777 == 0o600

    history.write_text("".join(f"line {i}\n" for i in range(1500)))
    with Terminal() as term:
        term.expect(PROMPT)
        term.type(UP)
        term.expect("line 1499")
        term.type(CTRL_U)  # clear the recalled line
        term.enter("newest")
        term.expect("Answer 1.")
        term.expect(PROMPT)
        term.type(CTRL_D)
        assert term.wait() == 0
    assert recorder.messages(0) == [user("newest")]
    lines = history.read_text().splitlines()
    assert len(lines) == 1000
    assert lines[-2:] == ["line 1499", "newest"]
    assert history.stat().st_mode & 0o777 == 0o600


def test_help_lists_commands_and_keys_and_nothing_with_a_slash_is_sent(recorder):
    with Terminal() as term:
        term.expect(PROMPT)
        term.enter("/help")
        shown = term.expect(PROMPT)
        for item in (
            "/exit",
            "/quit",
            "/clear",
            "/system",
            "//TEXT",
            '"""',
            "Ctrl-C",
            "Ctrl-D",
            "Up, Down",
            "chat_history",
        ):
            assert item in shown, item
        term.enter("/foo bar")
        assert "unknown command /foo" in term.expect(PROMPT)
        term.enter("")
        term.expect(PROMPT)
        term.enter("   ")
        term.expect(PROMPT)
        term.enter("/quit")
        assert term.wait() == 0
    assert recorder.requests == []  # neither the commands, the unknown one, nor the empty lines


def test_system_and_clear_shape_the_conversation(recorder):
    with Terminal("--system", "Be brief.") as term:
        term.expect(PROMPT)
        term.enter("/system")
        assert "system prompt: Be brief." in term.expect(PROMPT)
        term.enter("Hi")
        term.expect("Answer 1.")
        term.expect(PROMPT)
        term.enter("/system Answer in French.")
        assert "(system prompt replaced)" in term.expect(PROMPT)
        term.enter("Again")
        term.expect("Answer 2.")
        term.expect(PROMPT)
        term.enter("/clear")
        assert "(conversation cleared" in term.expect(PROMPT)
        term.enter("Once more")
        term.expect("Answer 3.")
        term.expect(PROMPT)
        term.enter("/exit")
        assert term.wait() == 0
    assert recorder.messages(0) == [system("Be brief."), user("Hi")]
    assert recorder.messages(1) == [system("Answer in French."), user("Hi"), assistant("Answer 1."), user("Again")]
    assert recorder.messages(2) == [system("Answer in French."), user("Once more")]

    with Terminal() as term:  # no --system: /system sets one, /clear has none to keep
        term.expect(PROMPT)
        term.enter("/system")
        assert "(no system prompt" in term.expect(PROMPT)
        term.enter("/system Be kind.")
        assert "(system prompt set)" in term.expect(PROMPT)
        term.enter("Hello")
        term.expect("Answer 4.")
        term.expect(PROMPT)
        term.enter("/exit")
        assert term.wait() == 0
    assert recorder.messages(3) == [system("Be kind."), user("Hello")]


def test_blocks_span_lines_and_a_double_slash_sends_a_slash(recorder):
    with Terminal() as term:
        term.expect(PROMPT)
        term.enter('"""')
        term.expect("... ")
        term.enter("first line")
        term.expect("... ")
        term.enter("  /not a command")
        term.expect("... ")
        term.enter('last line"""')
        term.expect("Answer 1.")
        term.expect(PROMPT)
        term.enter("//etc/hosts is a file")
        term.expect("Answer 2.")
        term.expect(PROMPT)
        term.enter('"""one line"""')
        term.expect("Answer 3.")
        term.expect(PROMPT)
        term.enter('"""')  # Ctrl-C in a block discards the whole block
        term.expect("... ")
        term.enter("a draft")
        term.expect("... ")
        term.ctrl_c_at_prompt()
        term.expect("^C")
        term.expect(PROMPT)
        term.enter("/exit")
        assert term.wait() == 0
    assert [r["messages"][-1]["content"] for r in recorder.requests] == [
        "first line\n  /not a command\nlast line",
        "/etc/hosts is a file",
        "one line",
    ]


def test_prompts_go_to_the_terminal_and_answers_to_stdout(recorder, tmp_path):
    answers = tmp_path / "answers.txt"
    with Terminal(stdout_file=answers) as term:
        term.expect("Chatting with rec-model")
        term.expect(PROMPT)
        term.enter("Hi")
        term.expect(PROMPT)  # the answer went to the file
        term.type(UP)  # line editing still works with stdout redirected
        term.expect("Hi")
        term.enter("")
        term.expect(PROMPT)
        term.type(CTRL_D)
        assert term.wait() == 0
        assert "Answer" not in term.transcript()
    assert answers.read_text() == "Answer 1.\nAnswer 2.\n"
    assert recorder.messages(1)[-1] == user("Hi")


def test_an_empty_message_is_refused_with_exit_2(monkeypatch, isolated):
    use_fakes(monkeypatch)
    try:
        for message in ("", "  \n "):
            result = run_lf("chat", message, "--runtime", "fake")
            assert result.returncode == 2, result.stderr
            assert "Error: the message is empty" in result.stderr
            assert result.stdout == ""
        assert read_record(isolated / "state", "fake") is None  # refused before a runtime was started for it
    finally:
        run_lf("runtime", "stop", "--all")


def test_generation_settings_from_llamafarm_yaml_are_sent_and_flags_win(recorder):
    # LlamaFarm puts them on the model (temperature, max_tokens) and in model_api_parameters
    text = Path("llamafarm.yaml").read_text()
    Path("llamafarm.yaml").write_text(
        text + "      temperature: 0.2\n      model_api_parameters: {top_p: 0.9, max_tokens: 64}\n"
    )
    assert run_lf("chat", "Hi").returncode == 0
    assert run_lf("chat", "Hi", "--temperature", "0.7").returncode == 0
    first, second = recorder.requests
    assert (first["temperature"], first["top_p"], first["max_tokens"]) == (0.2, 0.9, 64)
    assert (second["temperature"], second["top_p"], second["max_tokens"]) == (0.7, 0.9, 64)
