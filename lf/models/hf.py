"""Make Hugging Face model folders offline from a GGUF file (`lf models build-hf`), for vLLM.

vLLM (0.32) loads Hugging Face folders, not GGUF, and no model hub may be reachable: transformers reads the
GGUF lf already has and writes the folder (safetensors, config, tokenizer). It runs in the env of the runtime
whose manifest declares an `hf` builder (vLLM's, runtimes/vllm/build_hf.py), whose transformers is the one vLLM
loads the model with. The rest is as for ONNX models (lf.models.onnx): one build at a time, built in a scratch
folder and moved into lf's models dir whole, `model: <name>` finds it there.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from lf.errors import LfError
from lf.models.onnx import BUILD_INFO, DEFAULT_SOURCE, BuildError, BuildResult, _run, build_info, builder_runtime

DTYPES = ("float32", "bfloat16", "float16")


def default_name(source: str) -> str:
    return f"{Path(source).stem if source.endswith('.gguf') else source}-hf"


def is_built(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / BUILD_INFO).is_file()


def build_hf(
    source: str = DEFAULT_SOURCE,
    *,
    name: str | None = None,
    force: bool = False,
    dtype: str = "float32",
    log: IO[str] | None = None,
) -> BuildResult:
    """Build (or find already built) the Hugging Face model `name` from the GGUF `source`. Output goes to `log`."""
    from lf.dirs import ensure_private_dir
    from lf.files import exclusive_lock
    from lf.models.catalog import models_dir, resolve_model_path
    from lf.runtimes.envs import installed_info, require_env_python

    log = log or sys.stderr
    name = name or default_name(source)
    if not name or "/" in name or name.startswith("."):
        raise LfError(f"{name!r} is not a usable model name", hint="a plain folder name, e.g. smollm2-135m-hf")
    if dtype not in DTYPES:
        raise LfError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    runtime, builder = builder_runtime("hf")
    root = ensure_private_dir(models_dir())
    dest = root / name
    with exclusive_lock(root / f".{name}.lock"):  # one build of a model at a time
        if is_built(dest) and not force:
            return BuildResult(name, dest, True, build_info(dest) or {})
        python = require_env_python(runtime)
        gguf = resolve_model_path(source)
        if gguf.suffix != ".gguf" or not gguf.is_file():
            raise LfError(f"{gguf} is not a GGUF file", hint="build-hf converts a GGUF model, e.g. smollm2-135m")
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=root))
        try:
            out = work / "out"
            _run([python, str(runtime.folder / builder), "--gguf", str(gguf), "--out", str(out), "--dtype", dtype], work, log, what="Hugging Face")
            if not (out / "config.json").is_file():
                raise BuildError("the converter finished without writing config.json", hint="see its output above")
            packages = (installed_info(runtime) or {}).get("packages", {})
            info = {
                "name": name,
                "source": source,
                "gguf": str(gguf),
                "format": "hf",
                "dtype": dtype,
                "transformers": packages.get("transformers"),
                "built_with": f"lf env {runtime.env_dir}",
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "duration_s": round(time.monotonic() - started, 1),
                "size_bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
            }
            (out / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(out, dest)  # the model appears complete or not at all
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return BuildResult(name, dest, False, info)
