"""Isolated Python environments for runtimes whose engine is a set of Python packages.

`lf runtime install NAME` builds a venv under `data_dir()/envs/NAME` from the pip requirement files in the
runtime's folder and, only when every step succeeded, writes `lf-installed.json` into it: the registry treats
an env without that file as not installed, so a half-finished install is never used.

A runtime declares how its env is built in its manifest, either with one requirements file:

    install_requirements = "requirements.txt"

or with alternative plans, tried in order (the first whose `available_if` package the package index has):

    [[install]]
    generation = "v8"
    available_if = "lemonade-sdk"
    steps = [{ requirements = "requirements-sdk.txt", constraints = "constraints.txt" }]

Each step is one `pip install` run; later steps can re-pin what an earlier resolution chose. A plan may also
apply only on some machines (`when = "cuda"`: a CUDA GPU is present) and name packages to uninstall once its
steps are done (`remove = ["torchvision"]`: a dependency that comes in but breaks the engine on this machine).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lf.errors import LfError, NotInstalledError
from lf.runtimes.registry import Runtime

MARKER = "lf-installed.json"


class InstallError(LfError):
    """pip (or venv) failed while building a runtime's env."""


@dataclass(frozen=True)
class InstallStep:
    requirements: str  # file in the runtime's folder
    constraints: str | None = None  # file in the runtime's folder

    def pip_args(self, folder: Path) -> list[str]:
        args = ["-r", str(folder / self.requirements)]
        if self.constraints:
            args += ["-c", str(folder / self.constraints)]
        return args

    def files(self) -> list[str]:
        return [self.requirements] + ([self.constraints] if self.constraints else [])


@dataclass(frozen=True)
class InstallPlan:
    generation: str | None
    steps: tuple[InstallStep, ...]
    available_if: str | None = None  # a distribution name: the plan applies only if the index has it
    description: str = ""
    when: str | None = None  # a machine condition (MACHINE_CONDITIONS): the plan applies only where it holds
    remove: tuple[str, ...] = ()  # distributions uninstalled after the steps


def has_cuda_gpu(proc_driver: Path = Path("/proc/driver/nvidia"), which=shutil.which) -> bool:
    """An NVIDIA driver is loaded, or its nvidia-smi is on PATH: CUDA builds of an engine can run here."""
    return proc_driver.exists() or which("nvidia-smi") is not None


# what an [[install]] plan's `when` may name
MACHINE_CONDITIONS = {"cuda": has_cuda_gpu}


@dataclass
class InstallResult:
    runtime: str
    env_dir: Path
    already_installed: bool
    info: dict = field(default_factory=dict)
    note: str = ""


def install_plans(runtime: Runtime) -> list[InstallPlan]:
    plans = []
    for raw in runtime.install_plans:
        steps = tuple(InstallStep(s["requirements"], s.get("constraints")) for s in raw.get("steps", ()))
        if not steps:
            raise LfError(f"{runtime.folder / 'manifest.toml'}: an [[install]] plan has no steps")
        when, remove = raw.get("when"), raw.get("remove", [])
        if when is not None and when not in MACHINE_CONDITIONS:
            raise LfError(
                f"{runtime.folder / 'manifest.toml'}: an [[install]] plan's when = {when!r} is not one of {', '.join(MACHINE_CONDITIONS)}"
            )
        if not (isinstance(remove, list) and all(isinstance(name, str) and name for name in remove)):
            raise LfError(
                f"{runtime.folder / 'manifest.toml'}: an [[install]] plan's remove must be a list of package names"
            )
        plans.append(
            InstallPlan(
                raw.get("generation"), steps, raw.get("available_if"), raw.get("description", ""), when, tuple(remove)
            )
        )
    if not plans and runtime.install_requirements:
        plans.append(InstallPlan(None, (InstallStep(runtime.install_requirements),)))
    return plans


def requirements_digest(runtime: Runtime) -> str:
    """A hash of every requirement file the runtime's plans name: tells when an env is out of date."""
    digest = hashlib.sha256()
    for plan in install_plans(runtime):
        if plan.remove:  # (only then: the digest of envs built before plans could remove stays the same)
            digest.update(("remove:" + ",".join(plan.remove)).encode() + b"\0")
        for step in plan.steps:
            for name in step.files():
                digest.update(name.encode() + b"\0")
                try:
                    digest.update((runtime.folder / name).read_bytes())
                except OSError:
                    digest.update(b"<missing>")
    return digest.hexdigest()[:16]


def installed_info(runtime: Runtime) -> dict | None:
    """What `lf-installed.json` says about the runtime's env, or None when it is not installed."""
    try:
        return json.loads((runtime.env_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_outdated(runtime: Runtime, info: dict | None = None) -> bool:
    info = info if info is not None else installed_info(runtime)
    return info is not None and bool(info) and info.get("requirements_digest") != requirements_digest(runtime)


def _require_env_runtime(runtime: Runtime) -> list[InstallPlan]:
    plans = install_plans(runtime)
    if not plans:
        raise LfError(
            f"runtime {runtime.name!r} has no environment for lf to install",
            hint=runtime.install_hint() if runtime.engines else f"see {runtime.folder / 'README.md'}",
        )
    return plans


@contextmanager
def _env_lock(runtime: Runtime) -> Iterator[None]:
    """One install or uninstall of an env at a time, across processes (two test sessions, two shells)."""
    from lf.dirs import ensure_private_dir
    from lf.files import exclusive_lock

    root = ensure_private_dir(runtime.env_dir.parent)
    with exclusive_lock(root / f".{runtime.name}.lock"):
        yield


def install(
    runtime: Runtime, *, force: bool = False, log: IO[str] | None = None, python: str | None = None
) -> InstallResult:
    """Build the runtime's env (a no-op when it is installed, unless `force`). pip's output goes to `log`."""
    log = log or sys.stderr
    plans = _require_env_runtime(runtime)
    with _env_lock(runtime):
        info = installed_info(runtime)
        if info is not None and not force:
            note = "requirements changed since; reinstall with --force" if is_outdated(runtime, info) else ""
            return InstallResult(runtime.name, runtime.env_dir, True, info, note)
        if runtime.env_dir.exists():
            shutil.rmtree(runtime.env_dir)
        started = time.monotonic()
        try:
            info = _build(runtime, plans, python or sys.executable, log)
        except BaseException:
            # a half-built env is worse than none: a re-run starts clean (pip's cache keeps it quick)
            shutil.rmtree(runtime.env_dir, ignore_errors=True)
            raise
        info["duration_s"] = round(time.monotonic() - started, 1)
        _write_marker(runtime.env_dir / MARKER, info)
    return InstallResult(runtime.name, runtime.env_dir, False, info)


def _build(runtime: Runtime, plans: list[InstallPlan], base_python: str, log: IO[str]) -> dict:
    env_dir = runtime.env_dir
    _progress(log, f"creating a virtual environment in {env_dir}")
    _run([base_python, "-m", "venv", str(env_dir)], log, f"could not create a virtual environment in {env_dir}")
    python = str(runtime.env_python())
    plan = choose_plan(plans, python, log)
    steps_run = []
    for i, step in enumerate(plan.steps, 1):
        args = [python, "-m", "pip", "install", "--disable-pip-version-check", *step.pip_args(runtime.folder)]
        _progress(log, f"[{i}/{len(plan.steps)}] pip install {' '.join(step.pip_args(Path('.')))}")
        _run(args, log, f"pip could not install {step.requirements} for {runtime.name}")
        steps_run.append(step.pip_args(Path(".")))
    if plan.remove:
        _progress(log, f"pip uninstall {' '.join(plan.remove)} (they break {runtime.name} on this machine)")
        _run(
            [python, "-m", "pip", "uninstall", "-y", "--disable-pip-version-check", *plan.remove],
            log,
            f"pip could not uninstall {', '.join(plan.remove)}",
        )
    return {
        "runtime": runtime.name,
        "generation": plan.generation,
        "plan": plan.description or plan.generation,
        "python": _python_version(python),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "steps": steps_run,
        "removed": list(plan.remove),
        "requirements_digest": requirements_digest(runtime),
        "packages": _packages(python),
    }


def choose_plan(plans: list[InstallPlan], python: str, log: IO[str]) -> InstallPlan:
    """The first plan that fits this machine (`when`) and whose `available_if` package the index offers (for
    this env's Python); the last otherwise."""
    for plan in plans[:-1]:
        if plan.when is not None and not MACHINE_CONDITIONS[plan.when]():
            _progress(log, f"not using {plan.description or plan.generation}: this machine has no {plan.when}")
            continue
        if plan.available_if is None or index_has(python, plan.available_if):
            return plan
        _progress(log, f"{plan.available_if} is not available from the package index here; trying the next way")
    return plans[-1]


def index_has(python: str, requirement: str) -> bool:
    """Ask pip (resolving this one name only, installing nothing) whether the index has `requirement`."""
    proc = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-deps",
            "--ignore-installed",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0


def uninstall(runtime: Runtime) -> bool:
    """Remove the runtime's env. False when there was none. Refuses while an instance runs from it."""
    _require_env_runtime(runtime)
    running = _running_instances(runtime.name)
    if running:
        raise LfError(
            f"{runtime.name} is running from this environment ({', '.join(running)})",
            hint=f"stop it first: lf runtime stop {runtime.name}",
        )
    with _env_lock(runtime):
        if not runtime.env_dir.exists():
            return False
        shutil.rmtree(runtime.env_dir)
    return True


def require_env_python(runtime: Runtime) -> str:
    """The env's interpreter, for tools that must run with the runtime's own packages (lf models build-onnx)."""
    if not runtime.env_installed() or not runtime.env_python().exists():
        raise NotInstalledError(
            f"the {runtime.name} environment is not installed",
            hint=f"install it with: lf runtime install {runtime.name}",
        )
    return str(runtime.env_python())


def _running_instances(runtime_name: str) -> list[str]:
    from lf.daemon.records import StateStore

    return [r.name for r in StateStore().all_records() if r.runtime == runtime_name and r.process_alive()]


def run_to_log(argv: list[str], log: IO[str], **kwargs) -> int:
    """Run `argv` with its output going to `log` as it comes; its exit code.

    A real file is handed to the child directly (pip keeps its progress bars on a terminal); anything
    else (a test runner's capture) gets the output copied line by line.
    """
    log.flush()
    try:
        fd = log.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is not None:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, **kwargs).returncode
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        **kwargs,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
        return proc.wait()


def _run(argv: list[str], log: IO[str], failure: str) -> None:
    try:
        # pip's own output is the progress report; it goes where the caller wants it (stderr for the CLI)
        code = run_to_log(argv, log)
    except OSError as exc:
        raise InstallError(f"{failure}: {exc.strerror or exc}") from exc
    if code != 0:
        raise InstallError(f"{failure} (exit code {code})", hint="see pip's output above; a re-run starts over")


def _progress(log: IO[str], text: str) -> None:
    log.write(f"lf: {text}\n")
    log.flush()


def _python_version(python: str) -> str:
    proc = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True
    )
    return proc.stdout.strip()


def _packages(python: str) -> dict[str, str]:
    proc = subprocess.run(
        [python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"], capture_output=True, text=True
    )
    try:
        return {p["name"]: p["version"] for p in json.loads(proc.stdout)}
    except (ValueError, KeyError, TypeError):
        return {}


def _write_marker(path: Path, info: dict) -> None:
    from lf.files import atomic_write

    atomic_write(path, json.dumps(info, indent=2) + "\n")
