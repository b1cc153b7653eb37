"""Hugging Face model folders built offline from a GGUF file (`lf models build-hf`), for vLLM.

vLLM (0.32) loads Hugging Face folders, not GGUF, and no model hub may be reachable: transformers reads the
GGUF and writes the folder (safetensors, config, tokenizer), in the env of the runtime whose manifest declares
an `hf` builder (vLLM's, runtimes/vllm/build_hf.py), whose transformers is the one vLLM loads the model with.
What every build shares is in lf.models.build.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from lf.errors import LfError
from lf.models.build import DEFAULT_SOURCE, BuildResult, Kind, build
from lf.models.build import default_name as _default_name
from lf.models.build import is_built as _is_built

HF = Kind(key="hf", what="Hugging Face", suffix="hf", marker="config.json", command="lf models build-hf")
DTYPES = ("float32", "bfloat16", "float16")


def default_name(source: str) -> str:
    return _default_name(HF, source)


def is_built(path: Path) -> bool:
    return _is_built(HF, path)


def build_hf(
    source: str = DEFAULT_SOURCE,
    *,
    name: str | None = None,
    force: bool = False,
    dtype: str = "float32",
    log: IO[str] | None = None,
) -> BuildResult:
    """Build (or find already built) the Hugging Face model `name` from the GGUF `source`. Output goes to `log`."""
    if dtype not in DTYPES:
        raise LfError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")

    def describe(packages: dict) -> dict:
        return {"format": "hf", "dtype": dtype, "transformers": packages.get("transformers")}

    return build(
        HF,
        source,
        name or default_name(source),
        force=force,
        log=log,
        args=lambda work: ["--dtype", dtype],
        describe=describe,
    )
