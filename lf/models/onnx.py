"""Make ONNX Runtime GenAI models offline from a GGUF file (`lf models build-onnx`).

No ONNX LLM ships on the package index, and no model hub may be reachable, so lf builds one from the GGUF it
already has: transformers reads the GGUF, onnxruntime-genai's model builder writes the ONNX model. Both run in
the env of the runtime whose manifest declares an ONNX builder (Lemonade's, runtimes/lemonade/build_onnx.py), so
the model is built by the onnxruntime-genai that will load it. The result is a folder in lf's models dir; `model: <name>` in llamafarm.yaml finds it there.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lf.errors import LfError

BUILD_INFO = "lf-build.json"
DEFAULT_SOURCE = "smollm2-135m"
# onnxruntime-genai 0.6.0 (Lemonade v6) rejects the Llama tokenizer class transformers writes; the SmolLM2
# vocabulary is byte-level BPE, which it reads as GPT2Tokenizer from tokenizer.json
TOKENIZER_CLASS = "GPT2Tokenizer"


class BuildError(LfError):
    """The ONNX build failed."""


@dataclass
class BuildResult:
    name: str
    path: Path
    cached: bool
    info: dict = field(default_factory=dict)


def default_name(source: str, tiny: bool) -> str:
    return f"{Path(source).stem if source.endswith('.gguf') else source}-onnx" + ("-tiny" if tiny else "")


def is_built(path: Path) -> bool:
    return (path / "genai_config.json").is_file() and (path / BUILD_INFO).is_file()


def build_info(path: Path) -> dict | None:
    try:
        return json.loads((path / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return None


def build_onnx(
    source: str = DEFAULT_SOURCE,
    *,
    name: str | None = None,
    tiny: bool = False,
    force: bool = False,
    precision: str = "int4",
    log: IO[str] | None = None,
) -> BuildResult:
    """Build (or find already built) the ONNX model `name` from the GGUF `source`. Output goes to `log`."""
    from lf.dirs import ensure_private_dir
    from lf.files import exclusive_lock
    from lf.models.catalog import models_dir, resolve_model_path
    from lf.runtimes.envs import installed_info, require_env_python

    log = log or sys.stderr
    name = name or default_name(source, tiny)
    if not name or "/" in name or name.startswith("."):
        raise LfError(f"{name!r} is not a usable model name", hint="a plain folder name, e.g. smollm2-135m-onnx")
    runtime, builder = builder_runtime("onnx")
    root = ensure_private_dir(models_dir())
    dest = root / name
    with exclusive_lock(root / f".{name}.lock"):  # one build of a model at a time
        if is_built(dest) and not force:
            return BuildResult(name, dest, True, build_info(dest) or {})
        python = require_env_python(runtime)
        gguf = resolve_model_path(source)
        if gguf.suffix != ".gguf" or not gguf.is_file():
            raise LfError(f"{gguf} is not a GGUF file", hint="build-onnx converts a GGUF model, e.g. smollm2-135m")
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=root))
        try:
            out = work / "out"
            argv = [python, str(runtime.folder / builder), "--gguf", str(gguf), "--out", str(out), "--work", str(work), "--precision", precision]
            if tiny:
                argv.append("--tiny")
            _run(argv, work, log)
            if not (out / "genai_config.json").is_file():
                raise BuildError("the model builder finished without writing genai_config.json", hint="see its output above")
            fix_tokenizer_config(out)
            packages = (installed_info(runtime) or {}).get("packages", {})
            info = {
                "name": name,
                "source": source,
                "gguf": str(gguf),
                "tiny": tiny,
                "precision": precision,
                "execution_provider": "cpu",
                "onnxruntime_genai": packages.get("onnxruntime-genai"),
                "built_with": f"lf env {runtime.env_dir}",
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "duration_s": round(time.monotonic() - started, 1),
            }
            (out / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(out, dest)  # the model appears complete or not at all
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return BuildResult(name, dest, False, info)


def builder_runtime(kind: str):
    """The runtime whose manifest declares a builder for `kind` models, and the builder's file."""
    from lf.runtimes.registry import all_runtimes

    for runtime in all_runtimes().values():
        if kind in runtime.builders:
            return runtime, runtime.builders[kind]
    raise BuildError(f"no runtime declares a builder for {kind} models", hint="a runtime's manifest names one with: builders = {{ {kind} = \"script.py\" }}")


def fix_tokenizer_config(folder: Path) -> None:
    path = folder / "tokenizer_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path}: cannot be read after the build: {exc}") from None
    config["tokenizer_class"] = TOKENIZER_CLASS
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _run(argv: list[str], work: Path, log: IO[str], what: str = "ONNX") -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",  # everything comes from the GGUF file: never wait on a model hub
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(work / "hf-home"),  # nothing lands in the user's Hugging Face cache
        "PYTHONUNBUFFERED": "1",
    }
    from lf.runtimes.envs import run_to_log

    try:
        code = run_to_log(argv, log, env=env, cwd=str(work))
    except OSError as exc:
        raise BuildError(f"could not run {argv[0]}: {exc.strerror or exc}") from exc
    if code != 0:
        raise BuildError(f"the {what} build failed (exit code {code})", hint="see its output above")
