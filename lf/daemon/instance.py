"""One instance, described once: who it is (project, name, runtime), how it is launched (the plan: command,
environment, health rule, what its runtime's after-start step needs) and where it listens (host, port, API
path). A runtime works it out before anything runs; the supervisor launches it; its record carries it as is; the
status, the chat client and the gateway read it from there. Nothing downstream edits it: it is frozen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from lf.net import local_url


def _empty() -> Mapping:
    return MappingProxyType({})


@dataclass(frozen=True)
class Instance:
    """Everything needed to launch one instance and to reach it, decided before anything runs."""

    name: str  # the instance (a model entry's name, or a runtime's)
    runtime: str
    engine: str
    argv: tuple[str, ...]
    host: str
    port: int
    api_base: str  # the OpenAI-compatible API's path, e.g. /v1
    model: str  # the name requests must use
    model_path: str | None = None
    health_path: str | None = None
    health_ready: str = "http-ok"  # how to read the health endpoint (lf.daemon.health.interpret)
    progress: str | None = None  # a pattern of its log whose group is the percent of its load, where it says one
    start_timeout: float = 60.0  # until then an instance that is not ready yet is still starting
    after_start: Mapping = field(default_factory=_empty)  # what the runtime's after-start step needs (JSON-able)
    overrides: Mapping = field(default_factory=_empty)  # command-line settings, so `restart` reapplies them
    settings: Mapping = field(default_factory=_empty)  # the model as named and every resolved setting (JSON-able)
    owner: str = "cli"  # who started it: "cli" (lf runtime start, lf chat) or "gateway" (lf serve, on demand)
    project: str | None = None  # "namespace/name" of the project it belongs to (None: no project)
    project_folder: str | None = None  # where that project's llamafarm.yaml is
    leftover_files: tuple[str, ...] = ()  # globs of files its processes may leave behind (stop removes theirs)
    # for the launch only, never recorded: the environment may hold secrets, the hint is for a failed exec
    env: Mapping[str, str] = field(default_factory=_empty)
    install_hint: str | None = None

    @property
    def base_url(self) -> str:
        return local_url(self.host, self.port, self.api_base)

    @property
    def health_url(self) -> str | None:
        return local_url(self.host, self.port, self.health_path) if self.health_path else None

    def recorded(self) -> dict:
        """The instance as its record keeps it (JSON-able; `command` is the argv, as records always called it;
        base_url and health_url are written out for scripts that read records)."""
        data: dict = {}
        for f in fields(self):
            if f.name in _LAUNCH_ONLY:
                continue
            value = getattr(self, f.name)
            data["command" if f.name == "argv" else f.name] = (
                dict(value) if isinstance(value, Mapping) else list(value) if isinstance(value, tuple) else value
            )
        data["base_url"] = self.base_url
        data["health_url"] = self.health_url
        return data

    @classmethod
    def from_recorded(cls, data: Mapping) -> Instance:
        """Back from a record's JSON (this version or an earlier one, which kept base_url and health_url but not
        their paths). ValueError/TypeError unless every field has the type lf relies on."""
        for name in ("base_url", "health_url"):  # written out for scripts: still, what a record says must hold
            url = data.get(name)
            if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
                raise ValueError(f"{name} is not an http(s) URL")
        values = {f.name: data[_KEY.get(f.name, f.name)] for f in fields(cls) if _KEY.get(f.name, f.name) in data}
        if "api_base" not in values:
            values["api_base"] = _path_of(data.get("base_url"))
        if "health_path" not in values and data.get("health_url"):
            values["health_path"] = _path_of(data.get("health_url")) or "/"
        for name in ("argv", "leftover_files"):
            if name in values:
                if not isinstance(values[name], list) or not all(isinstance(part, str) for part in values[name]):
                    raise ValueError(f"{_KEY.get(name, name)} is not a list of text")
                values[name] = tuple(values[name])
        for name in ("after_start", "overrides", "settings"):
            if name in values:
                if not isinstance(values[name], dict):
                    raise ValueError(f"{name} is not an object")
                values[name] = MappingProxyType(values[name])
        instance = cls(**values)
        _check_types(instance)
        return instance


_LAUNCH_ONLY = ("env", "install_hint")
_KEY = {"argv": "command"}


def _path_of(url) -> str:
    if not isinstance(url, str):
        raise ValueError("base_url is not text")
    from urllib.parse import urlsplit

    return urlsplit(url).path


def _check_types(instance: Instance) -> None:
    for name in ("name", "runtime", "engine", "host", "api_base", "model", "health_ready", "owner"):
        if not isinstance(getattr(instance, name), str):
            raise ValueError(f"{name} is not text")
    for name in ("model_path", "health_path", "project", "project_folder", "progress"):
        if not isinstance(getattr(instance, name), (str, type(None))):
            raise ValueError(f"{name} is not text")
    if not (isinstance(instance.port, int) and not isinstance(instance.port, bool) and 0 <= instance.port <= 65535):
        raise ValueError("port is not a valid port number")
    timeout = instance.start_timeout
    if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and math.isfinite(timeout)):
        raise ValueError("start_timeout is not a number of seconds")
    if not all(pattern.startswith("/") for pattern in instance.leftover_files):
        raise ValueError("leftover_files is not a list of absolute patterns")
