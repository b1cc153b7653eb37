"""What runs now, as `ollama ps` shows it: each live instance with its process tree's memory and, for the
instances a running `lf serve` of the project started, when it will unload them (no CLI imports here).

The instances and their states are `lf runtime status`'s (lf.core.status.collect); the expiry is asked of
the project's gateway, when one has a record, through its /health.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime

from lf.config.gateway import gateway_key
from lf.core.status import collect
from lf.daemon.health import http_get, origin
from lf.daemon.process import tree_memory
from lf.daemon.records import GATEWAY_RUNTIME, RuntimeRecord, StateStore

PS_VERSION = 1
HEALTH_TIMEOUT = 1.0


@dataclass(frozen=True)
class Running:
    name: str
    project: str | None
    runtime: str
    model: str | None
    state: str
    pid: int | None
    port: int | None
    base_url: str | None
    memory_bytes: int | None  # resident memory of the process and its descendants
    started_at: float | None
    expires_at: float | None  # when the project's gateway will unload it for idleness
    until: str  # in words: "in 4m12s", "forever", "in use", "-"

    def to_dict(self, now: float) -> dict:
        return {
            "name": self.name,
            "project": self.project,
            "runtime": self.runtime,
            "model": self.model,
            "state": self.state,
            "pid": self.pid,
            "port": self.port,
            "base_url": self.base_url,
            "memory_bytes": self.memory_bytes,
            "started_at": _iso(self.started_at),
            "uptime_s": round(now - self.started_at, 1) if self.started_at else None,
            "expires_at": _iso(self.expires_at),
            "expires_in_s": round(max(self.expires_at - now, 0.0), 1) if self.expires_at else None,
            "until": self.until,
        }


@dataclass(frozen=True)
class PsReport:
    instances: list[Running]
    gateways: list[str]  # the base URLs of the gateways that said when they unload their models
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        now = time.time()
        return {
            "version": PS_VERSION,
            "gateways": self.gateways,
            "instances": [i.to_dict(now) for i in self.instances],
        }


def running(project, store: StateStore, *, all_projects: bool = False, probe_timeout: float = 1.0) -> PsReport:
    """The live instances of the project (or of every project), with memory and expiry."""
    report = collect(None, project, store, probe_timeout, all_projects=all_projects)
    live = [i for i in report.instances if i.state.is_alive and i.record is not None]
    warnings = list(report.warnings)
    expiries: dict[tuple, dict] = {}  # (project, instance) → its component in that project's gateway's /health
    asked: list[str] = []
    for inst in live:
        record = inst.record
        if record is None or record.runtime != GATEWAY_RUNTIME:
            continue
        components = _components(record, gateway_key(project) if inst.project == store.project else None)
        if components is None:
            warnings.append(f"Warning: the gateway at {record.base_url} did not say when it unloads its models")
            continue
        asked.append(record.base_url)
        for name, component in components.items():
            expiries.setdefault((inst.project, name), component)
    pids = {i.record.pid for i in live if i.record is not None}
    rows = []
    for inst in live:
        record = inst.record
        assert record is not None
        expires, until = _expiry(expiries.get((inst.project, inst.name)))
        rows.append(
            Running(
                name=inst.name,
                project=inst.project,
                runtime=inst.runtime,
                model=record.model,
                state=inst.state.value,
                pid=record.pid,
                port=record.port,
                base_url=record.base_url,
                memory_bytes=tree_memory(record.pid, exclude=pids - {record.pid}),
                started_at=record.started_at,
                expires_at=expires,
                until=until,
            )
        )
    return PsReport(rows, asked, warnings)


def _components(record: RuntimeRecord, api_key: str | None) -> dict[str, dict] | None:
    """The gateway's /health components by name; None when it does not answer (or refuses us)."""
    try:
        code, body = http_get(origin(record.base_url) + "/health", HEALTH_TIMEOUT, api_key)
        document = json.loads(body)
    except (OSError, ValueError):
        return None
    if code not in (200, 503) or not isinstance(document, dict):  # 503: every model unhealthy, still an answer
        return None
    components = document.get("components")
    if not isinstance(components, list):
        return None
    return {c["name"]: c for c in components if isinstance(c, dict) and isinstance(c.get("name"), str)}


def _expiry(component: dict | None) -> tuple[float | None, str]:
    """(when, in words) the gateway will unload an instance, from its /health component."""
    if component is None or not component.get("owned"):
        return None, "-"  # not the gateway's to unload: it runs until stopped
    expires = _parse_iso(component.get("expires_at"))
    if expires is not None:
        return expires, "in " + duration(max(expires - time.time(), 0.0))
    if component.get("ttl_s") is None:
        return None, "forever"  # keep_loaded, or idle_ttl 0
    if component.get("in_flight"):
        return None, "in use"  # the countdown starts when its last request ends
    return None, "-"


def _parse_iso(text) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _iso(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts)) if ts is not None else None


def duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
