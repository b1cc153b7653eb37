"""`lf chat`: resolve runtime and model, start the runtime if needed, stream the answer; or chat on a terminal."""

from __future__ import annotations

import os
import re
import sys
from typing import Annotated

import typer

from lf.cli._common import ConfigOpt, JsonOpt, Progress, command, complete_models, err, load_project, print_json
from lf.cli.models_pull import PullOpt, with_pull
from lf.core.client import DEFAULT_TIMEOUT  # a light module: httpx is imported when a request is sent
from lf.errors import LfError

PROMPT = ">>> "
MORE = "... "  # inside a multi-line block
BLOCK = '"""'
HISTORY_FILE = "chat_history"  # in the state dir
HISTORY_LINES = 1000

HELP = f"""\
Commands:
  /help            this help
  /exit, /quit     leave
  /clear           forget the conversation (the system prompt stays)
  /system TEXT     set or replace the system prompt; /system alone shows it
  //TEXT           send /TEXT: a line starting with / is a command, never sent as it is
  {BLOCK}              a line starting with {BLOCK} opens a multi-line message; a line ending
                   with {BLOCK} closes and sends it ({BLOCK}one line{BLOCK} works too; / is plain text inside)
An empty line sends nothing.
Keys:
  Ctrl-C           while an answer streams: stop it (that question and the partial answer are
                   not kept in the conversation); while typing: discard the line or block;
                   at an empty prompt: leave
  Ctrl-D           leave
"""


@command
def chat(
    message: Annotated[
        str | None,
        typer.Argument(
            help="The message. Omitted: read stdin, or open an interactive chat on a terminal.", show_default=False
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="A model entry of llamafarm.yaml, or a model name/file.",
            autocompletion=complete_models,
        ),
    ] = None,
    runtime: Annotated[
        str | None,
        typer.Option("--runtime", "-r", help="Runtime to use (default: from llamafarm.yaml, else llamacpp)."),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", min=0.0, max=2.0, help="Sampling temperature.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", min=1, help="Upper bound on the answer's length.")
    ] = None,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="Wait for the whole answer, then print it.")] = False,
    no_auto_start: Annotated[
        bool, typer.Option("--no-auto-start", help="Fail instead of starting a runtime that is not running.")
    ] = False,
    pull: PullOpt = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0, help="Seconds an answer may take, from the question to its last word (0: no limit)."
        ),
    ] = DEFAULT_TIMEOUT,
    direct: Annotated[
        bool,
        typer.Option("--direct", help="Go around a running lf serve of the project: talk to the model's own daemon."),
    ] = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Chat with a model. Streams the answer to stdout; starts the runtime first if it is not running.

    While an lf serve runs for the project, the question goes through it (it starts the model on demand, counts
    the request, unloads the model when idle); --direct talks to the model's own daemon instead."""
    from lf.core.actions import chat_endpoint
    from lf.errors import ExitStatus, LfError

    if message is None and not sys.stdin.isatty():
        message = _utf8(sys.stdin.buffer.read(), "stdin").strip()
        if not message:
            raise LfError("no message: stdin was empty", exit_status=ExitStatus.USAGE)
    elif (
        message is not None and not _utf8(message, "the message").strip()
    ):  # refused before a runtime is started for nothing
        raise LfError(
            "the message is empty",
            hint='give one (lf chat "Say hi"), or none on a terminal for an interactive chat',
            exit_status=ExitStatus.USAGE,
        )
    if system is not None:
        _utf8(system, "--system")
    progress = Progress(starting="waiting for {name} to become healthy", announce=True)
    try:
        project = load_project(config)
        endpoint, entry = with_pull(
            pull,
            lambda: chat_endpoint(
                project,
                runtime,
                model,
                auto_start=not no_auto_start,
                direct=direct,
                on_event=progress,
                message=message,
            ),
        )
    finally:
        progress.done()
    asked: dict = {}  # what the flags ask of every answer
    if temperature is not None:
        asked["temperature"] = temperature
    if max_tokens is not None:
        asked["max_tokens"] = max_tokens
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    if endpoint is None:  # a router with no gateway to route: it routes each message of the chat here

        def routed(text: str):
            return chat_endpoint(project, runtime, model, auto_start=not no_auto_start, on_event=progress, message=text)

        _Session(None, asked, history, timeout, route=routed, name=entry.name).run()
        return

    payload: dict = {"model": endpoint.model, **entry.request_defaults, **asked}

    if message is not None:
        _ask(
            endpoint, payload, history, message, stream=not (no_stream or json_out), json_out=json_out, timeout=timeout
        )
        return
    _Session(endpoint, payload, history, timeout).run()


def _utf8(text: str | bytes, where: str) -> str:
    """The text of a message, refused (exit 2) unless it is UTF-8: the model would otherwise be asked
    something other than what was written (a replacement character for each unreadable byte), and only
    the user knows the encoding it is in."""
    from lf.errors import ExitStatus, LfError

    try:
        if isinstance(text, bytes):
            return text.decode("utf-8")
        text.encode("utf-8")  # an argument arrives with its undecodable bytes as lone surrogates
        return text
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        bad = exc.object[exc.start]
        byte = bad if isinstance(bad, int) else ord(bad) - 0xDC00 if 0xDC80 <= ord(bad) <= 0xDCFF else None
        at = (
            f"byte 0x{byte:02x} at {'offset' if isinstance(text, bytes) else 'character'} {exc.start}"
            if byte is not None
            else f"character {exc.start}"
        )
        raise LfError(
            f"{where} is not UTF-8 text ({at})",
            hint="lf sends messages as UTF-8; convert it first, e.g. iconv -f latin1 -t utf-8",
            exit_status=ExitStatus.USAGE,
        ) from None


def _ask(
    endpoint, payload: dict, history: list[dict], message: str, *, stream: bool, json_out: bool, timeout: float
) -> None:
    from lf.core.client import chat as send

    history.append({"role": "user", "content": message})
    printed = False

    def on_token(token: str) -> None:
        nonlocal printed
        printed = True
        sys.stdout.write(token)
        sys.stdout.flush()

    try:
        result = send(
            endpoint.base_url,
            {**payload, "messages": history},
            api_key=endpoint.api_key,
            stream=stream,
            on_token=on_token,
            timeout=timeout,
        )
    finally:
        if printed:
            sys.stdout.write("\n")  # keep what was printed, and end its line, whatever happens next
            sys.stdout.flush()
    history.append({"role": "assistant", "content": result.text})
    if json_out:
        print_json(result.as_response())
    elif not stream:
        print(result.text, flush=True)


class _Session:
    """The interactive chat: reads lines (a command, a message, a block), asks, keeps the conversation."""

    def __init__(self, endpoint, payload: dict, history: list[dict], timeout: float, route=None, name: str = ""):
        self.endpoint = endpoint
        self.route = route  # a router's: (message) → (the endpoint and entry it goes to), asked for each message
        self.name = name
        self.payload = payload
        self.history = history
        self.timeout = timeout
        self.lines = _LineReader()

    def run(self) -> None:
        from lf.secrets import redact_url

        where = (
            f"{self.name} (it routes each message)"
            if self.endpoint is None
            else f"{self.endpoint.model} at {redact_url(self.endpoint.base_url)}"
        )
        err(f"Chatting with {where}. /help for commands; Ctrl-D or /exit to leave.")
        while True:
            try:
                message = self.next_message()
            except EOFError:  # Ctrl-D, Ctrl-C at an empty prompt, or /exit
                return
            if message is None:
                continue
            turn = len(self.history)
            endpoint, payload = self.endpoint, self.payload
            try:
                if self.route is not None:
                    endpoint, entry = self.route(message)
                    payload = {"model": endpoint.model, **entry.request_defaults, **self.payload}
                _ask(
                    endpoint,
                    payload,
                    self.history,
                    message,
                    stream=True,
                    json_out=False,
                    timeout=self.timeout,
                )
            except KeyboardInterrupt:
                # half an answer is nothing to build on: the next question goes out as if this one was never
                # asked, and the line history still has it for the Up arrow
                del self.history[turn:]
                err("(cancelled: this question and its partial answer are not kept in the conversation)")

    def next_message(self) -> str | None:
        """The next text to send, or None when there is none (an empty line, a command, a discarded line)."""
        try:
            line = self.lines.read(PROMPT)
        except KeyboardInterrupt:
            if not self.lines.was_typing():
                err()
                raise EOFError from None
            err("^C")
            return None
        except EOFError:
            err()
            raise
        except _NotText:
            err("(that line is not UTF-8 text: not sent)")
            return None
        text = line.strip()
        if text.startswith(BLOCK):
            return self.block(text[len(BLOCK) :])
        if text.startswith("//"):
            return text[1:]
        if text.startswith("/"):
            self.command(text)
            return None
        return text or None

    def block(self, first: str) -> str | None:
        """A multi-line message: from after the opening quotes to before the closing ones."""
        lines = [first]
        while not lines[-1].rstrip().endswith(BLOCK):
            try:
                lines.append(self.lines.read(MORE))
            except KeyboardInterrupt:
                err("^C")
                return None
            except _NotText:
                err("(that line is not UTF-8 text: the block is not sent)")
                return None
            except EOFError:
                err()
                raise
        lines[-1] = lines[-1].rstrip()[: -len(BLOCK)]
        return "\n".join(lines).strip() or None

    def command(self, text: str) -> None:
        name, *rest = text.split(maxsplit=1)
        argument = rest[0] if rest else ""
        if name in ("/exit", "/quit"):
            raise EOFError
        if name == "/help":
            err(HELP + self.lines.describe())
        elif name == "/clear":
            has_system = bool(self.history) and self.history[0]["role"] == "system"
            del self.history[1 if has_system else 0 :]
            err("(conversation cleared; the system prompt stays)" if has_system else "(conversation cleared)")
        elif name == "/system":
            self.system(argument)
        else:
            err(f"unknown command {name}: /help lists the commands; //{text[1:]} sends the line as a message")

    def system(self, text: str) -> None:
        current = self.history[0] if self.history and self.history[0]["role"] == "system" else None
        if not text:
            err(f"system prompt: {current['content']}" if current else "(no system prompt; /system TEXT sets one)")
        elif current:
            current["content"] = text
            err("(system prompt replaced)")
        else:
            self.history.insert(0, {"role": "system", "content": text})
            err("(system prompt set)")


class _NotText(Exception):
    """A line typed (or pasted) that is not UTF-8 text."""


class _LineReader:
    """Lines from the terminal, with editing and a history kept across sessions when Python has readline.

    lf reads and writes the history file itself, one line per entry, rather than through readline's file
    functions: where Python's readline is libedit (macOS's own Python, and other builds) there is no
    append_history_file, and libedit refuses a file GNU readline wrote (its own files start with a header and
    escape spaces), so switching Pythons would lose the history. One plain file serves both; a file libedit
    wrote is read and rewritten plain."""

    def __init__(self):
        try:
            import readline
        except ImportError:  # some Pythons are built without it: plain lines, no history
            readline = None
        self.readline = readline
        self.history_file = None
        self.history_count = 0  # lines in the history file
        self.last: str | None = None
        if readline is not None:
            readline.set_auto_history(False)  # blank lines and repeats are left out (see remember)
            self.history_file = self._open_history()

    def _open_history(self):
        from lf.dirs import ensure_private_dir, state_dir

        path = state_dir() / HISTORY_FILE
        try:
            ensure_private_dir(path.parent)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # appends need the file; created private
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
            lines, libedit = read_history(path)
            if libedit:
                _write_history(path, lines[-HISTORY_LINES:])
            for line in lines[-HISTORY_LINES:]:
                self.readline.add_history(line)
            self.history_count = len(lines)
        except LfError as exc:
            err(f"warning: chat history not kept: {exc.message}")
        except OSError as exc:
            err(f"warning: chat history not kept: {path}: {exc.strerror or exc}")
        else:
            return path
        return None

    def describe(self) -> str:
        if self.readline is None:
            return "  (no line editing or history, and Ctrl-C at a prompt always leaves: this Python has no readline)"
        if self.history_file is None:
            return "  Up, Down         earlier lines of this session (Ctrl-R searches them)"
        return (
            "  Up, Down         earlier lines, also of earlier sessions "
            f"(Ctrl-R searches them; kept in {self.history_file})"
        )

    def read(self, prompt: str) -> str:
        try:
            line = self._input(prompt)
            line.encode("utf-8")  # a byte that is not UTF-8 arrives as a lone surrogate, or fails decoding
        except UnicodeError:
            raise _NotText from None
        self.remember(line)
        return line

    def was_typing(self) -> bool:
        """After Ctrl-C at a prompt: was a line being typed? Without readline there is no telling: no."""
        return bool(self.readline is not None and self.readline.get_line_buffer())

    def remember(self, line: str) -> None:
        if self.readline is None or not line.strip() or line == self.last:
            return
        self.last = line
        self.readline.add_history(line)
        if self.history_file is not None:
            try:  # line by line: a session that is killed keeps its lines, and sessions side by side interleave
                with open(self.history_file, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
                self.history_count += 1
                if self.history_count > HISTORY_LINES:
                    lines, _ = read_history(self.history_file)
                    _write_history(self.history_file, lines[-HISTORY_LINES:])
                    self.history_count = min(len(lines), HISTORY_LINES)
            except (OSError, LfError):
                pass

    @staticmethod
    def _input(prompt: str) -> str:
        """input() with the prompt kept out of stdout's data when stdout is not the terminal."""
        if sys.stdout.isatty():
            return input(prompt)
        if not sys.stderr.isatty():
            sys.stderr.write(prompt)
            sys.stderr.flush()
            return input()
        # input() edits lines only when stdout is a terminal, and prompts and echoes there: point fd 1 at
        # stderr's terminal while reading, so answers redirected to a file get neither prompt nor echo
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            os.dup2(2, 1)
            return input(prompt)
        finally:
            os.dup2(saved, 1)
            os.close(saved)


LIBEDIT_COOKIE = b"_HiStOrY_V2_"  # the first line of a history file libedit wrote
# libedit writes each entry through strvis(3): spaces, tabs and newlines, backslashes, control and non-ASCII
# bytes become escapes (\040, \\, \^C, \M-x; \n and \s in the C style)
_VIS = re.compile(rb"\\(\\|[0-7]{3}|M-.|M\^.|\^.|[ntsrabfv0])", re.DOTALL)
_VIS_C = {
    b"n": b"\n",
    b"t": b"\t",
    b"s": b" ",
    b"r": b"\r",
    b"a": b"\a",
    b"b": b"\b",
    b"f": b"\f",
    b"v": b"\v",
    b"0": b"\0",
}


def _unvis(data: bytes) -> bytes:
    def one(match: re.Match) -> bytes:
        code = match.group(1)
        if code == b"\\":
            return code
        if len(code) == 3 and code.isdigit():
            return bytes([int(code, 8) & 0xFF])
        if code.startswith(b"M-"):
            return bytes([code[2] | 0x80])
        if code.startswith(b"M^"):
            return bytes([(0x7F if code[2:] == b"?" else code[2] & 0x1F) | 0x80])
        if code.startswith(b"^"):
            return bytes([0x7F if code[1:] == b"?" else code[1] & 0x1F])
        return _VIS_C[code]

    return _VIS.sub(one, data)


def read_history(path) -> tuple[list[str], bool]:
    """The entries of a chat history file, oldest first, and whether libedit wrote it (GNU readline and lf
    write one entry per line as it is)."""
    from pathlib import Path

    raw = [line.removesuffix(b"\r") for line in Path(path).read_bytes().split(b"\n")]
    libedit = bool(raw) and raw[0] == LIBEDIT_COOKIE
    if libedit:
        raw = [_unvis(line) for line in raw[1:]]
    return [line.decode("utf-8", "replace") for line in raw if line.strip()], libedit


def _write_history(path, lines: list[str]) -> None:
    from lf.files import atomic_write

    atomic_write(path, "".join(line + "\n" for line in lines))
