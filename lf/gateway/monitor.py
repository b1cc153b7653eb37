"""Health of every model, probed in the background; /health answers from the last probes, so a slow or
hung runtime never slows it down, however many there are."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import httpx

from lf.config.project import ModelEntry
from lf.core.targets import target_of
from lf.daemon.health import Health, Probe, interpret, origin
from lf.gateway.pool import Pool, Slot, SlotState

HISTORY = 20  # probes kept per model for the latency percentiles
PROBE_TIMEOUT = 2.0


@dataclass
class Component:
    """One model entry as /health reports it."""

    entry: ModelEntry
    slot: Slot | None  # None for an external endpoint
    external_url: str | None = None  # the OpenAI base of an external endpoint
    external_probe: Probe | None = None
    last: Health | None = None
    latencies: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    last_request: dict | None = None  # time to first token and tokens/s of the latest answer

    def probe(self) -> Probe | None:
        if self.slot is None:
            return self.external_probe
        record = self.slot.endpoint.record if self.slot.endpoint else None
        return record.health_probe() if record is not None and self.slot.state == SlotState.RUNNING else None


class Monitor:
    def __init__(
        self, pool: Pool, entries: list[ModelEntry], interval: float, metrics, client: httpx.AsyncClient, on_probed=None
    ):
        self.pool = pool
        self.on_probed = on_probed  # after each round of probes (the dashboard's pages update)
        self.interval = interval
        self.metrics = metrics
        self.client = client
        self.components: dict[str, Component] = {}
        for entry in entries:
            if entry.name in pool.slots:
                self.components[entry.name] = Component(entry, pool.slots[entry.name])
            else:
                target = target_of(entry)
                runtime = target.runtime
                url = (
                    origin(target.base_url) + runtime.health_path
                    if runtime.health_path
                    else target.base_url + "/models"
                )
                self.components[entry.name] = Component(
                    entry, None, target.base_url, Probe(url, runtime.health_ready, target.api_key)
                )

    async def run(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.interval)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(c) for c in self.components.values()))
        if self.on_probed is not None:
            self.on_probed()

    async def _probe(self, component: Component) -> None:
        slot = component.slot
        if slot is not None:
            await self.pool.refresh(slot)  # started by lf runtime start since: report it as running
        if slot is not None and slot.state == SlotState.RUNNING and slot.endpoint and slot.endpoint.record:
            record = slot.endpoint.record
            if not record.process_alive():
                self._lost(slot, record)
                component.last = None
                return
        probe = component.probe()
        if probe is None:
            return
        health = await self._get(probe, min(PROBE_TIMEOUT, max(self.interval, 0.2)))
        component.last = health
        if health.latency_ms is not None and health.reachable:
            component.latencies.append(health.latency_ms)
            self.metrics.probe_latency.labels(component.entry.name).observe(health.latency_ms / 1000)
        if not health.healthy:
            self.metrics.probe_failures.labels(component.entry.name).inc()

    def _lost(self, slot: Slot, record) -> None:
        from lf.daemon.records import StateStore
        from lf.files import read_tail

        if StateStore.of(self.pool.project).load_or_none(slot.name) is None:
            self.pool.gone(slot)  # someone stopped it (lf runtime stop): not a crash
        else:
            self.pool.crashed(slot, f"its process (pid {record.pid}) exited\n{read_tail(record.log_path, 10)}")

    async def _get(self, probe: Probe, timeout: float) -> Health:
        headers = {"Authorization": f"Bearer {probe.api_key}"} if probe.api_key else {}
        started = time.perf_counter()
        try:
            response = await self.client.get(probe.url, headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            return Health(False, False, None, None, f"no answer within {timeout:g}s")
        except httpx.ConnectError:
            return Health(False, False, None, None, "connection refused")
        except httpx.HTTPError as exc:
            return Health(False, False, None, None, str(exc) or type(exc).__name__)
        latency = round((time.perf_counter() - started) * 1000, 1)
        return interpret(probe.ready, response.status_code, response.content, latency)

    # -- /health -------------------------------------------------------------------------------------
    def document(self) -> tuple[dict, int]:
        components = [self._component(c) for c in self.components.values()]
        statuses = [c["status"] for c in components]
        healthy = statuses.count("healthy")
        if not components or healthy == len(components):
            overall = "healthy"
        elif "healthy" not in statuses and "degraded" not in statuses:
            overall = "unhealthy"
        else:
            overall = "degraded"
        loaded = self.pool.loaded_count()
        limit = self.pool.config.max_loaded
        document = {
            "status": overall,
            "summary": f"{healthy} of {len(components)} models healthy; {loaded} loaded"
            + (f" of at most {limit}" if limit else ""),
            "timestamp": _iso(time.time()),
            "components": components,
            "gateway": {"loaded": loaded, "max_loaded": limit, "queued": self.pool.waiting},
        }
        return document, 503 if overall == "unhealthy" else 200

    def _component(self, c: Component) -> dict:
        slot, last = c.slot, c.last
        lat = sorted(c.latencies)
        item: dict = {
            "name": c.entry.name,
            "status": "healthy",
            "message": "",
            "latency_ms": last.latency_ms if last else None,
            "details": {
                "host": c.external_url if slot is None else (slot.endpoint.base_url if slot.endpoint else None),
                "provider": c.entry.provider,
                "models": [c.entry.model],
                "model_loaded": None,
            },
            "state": "external" if slot is None else slot.state.value,
            "managed": slot is not None,
            "latency_p50_ms": _percentile(lat, 0.50),
            "latency_p95_ms": _percentile(lat, 0.95),
            "probes": len(lat),
            "last_request": c.last_request,
        }
        if slot is None:
            if last is None:
                item.update(status="degraded", message="not probed yet")
            else:
                item.update(status="healthy" if last.healthy else "unhealthy", message=last.message)
                item["details"]["model_loaded"] = last.model_loaded
            return item
        record = slot.endpoint.record if slot.endpoint else None
        item.update(
            owned=slot.owned,
            pid=record.pid if record else None,
            in_flight=slot.in_flight,
            ttl_s=slot.ttl,
            expires_at=_iso(slot.expires_at),
        )
        if slot.state == SlotState.RUNNING:
            if last is not None and not last.healthy:
                item.update(status="unhealthy", message=last.message)
            else:
                item.update(message=last.message if last else "running")
            item["details"]["model_loaded"] = last.model_loaded if last else True
            item["details"]["models"] = [slot.endpoint.model]
        elif slot.state == SlotState.UNLOADED:
            item.update(message="idle: started on the next request")
            item["details"]["model_loaded"] = False
        elif slot.state == SlotState.CRASHED:
            first, _, rest = (slot.last_error or "crashed").partition("\n")
            item.update(
                status="unhealthy", message=first + " (the next request starts it again)", log_tail=rest.splitlines()
            )
            item["details"]["model_loaded"] = False
        else:
            item.update(status="degraded", message=slot.state.value)
            item["details"]["model_loaded"] = False
        return item


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[index]


def _iso(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts)) if ts is not None else None
