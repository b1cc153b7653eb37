"""What is running, and is it healthy? The report behind `lf runtime status` (no CLI imports here).

This is the path scripts call in loops: it reads records and /proc, probes every endpoint at once with
one short deadline, and imports nothing heavy unless a llamafarm.yaml must be read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lf.daemon.health import DEFAULT_PROBE_TIMEOUT, Health, Probe, probe_all
from lf.daemon.records import NO_PROJECT, CorruptRecord, RuntimeRecord, StateStore
from lf.daemon.states import UNREADABLE, State, classify
from lf.errors import ExitStatus, exit_for_state, worst

STATUS_VERSION = 1


@dataclass(eq=False, repr=False)  # each generated method costs the status path (measured)
class InstanceStatus:
    name: str
    runtime: str
    state: State
    managed: bool = True
    pid: int | None = None
    host: str | None = None
    port: int | None = None
    base_url: str | None = None
    model: str | None = None
    engine: str | None = None
    started_at: float | None = None
    log_path: str | None = None
    health: Health | None = None
    message: str = ""
    log_tail: list[str] = field(default_factory=list)
    record: RuntimeRecord | None = None
    probe: Probe | None = None
    project: str | None = None  # "namespace/name" of the project it belongs to; None: no project

    @property
    def exit_status(self) -> ExitStatus:
        return exit_for_state(self.state, self.health.healthy if self.health else None)

    def to_dict(self) -> dict:
        now = time.time()
        alive = self.state.is_alive
        return {
            "name": self.name,
            "project": self.project,
            "runtime": self.runtime,
            "state": self.state.value,
            "managed": self.managed,
            "pid": self.pid if alive else None,
            "host": self.host,
            "port": self.port,
            "base_url": self.base_url,
            "model": self.model,
            "engine": self.engine,
            "started_at": _iso(self.started_at),
            "uptime_s": round(now - self.started_at, 1) if (alive and self.started_at) else None,
            "log_path": self.log_path,
            "health": self.health.to_dict() if self.health else None,
            "message": self.message,
            "log_tail": self.log_tail,
        }


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts))


@dataclass(eq=False, repr=False)
class StatusReport:
    instances: list[InstanceStatus]
    unknown: list[str]
    config_path: str | None
    state_dir: str
    warnings: list[str] = field(default_factory=list)
    project: str | None = None  # the project status was asked in

    @property
    def exit_status(self) -> ExitStatus:
        if self.unknown:
            return ExitStatus.UNKNOWN
        if not self.instances:
            return ExitStatus.NOT_RUNNING
        return worst(i.exit_status for i in self.instances)

    def to_dict(self) -> dict:
        return {
            "version": STATUS_VERSION,
            "state_dir": self.state_dir,
            "config": self.config_path,
            "project": self.project,
            "instances": [i.to_dict() for i in self.instances],
            "unknown": self.unknown,
            "exit_code": int(self.exit_status),
        }


def from_record(record: RuntimeRecord) -> InstanceStatus:
    """An instance as its record and its process say (health comes later, from the probe)."""
    alive = record.process_alive()
    frozen = alive and record.process_frozen()
    status = InstanceStatus(
        name=record.name,
        runtime=record.runtime,
        state=classify(record, alive, frozen=frozen),
        pid=record.pid,
        host=record.host,
        port=record.port,
        base_url=record.base_url,
        model=record.model,
        project=record.project,
        engine=record.engine,
        started_at=record.started_at,
        log_path=record.log_path,
        record=record,
    )
    if status.state == State.CRASHED:
        from lf.files import read_tail

        status.message = "its process is gone and lf did not stop it"
        status.log_tail = read_tail(record.log_path, 5).splitlines()
    elif frozen:  # a probe would only time out
        status.message = (
            f"its process is stopped by a signal; resume it with: kill -CONT {record.pid} (lf runtime stop also works)"
        )
    else:
        status.probe = record.health_probe()
    return status


def collect(
    names: list[str] | None,
    project,
    store: StateStore,
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
    all_projects: bool = False,
) -> StatusReport:
    """Status of the project's named instances/runtimes, or of everything it knows when `names` is empty;
    with `all_projects`, every other project's recorded instances as well."""
    statuses: dict[tuple, InstanceStatus] = {}  # (project, name)
    warnings: list[str] = []
    for each in store.every_project() if all_projects else [store]:
        for name in each.names():
            try:
                record = each.load(name)
            except CorruptRecord as exc:
                scope = "" if each is store else f" --project {each.project or NO_PROJECT}"
                warnings.append(
                    f"Warning: the record {exc.path} is unreadable ({exc.reason}); `lf runtime stop {name}{scope}` removes it"
                )
                statuses[each.project, name] = InstanceStatus(
                    name=name,
                    runtime="?",
                    state=classify(UNREADABLE, False),
                    message=f"unreadable record: {exc.reason}",
                    project=each.project,
                )
                continue
            if record is not None:
                statuses[each.project, name] = from_record(record)
    here = store.project
    for item in _configured(project):
        item.project = here
        statuses.setdefault((here, item.name), item)
    if project is None and not names and not all_projects:  # the embedded default, as a stopped one
        from lf.runtimes.folders import DEFAULT_RUNTIME

        statuses.setdefault(
            (here, DEFAULT_RUNTIME), InstanceStatus(name=DEFAULT_RUNTIME, runtime=DEFAULT_RUNTIME, state=State.STOPPED)
        )

    unknown: list[str] = []
    if names:
        selected: dict[tuple, InstanceStatus] = {}
        for name in names:
            named = {k: v for k, v in statuses.items() if k[1] == name}
            if named:
                selected.update(named)
                continue
            of_runtime = {k: v for k, v in statuses.items() if v.runtime == name}
            if of_runtime:
                selected.update(of_runtime)
                continue
            from lf.runtimes.folders import runtime_names

            if name in runtime_names():
                selected[here, name] = InstanceStatus(name=name, runtime=name, state=State.STOPPED, project=here)
            else:
                unknown.append(name)
        statuses = selected

    # this project's first (the order status always had), then the others by name
    instances = sorted(statuses.values(), key=lambda s: (s.project != here, s.project or "", not s.managed, s.name))
    now = time.time()
    for inst, health in zip(instances, probe_all([i.probe for i in instances], probe_timeout)):
        if health is None:
            continue
        if not inst.managed:  # an error about a bad address quotes it, credentials and all
            from lf.secrets import mask, secrets_of

            health.message = mask(health.message, secrets_of(None, inst.probe.url))
        inst.health = health
        if inst.record is not None:
            inst.state = classify(inst.record, True, health, now)
        if not inst.message:
            inst.message = health.message
    return StatusReport(
        instances, unknown, str(project.path) if project else None, str(store.root), warnings, project=here
    )


def _configured(project) -> list[InstanceStatus]:
    """Configured model entries: managed ones as stopped (records override), external ones to probe."""
    if project is None:
        return []
    out = []
    for entry in project.models:
        if entry.managed:  # decided when the file was validated: no manifest to parse here
            out.append(InstanceStatus(name=entry.name, runtime=entry.provider, state=State.STOPPED, model=entry.model))
            continue
        from lf.daemon.health import origin
        from lf.errors import UnknownNameError
        from lf.runtimes.registry import get_runtime

        try:
            runtime = get_runtime(entry.provider)  # parses only the manifests of external entries
        except UnknownNameError:
            continue
        from lf.secrets import redact_url

        base_url = runtime.external_base_url(entry.base_url)
        url = origin(base_url) + runtime.health_path if runtime.health_path else base_url + "/models"
        out.append(
            InstanceStatus(
                name=entry.name,
                runtime=entry.provider,
                state=State.EXTERNAL,
                managed=False,
                base_url=redact_url(base_url),  # shown; the probe has the URL as written
                model=entry.model,
                probe=Probe(url, runtime.health_ready, entry.resolved_api_key()),
            )
        )
    return out
