"""Which instances a command means, and the settings each one starts with.

Precedence for a runtime's settings: command-line flag > the runtime's env vars (named in its
manifest) > llamafarm.yaml > the manifest's defaults. A runtime that serves one model per process gets
one instance per configured model, named after the model entry.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from lf.config import ModelEntry, Project
from lf.errors import ConfigError, LfError, UnknownNameError
from lf.registry import DEFAULT_RUNTIME, Runtime, all_runtimes, get_runtime
from lf.supervisor import InstanceSpec

DEFAULT_HOST = "127.0.0.1"
DEFAULT_CONTEXT_SIZE = 4096


@dataclass
class Overrides:
    """Settings given on the command line; None means 'not given'."""

    model: str | None = None
    port: int | None = None
    host: str | None = None
    context_size: int | None = None
    threads: int | None = None
    extra: dict = field(default_factory=dict)


def default_entry(runtime: Runtime) -> ModelEntry:
    return ModelEntry(name=runtime.name, provider=runtime.name, model=runtime.default_model or "")


def entries_for(target: str | None, project: Project | None) -> list[ModelEntry]:
    """Model entries a start/stop target names: an entry, a runtime (all its entries), or the defaults."""
    runtimes = all_runtimes()
    managed = [e for e in (project.models if project else []) if e.provider in runtimes and runtimes[e.provider].managed and not e.base_url]
    if target is None:
        if project is None:
            return [default_entry(get_runtime(DEFAULT_RUNTIME))]
        return managed
    for entry in managed:
        if entry.name == target:
            return [entry]
    if target in runtimes:
        runtime = runtimes[target]
        if not runtime.managed:
            raise LfError(f"{target!r} is not started by lf: it is a server you run yourself", hint=runtime.description)
        of_runtime = [e for e in managed if e.provider == target]
        return of_runtime or [default_entry(runtime)]
    from lf.suggest import did_you_mean

    names = [e.name for e in managed] + list(runtimes)
    raise UnknownNameError(f"unknown runtime or model entry {target!r}", hint=did_you_mean(target, names) or f"known: {', '.join(names)}")


def _env_value(runtime: Runtime, key: str) -> str | None:
    name = runtime.env.get(key)
    value = os.environ.get(name) if name else None
    return value if value not in (None, "") else None


def _int_setting(value, source: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {value!r} is not an integer") from None


def build_spec(entry: ModelEntry, project: Project | None, overrides: Overrides, single: bool, resolve_model: bool = True) -> InstanceSpec:
    """Resolve one instance's settings. `single` means the command targets this instance alone."""
    runtime = get_runtime(entry.provider)
    settings = dict(entry.provider_config)
    env = runtime.env

    def pick(key: str, flag):
        if flag is not None and single:
            return flag, "flag"
        value = _env_value(runtime, key)
        if value is not None:
            return value, f"environment variable {env[key]}"
        if key in settings:
            return settings[key], f"{project.path if project else 'config'}: {key}"
        return runtime.defaults.get(key), "default"

    port_value, port_source = pick("port", overrides.port)
    port_auto = port_value is None or (port_source.startswith("environment") and not single)
    port = _int_setting(port_value, port_source) or runtime.default_port or 0
    host, _ = pick("host", overrides.host)
    context_size, cs_source = pick("context_size", overrides.context_size)
    threads, th_source = pick("threads", overrides.threads)
    model = overrides.model if (overrides.model and single) else None
    model = model or _env_value(runtime, "model") or entry.model or runtime.default_model or ""
    host = str(host or DEFAULT_HOST)
    if host in ("0.0.0.0", "::"):
        print(f"Warning: {entry.name} will listen on {host}: reachable from other machines, with no API key.", file=sys.stderr)
    for key in runtime.env:
        if key not in ("port", "host", "context_size", "threads", "model"):
            value = _env_value(runtime, key)
            if value is not None:
                settings[key] = value
    settings.update(overrides.extra)
    given = {k: v for k, v in (("model", overrides.model), ("port", overrides.port), ("host", overrides.host), ("context_size", overrides.context_size), ("threads", overrides.threads)) if v is not None}
    model_path = None
    if runtime.model_format == "gguf" and resolve_model:
        from lf.models import resolve_model_path

        model_path = str(resolve_model_path(model, project.folder if project else None))
    return InstanceSpec(
        name=entry.name,
        runtime=runtime,
        model=model,
        model_path=model_path,
        host=host,
        port=port,
        port_auto=port_auto,
        # the one place the default is settled: a runtime without its own gets 4096 tokens
        context_size=_int_setting(context_size, cs_source) or DEFAULT_CONTEXT_SIZE,
        threads=_int_setting(threads, th_source),
        settings=settings,
        api_key=entry.resolved_api_key(),
        overrides=given if single else {},
        project_folder=project.folder if project else None,
    )


def specs_for(target: str | None, project: Project | None, overrides: Overrides) -> list[InstanceSpec]:
    entries = entries_for(target, project)
    single = len(entries) == 1
    if not single and (overrides.port is not None or overrides.model is not None):
        raise LfError(
            f"--port/--model apply to one instance, but this names {len(entries)}: {', '.join(e.name for e in entries)}",
            hint="name one model entry instead",
        )
    return [build_spec(e, project, overrides, single) for e in entries]


@dataclass
class ChatTarget:
    """Where `lf chat` sends its request."""

    entry: ModelEntry
    runtime: Runtime
    base_url: str | None  # known up front for external runtimes; managed ones get theirs from the record
    api_key: str | None

    @property
    def managed(self) -> bool:
        return self.base_url is None


def chat_target(project: Project | None, runtime_name: str | None, model: str | None) -> ChatTarget:
    """Pick the model entry and runtime for a chat from the flags, the project, or the embedded default."""
    entry: ModelEntry | None = None
    if project is not None:
        candidates = [e for e in project.models if runtime_name is None or e.provider == runtime_name]
        if model is not None:
            entry = next((e for e in candidates if e.name == model), None) or next((e for e in candidates if e.model == model), None)
            if entry is None and runtime_name is None:
                project.model(model)  # raises UnknownNameError with the configured names
        elif runtime_name is None:
            entry = project.model(None)
        elif candidates:
            entry = candidates[0]
    if entry is None:
        runtime = get_runtime(runtime_name or DEFAULT_RUNTIME)
        entry = default_entry(runtime)
        if model:
            entry.model = model
    runtime = get_runtime(entry.provider)
    if entry.base_url or not runtime.managed:
        from lf.status import api_base_url

        return ChatTarget(entry, runtime, api_base_url(runtime, entry.base_url), entry.resolved_api_key())
    return ChatTarget(entry, runtime, None, entry.resolved_api_key())
