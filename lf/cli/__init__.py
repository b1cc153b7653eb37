"""The `lf` command line: a thin layer that parses options, calls the core, renders results."""

from __future__ import annotations

import typer

from lf import __version__
from lf.cli import chat, config, models, runtime

app = typer.Typer(
    name="lf",
    help="Run local LLM runtimes as supervised daemons, check their health, and chat with them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(runtime.app, name="runtime")
app.add_typer(models.app, name="models")
app.add_typer(config.app, name="config")
chat.register(app)


def _version(value: bool) -> None:
    if value:
        print(f"lf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Run local LLM runtimes as supervised daemons, check their health, and chat with them."""


def main() -> None:
    app(prog_name="lf")
