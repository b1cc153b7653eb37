"""vLLM: the parts manifest.toml cannot declare.

- Which model: vLLM (0.32) loads Hugging Face folders, not GGUF. A model entry names a local folder, a model
  lf built (`lf models build-hf`, found in lf's models dir), or a Hub repo id (`org/name`, which vLLM resolves
  through the Hugging Face cache). A GGUF is refused with the command that converts it.
- The server's environment: a private cache (VLLM_CACHE_ROOT) and temp dir (TMPDIR) per instance, so two
  instances never share compiled kernels or scratch files and nothing lands in ~/.cache or /tmp; the KV cache
  space on CPU; the Ray cluster to join; no model hub when the model is a local folder.

Stop needs no code: the manifest's `leftover_files` has lf remove the /dev/shm files this instance's processes
held, after the SIGKILL a server still loading may need.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lf.errors import ConfigError, NotInstalledError, UnknownNameError
from lf.models.catalog import CATALOG, existing_path, models_dir

# vLLM names its sockets DIR/<36-character uuid>; a Unix socket's path holds at most 107 bytes
SOCKET_DIR_MAX = 107 - 37
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def plan(spec, engine, port):
    from lf.runtimes.launch import argv_values, default_plan, render_argv

    model_path, local = resolve_model(spec)
    served = str(spec.settings.get("served_model_name") or spec.model)
    values = {**argv_values(spec, engine, port), "model_path": model_path, "served_model_name": served}
    argv = tuple(render_argv(engine.engine.argv, values, spec.runtime.name))
    return default_plan(
        spec,
        engine,
        port,
        argv=argv,
        model=served,
        model_path=model_path if local else None,
        env=server_env(spec, local),
    )


def resolve_model(spec) -> tuple[str, bool]:
    """(what --model gets, whether it is a local folder)."""
    model = spec.model
    found = existing_path(model, spec.project_folder)
    if found is None and "/" not in model and (models_dir() / model).exists():
        found = models_dir() / model
    if found is not None:
        return str(_hf_folder(found, model)), True
    if model in CATALOG:  # a GGUF lf knows: vLLM cannot load it as it is
        raise ConfigError(
            f"vLLM loads Hugging Face models, and {model!r} is a GGUF file",
            hint=f"convert it with: lf models build-hf {model}   then use model: {model}-hf",
        )
    if model == spec.runtime.default_model:
        raise NotInstalledError(
            f"model {model!r} has not been built on this machine", hint="build it with: lf models build-hf"
        )
    if _REPO_ID.match(model) and not model.startswith((".", "~")):
        return model, False  # a Hub repo id: vLLM finds it in the Hugging Face cache (or downloads it)
    if model.startswith((".", "~", "/")) or model.endswith(".gguf"):
        raise NotInstalledError(
            f"model folder {model!r} does not exist",
            hint="give the path of a Hugging Face model folder (with config.json)",
        )
    raise UnknownNameError(
        f"model {model!r} is neither a folder, a model built by lf, nor a Hugging Face repo id (org/name)",
        hint="build one with: lf models build-hf   (see lf models list)",
    )


def _hf_folder(path: Path, model: str) -> Path:
    if path.is_file() and path.suffix == ".gguf":
        raise ConfigError(
            f"vLLM loads Hugging Face models, and {model!r} is a GGUF file",
            hint=f"convert it with: lf models build-hf {path}",
        )
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{path} is not a Hugging Face model folder (it has no config.json)",
            hint="convert a GGUF with: lf models build-hf FILE",
        )
    return path


def server_env(spec, local: bool) -> dict[str, str]:
    env = {
        "VLLM_CACHE_ROOT": str(scratch_dir(spec, "cache")),
        "TMPDIR": str(scratch_dir(spec, "tmp")),
        "VLLM_RPC_BASE_PATH": str(socket_dir(spec)),
        "VLLM_CPU_KVCACHE_SPACE": str(spec.settings.get("kv_cache_space") or 1),
        "PYTHONUNBUFFERED": "1",
    }
    if local:
        env["HF_HUB_OFFLINE"] = "1"  # everything is in the folder: never wait on a model hub
    if spec.settings.get("ray_address"):
        env["RAY_ADDRESS"] = str(spec.settings["ray_address"])
    return env


def socket_dir(spec) -> Path:
    """A short private dir for vLLM's IPC sockets: a socket path may not exceed 107 bytes, which a TMPDIR
    under a project's state dir easily does (zmq refuses to bind, the server exits). The instance's own temp
    dir when it is short enough, else one in the system's temp dir named after it; 0700, and refused if
    another user owns it."""
    import hashlib
    import tempfile

    from lf.dirs import ensure_private_dir

    private = scratch_dir(spec, "tmp")
    if len(str(private)) <= SOCKET_DIR_MAX:
        return private
    digest = hashlib.sha256(str(private).encode()).hexdigest()[:16]
    base = tempfile.gettempdir()
    if len(base) > SOCKET_DIR_MAX - 30:  # "/lf-vllm-UID-DIGEST" must fit too
        base = "/tmp"
    return ensure_private_dir(Path(base) / f"lf-vllm-{os.getuid()}-{digest}")


def scratch_dir(spec, kind: str) -> Path:
    """<state>/[projects/NS/NAME/]scratch/<instance>/<kind>, private (0700): this instance's alone."""
    from lf.daemon.records import StateStore
    from lf.dirs import ensure_private_dir

    return ensure_private_dir(StateStore(project=spec.project).base / "scratch" / spec.name / kind)
