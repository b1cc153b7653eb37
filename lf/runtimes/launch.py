"""From an instance's resolved settings (InstanceSpec) to the instance the supervisor launches (Instance).

Both are frozen: a runtime's hook receives the spec and returns the instance, and nothing downstream edits
either. A runtime without a `plan` hook gets its engine's argv template filled in.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Protocol

from lf.daemon.instance import Instance
from lf.errors import ExitStatus, LfError
from lf.runtimes.registry import EachArg, OptionalArgs, ResolvedEngine, Runtime

if TYPE_CHECKING:
    from lf.daemon.health import Health
    from lf.daemon.records import RuntimeRecord

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PlanHook(Protocol):
    """A runtime's `plan(spec, engine, port)`: the instance to launch, where the manifest cannot say it all."""

    def __call__(self, spec: InstanceSpec, engine: ResolvedEngine, port: int, /) -> Instance: ...


class AfterHealthyHook(Protocol):
    """A runtime's `after_healthy(record, health, timeout)`: work once the server answers (e.g. load the model);
    returns the health to report, None for the one it was given."""

    def __call__(self, record: RuntimeRecord, health: Health | None, timeout: float, /) -> Health | None: ...


@dataclass(frozen=True)
class RuntimeHooks:
    """What a runtime's hooks.py defines; each hook is optional."""

    plan: PlanHook | None = None
    after_healthy: AfterHealthyHook | None = None


def hooks_of(runtime: Runtime) -> RuntimeHooks | None:
    """What the runtime's hooks.py defines (None without one), loaded once per runtime folder."""
    module = hooks_module(runtime)
    if module is None:
        return None
    return RuntimeHooks(plan=getattr(module, "plan", None), after_healthy=getattr(module, "after_healthy", None))


def hooks_module(runtime: Runtime) -> ModuleType | None:
    """The runtime's hooks.py as a module (its own helpers too), None without one."""
    path = runtime.hooks_path
    return _load_hooks(runtime.name, str(path)) if path.is_file() else None


@cache
def _load_hooks(name: str, path: str) -> ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"lf_runtime_hooks_{name.replace('-', '_')}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (and pickling) look a module up by name while it loads
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class InstanceSpec:
    """One instance's settings, resolved (flag > env > llamafarm.yaml > the runtime's defaults)."""

    name: str
    runtime: Runtime
    model: str  # the model as the user named it
    model_path: str | None
    host: str
    port: int
    port_auto: bool  # True when nobody chose the port: lf may move to the next free one
    context_auto: bool = False  # context_size: auto, fitted to the memory left when it starts
    settings: Mapping[str, object] = field(
        default_factory=lambda: MappingProxyType({})
    )  # every declared setting (None: unset)
    api_key: str | None = None
    overrides: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))  # given on the command line
    project_folder: Path | None = None  # relative model and checkpoint paths are relative to llamafarm.yaml
    project: str | None = None  # the project it belongs to ("namespace/name"; None: no project): whose record it has
    warnings: tuple[str, ...] = ()  # what the user should hear before it starts (e.g. binding 0.0.0.0)

    @property
    def context_size(self) -> int | None:
        return self.settings.get("context_size")  # type: ignore[return-value]

    @property
    def threads(self) -> int | None:
        return self.settings.get("threads")  # type: ignore[return-value]


def hardware_defaults(runtime: Runtime) -> dict[str, object]:
    """What this machine suggests for the settings `runtime` declares, used where nothing else set them:
    one thread per physical core (lf.hardware), and every layer offloaded where a GPU is present (-1:
    all, as LlamaFarm's n_gpu_layers says; a runtime that declares gpu_layers runs a llama.cpp build that
    can offload, and one built without a GPU backend ignores it)."""
    from lf import hardware

    defaults: dict[str, object] = {}
    if "threads" in runtime.settings:
        defaults["threads"] = hardware.physical_cores()
    if "gpu_layers" in runtime.settings and hardware.gpus():
        defaults["gpu_layers"] = -1
    return defaults


def make_plan(spec: InstanceSpec, port: int, owner: str = "cli") -> Instance:
    """The instance that launches `spec` on `port`: the runtime's `plan` hook's, or its argv template's."""
    engine = spec.runtime.require_engine()
    hooks = hooks_of(spec.runtime)
    if hooks is not None and hooks.plan is not None:
        plan = hooks.plan(spec, engine, port)
    else:
        plan = default_plan(spec, engine, port)
    return replace(plan, owner=owner)


def default_plan(spec: InstanceSpec, engine: ResolvedEngine, port: int, **changes) -> Instance:
    """The instance a runtime's manifest describes; a hook passes `changes` for what it decides itself."""
    runtime = spec.runtime
    if "argv" not in changes:
        changes["argv"] = tuple(render_argv(engine.engine.argv, argv_values(spec, engine, port), runtime.name))
    plan = Instance(
        name=spec.name,
        runtime=runtime.name,
        engine=engine.engine.name,
        argv=(),
        host=spec.host,
        port=port,
        api_base=runtime.api_base,
        model=spec.model,
        model_path=spec.model_path,
        health_path=runtime.health_path,
        health_ready=runtime.health_ready,
        progress=runtime.progress,
        start_timeout=runtime.start_timeout,
        overrides=MappingProxyType(dict(spec.overrides)),
        settings=MappingProxyType(recorded_settings(spec)),
        install_hint=runtime.install_hint(),
        leftover_files=runtime.leftover_files,
        project=spec.project,
        project_folder=str(spec.project_folder) if spec.project_folder else None,
    )
    return replace(plan, **changes)


def recorded_settings(spec: InstanceSpec) -> dict:
    """What a record keeps of a spec so a later start can tell that it asks for something else: the model
    as named and every setting, in their JSON form. Port and host are compared with the record's own."""
    import json

    return json.loads(json.dumps({"model": spec.model, **spec.settings}, default=str))


def changed_settings(spec: InstanceSpec, record) -> list[str]:
    """What `spec` asks for that the running instance (its record) does not have, as `name: old → new`.
    Nothing for a record from before lf recorded settings."""
    changes = []
    if not spec.port_auto and spec.port != record.port:
        changes.append(f"port: {record.port} → {spec.port}")
    if spec.host != record.instance.host:
        changes.append(f"host: {record.instance.host} → {spec.host}")
    had = record.instance.settings
    if had:
        wanted = recorded_settings(spec)
        for key in wanted.keys() | had.keys():
            if wanted.get(key) != had.get(key):
                changes.append(f"{key}: {_shown(had.get(key))} → {_shown(wanted.get(key))}")
    return sorted(changes)


def _shown(value) -> str:
    return "(not set)" if value is None else str(value)


def argv_values(spec: InstanceSpec, engine: ResolvedEngine, port: int) -> dict[str, object]:
    """What an argv template's {placeholders} stand for: the runtime's settings, then lf's own values."""
    return {
        **spec.settings,
        "exe": engine.exe or "",
        "python": engine.python,
        "model": spec.model,
        "model_path": spec.model_path or spec.model,
        "host": spec.host,
        "port": port,
    }


def render_argv(template, values: Mapping[str, object], runtime: str) -> list[str]:
    """Fill in an argv template. An OptionalArgs group appears only when its setting is set (true); an
    EachArg adds the items of its array setting, each as one argument, as they are."""
    argv: list[str] = []
    for part in template:
        if isinstance(part, EachArg):
            items = values.get(part.setting) or ()
            extra = [str(item) for item in items] if isinstance(items, (list, tuple)) else [str(items)]
            _refuse_own_flags(extra, template, part.setting, runtime)
            argv.extend(extra)
        elif isinstance(part, OptionalArgs):
            value = values.get(part.when)
            if value is None or value is False:
                continue
            argv.extend(_fill(p, values, runtime) for p in part.args)
        else:
            argv.append(_fill(part, values, runtime))
    return argv


def _template_flags(template) -> set[str]:
    flags: set[str] = set()
    for part in template:
        parts = part.args if isinstance(part, OptionalArgs) else (part,) if isinstance(part, str) else ()
        flags.update(p.split("=", 1)[0] for p in parts if p.startswith("-"))
    return flags


def _refuse_own_flags(extra: list[str], template, setting: str, runtime: str) -> None:
    """A flag lf already sets (model, port, host, ...) given again would win in the engine and leave lf's
    record pointing at the wrong place: refuse it and name the setting to use instead."""
    own = _template_flags(template)
    for item in extra:
        flag = item.split("=", 1)[0]
        if flag in own:
            raise LfError(
                f"runtime {runtime!r}: {setting} may not set {flag}: lf sets it from its own settings",
                hint=f"use the setting instead (lf config schema lists them); remove {item!r} from {setting}",
                exit_status=ExitStatus.USAGE,
            )


def _fill(part: str, values: Mapping[str, object], runtime: str) -> str:
    def value(match: re.Match) -> str:
        found = values.get(match.group(1))
        if found is None:
            raise LfError(
                f"runtime {runtime!r} needs the setting {match.group(1)!r}",
                hint=f"set it in llamafarm.yaml (provider_config) or with --set {match.group(1)}=…",
            )
        return str(found).lower() if isinstance(found, bool) else str(found)

    return _PLACEHOLDER.sub(value, part)
