"""`lf config …`: validate, show and create llamafarm.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lf.cli._common import CommandGroup, ConfigOpt, JsonOpt, command, err, out, print_json

group = CommandGroup("Validate, show and create llamafarm.yaml.")

STARTER = """\
# llamafarm.yaml: the runtime and models this project uses (schema: lf's schema.yaml).
version: v1
name: {name}
namespace: default

runtime:
  default_model: default
  models:
    - name: default
      description: SmolLM2-135M on the embedded llama.cpp runtime
      provider: llamacpp
      model: smollm2-135m
      provider_config:
        port: 11634
"""


@command(group, "validate")
def validate(
    path: Annotated[Optional[Path], typer.Argument(help="File to check (default: the project's llamafarm.yaml).", show_default=False)] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check a llamafarm.yaml; every problem with file:line:column, field path and what is allowed. Exit 5 if invalid."""
    from lf.config import find_config, normalise, read_yaml
    from lf.config_schema import collect_problems, format_problems, problems_as_json
    from lf.errors import ConfigError, ExitStatus

    found = path or find_config(config)
    if found is None:
        raise ConfigError("no llamafarm.yaml here or in any parent folder", hint="create one with: lf config init")
    try:
        data, root = read_yaml(found)
    except ConfigError as exc:
        if json_out:
            print_json({"file": str(found), "valid": False, "problems": [{"file": str(found), "line": None, "column": None, "field": None, "message": exc.message, "allowed": None}]})
        raise
    problems = collect_problems(data)
    if json_out:
        print_json({"file": str(found), "valid": not problems, "problems": problems_as_json(found, root, problems)})
        if problems:
            raise typer.Exit(int(ExitStatus.CONFIG))
        return
    if problems:
        raise ConfigError(format_problems(found, root, problems), hint="see the schema with: lf config schema")
    project = normalise(found, data, root)
    out(f"{found}: valid ({project.shape} shape, {len(project.models)} model{'s' if len(project.models) != 1 else ''}, default {project.default_model})")


@command(group, "show")
def show(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """The resolved configuration: every model with its runtime settings, defaults filled, secrets redacted."""
    from lf.config_show import resolved_config

    from lf.cli._common import load_project

    data = resolved_config(load_project(config))
    if json_out:
        print_json(data)
        return
    import yaml

    out(yaml.safe_dump(data, sort_keys=False).rstrip())


@command(group, "init")
def init(
    path: Annotated[Path, typer.Argument(help="Where to write it.")] = Path("llamafarm.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a starter llamafarm.yaml (the embedded default runtime and model)."""
    from lf.errors import LfError

    if path.exists() and not force:
        raise LfError(f"{path} already exists", hint="use --force to overwrite it")
    name = Path.cwd().name if path.parent == Path(".") else path.resolve().parent.name
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-") or "project"
    path.write_text(STARTER.format(name=safe), encoding="utf-8")
    err(f"wrote {path}")


@command(group, "schema")
def schema() -> None:
    """Print the JSON Schema of llamafarm.yaml (as YAML), the same as the repository's schema.yaml."""
    from lf.config_schema import schema_yaml

    out(schema_yaml().rstrip())
