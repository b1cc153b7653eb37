"""`lf run MODEL [PROMPT]`: start the model if needed, then chat with it (as `ollama run`); `lf chat --model MODEL`
under the name people arrive with."""

from __future__ import annotations

from typing import Annotated

import typer

from lf.cli._common import ConfigOpt, JsonOpt, complete_models
from lf.cli.chat import chat
from lf.cli.models_pull import PullOpt
from lf.core.client import DEFAULT_TIMEOUT


def run(
    model: Annotated[
        str,
        typer.Argument(
            help="A model entry of llamafarm.yaml, or a model name/file (as lf chat --model takes it).",
            autocompletion=complete_models,
            show_default=False,
        ),
    ],
    prompt: Annotated[
        str | None,
        typer.Argument(
            help="The message. Omitted: read stdin, or open an interactive chat on a terminal.", show_default=False
        ),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", min=0.0, max=2.0, help="Sampling temperature.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", min=1, help="Upper bound on the answer's length.")
    ] = None,
    pull: PullOpt = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0, help="Seconds an answer may take, from the question to its last word (0: no limit)."
        ),
    ] = DEFAULT_TIMEOUT,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start MODEL if it is not running, then chat with it: PROMPT answered once, or an interactive chat.

    The same as lf chat --model MODEL [PROMPT] (lf chat has every option)."""
    chat(
        message=prompt,
        model=model,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        pull=pull,
        timeout=timeout,
        config=config,
        json_out=json_out,
    )
