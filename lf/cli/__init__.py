"""The `lf` command line: a thin layer that parses options, calls the core, renders results."""

from __future__ import annotations

import os
import sys

import typer

from lf import __version__

HELP = "Run local LLM runtimes as supervised daemons, check their health, and chat with them."
GROUPS = ("runtime", "models", "config")


def _version(value: bool) -> None:
    if value:
        print(f"lf {__version__}")
        raise typer.Exit()


def build_app(only: str | None = None, only_command: str | None = None) -> typer.Typer:
    """The app; with `only`, just that command group (and with `only_command`, just that command of
    it), since Typer builds every command it holds on each invocation and `lf runtime status` is
    called in loops by scripts."""
    app = typer.Typer(
        name="lf",
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ) -> None:
        """Run local LLM runtimes as supervised daemons, check their health, and chat with them."""

    if only in (None, "runtime"):
        from lf.cli import runtime

        app.add_typer(runtime.group.build(only_command), name="runtime")
    if only in (None, "models"):
        from lf.cli import models

        app.add_typer(models.group.build(only_command), name="models")
    if only in (None, "config"):
        from lf.cli import config

        app.add_typer(config.group.build(only_command), name="config")
    if only in (None, "chat"):
        from lf.cli import chat

        chat.group.add_to(app)
    return app


def __getattr__(name: str):
    # `lf.cli.app` (the whole app, for tests and doc generation) is built on first use, not on import
    if name == "app":
        globals()["app"] = build_app()
        return globals()["app"]
    raise AttributeError(name)


def main() -> None:
    argv = sys.argv[1:]
    completing = "_LF_COMPLETE" in os.environ
    only = argv[0] if argv and not completing and argv[0] in (*GROUPS, "chat") else None
    # `lf runtime status …`: the one command, unless the word is not a command (then Typer's own
    # "no such command" message needs the whole group)
    only_command = argv[1] if only in GROUPS and len(argv) > 1 and not argv[1].startswith("-") else None
    if only_command is not None and only_command not in _group_commands(only):
        only_command = None
    build_app(only, only_command)(prog_name="lf")


def _group_commands(name: str) -> dict:
    import importlib

    return importlib.import_module(f"lf.cli.{name}").group.commands
