"""Health of every model, probed in the background; /health answers from the last probes, so a slow or
hung runtime never slows it down, however many there are. What a probe finds of a live instance (gone, frozen,
answering or not) goes to the pool, which owns the state."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx

from lf.core.targets import target_of
from lf.daemon.health import Health, Probe, interpret, origin
from lf.daemon.records import StateStore
from lf.daemon.states import State
from lf.gateway.pool import SERVING, Pool, Slot
from lf.models.gguf_meta import human_bytes

PROBE_TIMEOUT = 2.0
log = logging.getLogger(__name__)


class Monitor:
    def __init__(
        self,
        pool: Pool,
        store: StateStore,
        interval: float,
        client: httpx.AsyncClient,
        on_probe: Callable[[Slot, Health], None] | None = None,
        on_probed: Callable[[], None] | None = None,
        peers=None,
        routers=None,
    ):
        self.pool = pool
        self.store = store
        self.interval = interval
        self.client = client
        self.on_probe = on_probe  # after each probe (the metrics)
        self.on_probed = on_probed  # after each round of probes (the dashboard's pages update)
        self.peers = peers  # lf.gateway.peers.Peers: probed in the same rounds
        self.routers = routers  # lf.gateway.routers.Routers: their counts, in /health
        self._external: dict[str, tuple] = {}  # name → (its entry, its probe): made again when a reload changes it

    async def run(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.interval)

    async def probe_all(self) -> None:
        rounds = [self._probe(slot) for slot in list(self.pool.slots.values()) if slot.peer is None]
        if self.peers is not None:
            rounds.append(self.peers.probe_all())
        await asyncio.gather(*rounds)
        if self.on_probed is not None:
            self.on_probed()

    async def _probe(self, slot: Slot) -> None:
        if slot.managed:
            await self.pool.refresh(slot)  # started by lf runtime start since: report it as running
        probe = self._probe_of(slot)
        if probe is None:
            return
        record = slot.endpoint.record if slot.managed and slot.endpoint else None
        if record is not None:
            if not record.process_alive():
                self._lost(slot, record)
                slot.health = None
                return
            assert slot.endpoint is not None
            self.pool.measured(slot, await self.pool.effects.measure(slot.endpoint))
            if record.process_frozen():  # a probe would only time out
                self.pool.observed(slot, frozen=True, health=None)
                return
        health = await self._get(probe, min(PROBE_TIMEOUT, max(self.interval, 0.2)))
        slot.health = health
        if health.latency_ms is not None and health.reachable:
            slot.latencies.append(health.latency_ms)
        if self.on_probe is not None:
            self.on_probe(slot, health)
        if slot.managed:
            self.pool.observed(slot, frozen=False, health=health)

    def _probe_of(self, slot: Slot) -> Probe | None:
        if not slot.managed:
            return self._external_probe(slot)
        record = slot.endpoint.record if slot.endpoint else None
        live = slot.state in (*SERVING, State.FROZEN)
        return record.health_probe() if record is not None and live else None

    def _external_probe(self, slot: Slot) -> Probe:
        known = self._external.get(slot.name)
        if known is None or known[0] is not slot.entry:
            target = target_of(slot.entry)
            runtime = target.runtime
            base = target.base_url or ""
            url = origin(base) + runtime.health_path if runtime.health_path else base + "/models"
            known = (slot.entry, Probe(url, runtime.health_ready, target.api_key))
            self._external[slot.name] = known
        return known[1]

    def _lost(self, slot: Slot, record) -> None:
        from lf.files import read_tail

        if self.store.load_or_none(slot.name) is None:
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
        components = [component(slot) for slot in self.pool.slots.values()]
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
        budget, used = self.pool.budget, self.pool.used()
        document = {
            "status": overall,
            "summary": f"{healthy} of {len(components)} models healthy; {loaded} loaded"
            + (f" of at most {limit}" if limit else "")
            + f"; {human_bytes(used.ram)} of {human_bytes(budget.ram)} memory",
            "timestamp": _iso(time.time()),
            "components": components,
            "peers": [state.to_dict() for state in self.peers.states.values()] if self.peers else [],
            "routers": self.routers.document() if self.routers else [],
            "gateway": {
                "loaded": loaded,
                "max_loaded": limit,
                "queued": self.pool.waiting,
                "memory_budget_bytes": budget.ram,
                "memory_used_bytes": used.ram,
                "vram_budget_bytes": budget.vram,
                "vram_used_bytes": used.vram if budget.vram is not None else None,
            },
        }
        return document, 503 if overall == "unhealthy" else 200


# What /health says of a model in each state (its "status" and its "message"), besides the state's own word.
_ABOUT = {
    State.IDLE: ("healthy", "idle: started on the next request"),
    State.STARTING: ("degraded", "starting"),
    State.STOPPING: ("degraded", "stopping"),
    State.FROZEN: ("unhealthy", "frozen: its process is stopped by a signal (kill -CONT resumes it)"),
}


def component(slot: Slot) -> dict:
    """One model as /health reports it."""
    last = slot.health
    lat = sorted(slot.latencies)
    endpoint = slot.endpoint
    item: dict = {
        "name": slot.name,
        "status": "healthy",
        "message": "",
        "latency_ms": last.latency_ms if last else None,
        "details": {
            "host": endpoint.base_url if endpoint else None,
            "provider": slot.entry.provider,
            "models": [endpoint.model if endpoint and slot.managed else slot.entry.model],
            "model_loaded": None,
        },
        "state": slot.state.value,
        "managed": slot.managed,
        "latency_p50_ms": _percentile(lat, 0.50),
        "latency_p95_ms": _percentile(lat, 0.95),
        "probes": len(lat),
        "last_request": slot.last_request,
    }
    if slot.peer is not None:
        item.update(peer=slot.peer, in_flight=slot.in_flight, failures=slot.failures)
        item.update(status="unhealthy", message=f"down: {slot.down}") if slot.down else item.update(
            message="served by a peer"
        )
        return item
    if not slot.managed:
        if last is None:
            item.update(status="degraded", message="not probed yet")
        else:
            item.update(status="healthy" if last.healthy else "unhealthy", message=last.message)
            item["details"]["model_loaded"] = last.model_loaded
        return item
    record = endpoint.record if endpoint else None
    item.update(
        owned=slot.owned,
        pid=record.pid if record else None,
        in_flight=slot.in_flight,
        waiting=len(slot.turns),
        max_concurrent=slot.max_concurrent,
        ttl_s=slot.ttl,
        expires_at=_iso(slot.expires_at),
        context_size=record.instance.settings.get("context_size") if record else None,
        memory_bytes=slot.rss,
        memory_need_bytes=slot.need.ram if slot.need else None,
    )
    item["details"]["model_loaded"] = False
    if slot.state in SERVING:
        if last is not None and not last.healthy:
            item.update(status="unhealthy", message=last.message)
        else:
            item.update(message=last.message if last else "running")
        item["details"]["model_loaded"] = last.model_loaded if last else True
    elif slot.state == State.CRASHED:
        first, _, rest = (slot.last_error or "crashed").partition("\n")
        item.update(
            status="unhealthy", message=first + " (the next request starts it again)", log_tail=rest.splitlines()
        )
    else:
        status, message = _ABOUT[slot.state]
        item.update(status=status, message=message)
    if slot.state == State.STARTING and slot.loading is not None:
        item["loading"] = loading(slot)
        item["message"] = "starting: " + describe_loading(item["loading"])
    return item


def loading(slot: Slot) -> dict | None:
    """How far its start is: {"stage", "percent", "elapsed_s"}; None when it is not starting."""
    if slot.state != State.STARTING or slot.loading is None:
        return None
    return {
        "stage": slot.loading["stage"],
        "percent": slot.loading["percent"],
        "elapsed_s": round(max(0.0, time.time() - slot.loading["since"]), 1),
    }


def describe_loading(progress: dict) -> str:
    percent = f" {progress['percent']:.0f}%" if progress.get("percent") is not None else ""
    return f"{progress['stage']}{percent} ({progress['elapsed_s']:.0f}s)"


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[index]


def _iso(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts)) if ts is not None else None
