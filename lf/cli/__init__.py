"""The `lf` command line: a thin layer that parses options, calls the core, renders results.

Commands are listed here by module path and imported only when the invocation needs them: Typer
converts every command it holds on each call, and scripts call `lf runtime status` in loops.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from lf import __version__

HELP = "Run local LLM runtimes as supervised daemons, check their health, and chat with them."
# group → (help, {command: "module:function"}), in the order help lists them
GROUPS: dict[str, tuple[str, dict[str, str]]] = {
    "runtime": (
        "Start, stop and inspect runtime daemons.",
        {
            "start": "lf.cli.runtime:start",
            "stop": "lf.cli.runtime:stop",
            "restart": "lf.cli.runtime:restart",
            "status": "lf.cli.runtime:status",
            "logs": "lf.cli.runtime:logs",
            "list": "lf.cli.runtime:list_runtimes",
            "install": "lf.cli.runtime_env:install",
            "uninstall": "lf.cli.runtime_env:uninstall",
        },
    ),
    "models": (
        "List and fetch models.",
        {"list": "lf.cli.models:list_models", "fetch": "lf.cli.models:fetch", "build-onnx": "lf.cli.models:build_onnx"},
    ),
    "config": (
        "Validate, show and create llamafarm.yaml.",
        {"validate": "lf.cli.config:validate", "show": "lf.cli.config:show", "init": "lf.cli.config:init", "schema": "lf.cli.config:schema"},
    ),
}
TOP_LEVEL: dict[str, str] = {"chat": "lf.cli.chat:chat", "serve": "lf.cli.serve:serve"}


def _version(value: bool) -> None:
    if value:
        print(f"lf {__version__}")
        raise typer.Exit()


def _load(target: str):
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def build_app(only: str | None = None, only_command: str | None = None, listing: bool = False) -> typer.Typer:
    """The app; with `only`, just that command group (and with `only_command`, just that command of it);
    with `listing` (`lf --help`, `lf --version`), the groups without their commands: the root help lists
    groups by their own help, and building every command is most of its cost."""
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

    for group, (help_text, commands) in GROUPS.items():
        if only not in (None, group):
            continue
        # rich_markup_mode=None: plain help and errors, without importing rich (~60 ms) for them
        sub = typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None)
        for name, target in commands.items():
            if only_command in (None, name) and not listing:
                sub.command(name)(_load(target))
        app.add_typer(sub, name=group)
    for name, target in TOP_LEVEL.items():
        if only in (None, name):
            app.command(name)(_load(target))
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
    only = argv[0] if argv and not completing and argv[0] in (*GROUPS, *TOP_LEVEL) else None
    # `lf runtime status …`: the one command, unless the word is not a command (then Typer's own
    # "no such command" message needs the whole group)
    only_command = argv[1] if only in GROUPS and len(argv) > 1 and argv[1] in GROUPS[only][1] else None
    listing = not completing and argv[:1] in ([], ["-h"], ["--help"], ["--version"])
    build_app(only, only_command, listing)(prog_name="lf")
