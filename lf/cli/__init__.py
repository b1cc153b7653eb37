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
from lf.errors import ExitStatus, LfError

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
        {
            "list": "lf.cli.models:list_models",
            "info": "lf.cli.models:info",
            "rm": "lf.cli.models:rm",
            "fetch": "lf.cli.models:fetch",
            "pull": "lf.cli.models_pull:pull",
            "build-onnx": "lf.cli.models:build_onnx",
            "build-hf": "lf.cli.models_hf:build_hf",
        },
    ),
    "cluster": (
        "Run a Ray cluster and serve the project's models on it with Ray Serve.",
        {
            "start": "lf.cli.cluster:start",
            "join": "lf.cli.cluster:join",
            "status": "lf.cli.cluster:status",
            "stop": "lf.cli.cluster:stop",
            "deploy": "lf.cli.cluster:deploy",
            "undeploy": "lf.cli.cluster:undeploy",
            "install": "lf.cli.cluster:install",
        },
    ),
    "config": (
        "Validate, show and create llamafarm.yaml.",
        {
            "validate": "lf.cli.config:validate",
            "show": "lf.cli.config:show",
            "init": "lf.cli.config:init",
            "schema": "lf.cli.config:schema",
        },
    ),
}
TOP_LEVEL: dict[str, str] = {
    "chat": "lf.cli.chat:chat",
    "serve": "lf.cli.serve:serve",
    "doctor": "lf.cli.doctor:doctor",
    # Ollama's verbs, for the habits people arrive with: each is its long form's own function
    "ps": "lf.cli.ps:ps",
    "pull": "lf.cli.models_pull:pull",
    "run": "lf.cli.run:run",
}
# words people type at the top level that live in a group, where the group's own name is not the answer
# (`list` is in two groups: Ollama's `list` lists models)
MEANT: dict[str, str] = {"list": "models list", "ls": "models list", "show": "models info", "rm": "models rm"}


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
        add_completion=False,  # ours take the shell to install for (Typer's installed bash's whatever was asked)
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
        install_completion: bool = typer.Option(
            False,
            "--install-completion",
            help="Install completion: --install-completion [bash|zsh|fish] (default: your login shell).",
        ),
        show_completion: bool = typer.Option(
            False, "--show-completion", help="Print the completion script: --show-completion [bash|zsh|fish]."
        ),
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


def _completion(argv: list[str]) -> None:
    """`lf --install-completion [SHELL]` / `lf --show-completion [SHELL]`, answered before Typer parses."""
    from lf.cli.completion import SHELLS, detect_shell, install, script

    shell = argv[1] if len(argv) > 1 else None
    try:
        if argv[0] == "--show-completion":
            shell = shell or detect_shell()
            if shell not in SHELLS:
                raise LfError(
                    f"no completion script for {shell!r}",
                    hint=f"shells: {', '.join(SHELLS)}",
                    exit_status=ExitStatus.USAGE,
                )
            sys.stdout.write(script(shell))
            return
        for path in install(shell):
            print(f"wrote {path}", file=sys.stderr)
        print("Completion installed: open a new shell to use it.", file=sys.stderr)
    except LfError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  {exc.hint}", file=sys.stderr)
        sys.exit(int(exc.exit_status))


def _meant(word: str) -> str | None:
    """The command a mistyped or misplaced top-level word probably means: `status` → `runtime status`."""
    if word in MEANT:
        return MEANT[word]
    for group, (_, commands) in GROUPS.items():
        if word in commands:
            return f"{group} {word}"
    import difflib

    close = difflib.get_close_matches(word, [*GROUPS, *TOP_LEVEL, *MEANT], n=1, cutoff=0.6)
    if not close:
        return None
    return _meant(close[0]) if close[0] in MEANT else close[0]


def _no_such_command(argv: list[str]) -> None:
    """A clean usage error (exit 2) naming the command meant, with the rest of the line as typed; returns
    when nothing close is known (Typer then says "No such command" its own way)."""
    import shlex

    meant = _meant(argv[0])
    if meant is None:
        return
    print(f"Error: no command {argv[0]!r}", file=sys.stderr)
    print(f"  did you mean: {shlex.join(['lf', *meant.split(), *argv[1:]])}", file=sys.stderr)
    sys.exit(int(ExitStatus.USAGE))


def main() -> None:
    import signal

    from lf.errors import raise_terminated
    from lf.platform import termination_signals

    for signum in termination_signals():  # like Ctrl-C: nothing half-done is left behind (no SIGHUP on Windows)
        signal.signal(signum, raise_terminated)
    argv = sys.argv[1:]
    completing = "_LF_COMPLETE" in os.environ
    if argv[:1] in (["--install-completion"], ["--show-completion"]) and not completing:
        _completion(argv)
        return
    if completing:
        from typer.completion import completion_init

        completion_init()  # the shells' completion classes, which Typer registers only with its own options
    if argv and not completing and not argv[0].startswith("-") and argv[0] not in (*GROUPS, *TOP_LEVEL):
        _no_such_command(argv)
    only = argv[0] if argv and not completing and argv[0] in (*GROUPS, *TOP_LEVEL) else None
    # `lf runtime status …`: the one command, unless the word is not a command (then Typer's own
    # "no such command" message needs the whole group)
    only_command = argv[1] if only in GROUPS and len(argv) > 1 and argv[1] in GROUPS[only][1] else None
    listing = not completing and argv[:1] in ([], ["-h"], ["--help"], ["--version"])
    build_app(only, only_command, listing)(prog_name="lf")
