"""Models built offline from a GGUF file lf already has, by a builder script that a runtime's manifest
declares (`builders = { onnx = "build_onnx.py" }`) and that runs in that runtime's env, so the model is
written by the very packages that will load it. No model hub is asked (everything comes from the GGUF).

What every build shares lives here: one build of a model at a time (a lock), the build in a scratch folder
moved into lf's models dir whole (the model appears complete or not at all), `lf-build.json` beside it
(what built it, when, from what), and `model: <name>` in llamafarm.yaml finds it there. The kinds:
lf.models.onnx (ONNX Runtime GenAI, for Lemonade) and lf.models.hf (Hugging Face folders, for vLLM).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lf.errors import LfError

BUILD_INFO = "lf-build.json"
DEFAULT_SOURCE = "smollm2-135m"


class BuildError(LfError):
    """A model build failed."""


@dataclass
class BuildResult:
    name: str
    path: Path
    cached: bool
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Kind:
    """One kind of model lf builds."""

    key: str  # the builder a runtime's manifest declares: builders = { <key> = "script.py" }
    what: str  # as messages say it: "ONNX", "Hugging Face"
    suffix: str  # of default names: <source>-<suffix>
    marker: str  # the file a built model of this kind has
    command: str  # the lf command that builds it, for messages


def default_name(kind: Kind, source: str, *extra: str) -> str:
    return "-".join([Path(source).stem if source.endswith(".gguf") else source, kind.suffix, *extra])


def is_built(kind: Kind, path: Path) -> bool:
    return (path / kind.marker).is_file() and (path / BUILD_INFO).is_file()


def build_info(path: Path) -> dict | None:
    try:
        return json.loads((path / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return None


def builder_runtime(key: str):
    """The runtime whose manifest declares a builder for `key` models, and the builder's file."""
    from lf.runtimes.registry import all_runtimes

    for runtime in all_runtimes().values():
        if key in runtime.builders:
            return runtime, runtime.builders[key]
    raise BuildError(
        f"no runtime declares a builder for {key} models",
        hint=f'a runtime\'s manifest names one with: builders = {{ {key} = "script.py" }}',
    )


def build(
    kind: Kind,
    source: str,
    name: str,
    *,
    force: bool,
    log: IO[str] | None,
    args: Callable[[Path], list[str]],
    describe: Callable[[dict], dict],
    finish: Callable[[Path], None] | None = None,
) -> BuildResult:
    """Build (or find already built) the model `name` of `kind` from the GGUF `source`. `args(work)`: the
    builder's own options; `finish(out)`: after it wrote the model; `describe(packages)`: what lf-build.json
    adds about this kind (packages: the builder env's, name → version). Output goes to `log`."""
    from lf.dirs import ensure_private_dir
    from lf.files import exclusive_lock
    from lf.models.catalog import models_dir, resolve_model_path
    from lf.runtimes.envs import installed_info, require_env_python

    log = log or sys.stderr
    if not name or "/" in name or name.startswith("."):
        raise LfError(
            f"{name!r} is not a usable model name",
            hint=f"a plain folder name, e.g. {default_name(kind, DEFAULT_SOURCE)}",
        )
    runtime, builder = builder_runtime(kind.key)
    root = ensure_private_dir(models_dir())
    dest = root / name
    with exclusive_lock(root / f".{name}.lock"):  # one build of a model at a time
        if is_built(kind, dest) and not force:
            return BuildResult(name, dest, True, build_info(dest) or {})
        python = require_env_python(runtime)
        gguf = resolve_model_path(source)
        if gguf.suffix != ".gguf" or not gguf.is_file():
            raise LfError(
                f"{gguf} is not a GGUF file", hint=f"{kind.command} converts a GGUF model, e.g. {DEFAULT_SOURCE}"
            )
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=root))
        try:
            out = work / "out"
            run_builder(
                [python, str(runtime.folder / builder), "--gguf", str(gguf), "--out", str(out), *args(work)],
                work,
                log,
                kind.what,
            )
            if not (out / kind.marker).is_file():
                raise BuildError(
                    f"the {kind.what} builder finished without writing {kind.marker}", hint="see its output above"
                )
            if finish is not None:
                finish(out)
            packages = (installed_info(runtime) or {}).get("packages", {})
            info = {
                "name": name,
                "source": source,
                "gguf": str(gguf),
                **describe(packages),
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


def run_builder(argv: list[str], work: Path, log: IO[str], what: str) -> None:
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
