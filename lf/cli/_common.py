"""Shared option types, the error boundary, and small output helpers for the CLI modules."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from lf.envvars import AppEnvVars
from lf.errors import ExitStatus, LfError

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout (documented in docs/json-output.md).")
]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="Path of llamafarm.yaml (default: $LF_CONFIG, then ./llamafarm.yaml or a parent's).",
        show_default=False,
    ),
]


def complete_instances(incomplete: str) -> list[str]:
    from lf.cli.completion import instance_names

    return [n for n in instance_names() if n.startswith(incomplete)]


def complete_runtimes(incomplete: str) -> list[str]:
    from lf.cli.completion import runtime_and_instance_names

    return [n for n in runtime_and_instance_names() if n.startswith(incomplete)]


def complete_startable(incomplete: str) -> list[str]:
    from lf.cli.completion import startable_names

    return [n for n in startable_names() if n.startswith(incomplete)]


def complete_models(incomplete: str) -> list[str]:
    from lf.cli.completion import model_names

    return [n for n in model_names() if n.startswith(incomplete)]


def complete_settings(ctx: typer.Context, incomplete: str) -> list[str]:
    """--set NAME=VALUE: the settings of the runtime the command's target names (see completion.setting_names)."""
    from lf.cli.completion import setting_names

    # while --set waits for its value the parse stops there: a target typed before it is still among ctx.args
    target = ctx.params.get("target") or next((a for a in ctx.args if not a.startswith("-")), None)
    return [n for n in setting_names(target, incomplete) if n.startswith(incomplete)]


def command(func: Callable) -> Callable:
    """A command behind the one error boundary: LfError → `Error: …` + hint on stderr, and its exit code;
    with --json, also `{"error": {"message", "hint", "exit_code"}}` on stdout, so a script always has one
    object to parse."""

    @functools.wraps(func)
    def wrapper(*a, **kw):
        as_json = bool(kw.get("json_out"))
        try:
            return func(*a, **kw)
        except LfError as exc:
            report_error(exc)
            _fail(as_json, exc.message, exc.hint, exc.exit_status)
        except KeyboardInterrupt as exc:
            from lf.errors import Terminated

            if isinstance(exc, Terminated):
                import signal

                name = signal.Signals(exc.signum).name
                sys.stderr.write(f"\nTerminated by {name}.\n")
                _fail(as_json, f"terminated by {name}", None, exc.exit_code)
            sys.stderr.write("\nInterrupted.\n")
            _fail(as_json, "interrupted", None, ExitStatus.INTERRUPTED)
        except BrokenPipeError:
            _silence_broken_pipe()
            raise typer.Exit(int(ExitStatus.ERROR)) from None
        except typer.Exit:
            raise
        except Exception as exc:
            if os.environ.get(AppEnvVars.DEBUG):
                raise
            err(f"Error: unexpected {type(exc).__name__}: {exc}")
            hint = "this is a bug in lf; run again with LF_DEBUG=1 for the traceback"
            err(f"  ({hint})")
            _fail(as_json, f"unexpected {type(exc).__name__}: {exc}", hint, ExitStatus.ERROR)

    return wrapper


def _fail(as_json: bool, message: str, hint: str | None, code: ExitStatus):
    if as_json:
        print_json({"error": {"message": message, "hint": hint, "exit_code": int(code)}})
    raise typer.Exit(int(code)) from None


def _silence_broken_pipe() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def report_error(exc: LfError) -> None:
    err(f"Error: {exc.message}")
    if exc.hint:
        for line in exc.hint.splitlines():
            err(f"  {line}")


def err(text: str = "") -> None:
    print(text, file=sys.stderr, flush=True)


def out(text: str = "") -> None:
    print(text, flush=True)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def stderr_is_tty() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


class Spinner:
    """A one-line progress indicator on stderr, only when stderr is a terminal."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, text: str):
        self.text = text
        self.enabled = stderr_is_tty()
        self.i = 0

    def __call__(self, elapsed: float) -> None:
        if self.enabled:
            frame = self.FRAMES[self.i % len(self.FRAMES)]
            self.i += 1
            sys.stderr.write(f"\r{frame} {self.text} ({elapsed:.1f}s)")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.i:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


class Progress:
    """Renders the core's events: warnings as they come, a spinner while an instance starts."""

    def __init__(self, starting: str = "starting {name} ({runtime}, {model})", announce: bool = False):
        self.starting = starting
        self.announce = announce  # also say "Starting …" on a line of its own (chat's auto-start)
        self.spinner: Spinner | None = None

    def __call__(self, event) -> None:
        from lf.core.events import Notice, Starting, Waiting

        if isinstance(event, Notice):
            err(event.text)
        elif isinstance(event, Starting):
            through = f" through {event.through}" if event.through else ""
            if self.announce or event.through:
                err(f"Starting {event.name} ({event.runtime}, {event.model}){through}…")
            self.done()
            self.spinner = Spinner(self.starting.format(name=event.name, runtime=event.runtime, model=event.model))
        elif isinstance(event, Waiting) and self.spinner is not None:
            self.spinner(event.elapsed)

    def done(self) -> None:
        if self.spinner is not None:
            self.spinner.done()
            self.spinner = None


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def load_project(config: str | None, warn: bool = False):
    """The project's llamafarm.yaml if one is found (or given), else None. With `warn`, what it holds that lf
    keeps without using (unknown keys) is said on stderr, located."""
    from lf.config.project import load_optional

    project = load_optional(config)
    if warn and project is not None:
        for line in project.warnings:
            err(line)
    return project
