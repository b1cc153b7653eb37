"""What lf does to instances: start, ensure_running, chat_endpoint, stop, restart (status is lf.core.status).

Every CLI command is: parse its options → one call here → render the result; `lf serve` calls the same functions
(through lf.gateway.effects) from worker threads. They take typed arguments, return typed results and print
nothing: progress and warnings go to an optional `on_event` callback (the events of lf.core.events). Each
instance's start and stop run under its lock (a flock per call, so threads of one process exclude each other as
processes do), which makes them safe to call concurrently. Which entries and instances a name means is decided by
lf.config.names, for every command alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

from lf.config.names import Names, qualified
from lf.config.project import ModelEntry, Project
from lf.core import served
from lf.core.events import Endpoint, Notice, Starting, Waiting
from lf.core.targets import Overrides, build_spec, specs_for, target_of
from lf.daemon import supervisor
from lf.daemon.records import StateStore, parse_project, project_label
from lf.daemon.states import State, classify
from lf.daemon.supervisor import StartResult, StopResult, choose_port, frozen_error, stop_command
from lf.errors import ExitStatus, LfError, StartError
from lf.runtimes.launch import InstanceSpec, changed_settings, hooks_of, make_plan

OnEvent = Callable[[object], None]  # receives lf.core.events: Starting, Waiting, Notice
GATEWAY_ACTION_MARGIN = 30.0  # seconds a start through the gateway may take beyond the runtime's own timeout


def _emit(on_event: OnEvent | None, event: object) -> None:
    if on_event is not None:
        on_event(event)


def _store(store: StateStore | None, project: Project | None) -> StateStore:
    """The store given, or the project's: an instance belongs to its project (no project: the default's)."""
    return store or StateStore.of(project)


# -- start -------------------------------------------------------------------------------------------
def start(
    target: str | None,
    project: Project | None,
    overrides: Overrides | None = None,
    *,
    wait: bool = True,
    timeout: float | None = None,
    on_event: OnEvent | None = None,
    store: StateStore | None = None,
    force: bool = False,
    direct: bool = False,
) -> list[StartResult]:
    """Start what `target` names (an entry by any of its names, a runtime, or everything the project needs) and
    wait until each is healthy. Already running is a success. An instance whose memory estimate exceeds the memory
    available is refused (exit 7) unless `force`. An entry a running `lf serve` of the project serves is started
    by that gateway (it owns it from then on), unless `direct` or the command asks for what only a direct start
    does (other flags, --no-wait, --force)."""
    overrides = overrides or Overrides()
    specs = specs_for(target, project, overrides)
    store = _store(store, project)
    gateway = None
    if not (direct or force or not wait or overrides.given()):
        gateway = served.serving_gateway(project, store)
    taken: set[int] = set()
    results = []
    for spec in specs:
        if gateway is not None and spec.name in gateway.serves:
            result = _start_through(gateway, spec, store, timeout, on_event)
        else:
            result = start_spec(
                spec, wait=wait, timeout=timeout, taken_ports=taken, on_event=on_event, store=store, force=force
            )
        taken.add(result.record.port)
        results.append(result)
    return results


def _start_through(
    gateway: served.ServingGateway,
    spec: InstanceSpec,
    store: StateStore,
    timeout: float | None,
    on_event: OnEvent | None,
) -> StartResult:
    """Start `spec`'s entry through the gateway that serves it: its start, its record, its budget."""
    running = store.load_or_none(spec.name)
    already = running is not None and running.process_alive()
    if not already:
        _emit(on_event, Starting(spec.name, spec.runtime.name, spec.model, through=gateway.describe()))
        wait = (timeout if timeout is not None else spec.runtime.start_timeout) + GATEWAY_ACTION_MARGIN
        on_wait = (
            (lambda elapsed: _emit(on_event, Waiting(spec.name, elapsed, "starting in the gateway")))
            if on_event
            else None
        )
        served.act(gateway, "start", spec.name, wait, on_wait)
    record = store.load_or_none(spec.name)
    if record is None:
        raise StartError(
            f"{gateway.describe()} says {spec.name} started, but it has no record in {store.base}",
            hint="is the gateway using another state dir (LF_STATE_DIR)? --direct starts it without the gateway",
        )
    return StartResult(record, already_running=already, note=f"served by {gateway.name}", gateway=gateway.name)


def start_spec(
    spec: InstanceSpec,
    *,
    wait: bool = True,
    timeout: float | None = None,
    owner: str = "cli",
    taken_ports: set[int] | frozenset[int] = frozenset(),
    on_event: OnEvent | None = None,
    store: StateStore | None = None,
    force: bool = False,
    room: int | None = None,
) -> StartResult:
    """Start one resolved instance (or find it running); `owner` is recorded as who started it. One that
    must be launched and does not fit in available memory is refused, unless `force`. `context_size: auto` takes
    the largest context whose estimate fits in `room` bytes (default: the memory available now)."""
    for warning in spec.warnings:
        _emit(on_event, Notice(warning))
    _emit(on_event, Starting(spec.name, spec.runtime.name, spec.model))

    if store is None or store.project != spec.project:
        store = (store or StateStore()).scoped(spec.project)  # the record goes where its project's are

    def plan_for():
        fitted = fit_context(spec, room) if spec.context_auto else spec
        # checked only when something is launched: a running instance is no new memory
        needed = None if force else memory_estimate(fitted)
        if needed is not None:
            require_memory(fitted, needed)
        return make_plan(fitted, choose_port(spec.host, spec.port, spec.port_auto, taken_ports, store), owner)

    hooks = hooks_of(spec.runtime)
    result = supervisor.start(
        spec.name,
        store,
        plan_for,
        wait=wait,
        timeout=timeout,
        on_wait=(lambda at: _emit(on_event, Waiting(spec.name, at.elapsed, at.stage, at.percent)))
        if on_event
        else None,
        after_healthy=hooks.after_healthy if hooks is not None else None,
    )
    if result.already_running:
        running_spec = spec
        if spec.context_auto:  # whatever context it was fitted to is what auto asked for
            running_spec = replace(
                spec, settings=_with(spec.settings, context_size=result.record.instance.settings.get("context_size"))
            )
        changed = changed_settings(running_spec, result.record)
        if changed:
            # restart reapplies the flags the running instance was started with, not these
            given = json.loads(json.dumps(dict(spec.overrides), default=str))
            new_flags = given != dict(result.record.instance.overrides)
            how = (
                f"lf runtime stop {spec.name}, then this start again"
                if new_flags
                else f"lf runtime restart {spec.name}"
            )
            _emit(
                on_event,
                Notice(
                    f"{spec.name} is already running with other settings ({'; '.join(changed)}); to apply them: {how}"
                ),
            )
            result = replace(result, changed=tuple(changed))
    return result


def _with(settings, **changes):
    from types import MappingProxyType

    return MappingProxyType({**settings, **changes})


def fit_context(spec: InstanceSpec, room: int | None = None) -> InstanceSpec:
    """`spec` with `context_size: auto` made a number: the largest context (up to the model's trained length) whose
    estimate fits in `room` bytes (default: the memory available now). Unchanged when lf cannot read the model."""
    if not spec.model_path:
        return spec
    from lf.hardware import memory
    from lf.models.budget import headroom
    from lf.models.memory import fit_context as fit

    if room is None:
        machine = memory()
        room = max(0, machine.available - headroom(machine.total))
    fitted = fit(spec.model_path, spec.settings, room)
    return replace(spec, settings=_with(spec.settings, context_size=fitted.context_size))


def memory_estimate(spec: InstanceSpec):
    """lf.models.memory.Estimate of what the instance will take; None when lf cannot tell (not a GGUF
    runtime, or a header it cannot read): such a start is not held back."""
    if spec.runtime.model_format != "gguf" or not spec.model_path:
        return None
    from lf.models.memory import estimate_settings  # the GGUF reader, only for a start that launches

    try:
        return estimate_settings(spec.model_path, spec.settings)
    except (OSError, ValueError, KeyError):
        return None


def require_memory(spec: InstanceSpec, needed) -> None:
    """StartError (exit 7) when the estimate exceeds the memory available now (lf.hardware.memory), or, on
    Apple silicon, what Metal may hold (lf.hardware.gpu_memory_limit)."""
    from lf.hardware import gpu_memory_limit, memory
    from lf.models.gguf_meta import human_bytes

    available = memory().available
    metal = gpu_memory_limit(spec.settings.get("gpu_layers"))
    if metal is not None and available >= needed.total > metal.bytes:
        raise StartError(
            f"{spec.name} needs about {human_bytes(needed.total)} on the GPU ({spec.model} at {needed.context_size} "
            f"tokens of context), but Metal may hold {human_bytes(metal.bytes)} ({metal.source})",
            hint="offload fewer layers (--set gpu_layers=N), use a smaller --ctx-size, raise the limit "
            "(sudo sysctl iogpu.wired_limit_mb=<MiB>), or start it anyway with --force",
        )
    if needed.total <= available:
        return
    raise StartError(
        f"{spec.name} needs about {human_bytes(needed.total)} ({spec.model} at {needed.context_size} tokens of "
        f"context: weights {human_bytes(needed.weights + needed.repacked)}, KV cache {human_bytes(needed.kv_cache)}), "
        f"but only {human_bytes(available)} is available",
        hint="use a smaller --ctx-size, free memory (lf runtime status -A lists what lf runs), "
        "or start it anyway with --force",
    )


def dry_run(
    target: str | None, project: Project | None, overrides: Overrides | None = None, store: StateStore | None = None
) -> list[dict]:
    """What `start` would launch, without launching anything: for each instance its argv, port, model, the
    memory estimate and whether it fits, or that it is already running."""
    from lf.hardware import gpu_memory_limit, memory

    store = _store(store, project)
    taken: set[int] = set()
    plans = []
    available = memory().available
    for spec in specs_for(target, project, overrides or Overrides()):
        spec = fit_context(spec) if spec.context_auto else spec
        scoped = store.scoped(spec.project)
        record = scoped.load_or_none(spec.name)
        running = record is not None and record.process_alive()
        port = (
            record.port
            if record is not None and running
            else choose_port(spec.host, spec.port, spec.port_auto, taken, scoped)
        )
        taken.add(port)
        plan = make_plan(spec, port)
        needed = memory_estimate(spec)
        metal = gpu_memory_limit(spec.settings.get("gpu_layers")) if needed else None
        plans.append(
            {
                "name": spec.name,
                "runtime": spec.runtime.name,
                "engine": plan.engine,
                "already_running": running,
                "argv": list(plan.argv),
                "host": plan.host,
                "port": port,
                "model": spec.model,
                "model_path": spec.model_path,
                "estimate": needed.to_dict() if needed else None,
                "available_bytes": available,
                "fits": None
                if needed is None
                else needed.total <= available and (metal is None or needed.total <= metal.bytes),
            }
        )
    return plans


def ensure_running(
    entry: ModelEntry,
    project: Project | None,
    *,
    model: str | None = None,
    auto_start: bool = True,
    owner: str = "cli",
    timeout: float | None = None,
    on_event: OnEvent | None = None,
    store: StateStore | None = None,
    room: int | None = None,
) -> Endpoint:
    """The endpoint of a model entry, starting its instance first when it is not running (on demand); `room`:
    the memory `context_size: auto` may take (default: what is available now).

    `model` asks for another model than the entry's (one-model-per-process runtimes serve only the one
    they were started with). An external entry is returned as configured, never started."""
    target = target_of(entry)
    if target.base_url is not None:
        return Endpoint(entry.name, target.base_url, entry.model, target.api_key)
    if model and target.runtime.model_format == "gguf":
        from lf.models.catalog import resolve_model_path

        resolve_model_path(model, project.folder if project else None)  # an unknown model is exit 4, whatever runs
    store = _store(store, project)
    record = store.load_or_none(entry.name)
    alive = record is not None and record.process_alive()
    if record is not None and alive:
        if record.process_frozen():
            raise frozen_error(record, ExitStatus.UNHEALTHY)
        if model and target.runtime.one_model_per_process and model not in (record.model, record.instance.model_path):
            raise LfError(
                f"{entry.name} is serving {record.model}, not {model}",
                hint=f"switch with: lf runtime stop {entry.name} && lf runtime start {entry.name} --model {model}",
            )
        return Endpoint.of(record, target.api_key)
    if not auto_start:
        said = "crashed" if classify(record, alive) == State.CRASHED else "not running"
        raise LfError(
            f"{entry.name} is {said}",
            hint=f"start it with: lf runtime start {entry.name}",
            exit_status=ExitStatus.NOT_RUNNING,
        )
    spec = build_spec(entry, project, Overrides(model=model), single=True)
    result = start_spec(spec, owner=owner, timeout=timeout, on_event=on_event, store=store, room=room)
    return Endpoint.of(result.record, target.api_key, started=not result.already_running)


def running(entry: ModelEntry, project: Project | None, store: StateStore | None = None) -> Endpoint | None:
    """The endpoint of a managed entry's instance if it is running (and is the process lf started)."""
    record = _store(store, project).load_or_none(entry.name)
    if record is None or not record.process_alive():
        return None
    return Endpoint.of(record, entry.resolved_api_key())


def chat_endpoint(
    project: Project | None,
    runtime: str | None,
    model: str | None,
    *,
    auto_start: bool = True,
    direct: bool = False,
    on_event: OnEvent | None = None,
    message: str | None = None,
) -> tuple[Endpoint | None, ModelEntry]:
    """The endpoint `lf chat --runtime R --model M` talks to, and its model entry: the project's gateway when one
    serves that entry (it starts the model itself, on this request), else the entry's own instance, started if
    needed. `--model` naming a model that no entry configures asks for that very model, directly. A router (with
    no gateway to route) routes `message` here, with the gateway's own code; without a message, None: the caller
    asks again for each one."""
    names = Names(project)
    entry = names.entry(model, runtime)
    configured = model is None or names.lookup(model) is entry
    if not direct and configured and (entry.managed or entry.is_router):
        store = _store(None, project)
        gateway = served.serving_gateway(project, store, entry.name)
        if gateway is not None and not auto_start and running(entry, project, store) is None:
            raise LfError(
                f"{entry.name} is idle: {gateway.describe()} starts it on demand",
                hint=f"drop --no-auto-start, or start it with: lf runtime start {entry.name}",
                exit_status=ExitStatus.NOT_RUNNING,
            )
        if gateway is not None:
            _emit(on_event, Notice(f"through {gateway.describe()} (--direct goes around it)"))
            return Endpoint(
                entry.name, gateway.base_url, model or entry.name, gateway.api_key, gateway=gateway.name
            ), entry
    if entry.is_router:
        if message is None:
            return None, entry
        return routed_endpoint(project, entry, message, auto_start=auto_start, on_event=on_event)
    requested = model if model is not None and not configured else None
    endpoint = ensure_running(entry, project, model=requested, auto_start=auto_start, on_event=on_event)
    return endpoint, entry


def routed_endpoint(
    project: Project | None,
    router: ModelEntry,
    message: str,
    *,
    auto_start: bool = True,
    on_event: OnEvent | None = None,
) -> tuple[Endpoint, ModelEntry]:
    """Where a router sends `message` (lf.core.router: the same decision `lf serve` makes): its embedding model's
    instance and the chosen target's, started as needed; the target's endpoint and entry."""
    from lf.core.router import (
        EmbeddingCache,
        RouterSpec,
        RoutingTable,
        embed_query,
        embed_with,
        embedder_entry,
        identity_of,
    )

    spec = RouterSpec.of(router)
    embedder = embedder_entry(spec, project)
    at = ensure_running(embedder, project, auto_start=auto_start, on_event=on_event)
    embed = embed_with(at.base_url, at.model, at.api_key)
    table = RoutingTable.build(spec, embed, EmbeddingCache(identity_of(embedder, project)))
    decision = table.decide(embed_query(embed, message))
    said = f"route {decision.route}" if decision.route else f"no route above {spec.threshold:g}: its default"
    _emit(on_event, Notice(f"{router.name}: {said} → {decision.target} (similarity {decision.score:.2f})"))
    target = Names(project).entry(decision.target)
    return ensure_running(target, project, auto_start=auto_start, on_event=on_event), target


# -- stop, restart -----------------------------------------------------------------------------------
def stop(
    names: list[str] | None,
    project: Project | None = None,
    *,
    every: bool = False,
    all_projects: bool = False,
    timeout: float = 10.0,
    store: StateStore | None = None,
) -> list[StopResult]:
    """Stop the named instances of the project (any name lf.config.names knows; a runtime's name: all its
    instances; NAMESPACE/PROJECT/ENTRY: another project's), or all of them (`every`), or every instance of every
    project (`all_projects`). A name the project does not run but another project does is left alone: its result
    says which project runs it, and how to stop it there."""
    store = _store(store, project)
    if all_projects:
        return [
            _stopped(supervisor.stop(name, each, timeout=timeout), each)
            for each in store.every_project()
            for name in each.names()
        ]
    if not names and not every:
        raise LfError(
            "name what to stop, or use --all",
            hint="running: " + (", ".join(store.names()) or "nothing"),
            exit_status=ExitStatus.USAGE,
        )
    if every:
        return [_stopped(supervisor.stop(name, store, timeout=timeout), store) for name in store.names()]
    results = []
    plain = []
    for name in names or []:
        found = qualified(name)
        if found is None:
            plain.append(name)
            continue
        other = store.scoped(parse_project(found.project))
        results.append(_stopped(supervisor.stop(Names(None).instance_name(found.name), other, timeout=timeout), other))
    for name in Names(project).to_stop(plain, store):
        result = _stopped(supervisor.stop(name, store, timeout=timeout), store)
        results.append(result if result.was_running else _elsewhere(result, store))
    return results


def _stopped(result: StopResult, store: StateStore) -> StopResult:
    return replace(result, project=store.project)


def _elsewhere(result: StopResult, store: StateStore) -> StopResult:
    """A result that was not running here, with the other projects that run an instance of that name."""
    others = [
        record
        for each in store.every_project()[1:]
        for record in each.records()
        if record.name == result.name and record.process_alive()
    ]
    if not others:
        return result
    where = "; ".join(
        f"{project_label(r.project, r.instance.project_folder)} runs one (stop it with: {stop_command(r, store)})"
        for r in others
    )
    return replace(
        result,
        note=f"{result.note}; not in {project_label(store.project)}, but {where}",
        elsewhere=tuple(r.project for r in others),
    )


def stop_instance(
    name: str,
    project: Project | None,
    *,
    only_pid: int | None = None,
    timeout: float = 10.0,
    store: StateStore | None = None,
) -> StopResult:
    """Stop one instance of the project; with `only_pid`, only if it is still that process (not one started since)."""
    return supervisor.stop(name, _store(store, project), timeout=timeout, only_pid=only_pid)


def restart(
    target: str | None,
    project: Project | None,
    *,
    timeout: float | None = None,
    on_event: OnEvent | None = None,
    store: StateStore | None = None,
    direct: bool = False,
) -> list[StartResult]:
    """Stop, then start again: flags given to `start` stay in force, the rest is read afresh. An entry a running
    `lf serve` of the project serves is restarted by that gateway, unless `direct`."""
    store = _store(store, project)
    gateway = None if direct else served.serving_gateway(project, store)
    specs = []
    for entry in Names(project).to_start(target):
        record = store.load_or_none(entry.name)
        given = Overrides()
        if record is not None:
            for warning in record.warnings:  # overrides the record holds that this lf cannot reapply
                _emit(on_event, Notice(warning))
            given = Overrides.from_given(record.instance.overrides)
            unknown = _undeclared_settings(entry, given)
            if unknown:  # a setting the runtime no longer declares (its manifest changed since the start)
                _emit(
                    on_event,
                    Notice(
                        f"Warning: {entry.name} was started with {', '.join(unknown)}, "
                        f"which {entry.provider} no longer takes: left out"
                    ),
                )
                given = replace(given, settings={k: v for k, v in given.settings.items() if k not in unknown})
        specs.append(build_spec(entry, project, given, single=True))
    results = []
    for spec in specs:
        if gateway is not None and spec.name in gateway.serves and not spec.overrides:
            served.act(gateway, "stop", spec.name, timeout=60.0)
            results.append(_start_through(gateway, spec, store, timeout, on_event))
            continue
        supervisor.stop(spec.name, store)
        results.append(start_spec(spec, timeout=timeout, on_event=on_event, store=store))
    return results


def _undeclared_settings(entry: ModelEntry, given: Overrides) -> list[str]:
    from lf.runtimes.registry import get_runtime

    declared = get_runtime(entry.provider).settings
    return [name for name in given.settings if name not in declared]
