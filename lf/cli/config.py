"""`lf config …`: validate, show and create llamafarm.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lf.cli._common import ConfigOpt, JsonOpt, command, err, load_project, out, print_json, report_error


@command
def validate(
    path: Annotated[
        Path | None,
        typer.Argument(help="File to check (default: the project's llamafarm.yaml).", show_default=False),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Unknown keys (kept, unused by lf) are errors too, not warnings.")
    ] = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check a llamafarm.yaml; every problem with file:line:column, field path and what is allowed. Exit 5 if invalid."""
    from lf.config.check import check_file
    from lf.config.project import find_config
    from lf.errors import ConfigError, ExitStatus

    found = path or find_config(config)
    if found is None:
        raise ConfigError("no llamafarm.yaml here or in any parent folder", hint="create one with: lf config init")
    result = check_file(found, strict=strict)
    if json_out:
        print_json(result.to_dict())  # the one object, also for an invalid or unreadable file
        if not result.valid:
            if result.unreadable is not None:
                report_error(result.unreadable)
            raise typer.Exit(int(ExitStatus.CONFIG))
    problem = result.error()
    if problem is not None:
        raise problem
    if not json_out:
        for line in result.warnings:
            err(line)
        project = result.project
        out(
            f"{found}: valid ({project.shape} shape, {len(project.models)} model{'s' if len(project.models) != 1 else ''}, default {project.default_model})"
        )


@command
def show(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """The resolved configuration: every model with its aliases and runtime settings, and lf serve's settings with
    where each comes from (env, config, default); defaults filled, secrets redacted."""
    from lf.core.show import resolved_config

    data = resolved_config(load_project(config, warn=True))
    if json_out:
        print_json(data)
        return
    import yaml

    out(yaml.safe_dump(data, sort_keys=False).rstrip())


@command
def init(
    path: Annotated[Path, typer.Argument(help="Where to write it.")] = Path("llamafarm.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a starter llamafarm.yaml (the embedded default runtime and model)."""
    from lf.config.project import write_starter

    err(f"wrote {write_starter(path, force=force)}")


@command
def schema() -> None:
    """Print the JSON Schema of llamafarm.yaml (as YAML), the same as the repository's schema.yaml."""
    from lf.config.schema import schema_yaml

    out(schema_yaml().rstrip())
