"""The cluster's own Python environment: Ray and Ray Serve beside lf's runtime dependencies, never in lf's.

`lf cluster install` builds a venv under `data_dir()/envs/cluster` with `ray[serve]` and the packages lf itself
depends on (read from lf's installed metadata, so the two never drift), and writes `lf-installed.json` only when
every step succeeded, as `lf runtime install` does for a runtime. Every Ray process of a node runs from it: the
head, a worker, the replicas (which start engines with lf's own code, so they need lf's dependencies), and the
short-lived processes through which lf talks to the cluster (lf.cluster.bridge). lf's code itself is not
installed there: it reaches every node through Ray (lf.cluster.package).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lf.dirs import data_dir
from lf.errors import NotInstalledError
from lf.runtimes.envs import MARKER, InstallError, run_to_log

RAY_REQUIREMENT = "ray[serve]==2.60.0"
ENV_NAME = "cluster"
INSTALL_COMMAND = "lf cluster install"


@dataclass
class InstallResult:
    env_dir: Path
    already_installed: bool
    info: dict = field(default_factory=dict)
    note: str = ""
    updated: bool = False  # an env built for an earlier lf's requirements, brought up to the current ones


def env_dir() -> Path:
    return data_dir() / "envs" / ENV_NAME


def env_python() -> Path:
    return env_dir() / "bin" / "python"


def lf_requirements() -> list[str]:
    """lf's own runtime dependencies, as its installed metadata declares them (extras left out)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        declared = requires("lf") or []
    except PackageNotFoundError:
        raise InstallError(
            "lf's own package metadata is missing, so the packages it needs cannot be listed",
            hint="install lf with pip (pip install -e . in a checkout), then run this again",
        ) from None
    return sorted(r for r in declared if "extra" not in r.partition(";")[2])


def requirements() -> list[str]:
    return [RAY_REQUIREMENT, *lf_requirements()]


def requirements_digest(reqs: list[str] | None = None) -> str:
    return hashlib.sha256("\n".join(reqs if reqs is not None else requirements()).encode()).hexdigest()[:16]


def installed_info() -> dict | None:
    try:
        return json.loads((env_dir() / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_installed() -> bool:
    return installed_info() is not None and env_python().exists()


def _own_python_has_ray() -> bool:
    """lf installed with its `cluster` extra: Ray is in lf's own environment (found without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.serve") is not None
    except (ImportError, ValueError):
        return False


def require_python() -> str:
    """The interpreter every Ray process of lf's runs with: the cluster env's, else lf's own when it was installed
    with the `cluster` extra; NotInstalledError with the command that builds the env."""
    if is_installed():
        return str(env_python())
    if _own_python_has_ray():
        return sys.executable
    raise NotInstalledError(
        f"the cluster environment (Ray {RAY_REQUIREMENT.split('==')[1]}) is not installed at {env_dir()}",
        hint=f"install it with: {INSTALL_COMMAND}   (about two minutes, ~600 MB; on every node)",
    )


def ray_command() -> str:
    """The `ray` command beside that interpreter."""
    return str(Path(require_python()).parent / "ray")


def install(*, force: bool = False, log: IO[str] | None = None, python: str | None = None) -> InstallResult:
    """Build the env (a no-op when it is installed, unless `force`). pip's output goes to `log`."""
    from lf.dirs import ensure_private_dir
    from lf.files import exclusive_lock

    log = log or sys.stderr
    reqs = requirements()
    root = ensure_private_dir(env_dir().parent)
    with exclusive_lock(root / f".{ENV_NAME}.lock"):  # two shells, two test sessions: one builds, one waits
        info = installed_info()
        if info is not None and not force and env_python().exists():
            if info.get("requirements_digest") == requirements_digest(reqs):
                return InstallResult(env_dir(), True, info)
            # lf's own requirements changed (a newer lf): pip brings the env up to them, keeping what still fits
            started = time.monotonic()
            _progress(log, "lf's requirements changed since this environment was built: updating it")
            _pip_install(str(env_python()), reqs, log)
            info = {**info, **_described(str(env_python()), reqs), "duration_s": round(time.monotonic() - started, 1)}
            _write_marker(info)
            return InstallResult(env_dir(), False, info, updated=True)
        if env_dir().exists():
            shutil.rmtree(env_dir())
        started = time.monotonic()
        try:
            info = _build(reqs, python or sys.executable, log)
        except BaseException:
            shutil.rmtree(env_dir(), ignore_errors=True)  # a half-built env is worse than none
            raise
        info["duration_s"] = round(time.monotonic() - started, 1)
        _write_marker(info)
    return InstallResult(env_dir(), False, info)


def _write_marker(info: dict) -> None:
    from lf.files import atomic_write

    atomic_write(env_dir() / MARKER, json.dumps(info, indent=2) + "\n")


def _build(reqs: list[str], base_python: str, log: IO[str]) -> dict:
    target = env_dir()
    _progress(log, f"creating a virtual environment in {target}")
    _run([base_python, "-m", "venv", str(target)], log, f"could not create a virtual environment in {target}")
    python = str(env_python())
    _pip_install(python, reqs, log)
    return _described(python, reqs)


def _pip_install(python: str, reqs: list[str], log: IO[str]) -> None:
    _progress(log, f"pip install {' '.join(reqs)}")
    _run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", *reqs],
        log,
        "pip could not install Ray and lf's dependencies into the cluster environment",
    )


def _described(python: str, reqs: list[str]) -> dict:
    return {
        "env": ENV_NAME,
        "requirements": reqs,
        "requirements_digest": requirements_digest(reqs),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ray": _version(python, "ray"),
        "python": _version(python, None),
    }


def _version(python: str, package: str | None) -> str:
    import subprocess

    code = (
        "import platform; print(platform.python_version())"
        if package is None
        else f"import importlib.metadata as m; print(m.version({package!r}))"
    )
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return proc.stdout.strip()


def _run(argv: list[str], log: IO[str], failure: str) -> None:
    try:
        code = run_to_log(argv, log)
    except OSError as exc:
        raise InstallError(f"{failure}: {exc.strerror or exc}") from exc
    if code != 0:
        raise InstallError(f"{failure} (exit code {code})", hint="see pip's output above; a re-run starts over")


def _progress(log: IO[str], text: str) -> None:
    log.write(f"lf: {text}\n")
    log.flush()
