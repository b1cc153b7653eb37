"""Which instances a command means, and the settings each one starts with.

Precedence for each setting a runtime declares: command-line flag > the setting's env var > llamafarm.yaml
(provider_config, or the section named after the provider) > the model entry's extra_body (LlamaFarm's
GGUF parameters) > what this machine suggests (lf.runtimes.launch.hardware_defaults) > the runtime's default. A runtime that serves one model per process gets one instance per configured
model, named after the model entry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from lf.config.project import ModelEntry, Project
from lf.errors import LfError
from lf.net import is_wildcard
from lf.runtimes.launch import InstanceSpec, hardware_defaults
from lf.runtimes.registry import Runtime, get_runtime

DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Overrides:
    """Settings given on the command line; None means 'not given'."""

    model: str | None = None
    port: int | None = None
    host: str | None = None
    context_size: int | None = None
    threads: int | None = None
    settings: Mapping[str, object] = field(default_factory=dict)  # --set NAME=VALUE, any declared setting

    def given(self) -> dict:
        """What was given, as a record keeps it (so `restart` reapplies it)."""
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "settings" and getattr(self, f.name) is not None
        }
        if self.settings:
            out["settings"] = dict(self.settings)
        return out

    @classmethod
    def from_given(cls, given: Mapping) -> Overrides:
        """Back from a record: keys this lf does not know (a newer lf may have written them) are left out."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in given.items() if k in known}
        if not isinstance(values.get("settings", {}), dict):
            values.pop("settings")
        return cls(**values)

    def flag_values(self) -> dict[str, object]:
        """Setting name → value, for the settings given on the command line."""
        standard = {"port": self.port, "host": self.host, "context_size": self.context_size, "threads": self.threads}
        return {k: v for k, v in {**standard, **self.settings}.items() if v is not None}


def resolve_settings(runtime: Runtime, entry: ModelEntry, flags: Mapping[str, object]) -> tuple[dict, dict]:
    """(value, where it came from) of every setting the runtime declares."""
    from lf.runtimes.settings import resolve

    unknown = [
        name
        for name in flags
        if name not in runtime.settings and name not in ("port", "host", "context_size", "threads")
    ]
    if unknown:
        from lf.suggest import did_you_mean

        raise LfError(
            f"runtime {runtime.name!r} has no setting {unknown[0]!r}",
            hint=did_you_mean(unknown[0], runtime.settings) or f"its settings: {', '.join(runtime.settings) or 'none'}",
        )
    config = dict(entry.provider_config)
    if isinstance(entry.context_size, int) and "context_size" in runtime.settings:
        config["context_size"] = entry.context_size  # the entry's own field, over provider_config's
    return resolve(runtime.settings, flags, config, entry.extra_body)


def build_spec(
    entry: ModelEntry, project: Project | None, overrides: Overrides, single: bool, resolve_model: bool = True
) -> InstanceSpec:
    """Resolve one instance's settings. `single` means the command targets this instance alone."""
    runtime = get_runtime(entry.provider)
    values, sources = resolve_settings(runtime, entry, overrides.flag_values() if single else {})
    # several instances of one runtime: a port from the environment is where they start counting
    port_auto = values.get("port") is None or (sources.get("port") == "env" and not single)
    # host and port are the spec's own fields (the instance's port may move): not also among its settings
    port = int(values.pop("port", None) or runtime.default_port or 0)
    host = str(values.pop("host", None) or DEFAULT_HOST)
    for name, value in hardware_defaults(runtime).items():
        if values.get(name) is None:
            values[name], sources[name] = value, "hardware"
    model = overrides.model if (overrides.model and single) else None
    model_env = os.environ.get(runtime.model_env) if runtime.model_env else None
    model = model or model_env or entry.model or runtime.default_model or ""
    warnings: tuple[str, ...] = ()
    if is_wildcard(host):
        warnings = (f"Warning: {entry.name} will listen on {host}: reachable from other machines, with no API key.",)
    model_path = None
    if runtime.model_format == "gguf" and resolve_model:
        from lf.models.catalog import resolve_model_path

        model_path = str(resolve_model_path(model, project.folder if project else None))
    # auto: fitted to the memory left when it starts (lf.core.actions.start_spec), unless a flag says a size
    context_auto = entry.context_size == "auto" and sources.get("context_size") != "flag"
    return InstanceSpec(
        name=entry.name,
        runtime=runtime,
        context_auto=context_auto and runtime.model_format == "gguf",
        model=model,
        model_path=model_path,
        host=host,
        port=port,
        port_auto=port_auto,
        settings=MappingProxyType(values),
        api_key=entry.resolved_api_key(),
        overrides=MappingProxyType(overrides.given() if single else {}),
        project_folder=project.folder if project else None,
        project=project.key if project else None,
        warnings=warnings,
    )


def specs_for(target: str | None, project: Project | None, overrides: Overrides) -> list[InstanceSpec]:
    from lf.config.names import Names

    entries = Names(project).to_start(target)
    single = len(entries) == 1
    if not single and (overrides.port is not None or overrides.model is not None):
        names = ", ".join(e.name for e in entries)
        raise LfError(
            f"--port/--model apply to one instance, but this names {len(entries)}: {names}",
            hint="name one model entry instead",
        )
    return [build_spec(e, project, overrides, single) for e in entries]


@dataclass(frozen=True)
class ChatTarget:
    """Which model entry a chat (or a gateway request) means, and where an external one lives."""

    entry: ModelEntry
    runtime: Runtime
    base_url: str | None  # known up front for external runtimes; managed ones get theirs from the record
    api_key: str | None

    @property
    def managed(self) -> bool:
        return self.base_url is None


def target_of(entry: ModelEntry) -> ChatTarget:
    runtime = get_runtime(entry.provider)
    if not entry.managed:
        return ChatTarget(entry, runtime, runtime.external_base_url(entry.base_url), entry.resolved_api_key())
    return ChatTarget(entry, runtime, None, entry.resolved_api_key())
