"""`lf chat`: resolve runtime and model, start the runtime if needed, stream the answer."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from lf.cli._common import ConfigOpt, JsonOpt, Progress, command, complete_models, err, load_project, print_json


@command
def chat(
    message: Annotated[Optional[str], typer.Argument(help="The message. Omitted: read stdin, or open an interactive chat on a terminal.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="A model entry of llamafarm.yaml, or a model name/file.", autocompletion=complete_models)] = None,
    runtime: Annotated[Optional[str], typer.Option("--runtime", "-r", help="Runtime to use (default: from llamafarm.yaml, else llamacpp).")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", min=0.0, max=2.0, help="Sampling temperature.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", min=1, help="Upper bound on the answer's length.")] = None,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="Wait for the whole answer, then print it.")] = False,
    no_auto_start: Annotated[bool, typer.Option("--no-auto-start", help="Fail instead of starting a runtime that is not running.")] = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Chat with a model. Streams the answer to stdout; starts the runtime first if it is not running."""
    from lf.core.actions import chat_endpoint

    if message is None and not sys.stdin.isatty():
        message = sys.stdin.read().strip()
        if not message:
            from lf.errors import ExitStatus, LfError

            raise LfError("no message: stdin was empty", exit_status=ExitStatus.USAGE)
    progress = Progress(starting="waiting for {name} to become healthy", announce=True)
    try:
        endpoint, entry = chat_endpoint(load_project(config), runtime, model, auto_start=not no_auto_start, on_event=progress)
    finally:
        progress.done()

    payload: dict = {"model": endpoint.model, **entry.model_api_parameters}
    if temperature is not None:
        payload["temperature"] = temperature
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    history: list[dict] = [{"role": "system", "content": system}] if system else []

    if message is not None:
        _ask(endpoint, payload, history, message, stream=not (no_stream or json_out), json_out=json_out)
        return
    err(f"Chatting with {endpoint.model} at {endpoint.base_url}. Ctrl-D or /exit to leave.")
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            err()
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip():
            _ask(endpoint, payload, history, line, stream=True, json_out=False)


def _ask(endpoint, payload: dict, history: list[dict], message: str, *, stream: bool, json_out: bool) -> None:
    from lf.core.client import chat as send

    history.append({"role": "user", "content": message})
    printed = False

    def on_token(token: str) -> None:
        nonlocal printed
        printed = True
        sys.stdout.write(token)
        sys.stdout.flush()

    try:
        result = send(endpoint.base_url, {**payload, "messages": history}, api_key=endpoint.api_key, stream=stream, on_token=on_token)
    finally:
        if printed:
            sys.stdout.write("\n")  # keep what was printed, and end its line, whatever happens next
            sys.stdout.flush()
    history.append({"role": "assistant", "content": result.text})
    if json_out:
        print_json(result.as_response())
    elif not stream:
        print(result.text, flush=True)
