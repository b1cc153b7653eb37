"""`lf models build-hf`: a Hugging Face model folder made offline from a GGUF, for vLLM."""

from __future__ import annotations

from typing import Annotated

import typer

from lf.cli._common import JsonOpt, command, err, out, print_json


@command
def build_hf(
    source: Annotated[
        str, typer.Argument(help="The GGUF to convert: a known model name or a .gguf path.")
    ] = "smollm2-135m",
    name: Annotated[
        str | None, typer.Option("--name", help="Folder name in lf's models dir (default: <source>-hf).")
    ] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Weights type written: float32, bfloat16 or float16.")
    ] = "float32",
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the model is already built.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Build a Hugging Face model folder offline from a GGUF, inside vLLM's env (lf runtime install vllm)."""
    from lf.models.catalog import models_dir
    from lf.models.hf import build_hf as build
    from lf.models.hf import default_name, is_built

    if not is_built(models_dir() / (name or default_name(source))):
        err(f"Building a Hugging Face model from {source} (about a minute for SmolLM2)…")
    result = build(source, name=name, dtype=dtype, force=force)
    if json_out:
        print_json(
            {
                "name": result.name,
                "path": str(result.path),
                "already_built": result.cached,
                "dtype": result.info.get("dtype"),
                "transformers": result.info.get("transformers"),
            }
        )
    else:
        out(
            f"{result.name}: {result.path}"
            + (" (already built)" if result.cached else f" (built in {result.info.get('duration_s', 0):.0f}s)")
        )
