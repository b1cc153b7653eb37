"""The one owner of every model's instance while the gateway runs: on-demand start, idle unload,
least-recently-used eviction past the loaded-model budget, and the queue when every instance is busy.

Each managed model entry has a Slot in an explicit state; every change of state happens here, on the
event loop, and is checked against TRANSITIONS (llama-swap keeps its upstreams the same way; its
TTL-versus-request race was fixed by deciding "start or not" inside that state machine, as `acquire`
does). Blocking work (starting and stopping processes) runs in worker threads through lf.core.actions,
and one start serves every request that waits for it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from enum import Enum

import anyio

from lf.config.project import ModelEntry, Project
from lf.core import actions
from lf.core.events import Endpoint
from lf.errors import LfError, NotInstalledError
from lf.gateway.settings import GatewayConfig


class SlotState(str, Enum):
    UNLOADED = "idle-unloaded"  # no process: started on the next request
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    CRASHED = "crashed"  # died, or failed to start: the next request starts it again


TRANSITIONS = {
    SlotState.UNLOADED: {SlotState.STARTING, SlotState.RUNNING},  # RUNNING: adopted, or started by someone else
    SlotState.STARTING: {SlotState.RUNNING, SlotState.CRASHED},
    SlotState.RUNNING: {SlotState.STOPPING, SlotState.CRASHED, SlotState.UNLOADED},  # UNLOADED: stopped by someone else
    SlotState.STOPPING: {SlotState.UNLOADED},
    SlotState.CRASHED: {SlotState.STARTING, SlotState.RUNNING, SlotState.UNLOADED},
}


class StartFailed(LfError):
    """Starting the model's instance failed: every request that waited for it gets this."""


class QueueFull(LfError):
    """Every loaded instance is busy and the queue is at its bound."""


class QueueTimeout(LfError):
    """A request waited for room longer than queue_timeout."""


@dataclass
class Slot:
    entry: ModelEntry
    ttl: float | None  # None: never unloaded for idleness
    state: SlotState = SlotState.UNLOADED
    endpoint: Endpoint | None = None
    owned: bool = False  # started by a gateway (this one or one before it): this one may stop it
    in_flight: int = 0
    awaiting_start: int = 0  # requests waiting for its start: it is theirs, not idle, once it runs
    last_used: float = 0.0  # monotonic: when the last request began or ended (for least-recently-used)
    expires_at: float | None = None  # wall clock: when it will be unloaded if nothing comes
    last_error: str | None = None
    start_task: asyncio.Task | None = None
    stop_task: asyncio.Task | None = None
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def busy(self) -> bool:
        """Answering a request, or about to (a request waits for its start)."""
        return self.in_flight > 0 or self.awaiting_start > 0

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def loaded(self) -> bool:
        return self.state in (SlotState.STARTING, SlotState.RUNNING, SlotState.STOPPING)


class Pool:
    def __init__(
        self,
        project: Project | None,
        config: GatewayConfig,
        entries: list[ModelEntry],
        hooks: PoolHooks | None = None,
    ):
        self.project = project
        self.config = config
        self.slots = {e.name: Slot(e, config.ttl_of(e)) for e in entries if e.managed}
        self.hooks = hooks or PoolHooks()
        self.waiting = 0  # requests queued for room
        self._room = asyncio.Event()  # set (and replaced) whenever room may have been made
        self._closing = False

    # -- state changes: every one goes through here ------------------------------------------------
    def _set(self, slot: Slot, state: SlotState) -> None:
        if state != slot.state and state not in TRANSITIONS[slot.state]:
            raise RuntimeError(f"{slot.name}: the gateway cannot go from {slot.state.value} to {state.value}")
        slot.state = state
        if state != SlotState.RUNNING:
            self._cancel_expiry(slot)
        if state in (SlotState.UNLOADED, SlotState.CRASHED):
            slot.endpoint = None
            self._wake_waiters()
        self.hooks.changed(slot)

    def _wake_waiters(self) -> None:
        self._room.set()
        self._room = asyncio.Event()

    # -- adoption ------------------------------------------------------------------------------------
    async def adopt(self) -> None:
        """Take over the instances that are already running: a gateway's own from before a kill -9 (their
        TTL applies again), and ones `lf runtime start` made (used, never stopped)."""
        for slot in self.slots.values():
            endpoint = await anyio.to_thread.run_sync(actions.running, slot.entry, self.project)
            if endpoint is not None:
                self._running(slot, endpoint)

    def _running(self, slot: Slot, endpoint: Endpoint) -> None:
        slot.endpoint = endpoint
        slot.owned = endpoint.record is not None and endpoint.record.owner == "gateway"
        slot.last_used = time.monotonic()
        slot.last_error = None
        self._set(slot, SlotState.RUNNING)
        self._schedule_expiry(slot)
        self._wake_waiters()  # running and idle, it may be the one to make room (if its own request went away)

    # -- requests ------------------------------------------------------------------------------------
    async def acquire(self, slot: Slot) -> Endpoint:
        """The endpoint to send one request to, starting the instance if needed. The caller must call
        release(slot) once the response is finished (or abandoned)."""
        while True:
            if self._closing:
                raise LfError("the gateway is shutting down")
            if slot.state == SlotState.RUNNING:
                # decided here, with no await before the count goes up: an expiry that fires later
                # sees the request in flight, one that fired earlier has made the state STOPPING
                slot.in_flight += 1
                slot.last_used = time.monotonic()
                self._cancel_expiry(slot)
                self.hooks.changed(slot)
                return slot.endpoint
            if slot.state == SlotState.STARTING:
                # counted until this request takes it: a queued request woken by the same start must not
                # see it idle and evict it first (which one runs first is up to the event loop)
                slot.awaiting_start += 1
                try:
                    await asyncio.shield(slot.start_task)
                except BaseException:
                    slot.awaiting_start -= 1
                    if slot.state == SlotState.RUNNING and not slot.busy:  # its requests went away: idle now
                        self._schedule_expiry(slot)
                        self._wake_waiters()
                    raise
                slot.awaiting_start -= 1  # and taken at once, below: no await in between
            elif slot.state == SlotState.STOPPING:
                await asyncio.wait([slot.stop_task])  # how the stop went is not this request's concern
            else:
                await self._make_room(slot)
                if slot.state in (SlotState.UNLOADED, SlotState.CRASHED):
                    self._begin_start(slot)

    async def refresh(self, slot: Slot) -> None:
        """Take in an instance started outside the gateway since it looked (lf runtime start): it is used,
        shown and stoppable, never unloaded for idleness (not owned)."""
        if slot.state in (SlotState.UNLOADED, SlotState.CRASHED) and not self._closing:
            endpoint = await anyio.to_thread.run_sync(actions.running, slot.entry, self.project)
            if endpoint is not None and slot.state in (SlotState.UNLOADED, SlotState.CRASHED):
                self._running(slot, endpoint)

    async def start_now(self, slot: Slot) -> None:
        """Start it (or find it running) as a request would, room made the same way, without a request."""
        await self.acquire(slot)
        self.release(slot)  # idle from now: its TTL runs

    async def stop_now(self, slot: Slot, reason: str) -> None:
        """Stop it now, whoever started it (a start in progress finishes first; requests in flight end)."""
        while slot.state in (SlotState.STARTING, SlotState.STOPPING):
            task = slot.start_task if slot.state == SlotState.STARTING else slot.stop_task
            await asyncio.wait([task])
        if slot.state == SlotState.RUNNING:
            self._begin_stop(slot, reason)
            await asyncio.wait([slot.stop_task])

    def release(self, slot: Slot) -> None:
        slot.in_flight -= 1
        slot.last_used = time.monotonic()
        if slot.in_flight == 0:
            self._schedule_expiry(slot)
            self._wake_waiters()
        self.hooks.changed(slot)

    def crashed(self, slot: Slot, reason: str) -> None:
        """The instance died under the gateway (seen by the monitor, or by a refused connection)."""
        if slot.state == SlotState.RUNNING:
            slot.last_error = reason
            self._set(slot, SlotState.CRASHED)

    def gone(self, slot: Slot) -> None:
        """Stopped by someone else (lf runtime stop): nothing crashed, it is just not loaded any more."""
        if slot.state == SlotState.RUNNING:
            self._set(slot, SlotState.UNLOADED)

    # -- room: the loaded-model budget and the queue ---------------------------------------------------
    def loaded_count(self) -> int:
        """Instances the gateway started that hold (or are about to hold, or still hold) memory."""
        return sum(1 for s in self.slots.values() if s.loaded and (s.owned or s.state == SlotState.STARTING))

    async def _make_room(self, slot: Slot) -> None:
        limit = self.config.max_loaded
        deadline = time.monotonic() + self.config.queue_timeout
        queued = False
        try:
            while limit and self.loaded_count() >= limit and slot.state in (SlotState.UNLOADED, SlotState.CRASHED):
                victim = self._least_recently_used_idle(exclude=slot)
                if victim is not None:
                    self._begin_stop(victim, "evicted")
                    await asyncio.wait([victim.stop_task])
                    continue
                if not queued:
                    if self.waiting >= self.config.max_queue:
                        raise QueueFull(
                            f"every loaded model is busy and {self.waiting} requests are waiting already",
                            hint="retry later",
                        )
                    queued = True
                    self.waiting += 1
                    self.hooks.changed(slot)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueTimeout(
                        f"waited {self.config.queue_timeout:g}s for a loaded model to become idle",
                        hint="retry later, or raise max_loaded",
                    )
                room = self._room
                try:
                    await asyncio.wait_for(room.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
        finally:
            if queued:
                self.waiting -= 1
                self.hooks.changed(slot)

    def _least_recently_used_idle(self, exclude: Slot) -> Slot | None:
        idle = [
            s
            for s in self.slots.values()
            if s is not exclude and s.state == SlotState.RUNNING and s.owned and not s.busy and not s.entry.keep_loaded
        ]
        return min(idle, key=lambda s: s.last_used) if idle else None

    # -- start and stop (in worker threads, through the core) ----------------------------------------
    def _begin_start(self, slot: Slot) -> None:
        self._set(slot, SlotState.STARTING)
        slot.start_task = asyncio.get_running_loop().create_task(self._start(slot))
        slot.start_task.add_done_callback(_retrieve)  # failures reach the waiters; none left unread

    async def _start(self, slot: Slot) -> None:
        started = time.monotonic()
        try:
            endpoint = await anyio.to_thread.run_sync(self._ensure_running, slot.entry)
        except BaseException as exc:
            message = exc.message if isinstance(exc, LfError) else f"{type(exc).__name__}: {exc}"
            hint = exc.hint if isinstance(exc, LfError) else None
            slot.last_error = message + (f"\n{hint}" if hint else "")
            self._set(slot, SlotState.CRASHED)
            self.hooks.start_failed(slot)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise StartFailed(f"{slot.name} could not be started: {message}", hint=hint) from None
        self._running(slot, endpoint)
        self.hooks.started(slot, time.monotonic() - started)

    def _ensure_running(self, entry: ModelEntry) -> Endpoint:
        try:
            return actions.ensure_running(entry, self.project, owner="gateway", timeout=self.config.start_timeout)
        except NotInstalledError as exc:
            from lf.models.hub import (
                ModelNotPulledError,
                pull,
            )  # only now: a start that succeeds never loads the Hub code

            if not self.config.pull or not isinstance(exc, ModelNotPulledError):
                raise

            print(f"lf-serve: pulling {exc.ref} for {entry.name} (pull is on)", file=sys.stderr, flush=True)
            pull(exc.ref)
            return actions.ensure_running(entry, self.project, owner="gateway", timeout=self.config.start_timeout)

    def _begin_stop(self, slot: Slot, reason: str) -> None:
        self._set(slot, SlotState.STOPPING)
        slot.stop_task = asyncio.get_running_loop().create_task(self._stop(slot, reason))
        slot.stop_task.add_done_callback(_retrieve)

    async def _stop(self, slot: Slot, reason: str) -> None:
        pid = slot.endpoint.record.pid if slot.endpoint and slot.endpoint.record else None
        try:
            await anyio.to_thread.run_sync(lambda: actions.stop_instance(slot.name, self.project, only_pid=pid))
        finally:
            self._set(slot, SlotState.UNLOADED)
            self.hooks.stopped(slot, reason)

    # -- idle unload ---------------------------------------------------------------------------------
    def _schedule_expiry(self, slot: Slot) -> None:
        self._cancel_expiry(slot)
        if slot.ttl is None or not slot.owned or slot.state != SlotState.RUNNING or slot.busy:
            return
        slot.expires_at = time.time() + slot.ttl
        slot.expiry = asyncio.get_running_loop().call_later(slot.ttl, self._expire, slot)

    def _cancel_expiry(self, slot: Slot) -> None:
        if slot.expiry is not None:
            slot.expiry.cancel()
            slot.expiry = None
        slot.expires_at = None

    def _expire(self, slot: Slot) -> None:
        slot.expiry = None
        if slot.state == SlotState.RUNNING and not slot.busy and slot.owned and not self._closing:
            self._begin_stop(slot, "idle")

    # -- shutdown ------------------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop every instance a gateway started (after any start in progress); leave the others alone."""
        self._closing = True
        for slot in self.slots.values():
            self._cancel_expiry(slot)
        pending = [s.start_task for s in self.slots.values() if s.start_task is not None and not s.start_task.done()]
        if pending:
            await asyncio.wait(pending)
        for slot in self.slots.values():
            if slot.state == SlotState.RUNNING and slot.owned:
                self._begin_stop(slot, "shutdown")
        stops = [s.stop_task for s in self.slots.values() if s.stop_task is not None and not s.stop_task.done()]
        if stops:
            await asyncio.wait(stops)
        self._wake_waiters()


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


class PoolHooks:
    """What the pool tells the rest of the gateway (metrics, /health); every method may be left as is."""

    def changed(self, slot: Slot) -> None:
        pass

    def started(self, slot: Slot, seconds: float) -> None:
        pass

    def start_failed(self, slot: Slot) -> None:
        pass

    def stopped(self, slot: Slot, reason: str) -> None:
        pass
