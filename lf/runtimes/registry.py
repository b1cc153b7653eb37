"""The runtime registry: one folder per runtime under runtimes/, each with a manifest.toml.

Adding a runtime is adding a folder. Code exists only where a runtime's behaviour cannot be declared:
an optional hooks.py in the folder (for example Lemonade's load-the-model-after-start).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from types import MappingProxyType

from lf.errors import LfError, NotInstalledError, UnknownNameError
from lf.runtimes.folders import DEFAULT_RUNTIME, runtime_folders, runtime_names  # noqa: F401  (the registry's API)
from lf.runtimes.settings import Setting, from_manifest

MANIFEST_KEYS = (
    "name",
    "description",
    "managed",
    "default_port",
    "api_base",
    "default_model",
    "model_format",
    "model_env",
    "one_model_per_process",
    "start_timeout",
    "install_requirements",
    "health",
    "settings",
    "engines",
    "install",
    "builders",
    "leftover_files",
)
# placeholders every engine's argv may use besides the runtime's settings
ARGV_VALUES = ("exe", "python", "model", "model_path", "host", "port")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class OptionalArgs:
    """Arguments added to an engine's command line only when a setting is set (true, for a boolean)."""

    when: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class EachArg:
    """The items of an array setting, each one argument (e.g. extra engine flags a model entry passes)."""

    setting: str


@dataclass(frozen=True)
class Engine:
    """One way of running a runtime's server: an executable, or a Python module."""

    name: str
    argv: tuple = ()  # strings with {placeholders}, OptionalArgs and EachArg
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
    default_model: str | None
    model_format: str | None
    one_model_per_process: bool
    start_timeout: float
    progress: str | None = None  # [health] progress: a pattern of its log whose group is the percent loaded
    model_env: str | None = None  # the environment variable that names the model
    settings: Mapping[str, Setting] = field(default_factory=lambda: MappingProxyType({}))
    engines: tuple[Engine, ...] = ()
    install_requirements: str | None = None  # file in the folder: lf runtime install builds an env from it
    install_plans: tuple[dict, ...] = ()  # [[install]] tables: alternative ways to build that env (lf.runtimes.envs)
    builders: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({})
    )  # model kind → script run in its env
    # glob patterns of files the server's processes may leave behind when killed (e.g. shared memory in
    # /dev/shm): stop removes the ones this instance's own processes held open or mapped
    leftover_files: tuple[str, ...] = ()

    @property
    def env(self) -> dict[str, str]:
        """Setting (and `model`) → the environment variable that sets it."""
        names = {name: s.env for name, s in self.settings.items() if s.env}
        if self.model_env:
            names["model"] = self.model_env
        return names

    @property
    def env_dir(self) -> Path:
        from lf.dirs import data_dir

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
            raise NotInstalledError(
                f"no engine for runtime {self.name!r} is installed on this machine", hint=self.install_hint()
            )
        return found

    @property
    def install_command(self) -> str | None:
        """The command that installs a missing engine, when there is one to give."""
        if self.needs_env:
            return f"lf runtime install {self.name}"
        hints = [e.install for e in self.engines if e.install]
        return " or ".join(hints) if hints else None

    def install_hint(self) -> str:
        command = self.install_command
        return f"install it with: {command}" if command else f"see {self.folder / 'README.md'}"

    def external_base_url(self, base_url: str | None = None) -> str:
        """The OpenAI API base of an endpoint lf does not run: `base_url` as configured (a bare origin,
        as LlamaFarm writes Ollama's http://localhost:11434, gets the runtime's API path), else where
        the runtime's own env vars (e.g. OLLAMA_HOST) or default port say it is."""
        from urllib.parse import urlsplit

        if base_url:
            base_url = base_url.rstrip("/")
            if urlsplit(base_url).path in ("", "/"):
                base_url += self.api_base
            return base_url
        host = _env_text(self.settings.get("host"))
        port = _env_text(self.settings.get("port"))
        if host:
            if "://" not in host:
                host = "http://" + host
            if host.count(":") < 2:  # no port given
                host = f"{host}:{port or self.default_port}"
            return host.rstrip("/") + self.api_base
        if port.isdigit():
            return f"http://127.0.0.1:{port}{self.api_base}"
        return f"http://127.0.0.1:{self.default_port}{self.api_base}"

    @property
    def hooks_path(self) -> Path:
        return self.folder / "hooks.py"


def _env_text(setting: Setting | None) -> str:
    return os.environ.get(setting.env, "") if setting is not None and setting.env else ""


def read_manifest(path: Path) -> dict:
    """A manifest.toml as a dict: parsed once, then read back from a JSON copy in lf's cache while the file is the
    same (size, mtime, inode), as the checked llamafarm.yaml is: TOML's parser is most of a start's registry time."""
    import json
    import zlib

    from lf.dirs import state_dir

    try:
        st = path.stat()
    except OSError as exc:
        raise LfError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    key = [str(path), st.st_size, st.st_mtime_ns, st.st_ino, MANIFEST_CACHE_FORMAT]
    cache = state_dir() / "cache" / f"manifest-{zlib.crc32(str(path).encode()):08x}.json"
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached["key"] == key and isinstance(cached["manifest"], dict):
            return cached["manifest"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    manifest = _parse_toml(path)
    try:
        from lf.dirs import ensure_private_dir
        from lf.files import atomic_write

        ensure_private_dir(state_dir())  # refused when the state dir is not ours: nothing is written there
        ensure_private_dir(cache.parent)
        atomic_write(cache, json.dumps({"key": key, "manifest": manifest}))
    except Exception:  # a cache that cannot be written costs time, nothing else
        pass
    return manifest


MANIFEST_CACHE_FORMAT = 1


def _parse_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LfError(f"{path}: cannot be read: {exc}") from None


def _parse(folder: Path) -> Runtime:
    path = folder / "manifest.toml"
    m = read_manifest(path)
    if m.get("name") != folder.name:
        raise LfError(f"{path}: name {m.get('name')!r} differs from its folder name {folder.name!r}")
    unknown = [k for k in m if k not in MANIFEST_KEYS]
    if unknown:
        from lf.suggest import did_you_mean

        hint = did_you_mean(unknown[0], MANIFEST_KEYS)
        raise LfError(
            f"{path}: unknown key {unknown[0]!r}" + (f" ({hint})" if hint else ""),
            hint=f"allowed: {', '.join(MANIFEST_KEYS)}",
        )
    settings = {name: from_manifest(name, table, str(path)) for name, table in m.get("settings", {}).items()}
    engines = tuple(_engine(e, settings, path) for e in m.get("engines", ()))
    health = m.get("health", {})
    return Runtime(
        name=m["name"],
        description=m.get("description", ""),
        folder=folder,
        managed=m.get("managed", True),
        default_port=m.get("default_port"),
        api_base=m.get("api_base", "/v1"),
        health_path=health.get("path"),
        health_ready=health.get("ready", "http-ok"),
        progress=_pattern(health.get("progress"), path),
        default_model=m.get("default_model"),
        model_format=m.get("model_format"),
        model_env=m.get("model_env"),
        one_model_per_process=m.get("one_model_per_process", True),
        start_timeout=float(m.get("start_timeout", 60)),
        settings=MappingProxyType(settings),
        engines=engines,
        install_requirements=m.get("install_requirements"),
        install_plans=tuple(m.get("install", ())),
        builders=MappingProxyType(dict(m.get("builders", {}))),
        leftover_files=_leftover_files(m.get("leftover_files", []), path),
    )


def _pattern(text, path: Path) -> str | None:
    if text is None:
        return None
    import re

    try:
        if not isinstance(text, str) or re.compile(text).groups != 1:
            raise ValueError("it needs exactly one group: the percent")
    except (re.error, ValueError) as exc:
        raise LfError(f"{path}: [health] progress {text!r} is not a pattern lf can use: {exc}") from None
    return text


def _leftover_files(patterns, path: Path) -> tuple[str, ...]:
    if not (
        isinstance(patterns, list) and all(isinstance(p, str) and p.startswith("/") and "*" in p for p in patterns)
    ):
        raise LfError(f'{path}: leftover_files must be a list of absolute glob patterns, e.g. ["/dev/shm/psm_*"]')
    return tuple(patterns)


def _engine(table: dict, settings: dict[str, Setting], path: Path) -> Engine:
    argv: list[str | OptionalArgs | EachArg] = []
    for part in table.get("argv", ()):
        if isinstance(part, dict) and set(part) == {"each"}:
            if settings.get(part["each"]) is None or settings[part["each"]].type != "array":
                raise LfError(
                    f"{path}: engine {table.get('name')!r}: {{each = ...}} names {part['each']!r}, which is not a declared array setting"
                )
            argv.append(EachArg(part["each"]))
        elif isinstance(part, dict):
            when, args = part.get("when"), part.get("args")
            if when not in settings or not isinstance(args, list) or set(part) != {"when", "args"}:
                raise LfError(
                    f'{path}: engine {table.get("name")!r}: an optional argument group is {{when = "<a declared setting>", args = [...]}}, not {part}'
                )
            argv.append(OptionalArgs(when, tuple(args)))
            _check_placeholders(args, settings, path, table)
        else:
            argv.append(part)
            _check_placeholders([part], settings, path, table)
    return Engine(
        name=table["name"],
        argv=tuple(argv),
        executable=table.get("executable"),
        python_module=table.get("python_module"),
        env_module=table.get("env_module"),
        install=table.get("install"),
        generation=table.get("generation"),
    )


def _check_placeholders(parts: list, settings: dict, path: Path, table: dict) -> None:
    for part in parts:
        for name in _PLACEHOLDER.findall(str(part)):
            if name not in ARGV_VALUES and name not in settings:
                raise LfError(
                    f"{path}: engine {table.get('name')!r} uses {{{name}}}, which is neither a declared setting nor one of {', '.join(ARGV_VALUES)}",
                    hint=f"declare it: [settings.{name}]",
                )


@lru_cache(maxsize=1)
def all_runtimes() -> dict[str, Runtime]:
    return {folder.name: _parse_cached(folder) for folder in runtime_folders()}


def get_runtime(name: str) -> Runtime:
    """One runtime, parsing only its own manifest."""
    for folder in runtime_folders():
        if folder.name == name:
            return _parse_cached(folder)
    from lf.suggest import did_you_mean

    names = runtime_names()
    raise UnknownNameError(
        f"unknown runtime {name!r}",
        hint=did_you_mean(name, names) or f"known runtimes: {', '.join(names)}",
    )


@cache
def _parse_cached(folder: Path) -> Runtime:
    return _parse(folder)


def describe_runtimes() -> list[dict]:
    """Every runtime as `lf runtime list --json` shows it: whether its engine is here, from where, how to install."""
    rows = []
    for rt in all_runtimes().values():
        engine = rt.find_engine() if rt.managed else None
        rows.append(
            {
                "name": rt.name,
                "managed": rt.managed,
                "available": bool(engine) if rt.managed else None,
                "engine": engine.engine.name if engine else None,
                "source": engine.source if engine else None,
                "install": None if engine or not rt.managed else rt.install_hint(),
                "install_command": rt.install_command if rt.needs_env else None,
                "default_port": rt.default_port,
                "description": rt.description,
            }
        )
    return rows
