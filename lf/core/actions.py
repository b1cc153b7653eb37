"""What lf does: start, ensure_running, stop, restart, status.

Every CLI command is: parse its options → one call here → render the result; `lf serve` calls the same
functions from worker threads. They take typed arguments, return typed results and print nothing:
progress and warnings go to an optional `on_event` callback (the events of lf.core.events). Each instance's start
and stop run under its lock (a flock per call, so threads of one process exclude each other as
processes do), which makes them safe to call concurrently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lf.config.project import ModelEntry, Project
    from lf.core.events import Endpoint
    from lf.core.status import StatusReport
    from lf.core.targets import Overrides
    from lf.daemon.records import StateStore
    from lf.daemon.supervisor import StartResult, StopResult
    from lf.runtimes.launch import InstanceSpec

    OnEvent = Callable[[object], None]  # receives lf.core.events: Starting, Waiting, Notice


def _emit(on_event: OnEvent | None, event: object) -> None:
    if on_event is not None:
        on_event(event)


def _store(store: StateStore | None, project: Project | None) -> StateStore:
    """The store given, or the project's: an instance belongs to its project (no project: the default's)."""
    from lf.daemon.records import StateStore

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
) -> list[StartResult]:
    """Start what `target` names (an entry, a runtime, or everything the project needs) and wait
    until each is healthy. Already running is a success. An instance whose memory estimate exceeds the
    memory available is refused (exit 7) unless `force`."""
    from lf.core.targets import Overrides, specs_for

    specs = specs_for(target, project, overrides or Overrides())
    store = _store(store, project)
    taken: set[int] = set()
    results = []
    for spec in specs:
        result = start_spec(
            spec, wait=wait, timeout=timeout, taken_ports=taken, on_event=on_event, store=store, force=force
        )
        taken.add(result.record.port)
        results.append(result)
    return results


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
) -> StartResult:
    """Start one resolved instance (or find it running); `owner` is recorded as who started it. One that
    must be launched and does not fit in available memory is refused, unless `force`."""
    from lf.core.events import Notice, Starting, Waiting
    from lf.daemon import supervisor
    from lf.daemon.supervisor import choose_port
    from lf.runtimes.launch import make_plan

    for warning in spec.warnings:
        _emit(on_event, Notice(warning))
    _emit(on_event, Starting(spec.name, spec.runtime.name, spec.model))

    if store is None or store.project != spec.project:
        from lf.daemon.records import StateStore

        store = (store or StateStore()).scoped(spec.project)  # the record goes where its project's are

    needed = None if force else memory_estimate(spec)

    def plan_for():
        if needed is not None:  # checked only when something is launched: a running instance is no new memory
            require_memory(spec, needed)
        return make_plan(spec, choose_port(spec.host, spec.port, spec.port_auto, taken_ports, store), owner)

    hooks = spec.runtime.hooks()
    after = getattr(hooks, "after_healthy", None) if hooks is not None else None
    result = supervisor.start(
        spec.name,
        store,
        plan_for,
        wait=wait,
        timeout=timeout,
        on_wait=(lambda elapsed: _emit(on_event, Waiting(spec.name, elapsed))) if on_event else None,
        after_healthy=after,
    )
    if result.already_running:
        from dataclasses import replace

        from lf.runtimes.launch import changed_settings

        changed = changed_settings(spec, result.record)
        if changed:
            # restart reapplies the flags the running instance was started with, not these
            import json

            new_flags = json.loads(json.dumps(dict(spec.overrides), default=str)) != result.record.overrides
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


def memory_estimate(spec: InstanceSpec):
    """lf.models.memory.Estimate of what the instance will take; None when lf cannot tell (not a GGUF
    runtime, or a header it cannot read): such a start is not held back."""
    if spec.runtime.model_format != "gguf" or not spec.model_path:
        return None
    from lf.models.memory import estimate_settings

    try:
        return estimate_settings(spec.model_path, spec.settings)
    except (OSError, ValueError, KeyError):
        return None


def require_memory(spec: InstanceSpec, needed) -> None:
    """StartError (exit 7) when the estimate exceeds the memory available now (lf.hardware.memory), or, on
    Apple silicon, what Metal may hold (lf.hardware.gpu_memory_limit)."""
    from lf.errors import StartError
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
        f"{spec.name} needs about {human_bytes(needed.total)} ({spec.model} at {needed.context_size} tokens of context: "
        f"weights {human_bytes(needed.weights + needed.repacked)}, KV cache {human_bytes(needed.kv_cache)}), "
        f"but only {human_bytes(available)} is available",
        hint="use a smaller --ctx-size, free memory (lf runtime status -A lists what lf runs), or start it anyway with --force",
    )


def dry_run(
    target: str | None,
    project: Project | None,
    overrides: Overrides | None = None,
    store: StateStore | None = None,
) -> list[dict]:
    """What `start` would launch, without launching anything: for each instance its argv, port, model, the
    memory estimate and whether it fits, or that it is already running."""
    from lf.core.targets import Overrides, specs_for
    from lf.daemon.records import StateStore
    from lf.daemon.supervisor import choose_port
    from lf.hardware import gpu_memory_limit, memory
    from lf.runtimes.launch import make_plan

    store = _store(store, project)
    taken: set[int] = set()
    plans = []
    available = memory().available
    for spec in specs_for(target, project, overrides or Overrides()):
        scoped = store if store.project == spec.project else StateStore().scoped(spec.project)
        record = scoped.load_or_none(spec.name)
        running = record is not None and record.process_alive()
        port = record.port if running else choose_port(spec.host, spec.port, spec.port_auto, taken, scoped)
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
) -> Endpoint:
    """The endpoint of a model entry, starting its instance first when it is not running (on demand).

    `model` asks for another model than the entry's (one-model-per-process runtimes serve only the one
    they were started with). An external entry is returned as configured, never started."""
    from lf.core.events import Endpoint
    from lf.core.targets import Overrides, build_spec, target_of
    from lf.daemon.states import State, classify
    from lf.errors import ExitStatus, LfError

    target = target_of(entry)
    if not target.managed:
        return Endpoint(entry.name, target.base_url, entry.model, target.api_key, managed=False)
    if model and target.runtime.model_format == "gguf":
        from lf.models.catalog import resolve_model_path

        resolve_model_path(model, project.folder if project else None)  # an unknown model is exit 4, whatever runs
    store = _store(store, project)
    record = store.load_or_none(entry.name)
    alive = record is not None and record.process_alive()
    if alive:
        if record.process_frozen():
            from lf.daemon.supervisor import frozen_error

            raise frozen_error(record, ExitStatus.UNHEALTHY)
        if model and target.runtime.one_model_per_process and model not in (record.model, record.model_path):
            raise LfError(
                f"{entry.name} is serving {record.model}, not {model}",
                hint=f"switch with: lf runtime stop {entry.name} && lf runtime start {entry.name} --model {model}",
            )
        return Endpoint.of(record, target.api_key)
    if not auto_start:
        state = classify(record, alive)
        said = "crashed" if state == State.CRASHED else "not running"
        raise LfError(
            f"{entry.name} is {said}",
            hint=f"start it with: lf runtime start {entry.name}",
            exit_status=ExitStatus.NOT_RUNNING,
        )
    spec = build_spec(entry, project, Overrides(model=model), single=True)
    result = start_spec(spec, owner=owner, timeout=timeout, on_event=on_event, store=store)
    return Endpoint.of(result.record, target.api_key, started=not result.already_running)


def running(entry: ModelEntry, project: Project | None, store: StateStore | None = None) -> Endpoint | None:
    """The endpoint of a managed entry's instance if it is running (and is the process lf started)."""
    from lf.core.events import Endpoint

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
    on_event: OnEvent | None = None,
) -> tuple[Endpoint, ModelEntry]:
    """The endpoint `lf chat --runtime R --model M` talks to, started if needed, and its model entry."""
    from lf.core.targets import chat_target

    target = chat_target(project, runtime, model)
    # --model naming a model (not a configured entry) asks for that very model
    requested = model if model is not None and target.entry.name != model else None
    endpoint = ensure_running(target.entry, project, model=requested, auto_start=auto_start, on_event=on_event)
    return endpoint, target.entry


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
    """Stop the named instances of the project (a runtime's name: all its instances), or all of them
    (`every`), or every instance of every project (`all_projects`). A name the project does not run but
    another project does is left alone: its result says which project runs it, and how to stop it there."""
    from lf.daemon import supervisor
    from lf.errors import ExitStatus, LfError

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
    targets = store.names() if every else stop_targets(names or [], store, project)
    results = [_stopped(supervisor.stop(name, store, timeout=timeout), store) for name in targets]
    if not every:
        results = [_elsewhere(result, store) if not result.was_running else result for result in results]
    return results


def _stopped(result: StopResult, store: StateStore) -> StopResult:
    from dataclasses import replace

    return replace(result, project=store.project)


def _elsewhere(result: StopResult, store: StateStore) -> StopResult:
    """A result that was not running here, with the other projects that run an instance of that name."""
    from dataclasses import replace

    from lf.daemon.records import project_label
    from lf.daemon.supervisor import stop_command

    others = [
        record
        for each in store.every_project()[1:]
        for record in each.records()
        if record.name == result.name and record.process_alive()
    ]
    if not others:
        return result
    where = "; ".join(
        f"{project_label(r.project, r.project_folder)} runs one (stop it with: {stop_command(r, store)})"
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
    from lf.daemon import supervisor

    return supervisor.stop(name, _store(store, project), timeout=timeout, only_pid=only_pid)


def stop_targets(names: list[str], store: StateStore, project: Project | None = None) -> list[str]:
    """Instance names as given; a runtime name means every instance of it. A name lf knows but that is
    not running here passes through (stopping it is a no-op success); a name nothing knows is an error."""
    from lf.daemon.records import validate_name
    from lf.errors import UnknownNameError
    from lf.runtimes.folders import runtime_names

    records = store.records()
    known = set(store.names())  # unreadable records too: stop removes them
    configured = {m.name for m in project.models} if project is not None else set()
    elsewhere = {r.name for each in store.every_project()[1:] for r in each.records()}
    targets: list[str] = []
    for name in names:
        validate_name(name)  # a path-like name is refused as such, before anything else
        of_runtime = [r.name for r in records if r.runtime == name]
        if name in known or not of_runtime and name in runtime_names():
            targets.append(name)
        elif of_runtime:
            targets.extend(of_runtime)
        elif name in configured or name in elsewhere:  # not running here; maybe in another project
            targets.append(name)
        else:
            from lf.suggest import did_you_mean

            raise UnknownNameError(
                f"unknown runtime or instance {name!r}", hint=did_you_mean(name, [*known, *runtime_names()])
            )
    return list(dict.fromkeys(targets))


def restart(
    target: str | None,
    project: Project | None,
    *,
    timeout: float | None = None,
    on_event: OnEvent | None = None,
    store: StateStore | None = None,
) -> list[StartResult]:
    """Stop, then start again: flags given to `start` stay in force, the rest is read afresh."""
    from lf.core.events import Notice
    from lf.core.targets import Overrides, build_spec, entries_for
    from lf.daemon import supervisor

    store = _store(store, project)
    specs = []
    for entry in entries_for(target, project):
        record = store.load_or_none(entry.name)
        given = Overrides()
        if record is not None:
            for warning in record.warnings:  # overrides the record holds that this lf cannot reapply
                _emit(on_event, Notice(warning))
            given = Overrides.from_given(record.overrides)
            unknown = _undeclared_settings(entry, given)
            if unknown:  # a setting the runtime no longer declares (its manifest changed since the start)
                _emit(
                    on_event,
                    Notice(
                        f"Warning: {entry.name} was started with {', '.join(unknown)}, which {entry.provider} no longer takes: left out"
                    ),
                )
                given = replace(given, settings={k: v for k, v in given.settings.items() if k not in unknown})
        specs.append(build_spec(entry, project, given, single=True))
    results = []
    for spec in specs:
        supervisor.stop(spec.name, store)
        results.append(start_spec(spec, timeout=timeout, on_event=on_event, store=store))
    return results


def _undeclared_settings(entry: ModelEntry, given: Overrides) -> list[str]:
    from lf.runtimes.registry import get_runtime

    declared = get_runtime(entry.provider).settings
    return [name for name in given.settings if name not in declared]


# -- status ------------------------------------------------------------------------------------------
def status(
    names: list[str] | None,
    project: Project | None,
    *,
    probe_timeout: float = 1.0,
    all_projects: bool = False,
    store: StateStore | None = None,
) -> StatusReport:
    """State and health of the project's named instances or runtimes, or of everything it knows; with
    `all_projects`, of every project's instances too."""
    from lf.core.status import collect

    return collect(names or None, project, _store(store, project), probe_timeout, all_projects=all_projects)
