"""The runtime registry: one folder per runtime under runtimes/, each with a manifest.toml.

Adding a runtime is adding a folder. Code exists only where a runtime's behaviour cannot be declared:
an optional hooks.py in the folder (for example Lemonade's load-the-model-after-start).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from lf.errors import LfError, NotInstalledError, UnknownNameError
from lf.runtime_folders import runtime_folders as _runtime_folders
from lf.runtime_folders import DEFAULT_RUNTIME, runtime_names, runtimes_dir, runtimes_dirs  # noqa: F401  (the registry's API)


@dataclass(frozen=True)
class Engine:
    """One way of running a runtime's server: an executable, or a Python module."""

    name: str
    argv: tuple[str, ...]
    executable: str | None = None  # found on PATH or in the runtime's own env
    python_module: str | None = None  # importable by lf's own interpreter
    env_module: str | None = None  # importable in the runtime's isolated env (lf runtime install)
    install: str | None = None
    generation: str | None = None


@dataclass(frozen=True)
class ResolvedEngine:
    engine: Engine
    exe: str | None  # resolved executable path, when the engine is an executable
    python: str  # interpreter that runs module engines
    source: str  # human-readable: where the engine comes from


@dataclass(frozen=True)
class Runtime:
    name: str
    description: str
    folder: Path
    managed: bool
    default_port: int | None
    api_base: str
    health_path: str | None
    health_ready: str
    models_path: str | None
    default_model: str | None
    model_format: str | None
    one_model_per_process: bool
    start_timeout: float
    env: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, object] = field(default_factory=dict)
    engines: tuple[Engine, ...] = ()
    config_keys: tuple[str, ...] = ()  # provider_config keys this runtime understands
    install_requirements: str | None = None  # file in the folder: lf runtime install builds an env from it
    install_plans: tuple[dict, ...] = ()  # [[install]] tables: alternative ways to build that env (lf.envs)

    @property
    def env_dir(self) -> Path:
        from lf.paths import data_dir

        return data_dir() / "envs" / self.name

    def env_python(self) -> Path:
        return self.env_dir / "bin" / "python"

    @property
    def needs_env(self) -> bool:
        return bool(self.install_requirements or self.install_plans)

    def env_installed(self) -> bool:
        return (self.env_dir / "lf-installed.json").exists()

    def find_engine(self) -> ResolvedEngine | None:
        """The first engine available on this machine, or None."""
        import importlib.util
        import shutil

        for engine in self.engines:
            if engine.executable:
                exe = shutil.which(engine.executable)
                source = "PATH"
                if not exe:
                    candidate = self.env_dir / "bin" / engine.executable
                    # only a finished install counts: scripts appear in bin/ long before pip is done
                    if candidate.is_file() and os.access(candidate, os.X_OK) and self.env_installed():
                        exe, source = str(candidate), "lf env"
                if exe:
                    return ResolvedEngine(engine, exe, sys.executable, f"{source}: {exe}")
            elif engine.python_module:
                if importlib.util.find_spec(engine.python_module) is not None:
                    return ResolvedEngine(engine, None, sys.executable, f"python package {engine.python_module}")
            elif engine.env_module:
                python = self.env_python()
                if python.exists() and self.env_installed():
                    return ResolvedEngine(engine, None, str(python), f"lf env {self.env_dir}")
        return None

    def require_engine(self) -> ResolvedEngine:
        found = self.find_engine()
        if found is None:
            raise NotInstalledError(f"no engine for runtime {self.name!r} is installed on this machine", hint=self.install_hint())
        return found

    def install_hint(self) -> str:
        if self.needs_env:
            return f"install it with: lf runtime install {self.name}"
        hints = [e.install for e in self.engines if e.install]
        if hints:
            return "install it with: " + " or ".join(hints)
        return f"see {self.folder / 'README.md'}"

    def hooks(self) -> ModuleType | None:
        path = self.folder / "hooks.py"
        if not path.is_file():
            return None
        return _load_hooks(self.name, str(path))


@lru_cache(maxsize=None)
def _load_hooks(name: str, path: str) -> ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"lf_runtime_hooks_{name.replace('-', '_')}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (and pickling) look a module up by name while it loads
    spec.loader.exec_module(module)
    return module


def _parse(folder: Path) -> Runtime:
    import tomllib

    path = folder / "manifest.toml"
    try:
        with open(path, "rb") as fh:
            m = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LfError(f"{path}: cannot be read: {exc}") from None
    if m.get("name") != folder.name:
        raise LfError(f"{path}: name {m.get('name')!r} differs from its folder name {folder.name!r}")
    health = m.get("health", {})
    engines = tuple(
        Engine(
            name=e["name"],
            argv=tuple(e.get("argv", ())),
            executable=e.get("executable"),
            python_module=e.get("python_module"),
            env_module=e.get("env_module"),
            install=e.get("install"),
            generation=e.get("generation"),
        )
        for e in m.get("engines", ())
    )
    return Runtime(
        name=m["name"],
        description=m.get("description", ""),
        folder=folder,
        managed=m.get("managed", True),
        default_port=m.get("default_port"),
        api_base=m.get("api_base", "/v1"),
        health_path=health.get("path"),
        health_ready=health.get("ready", "http-ok"),
        models_path=m.get("models_path"),
        default_model=m.get("default_model"),
        model_format=m.get("model_format"),
        one_model_per_process=m.get("one_model_per_process", True),
        start_timeout=float(m.get("start_timeout", 60)),
        env=dict(m.get("env", {})),
        defaults=dict(m.get("defaults", {})),
        engines=engines,
        config_keys=tuple(m.get("config_keys", ())),
        install_requirements=m.get("install_requirements"),
        install_plans=tuple(m.get("install", ())),
    )


@lru_cache(maxsize=1)
def all_runtimes() -> dict[str, Runtime]:
    return {folder.name: _parse_cached(folder) for folder in _runtime_folders()}


def get_runtime(name: str) -> Runtime:
    """One runtime, parsing only its own manifest."""
    for folder in _runtime_folders():
        if folder.name == name:
            return _parse_cached(folder)
    from lf.suggest import did_you_mean

    names = runtime_names()
    raise UnknownNameError(
        f"unknown runtime {name!r}",
        hint=did_you_mean(name, names) or f"known runtimes: {', '.join(names)}",
    )


@lru_cache(maxsize=None)
def _parse_cached(folder: Path) -> Runtime:
    return _parse(folder)

