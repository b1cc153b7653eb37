"""`lf chat`: resolve runtime and model, start the runtime if needed, stream the answer."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from lf.cli._common import CommandGroup, ConfigOpt, JsonOpt, Spinner, command, complete_models, err, print_json

group = CommandGroup("Top-level commands.")


@command(group, "chat")
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
    from lf.cli._common import load_project
    from lf.instances import chat_target

    if message is None and not sys.stdin.isatty():
        message = sys.stdin.read().strip()
        if not message:
            from lf.errors import ExitStatus, LfError

            raise LfError("no message: stdin was empty", exit_status=ExitStatus.USAGE)
    project = load_project(config)
    target = chat_target(project, runtime, model)
    # --model naming a model (not a configured entry) asks for that very model
    requested = model if model is not None and target.entry.name != model else None
    base_url, model_name = _endpoint(target, project, auto_start=not no_auto_start, requested_model=requested)

    payload: dict = {"model": model_name, **target.entry.model_api_parameters}
    if temperature is not None:
        payload["temperature"] = temperature
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    history: list[dict] = [{"role": "system", "content": system}] if system else []

    if message is not None:
        _ask(base_url, payload, history, message, target.api_key, stream=not (no_stream or json_out), json_out=json_out)
        return
    err(f"Chatting with {model_name} at {base_url}. Ctrl-D or /exit to leave.")
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            err()
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip():
            _ask(base_url, payload, history, line, target.api_key, stream=True, json_out=False)


def _ask(base_url: str, payload: dict, history: list[dict], message: str, api_key, *, stream: bool, json_out: bool) -> None:
    from lf.client import chat as send

    history.append({"role": "user", "content": message})
    printed = False

    def on_token(token: str) -> None:
        nonlocal printed
        printed = True
        sys.stdout.write(token)
        sys.stdout.flush()

    try:
        result = send(base_url, {**payload, "messages": history}, api_key=api_key, stream=stream, on_token=on_token)
    finally:
        if printed:
            sys.stdout.write("\n")  # keep what was printed, and end its line, whatever happens next
            sys.stdout.flush()
    history.append({"role": "assistant", "content": result.text})
    if json_out:
        print_json(result.as_response())
    elif not stream:
        print(result.text, flush=True)


def _endpoint(target, project, auto_start: bool, requested_model: str | None = None) -> tuple[str, str]:
    """(base_url, model name to request) for the target; starts a managed runtime when allowed."""
    if not target.managed:
        return target.base_url, target.entry.model
    from lf.errors import ExitStatus, LfError
    from lf.process import is_same_process
    from lf.state import StateStore

    store = StateStore()
    name = target.entry.name
    record = store.load_or_none(name)
    if record is not None and is_same_process(record.pid, record.create_time):
        if requested_model and target.runtime.one_model_per_process and requested_model not in (record.model, record.model_path):
            raise LfError(
                f"{name} is serving {record.model}, not {requested_model}",
                hint=f"switch with: lf runtime stop {name} && lf runtime start {name} --model {requested_model}",
            )
        return record.base_url, record.model
    if not auto_start:
        state = "crashed" if record is not None else "not running"
        raise LfError(f"{name} is {state}", hint=f"start it with: lf runtime start {name}", exit_status=ExitStatus.NOT_RUNNING)
    from lf.instances import Overrides, build_spec
    from lf.supervisor import start

    spec = build_spec(target.entry, project, Overrides(model=requested_model), single=True)
    err(f"Starting {name} ({spec.runtime.name}, {spec.model})…")
    spinner = Spinner(f"waiting for {name} to become healthy")
    try:
        result = start(spec, store, on_wait=spinner)
    finally:
        spinner.done()
    return result.record.base_url, result.record.model
