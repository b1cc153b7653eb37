"""What is running, and is it healthy? The report behind `lf runtime status` (no CLI imports here).

This is the path scripts call in loops: it reads records and /proc, probes every endpoint at once with
one short deadline, and imports nothing heavy unless a llamafarm.yaml must be read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lf.daemon.health import DEFAULT_PROBE_TIMEOUT, Health, Probe, probe_all
from lf.daemon.records import GATEWAY_RUNTIME, NO_PROJECT, CorruptRecord, RuntimeRecord, StateStore
from lf.daemon.states import UNREADABLE, State, classify, exit_for
from lf.errors import ExitStatus, worst

STATUS_VERSION = 1


@dataclass(eq=False, repr=False)  # each generated method costs the status path (measured)
class InstanceStatus:
    """One instance as status reports it: its record when lf runs it (the instance and its process, as launched),
    else what the configuration says (name, runtime, model, and an external endpoint's probe)."""

    name: str
    runtime: str
    state: State
    project: str | None = None  # "namespace/name" of the project it belongs to; None: no project
    record: RuntimeRecord | None = None
    model: str | None = None  # a configured model that is not running (a running one's is its record's)
    managed: bool = True
    base_url: str | None = None  # an external endpoint's, as shown (credentials redacted)
    health: Health | None = None
    message: str = ""
    log_tail: list[str] = field(default_factory=list)
    probe: Probe | None = None

    @property
    def exit_status(self) -> ExitStatus:
        return exit_for(self.state, self.health.healthy if self.health else None)

    def to_dict(self) -> dict:
        record = self.record
        instance = record.instance if record is not None else None
        alive = self.state.is_alive and record is not None
        return {
            "name": self.name,
            "project": self.project,
            "runtime": self.runtime,
            "state": self.state.value,
            "managed": self.managed,
            "pid": record.pid if alive and record is not None else None,
            "host": instance.host if instance else None,
            "port": instance.port if instance else None,
            "base_url": instance.base_url if instance else self.base_url,
            "model": instance.model if instance else self.model,
            "engine": instance.engine if instance else None,
            "context_size": instance.settings.get("context_size") if instance else None,
            "started_at": _iso(record.started_at) if record else None,
            "uptime_s": round(time.time() - record.started_at, 1) if alive and record is not None else None,
            "log_path": record.log_path if record else None,
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


def from_record(record: RuntimeRecord, stopping: bool = False) -> InstanceStatus:
    """An instance as its record and its process say (health comes later, from the probe); `stopping`: an lf
    process is stopping it right now."""
    alive = record.process_alive()
    frozen = alive and record.process_frozen()
    status = InstanceStatus(
        name=record.name,
        runtime=record.runtime,
        state=State.STOPPING if alive and stopping else classify(record, alive, frozen=frozen),
        project=record.project,
        record=record,
    )
    if status.state == State.STOPPING:
        status.message = "being stopped"
    elif status.state == State.CRASHED:
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
    """Status of the project's named instances/runtimes (any name lf.config.names knows), or of everything it knows
    when `names` is empty; with `all_projects`, every other project's recorded instances as well."""
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
                statuses[each.project, name] = from_record(record, each.is_stopping(name))
    here = store.project
    gateway = _serving_gateway(statuses, here)
    for item in _configured(project, gateway):
        item.project = here
        statuses.setdefault((here, item.name), item)
    if project is None and not names and not all_projects:  # the embedded default, as a stopped one
        from lf.runtimes.folders import DEFAULT_RUNTIME

        statuses.setdefault(
            (here, DEFAULT_RUNTIME), InstanceStatus(name=DEFAULT_RUNTIME, runtime=DEFAULT_RUNTIME, state=State.STOPPED)
        )

    unknown: list[str] = []
    if names:
        statuses, unknown = _select(names, statuses, project, here)

    # this project's first (the order status always had), then the others by name
    instances = sorted(statuses.values(), key=lambda s: (s.project != here, s.project or "", not s.managed, s.name))
    now = time.time()
    for inst, health in zip(instances, probe_all([i.probe for i in instances], probe_timeout)):
        if health is None:
            continue
        if not inst.managed and inst.probe is not None:  # an error about a bad address quotes it, credentials and all
            from lf.secrets import mask, secrets_of

            health.message = mask(health.message, secrets_of(None, inst.probe.url))
        inst.health = health
        if inst.record is not None and inst.state != State.STOPPING:
            inst.state = classify(inst.record, True, health, now)
        if not inst.message:
            inst.message = health.message
    return StatusReport(
        instances, unknown, str(project.path) if project else None, str(store.root), warnings, project=here
    )


def _select(names: list[str], statuses: dict, project, here) -> tuple[dict, list[str]]:
    """The statuses `names` ask for (an instance by any of its names, a runtime's every instance), and the names
    nothing knows."""
    from lf.config.names import Names
    from lf.runtimes.folders import runtime_names

    resolver = Names(project)
    selected: dict[tuple, InstanceStatus] = {}
    unknown: list[str] = []
    for given in names:
        name = resolver.instance_name(given)
        named = {k: v for k, v in statuses.items() if k[1] == name}
        if named:
            selected.update(named)
            continue
        of_runtime = {k: v for k, v in statuses.items() if v.runtime == name}
        if of_runtime:
            selected.update(of_runtime)
        elif name in runtime_names():
            selected[here, name] = InstanceStatus(name=name, runtime=name, state=State.STOPPED, project=here)
        else:
            unknown.append(given)
    return selected, unknown


def _serving_gateway(statuses: dict, here) -> InstanceStatus | None:
    """This project's running gateway, when status has found one among its records."""
    for (project, _name), item in statuses.items():
        if project == here and item.runtime == GATEWAY_RUNTIME and item.state.is_alive and item.record is not None:
            return item
    return None


def _configured(project, gateway: InstanceStatus | None) -> list[InstanceStatus]:
    """Configured model entries: managed ones as stopped, or idle when a running gateway serves them (records
    override both); external ones to probe."""
    if project is None:
        return []
    serves = set(gateway.record.instance.settings.get("serves") or ()) if gateway and gateway.record else set()
    out = []
    for entry in project.models:
        if entry.is_router:
            continue  # no instance of its own: what it routes to is listed
        if entry.managed:  # decided when the file was validated: no manifest to parse here
            idle = entry.name in serves
            out.append(
                InstanceStatus(
                    name=entry.name,
                    runtime=entry.provider,
                    state=State.IDLE if idle else State.STOPPED,
                    model=entry.model,
                    message=f"idle, started on demand by lf serve ({gateway.name})" if idle and gateway else "",
                )
            )
            continue
        from lf.errors import UnknownNameError
        from lf.runtimes.registry import get_runtime

        try:
            runtime = get_runtime(entry.provider)  # parses only the manifests of external entries
        except UnknownNameError:
            continue
        from lf.daemon.health import origin
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
