"""Lemonade: the parts manifest.toml cannot declare.

- Each generation has its own command, flags and API base: v10 `lemond`, v9 `lemonade-server serve`,
  v8 (lemonade-sdk) and v6 (turnkeyml) `lemonade-server-dev serve`; v6 speaks /api/v0, the others /api/v1.
- Lemonade answers before it serves any model: after the server is up, lf loads the configured model
  (by name, or a local checkpoint folder/file with its recipe) and only then calls the instance healthy.
- The llama.cpp backend follows the hardware unless the user chose one (as LlamaFarm's start script does).

Its settings (backend, checkpoint, recipe, llamacpp_backend) are declared, and checked, in manifest.toml.
lf calls `plan` (what to launch, as a frozen LaunchPlan) and `after_healthy` (load the model into the
running server, from what `plan` handed it through the record); nothing here prints or imports typer.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

from lf.errors import ConfigError, LfError, NotInstalledError, StartError, UnknownNameError
from lf.models.catalog import existing_path

# the recipe Lemonade loads a checkpoint with, per backend, on a CPU-only machine
DEFAULT_RECIPES = {"onnx": "oga-cpu", "llamacpp": "llamacpp", "transformers": "hf-cpu"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# -- which Lemonade ------------------------------------------------------------------------------
def generation(runtime, resolved) -> str:
    """'v10', 'v9', 'v8' or 'v6' for the engine the registry found."""
    if resolved.engine.generation:
        return resolved.engine.generation
    exe = Path(resolved.exe or "")
    if runtime.env_dir in exe.parents:  # lf's own env records what it installed
        from lf.runtimes.envs import installed_info

        recorded = (installed_info(runtime) or {}).get("generation")
        if recorded:
            return recorded
    return _generation_of_script(exe)


def _shebang(exe) -> list[str]:
    """The words of a script's `#!` line ([] for a binary, an unreadable file, or no `#!`)."""
    try:
        with open(exe, "rb") as fh:
            first = fh.readline(512)
    except OSError:
        return []
    return first[2:].decode("utf-8", "replace").split() if first.startswith(b"#!") else []


def _generation_of_script(exe: Path) -> str:
    """lemonade-server-dev is a pip console script: its interpreter's site-packages tell v6 from v8."""
    words = _shebang(exe)
    if not words:
        return "v8"
    env_root = Path(words[0]).parent.parent
    for site in env_root.glob("lib/python*/site-packages"):
        if any(site.glob("lemonade_sdk-*.dist-info")):
            return "v8"
        if any(site.glob("turnkeyml-*.dist-info")):
            return "v6"
    return "v8"


def api_base(gen: str) -> str:
    return "/api/v0" if gen == "v6" else "/api/v1"


def detect_llamacpp_backend() -> str:
    """The llama.cpp build that suits this machine's GPU, as LlamaFarm's start script chooses it."""
    if sys.platform == "darwin":
        return "metal"
    if os.path.exists("/dev/kfd"):  # AMD's compute driver: ROCm can run
        return "rocm"
    if os.path.isdir("/dev/dri") or shutil.which("nvidia-smi"):
        return "vulkan"  # Lemonade ships no CUDA llama.cpp; Vulkan runs on NVIDIA, AMD and Intel GPUs
    return "cpu"


# -- which model, loaded how -----------------------------------------------------------------------
@dataclass(frozen=True)
class ModelPlan:
    backend: str  # onnx | llamacpp | transformers
    recipe: str
    checkpoint: str | None  # a local folder/file, or a checkpoint name Lemonade downloads
    model_name: str | None  # a name from Lemonade's own model list
    served_as: str  # the model name chat requests must use
    llamacpp_backend: str | None = None  # cpu | vulkan | rocm | metal, for the llama.cpp backend


def model_plan(spec, gen: str) -> ModelPlan:
    settings = spec.settings
    backend = settings.get("backend")
    checkpoint = settings.get("checkpoint")
    local: Path | None
    if checkpoint:
        local = existing_path(str(checkpoint), spec.project_folder)
        if local is None and _looks_like_path(str(checkpoint)):
            raise NotInstalledError(
                f"checkpoint {checkpoint!r} does not exist", hint="give the path of a model folder or file"
            )
    else:
        local = _local_model(spec)
    kind = _model_kind(local) if local else None
    if backend and kind and backend != kind:
        raise ConfigError(
            f"{local} holds a {kind} model, but the lemonade backend is {backend!r}",
            hint=f"set backend: {kind}, or point the model at a {backend} model",
        )
    backend = backend or kind or "onnx"  # LlamaFarm's default: ONNX runs everywhere
    if gen == "v6" and backend == "llamacpp":
        raise LfError(
            "Lemonade v6 (turnkeyml) has no llama.cpp backend",
            hint="use backend onnx with an ONNX model (lf models build-onnx), or the llamacpp runtime for GGUF files",
        )
    recipe = str(settings.get("recipe") or DEFAULT_RECIPES[backend])
    llamacpp = str(settings.get("llamacpp_backend") or detect_llamacpp_backend()) if backend == "llamacpp" else None
    if local is None and not checkpoint:
        return ModelPlan(backend, recipe, None, spec.model, spec.model, llamacpp)
    target = str(local) if local else str(checkpoint)
    if gen == "v6":
        # v6 names a checkpoint-loaded model by its checkpoint, which must contain a '/'
        return ModelPlan(backend, recipe, target, None, target, llamacpp)
    # v8+ load by name only: a local checkpoint is registered first as a user model
    stem = (local.stem if local and local.is_file() else Path(target).name) or "model"
    return ModelPlan(backend, recipe, target, None, f"user.{stem}", llamacpp)


def _looks_like_path(value: str) -> bool:
    # "org/name" is a checkpoint name Lemonade downloads; anything else with a slash is a path
    return value.startswith((".", "~", "/")) or value.count("/") > 1 or value.endswith(".gguf")


def _local_model(spec) -> Path | None:
    """The model as a local folder/file (a path, a built model's name, a catalog name); None for a Lemonade name."""
    if spec.model_path:
        return Path(spec.model_path)
    from lf.models.catalog import CATALOG, resolve_model_path

    try:
        return resolve_model_path(spec.model, spec.project_folder)
    except (NotInstalledError, UnknownNameError):
        if spec.model == spec.runtime.default_model:
            raise NotInstalledError(
                f"model {spec.model!r} has not been built on this machine",
                hint="build it with: lf models build-onnx   (or --tiny for a small test model)",
            ) from None
        if spec.model in CATALOG or _looks_like_path(spec.model):
            raise
        return None


def _model_kind(path: Path) -> str | None:
    if path.is_file():
        return "llamacpp" if path.suffix == ".gguf" else None
    if (path / "genai_config.json").is_file():
        return "onnx"
    if any(path.glob("*.gguf")):
        return "llamacpp"
    if (path / "config.json").is_file():
        return "transformers"
    return None


# -- hooks lf calls ----------------------------------------------------------------------------------
def plan(spec, resolved, port: int):
    """What to launch: the generation's command and API base, and the model plan `after_healthy` loads."""
    from lf.runtimes.launch import default_plan

    gen = generation(spec.runtime, resolved)
    model = model_plan(spec, gen)  # fail on a bad model before anything is launched
    api = api_base(gen)
    # v6's /health halts the answer being generated (it sets the server's stop event), so status and
    # the start wait poll /models there; the model's load is checked once, before any answer, in
    # after_healthy.
    health_path, health_ready = (
        (f"{api}/models", "loaded-by-lf") if gen == "v6" else (f"{api}/health", spec.runtime.health_ready)
    )
    return default_plan(
        spec,
        resolved,
        port,
        argv=tuple(_argv(spec, resolved, gen, model, port)),
        api_base=api,
        health_path=health_path,
        health_ready=health_ready,
        model=model.served_as,
        env=MappingProxyType(process_env()),
        after_start=MappingProxyType({"generation": gen, **asdict(model), "ctx_size": spec.context_size}),
    )


def _argv(spec, resolved, gen: str, model: ModelPlan, port: int) -> list[str]:
    exe, port_text, host = _script_argv(resolved.exe or ""), str(port), spec.host
    if gen == "v6":
        if host not in LOOPBACK:
            raise LfError(
                f"Lemonade v6 serves on localhost only; it cannot bind {host}",
                hint="drop --host/LEMONADE_HOST, or install Lemonade v8 or newer",
            )
        _refuse_second_v6_server()
        return [*exe, "serve", "--port", port_text]
    if gen == "v10":
        # lemond takes only --port/--host; the rest lives in its config.json (`lemonade config set`)
        return [*exe, "--port", port_text, "--host", host]
    argv = [*exe, "serve", "--port", port_text, "--host", host, "--ctx-size", str(spec.context_size), "--no-tray"]
    if model.backend == "llamacpp":
        argv += ["--llamacpp", model.llamacpp_backend]
    return argv


def _script_argv(exe: str) -> list[str]:
    """[interpreter, script] for a pip console script, else [exe].

    The process then shows exactly the recorded command line (a script run through its shebang shows
    the interpreter first), which is what lets `lf runtime stop` recognise it as the process it started.
    """
    interpreter = _shebang(exe)
    if len(interpreter) != 1 or not os.path.basename(interpreter[0]).startswith("python"):
        return [exe]  # `#!/usr/bin/env python3` and friends: leave it to the kernel
    return [interpreter[0], exe]


def process_env() -> dict[str, str]:
    return {
        "PYTHONUNBUFFERED": "1",  # the log shows progress as it happens
        "BROWSER": "true",  # never open a browser window from a daemon
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TURNKEYML_SUPRESS_LEMONADE_NOTICE": "1",  # v6's "the project has moved" banner, twice per start
    }


def after_healthy(record, health, timeout):
    """Load the model into the running server; healthy only once it reports the model loaded."""
    from lf.daemon.health import Probe, probe_once

    plan = record.instance.after_start
    base = record.base_url.rstrip("/")
    if plan.get("generation") == "v6":
        body = (
            {"checkpoint": plan["checkpoint"], "recipe": plan["recipe"]}
            if plan.get("checkpoint")
            else {"model_name": plan.get("model_name")}
        )
        _post(record, f"{base}/load", body, timeout)
    else:
        if plan.get("checkpoint"):
            _post(
                record,
                f"{base}/pull",
                {"model_name": plan["served_as"], "checkpoint": plan["checkpoint"], "recipe": plan["recipe"]},
                timeout,
            )
        body: dict = {"model_name": plan.get("served_as")}
        if plan.get("ctx_size"):
            body["ctx_size"] = plan["ctx_size"]
        if plan.get("backend") == "llamacpp":
            body["llamacpp_backend"] = plan.get("llamacpp_backend")
        _post(record, f"{base}/load", body, timeout)
    after = probe_once(Probe(f"{base}/health", "json:model_loaded"), timeout=5.0)
    if not after.model_loaded:
        raise StartError(
            f"Lemonade accepted the model but does not report it loaded ({after.message})", hint=_log_hint(record)
        )
    return after


def _post(record, url: str, body: dict, timeout: float) -> None:
    import httpx

    try:
        response = httpx.post(url, json=body, timeout=httpx.Timeout(timeout, connect=5.0))
    except httpx.HTTPError as exc:
        raise StartError(f"Lemonade did not answer {url}: {exc}", hint=_log_hint(record)) from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail") or response.text
        except ValueError:
            detail = response.text
        what = body.get("checkpoint") or body.get("model_name")
        raise StartError(f"Lemonade could not load {what}: {str(detail).strip()[:500]}", hint=_log_hint(record))


def _log_hint(record) -> str:
    from lf.files import read_tail

    return f"last lines of {record.log_path}:\n{read_tail(record.log_path, 10)}"


def _refuse_second_v6_server() -> None:
    """v6 exits when any Lemonade server listens anywhere on the machine: say so before launching it."""
    import psutil

    names = {"lemonade-server-dev", "lemonade-server", "lemonade"}
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return  # cannot see: let Lemonade report it itself
    for conn in connections:
        if conn.status != psutil.CONN_LISTEN or not conn.pid:
            continue
        try:
            proc = psutil.Process(conn.pid)
            if proc.name() in names:
                raise StartError(
                    f"another Lemonade server runs on this machine (pid {conn.pid}, port {conn.laddr.port}); Lemonade v6 allows only one",
                    hint="stop it first (lf runtime stop lemonade, if lf started it)",
                )
        except psutil.Error:
            continue
