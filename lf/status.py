"""What is running, and is it healthy? The core of `lf runtime status` (no CLI imports here).

This is the path scripts call in loops: it reads records and /proc, probes every endpoint at once with
one short deadline, and imports nothing heavy unless a llamafarm.yaml must be read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lf.errors import ExitStatus, UnknownNameError
from lf.health import DEFAULT_PROBE_TIMEOUT, Health, Probe, probe_all
from lf.state import CorruptRecord, RuntimeRecord, StateStore
from lf.states import ProcessState

STATUS_VERSION = 1


@dataclass
class InstanceStatus:
    name: str
    runtime: str
    state: ProcessState
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
    probe: Probe | None = None
    start_timeout: float = 60.0  # the runtime's: until then an unready process is still loading

    def to_dict(self) -> dict:
        now = time.time()
        alive = self.state.is_alive
        return {
            "name": self.name,
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


@dataclass
class StatusReport:
    instances: list[InstanceStatus]
    unknown: list[str]
    config_path: str | None
    state_dir: str

    @property
    def exit_status(self) -> ExitStatus:
        if self.unknown:
            return ExitStatus.UNKNOWN
        states = [i.state for i in self.instances]
        if not states or any(s in (ProcessState.STOPPED, ProcessState.CRASHED, ProcessState.UNKNOWN) for s in states):
            return ExitStatus.NOT_RUNNING
        if any(i.health is not None and not i.health.healthy for i in self.instances):
            return ExitStatus.UNHEALTHY
        return ExitStatus.OK

    def to_dict(self) -> dict:
        return {
            "version": STATUS_VERSION,
            "state_dir": self.state_dir,
            "config": self.config_path,
            "instances": [i.to_dict() for i in self.instances],
            "unknown": self.unknown,
            "exit_code": int(self.exit_status),
        }


def from_record(record: RuntimeRecord) -> InstanceStatus:
    from lf.process import is_same_process

    status = InstanceStatus(
        name=record.name,
        runtime=record.runtime,
        state=ProcessState.RUNNING,
        pid=record.pid,
        host=record.host,
        port=record.port,
        base_url=record.base_url,
        model=record.model,
        engine=record.engine,
        started_at=record.started_at,
        log_path=record.log_path,
        start_timeout=float(record.extra.get("start_timeout", 60)),
    )
    if not is_same_process(record.pid, record.create_time):
        status.state = ProcessState.CRASHED
        status.message = "its process is gone and lf did not stop it"
        from lf.supervisor import log_tail

        status.log_tail = log_tail(record.log_path, 5).splitlines()
    elif record.health_url:
        status.probe = record.health_probe()
    return status


def collect(
    names: list[str] | None,
    project,
    store: StateStore,
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
    warn=None,
) -> StatusReport:
    """Status of the named instances/runtimes, or of everything known when `names` is empty."""
    statuses: dict[str, InstanceStatus] = {}
    for name in store.names():
        try:
            record = store.load(name)
        except CorruptRecord as exc:
            if warn:
                warn(f"Warning: the record {exc.path} is unreadable ({exc.reason}); `lf runtime stop {name}` removes it")
            statuses[name] = InstanceStatus(name=name, runtime="?", state=ProcessState.UNKNOWN, message=f"unreadable record: {exc.reason}")
            continue
        if record is not None:
            statuses[name] = from_record(record)
    configured = _configured(project)
    for item in configured:
        statuses.setdefault(item.name, item)
    if project is None and not names:
        from lf.runtime_folders import DEFAULT_RUNTIME

        statuses.setdefault(DEFAULT_RUNTIME, InstanceStatus(name=DEFAULT_RUNTIME, runtime=DEFAULT_RUNTIME, state=ProcessState.STOPPED))

    unknown: list[str] = []
    if names:
        selected: dict[str, InstanceStatus] = {}
        for name in names:
            if name in statuses:
                selected[name] = statuses[name]
                continue
            of_runtime = {k: v for k, v in statuses.items() if v.runtime == name}
            if of_runtime:
                selected.update(of_runtime)
                continue
            from lf.runtime_folders import runtime_names

            if name in runtime_names():
                selected[name] = InstanceStatus(name=name, runtime=name, state=ProcessState.STOPPED)
            else:
                unknown.append(name)
        statuses = selected

    instances = sorted(statuses.values(), key=lambda s: (not s.managed, s.name))
    results = probe_all([i.probe for i in instances], probe_timeout)
    for inst, health in zip(instances, results):
        if health is None:
            continue
        inst.health = health
        if inst.state == ProcessState.RUNNING and not health.healthy:
            inst.state = _unready_state(inst)
        if not inst.message:
            inst.message = health.message
    return StatusReport(instances, unknown, str(project.path) if project else None, str(store.root))


def _unready_state(inst: InstanceStatus) -> ProcessState:
    # young processes are still loading; after the runtime's start timeout it is a real problem
    if inst.started_at and time.time() - inst.started_at < inst.start_timeout:
        return ProcessState.STARTING
    return ProcessState.UNHEALTHY


def _configured(project) -> list[InstanceStatus]:
    """Configured model entries: managed ones as stopped (records override), external ones to probe."""
    if project is None:
        return []
    out = []
    for entry in project.models:
        if entry.managed:  # decided when the file was validated: no manifest to parse here
            out.append(InstanceStatus(name=entry.name, runtime=entry.provider, state=ProcessState.STOPPED, model=entry.model))
            continue
        from lf.registry import get_runtime

        try:
            runtime = get_runtime(entry.provider)  # parses only the manifests of external entries
        except UnknownNameError:
            continue
        base_url = api_base_url(runtime, entry.base_url)
        url = _origin(base_url) + runtime.health_path if runtime.health_path else base_url + "/models"
        out.append(
            InstanceStatus(
                name=entry.name,
                runtime=entry.provider,
                state=ProcessState.EXTERNAL,
                managed=False,
                base_url=base_url,
                model=entry.model,
                probe=Probe(url, runtime.health_ready, entry.resolved_api_key()),
            )
        )
    return out


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def api_base_url(runtime, base_url: str | None) -> str:
    """The OpenAI API base of an external runtime. A bare origin (LlamaFarm writes Ollama's as
    http://localhost:11434) gets the runtime's API path appended."""
    from urllib.parse import urlsplit

    if not base_url:
        return external_base_url(runtime)
    base_url = base_url.rstrip("/")
    if urlsplit(base_url).path in ("", "/"):
        base_url += runtime.api_base
    return base_url


def external_base_url(runtime) -> str:
    """Where an external runtime the user runs is expected: its env var (e.g. OLLAMA_HOST) or default port."""
    import os

    host = os.environ.get(runtime.env["host"], "") if runtime.env.get("host") else ""
    port = os.environ.get(runtime.env["port"], "") if runtime.env.get("port") else ""
    if host:
        if "://" not in host:
            host = "http://" + host
        if host.count(":") < 2:  # no port given
            host = f"{host}:{port or runtime.default_port}"
        return host.rstrip("/") + runtime.api_base
    if port.isdigit():
        return f"http://127.0.0.1:{port}{runtime.api_base}"
    return f"http://127.0.0.1:{runtime.default_port}{runtime.api_base}"
