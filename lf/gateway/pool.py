"""The one owner of every model's state while the gateway runs: on-demand start, idle unload, least-recently-used
eviction past the loaded-model budget, and the queue when every instance is busy.

Each model entry has a Slot in one of lf's states (lf.daemon.states.State: idle, starting, running, unhealthy,
frozen, stopping, crashed; external for an endpoint lf does not run). Every change of state happens here, on the
event loop, and is checked against the one transition table (llama-swap keeps its upstreams the same way; its
TTL-versus-request race was fixed by deciding "start or not" inside that state machine, as `acquire` does). What
the pool does to the world (start, stop, look, the clock) goes through lf.gateway.effects, so every decision is
tested with a fake; one start serves every request that waits for it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from lf.config.gateway import GatewayConfig
from lf.config.project import ModelEntry
from lf.core.events import Endpoint
from lf.daemon.health import Health
from lf.daemon.states import State, check_transition
from lf.errors import ExitStatus, LfError
from lf.gateway.effects import Effects, Timer
from lf.gateway.events import EventBus, QueueChanged, SlotChanged, Started, StartFailed, StateChanged, Stopped
from lf.models.budget import NOTHING, Budget, Need

HISTORY = 20  # health probes kept per model for the latency percentiles
FAILURES_OUT = 3  # answers failed before their first byte, in a row, that take a place out until it is probed
SERVING = (State.RUNNING, State.UNHEALTHY)  # a request may go to an instance in these states
LOADED = (State.STARTING, State.RUNNING, State.UNHEALTHY, State.FROZEN, State.STOPPING)  # holds (or will) memory
NOT_LOADED = (State.IDLE, State.CRASHED)  # the next request starts it


class CouldNotStart(LfError):
    """Starting the model's instance failed: every request that waited for it gets this."""

    exit_status = ExitStatus.START_FAILED


class QueueFull(LfError):
    """Every loaded instance is busy and the queue is at its bound."""


class QueueTimeout(LfError):
    """A request waited for room longer than queue_timeout."""


class Frozen(LfError):
    """The instance's process is stopped by a signal: a request would wait forever."""


class TooLarge(LfError):
    """The model cannot fit in the memory budget even alone: nothing is started, nothing evicted."""


class Unreachable(LfError):
    """Every place that serves the model is down (a peer that does not answer)."""


class TooBusy(LfError):
    """The model has max_concurrent requests in flight and max_queue waiting: come back later (429)."""


@dataclass(eq=False)
class Slot:
    """One model entry while the gateway runs: its state, its instance, its requests and its health history."""

    entry: ModelEntry
    ttl: float | None  # None: never unloaded for idleness
    state: State = State.IDLE
    endpoint: Endpoint | None = None  # where its requests go (an external entry's is fixed)
    owned: bool = False  # started by a gateway (this one or one before it): this one may stop it
    in_flight: int = 0
    awaiting_start: int = 0  # requests waiting for its start: it is theirs, not idle, once it runs
    last_used: float = 0.0  # monotonic: when the last request began or ended (for least-recently-used)
    expires_at: float | None = None  # wall clock: when it will be unloaded if nothing comes
    last_error: str | None = None
    need: Need | None = None  # what it holds (or will) of the memory budget: estimated, then measured
    rss: int | None = None  # its process tree's resident memory, as last measured
    loading: dict | None = None  # while it starts: {"stage", "percent", "since"} (wall clock)
    estimate: Need | None = None  # lf's estimate for the instance it runs (or starts)
    room: int | None = None  # the memory its next start may take (what `context_size: auto` fits in)
    max_concurrent: int | None = None  # requests sent to it at once (None: no limit)
    max_queue: int = 64  # requests that may wait for it beyond those
    turns: deque = field(default_factory=deque, repr=False)  # futures of the requests waiting, first come first
    handed: int = 0  # turns handed to waiting requests that have not taken them yet
    embeddings: bool | None = None  # serves /v1/embeddings (False: its runtime has them off; None: cannot tell)
    peer: str | None = None  # the peer gateway (or server) that serves it, for a model of a peer
    down: str | None = None  # a peer that does not answer: why (its models get 503 until it answers again)
    failures: int = 0  # answers that failed before their first byte, in a row (K of them: taken out until probed)
    replacement: ModelEntry | None = None  # llamafarm.yaml changed it: it restarts with this once its requests end
    retired: bool = False  # llamafarm.yaml no longer has it: it stops once its requests end, then goes
    start_task: asyncio.Task | None = field(default=None, repr=False)
    stop_task: asyncio.Task | None = field(default=None, repr=False)
    expiry: Timer | None = field(default=None, repr=False)
    # what the monitor saw (lf.gateway.monitor) and the latest answer (lf.gateway.app)
    health: Health | None = None
    latencies: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    last_request: dict | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def managed(self) -> bool:
        return self.state != State.EXTERNAL

    @property
    def busy(self) -> bool:
        """Answering a request, or about to (a request waits for its start)."""
        return self.in_flight > 0 or self.awaiting_start > 0

    @property
    def loaded(self) -> bool:
        return self.state in LOADED


class Pool:
    def __init__(
        self,
        config: GatewayConfig,
        entries: list[ModelEntry],
        effects: Effects,
        events: EventBus | None = None,
        external: dict[str, Endpoint] | None = None,
    ):
        self.config = config
        self.effects = effects
        self.events = events or EventBus()
        self.budget: Budget = effects.budget()
        self.slots: dict[str, Slot] = {e.name: self._new_slot(e, (external or {}).get(e.name)) for e in entries}
        self.leaving: list[Slot] = []  # replaced by a reload (another kind of entry took the name): draining
        self.waiting = 0  # requests queued for room
        self._room = asyncio.Event()  # set (and replaced) whenever room may have been made
        self._closing = False

    def _limit(self, slot: Slot) -> None:
        entry = slot.entry
        slot.embeddings = self.effects.embeddings(entry) if slot.managed else None
        slots = self.effects.slots(entry) if slot.managed else None
        default = slots * 2 if slots else None
        slot.max_concurrent = entry.max_concurrent if entry.max_concurrent is not None else default
        slot.max_queue = entry.max_queue if entry.max_queue is not None else self.config.max_queue

    # -- state changes: every one goes through here ------------------------------------------------
    def _set(self, slot: Slot, state: State) -> None:
        old = slot.state
        slot.state = check_transition(old, state)
        if state not in SERVING:
            self._cancel_expiry(slot)
        if state != State.STARTING:
            slot.loading = None
        if state in NOT_LOADED:
            slot.endpoint = None
            slot.need = slot.estimate = slot.rss = None
            self._wake_waiters()
        if state != old:
            self.events.emit(StateChanged(slot.name, old, state))
        self._changed(slot)

    def _changed(self, slot: Slot) -> None:
        self.events.emit(SlotChanged(slot.name))

    def _wake_waiters(self) -> None:
        self._room.set()
        self._room = asyncio.Event()

    # -- adoption ------------------------------------------------------------------------------------
    async def adopt(self) -> None:
        """Take over the instances that are already running: a gateway's own from before a kill -9 (their
        TTL applies again), and ones `lf runtime start` made (used, never stopped)."""
        for slot in self.managed():
            endpoint = await self.effects.running(slot.entry)
            if endpoint is not None and slot.state in NOT_LOADED:
                self._running(slot, endpoint)

    def managed(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.managed]

    def _running(self, slot: Slot, endpoint: Endpoint) -> None:
        slot.endpoint = endpoint
        slot.owned = endpoint.record is not None and endpoint.record.instance.owner == "gateway"
        slot.last_used = self.effects.now()
        slot.last_error = None
        self._set(slot, State.RUNNING)
        self._schedule_expiry(slot)
        self._wake_waiters()  # running and idle, it may be the one to make room (if its own request went away)
        measuring = asyncio.get_running_loop().create_task(self._measure(slot, endpoint))
        measuring.add_done_callback(_retrieve)  # its memory now, not at the monitor's next round

    async def _measure(self, slot: Slot, endpoint: Endpoint) -> None:
        rss = await self.effects.measure(endpoint)
        if slot.endpoint is endpoint:
            self.measured(slot, rss)
            self._changed(slot)

    # -- requests ------------------------------------------------------------------------------------
    async def acquire(self, slot: Slot) -> Endpoint:
        """The endpoint to send one request to, starting the instance if needed. The caller must call
        release(slot) once the response is finished (or abandoned)."""
        woken = False  # this request was handed a turn (the model's max_concurrent): it may take it
        while True:
            serving = slot.state == State.EXTERNAL or slot.state in SERVING
            if woken and not serving:  # the model went away while it waited: its turn goes on to the next
                self._pass_turn(slot)
                woken = False
            if self._closing:
                raise LfError("the gateway is shutting down")
            if slot.retired:
                raise LfError(f"{slot.name} is no longer in llamafarm.yaml")
            if slot.down is not None:
                raise Unreachable(f"{slot.name} is down: {slot.down}", hint="it is tried again at every probe")
            if serving and slot.replacement is not None:  # its settings changed: the restart comes first
                await self._restart_for(slot)
                continue
            if serving:
                if not woken and self._over_limit(slot):
                    woken = await self._wait_turn(slot)
                    continue  # anything may have happened meanwhile: decide again
                # decided here, with no await before the count goes up: an expiry that fires later
                # sees the request in flight, one that fired earlier has made the state STOPPING
                assert slot.endpoint is not None
                if woken:
                    slot.handed -= 1
                slot.in_flight += 1
                slot.last_used = self.effects.now()
                self._cancel_expiry(slot)
                self._changed(slot)
                return slot.endpoint
            if slot.state == State.FROZEN:
                record = slot.endpoint.record if slot.endpoint else None
                raise Frozen(
                    f"{slot.name} is frozen: its process{f' (pid {record.pid})' if record else ''} is stopped by a "
                    "signal and answers nothing",
                    hint=f"resume it with kill -CONT {record.pid if record else 'PID'}, or restart it",
                )
            if slot.state == State.STARTING:
                assert slot.start_task is not None
                # counted until this request takes it: a queued request woken by the same start must not
                # see it idle and evict it first (which one runs first is up to the event loop)
                slot.awaiting_start += 1
                try:
                    await asyncio.shield(slot.start_task)
                except BaseException:
                    slot.awaiting_start -= 1
                    if slot.state in SERVING and not slot.busy:  # its requests went away: idle now
                        self._schedule_expiry(slot)
                        self._wake_waiters()
                    raise
                slot.awaiting_start -= 1  # and taken at once, below: no await in between
            elif slot.state == State.STOPPING:
                assert slot.stop_task is not None
                await asyncio.wait([slot.stop_task])  # how the stop went is not this request's concern
            else:
                await self._admit(slot)

    # -- a model with several places (replicas, peers): the one with the fewest in flight ---------------------------
    def choose(self, places: list[Slot], exclude: tuple[Slot, ...] = ()) -> Slot:
        """Where the next request for a model goes: among its places that answer (not down, not taken out after
        FAILURES_OUT failures in a row), the one with the fewest requests in flight; else one that can be started.
        Unreachable when only places that are down remain."""
        usable = [p for p in places if p not in exclude and p.down is None and p.failures < FAILURES_OUT]
        ready = [p for p in usable if p.state == State.EXTERNAL or p.state in SERVING]
        startable = [p for p in usable if p.managed and p not in ready]
        if ready:
            for other in startable:
                if other.state in NOT_LOADED:  # keep its replicas up: started beside, for the requests after this
                    self._start_beside(other)
            return min(ready, key=lambda p: (_load(p) / (p.max_concurrent or 1), p.last_used))
        if startable:
            for other in startable[1:]:
                if other.state in NOT_LOADED:
                    self._start_beside(other)
            return min(startable, key=lambda p: (p.state != State.STARTING, _load(p)))
        reasons = "; ".join(f"{p.name}: {p.down or 'failed ' + str(p.failures) + ' times'}" for p in places)
        raise Unreachable(f"no place serving it answers ({reasons})", hint="it is retried at every probe")

    def places(self, name: str) -> list[Slot]:
        """Where requests for the model `name` (an entry's name, or PEER/MODEL) may go: the entry's instance, its
        replicas, and the peers its entry says serve it too."""
        slot = self.slots.get(name)
        if slot is None:
            return []
        found = [slot, *(s for s in self.slots.values() if s.entry.replica_of == name)]
        if slot.entry.peers:
            found += [s for s in self.slots.values() if s.peer in slot.entry.peers and s.entry.model == name]
        return found

    def peer_models(self, name: str) -> list[Slot]:
        """The places of a bare model name that peers serve (one, when it names one peer's model only)."""
        found = [s for s in self.slots.values() if s.peer is not None and s.entry.model == name]
        return found if len(found) == 1 else []

    def _start_beside(self, slot: Slot) -> None:
        task = asyncio.get_running_loop().create_task(self.start_now(slot))
        task.add_done_callback(_retrieve)

    def failed(self, slot: Slot, reason: str) -> None:
        """An answer from this place failed before its first byte: after FAILURES_OUT in a row, it is taken out
        until a probe finds it answering again."""
        slot.failures += 1
        if slot.peer is not None:
            slot.down = reason
        self._changed(slot)

    def succeeded(self, slot: Slot) -> None:
        if slot.failures:
            slot.failures = 0
            self._changed(slot)

    def set_peer(self, peer: str, url: str, api_key: str | None, models: list[str] | None, reason: str | None) -> None:
        """What a probe of a peer found: the models it serves now (each a place named PEER/MODEL), or that it is down
        (`models` None: its places answer 503 with `reason` until it is back)."""
        mine = {name: slot for name, slot in self.slots.items() if slot.peer == peer}
        if models is None:
            for slot in mine.values():
                if slot.down != reason:
                    slot.down = reason
                    self._changed(slot)
            return
        for model in models:
            name = f"{peer}/{model}"
            found = mine.pop(name, None)
            if found is not None:
                slot = found
            else:
                entry = ModelEntry(name=name, provider="openai", model=model, base_url=url, managed=False)
                slot = Slot(entry, None, State.EXTERNAL, endpoint=Endpoint(name, url, model, api_key), peer=peer)
                self._limit(slot)
                self.slots[name] = slot
            if slot.down is not None or slot.failures:
                slot.down, slot.failures = None, 0
            self._changed(slot)
        for name, slot in mine.items():  # it no longer serves them
            if not slot.busy:
                self.slots.pop(name)
            else:
                slot.down = "the peer no longer lists it"
            self._changed(slot)

    # -- per model: at most max_concurrent at once, then max_queue waiting in turn, then 429 ---------------------
    def _over_limit(self, slot: Slot) -> bool:
        limit = slot.max_concurrent
        # turns handed out and not yet taken count as taken: a newcomer never jumps the queue
        return bool(slot.turns) or (limit is not None and slot.in_flight + slot.handed >= limit)

    async def _wait_turn(self, slot: Slot) -> bool:
        if len(slot.turns) >= slot.max_queue:
            raise TooBusy(
                f"{slot.name} is answering {slot.in_flight} requests (its max_concurrent) and {len(slot.turns)} are "
                "waiting for it already",
                hint="retry after a moment (Retry-After), or raise its max_concurrent/max_queue in llamafarm.yaml",
            )
        turn = asyncio.get_running_loop().create_future()
        slot.turns.append(turn)
        self._changed(slot)
        try:
            await turn
        except BaseException:
            if turn in slot.turns:
                slot.turns.remove(turn)
            elif turn.done() and not turn.cancelled():
                self._pass_turn(slot)  # handed a turn as it went away: the next one in line gets it
            raise
        return True

    def _pass_turn(self, slot: Slot) -> None:
        """A turn handed out and not taken goes to the next in line."""
        slot.handed -= 1
        self._hand_turns(slot)

    def _hand_turns(self, slot: Slot) -> None:
        limit = slot.max_concurrent
        while slot.turns and (limit is None or slot.in_flight + slot.handed < limit):
            turn = slot.turns.popleft()
            if not turn.done():
                slot.handed += 1
                turn.set_result(None)

    def release(self, slot: Slot) -> None:
        slot.in_flight -= 1
        self._hand_turns(slot)
        slot.last_used = self.effects.now()
        if slot.in_flight == 0:
            if slot.replacement is not None or slot.retired:
                self._reconfigured(slot)
            else:
                self._schedule_expiry(slot)
            self._wake_waiters()
        self._changed(slot)

    # -- llamafarm.yaml edited: what is new comes, what is gone goes, what changed restarts; no answer is cut ------
    def reconfigure(self, entries: list[ModelEntry], external: dict[str, Endpoint]) -> dict[str, list[str]]:
        """Take the entries of an edited llamafarm.yaml. A new entry gets a slot; one that is gone takes no new
        request and, once its requests end, its instance (if the gateway started it) stops; one whose settings
        changed restarts once its requests end (new ones wait for the restart). What changed, by kind."""
        wanted = {e.name: e for e in entries}
        done: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
        for name, slot in list(self.slots.items()):
            if slot.peer is not None:
                continue  # a peer's model: its probes say what it serves, not llamafarm.yaml's entries
            entry = wanted.get(name)
            if entry is None:
                slot.retired = True
                done["removed"].append(name)
            elif entry.managed != slot.managed:  # one lf runs became one it does not, or the other way round
                slot.retired = True  # the old one drains and goes; a new slot takes the name now
                self.leaving.append(slot)
                self.slots[name] = self._new_slot(entry, external.get(name))
                done["changed"].append(name)
            elif not entry.same_as(slot.entry):
                ours = slot.owned or slot.state == State.STARTING
                if slot.managed and entry.managed and slot.loaded and ours:
                    slot.replacement = entry  # its instance runs the old settings: restarted once its requests end
                else:
                    self._replace(slot, entry, external.get(name))  # nothing runs, or not ours to restart
                done["changed"].append(name)
            else:
                slot.entry = entry  # the same settings (its line in the file may have moved)
            self._reconfigured(slot)
        for name, entry in wanted.items():
            if name not in self.slots:
                self.slots[name] = self._new_slot(entry, external.get(name))
                done["added"].append(name)
        self._wake_waiters()
        return done

    def _new_slot(self, entry: ModelEntry, external: Endpoint | None) -> Slot:
        if entry.managed:
            slot = Slot(entry, self.config.ttl_of(entry))
        else:
            slot = Slot(entry, None, State.EXTERNAL, endpoint=external)
        self._limit(slot)
        self._changed(slot)
        return slot

    def _replace(self, slot: Slot, entry: ModelEntry, external: Endpoint | None) -> None:
        slot.entry, slot.ttl, slot.replacement = entry, self.config.ttl_of(entry), None
        if not entry.managed:
            slot.endpoint = external
        self._limit(slot)
        self._changed(slot)

    def _reconfigured(self, slot: Slot) -> None:
        """Act on a pending edit once nothing holds the instance: stop what a removed or changed entry runs."""
        if slot.busy or slot.state in (State.STARTING, State.STOPPING):
            return  # its requests (or its start) come first: release and the start's end call this again
        if slot.retired:
            if slot.loaded and slot.owned and slot.state != State.STOPPING:
                self._begin_stop(slot, "removed from llamafarm.yaml")
            elif not slot.loaded or not slot.owned:
                if self.slots.get(slot.name) is slot:
                    self.slots.pop(slot.name)
                self._changed(slot)
        elif slot.replacement is not None and slot.state in (*SERVING, State.FROZEN):
            self._begin_stop(slot, "changed in llamafarm.yaml")

    async def _restart_for(self, slot: Slot) -> None:
        """A request for a model whose settings changed waits for its restart (its own requests end first)."""
        self._reconfigured(slot)
        while slot.replacement is not None and not self._closing:
            task = slot.stop_task
            if task is not None and not task.done():
                await asyncio.wait([task])
            else:
                await self._room.wait()

    async def refresh(self, slot: Slot) -> None:
        """Take in an instance started outside the gateway since it looked (lf runtime start): it is used,
        shown and stoppable, never unloaded for idleness (not owned)."""
        if slot.state in NOT_LOADED and not self._closing:
            endpoint = await self.effects.running(slot.entry)
            if endpoint is not None and slot.state in NOT_LOADED:
                self._running(slot, endpoint)

    async def start_now(self, slot: Slot) -> None:
        """Start it (or find it running) as a request would, room made the same way, without a request."""
        await self.acquire(slot)
        self.release(slot)  # idle from now: its TTL runs

    async def stop_now(self, slot: Slot, reason: str) -> None:
        """Stop it now, whoever started it (a start in progress finishes first; requests in flight end)."""
        while slot.state in (State.STARTING, State.STOPPING):
            task = slot.start_task if slot.state == State.STARTING else slot.stop_task
            assert task is not None
            await asyncio.wait([task])
        if slot.state in (*SERVING, State.FROZEN):
            self._begin_stop(slot, reason)
            assert slot.stop_task is not None
            await asyncio.wait([slot.stop_task])

    # -- what the monitor sees --------------------------------------------------------------------------
    def crashed(self, slot: Slot, reason: str) -> None:
        """The instance died under the gateway (seen by the monitor, or by a refused connection)."""
        if slot.state in (*SERVING, State.FROZEN):
            slot.last_error = reason
            self._set(slot, State.CRASHED)

    def gone(self, slot: Slot) -> None:
        """Stopped by someone else (lf runtime stop): nothing crashed, it is just not loaded any more."""
        if slot.state in (*SERVING, State.FROZEN):
            self._set(slot, State.IDLE)

    def observed(self, slot: Slot, frozen: bool, health: Health | None) -> None:
        """What a probe found of a live instance: stopped by a signal, answering, or not (past its start)."""
        if slot.state not in (*SERVING, State.FROZEN):
            return
        if frozen:
            self._set(slot, State.FROZEN)
        elif health is None or health.healthy:
            self._set(slot, State.RUNNING)
        else:
            self._set(slot, State.UNHEALTHY)
        if slot.state in SERVING and not slot.busy and slot.expiry is None:
            self._schedule_expiry(slot)

    # -- room: the memory budget, the count cap, and the queue ---------------------------------------------
    def loaded_count(self) -> int:
        """Instances the gateway started that hold (or are about to hold, or still hold) memory."""
        return sum(1 for s in self.slots.values() if s.loaded and (s.owned or s.state == State.STARTING))

    def used(self) -> Need:
        """What the loaded instances hold of the budget (whoever started them: their memory is taken all the same)."""
        total = NOTHING
        for slot in (*self.slots.values(), *self.leaving):
            if slot.loaded and slot.need is not None:
                total = total + slot.need
        return total

    def measured(self, slot: Slot, rss: int | None) -> None:
        """The process tree's resident memory, as the monitor read it: the need is the larger of it and the estimate."""
        if rss is None or not slot.loaded:
            return
        slot.rss = rss
        estimate = slot.estimate or NOTHING
        slot.need = Need(max(estimate.ram, rss), estimate.vram)

    def _count_ok(self) -> bool:
        limit = self.config.max_loaded
        return not limit or self.loaded_count() < limit

    async def _admit(self, slot: Slot) -> None:
        """Start `slot` once it fits: the least recently used idle instances the gateway started are stopped to make
        room, and when what holds the memory is busy (or not the gateway's), the request waits its turn. A model that
        cannot fit even alone is refused at once. The check and the start happen with no await between them, so two
        starts never both take the same room."""
        deadline = self.effects.now() + self.config.queue_timeout
        queued = False
        try:
            while slot.state in NOT_LOADED:
                room = self.budget.room(self.used())
                need = await self.effects.need(slot.entry, room)  # None: lf cannot tell before it runs
                if slot.state not in NOT_LOADED:
                    return  # started meanwhile, by another request
                if need is not None and not self.budget.fits(need):
                    raise TooLarge(
                        f"{slot.name} needs about {need.describe()} (lf's estimate), more than the whole memory budget "
                        f"of {self.budget.describe()}",
                        hint="give it a smaller context_size (or context_size: auto) or a smaller quant of the model, "
                        "raise the budget (--memory-budget, runtime.gateway.memory_budget), or start it regardless: "
                        f"lf runtime start {slot.name} --direct --force",
                    )
                if self.budget.fits(need or NOTHING, self.used()) and self._count_ok():
                    slot.estimate = slot.need = need
                    slot.room = room
                    self._begin_start(slot)
                    return
                victim = self._least_recently_used_idle(exclude=slot)
                if victim is not None:
                    self._begin_stop(victim, "evicted")
                    assert victim.stop_task is not None
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
                    self.events.emit(QueueChanged(self.waiting))
                remaining = deadline - self.effects.now()
                if remaining <= 0:
                    raise QueueTimeout(
                        f"waited {self.config.queue_timeout:g}s for the models that hold the memory to become idle",
                        hint="retry later, or raise the memory budget (or max_loaded)",
                    )
                room_made = self._room
                timer = self.effects.call_later(remaining, self._wake_waiters)  # wakes it at its deadline
                try:
                    await room_made.wait()
                finally:
                    timer.cancel()
        finally:
            if queued:
                self.waiting -= 1
                self.events.emit(QueueChanged(self.waiting))

    def _least_recently_used_idle(self, exclude: Slot) -> Slot | None:
        idle = [
            s
            for s in self.slots.values()
            if s is not exclude and s.state in SERVING and s.owned and not s.busy and not s.entry.keep_loaded
        ]
        return min(idle, key=lambda s: s.last_used) if idle else None

    # -- start and stop (through the effects) ----------------------------------------------------------
    def _loading(self, slot: Slot, stage: str, percent: float | None) -> None:
        if slot.state == State.STARTING and slot.loading is not None:
            if (slot.loading["stage"], slot.loading["percent"]) != (stage, percent):
                slot.loading = {**slot.loading, "stage": stage, "percent": percent}
                self._changed(slot)

    def _begin_start(self, slot: Slot) -> None:
        slot.loading = {"stage": "launching", "percent": None, "since": self.effects.wall()}
        self._set(slot, State.STARTING)
        slot.start_task = asyncio.get_running_loop().create_task(self._start(slot))
        slot.start_task.add_done_callback(_retrieve)  # failures reach the waiters; none left unread

    async def _start(self, slot: Slot) -> None:
        started = self.effects.now()
        try:
            endpoint = await self.effects.start(
                slot.entry, slot.room, lambda stage, pct: self._loading(slot, stage, pct)
            )
        except BaseException as exc:
            message = exc.message if isinstance(exc, LfError) else f"{type(exc).__name__}: {exc}"
            hint = exc.hint if isinstance(exc, LfError) else None
            slot.last_error = message + (f"\n{hint}" if hint else "")
            self._set(slot, State.CRASHED)
            self.events.emit(StartFailed(slot.name, slot.last_error))
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise CouldNotStart(f"{slot.name} could not be started: {message}", hint=hint) from None
        self._running(slot, endpoint)
        self.events.emit(Started(slot.name, self.effects.now() - started))
        if slot.retired or slot.replacement is not None:
            self._reconfigured(slot)  # edited while it started

    def _begin_stop(self, slot: Slot, reason: str) -> None:
        self._set(slot, State.STOPPING)
        slot.stop_task = asyncio.get_running_loop().create_task(self._stop(slot, reason))
        slot.stop_task.add_done_callback(_retrieve)

    async def _stop(self, slot: Slot, reason: str) -> None:
        try:
            await self.effects.stop(slot.entry, slot.endpoint)
        finally:
            self._set(slot, State.IDLE)
            self.events.emit(Stopped(slot.name, reason))
            if slot.replacement is not None:
                self._replace(slot, slot.replacement, None)
            if slot.retired:
                if self.slots.get(slot.name) is slot:
                    self.slots.pop(slot.name)
                if slot in self.leaving:
                    self.leaving.remove(slot)
                self._changed(slot)
            self._wake_waiters()

    # -- idle unload ---------------------------------------------------------------------------------
    def _schedule_expiry(self, slot: Slot) -> None:
        self._cancel_expiry(slot)
        if slot.ttl is None or not slot.owned or slot.state not in SERVING or slot.busy:
            return
        slot.expires_at = self.effects.wall() + slot.ttl
        slot.expiry = self.effects.call_later(slot.ttl, lambda: self._expire(slot))
        self._changed(slot)

    def _cancel_expiry(self, slot: Slot) -> None:
        if slot.expiry is not None:
            slot.expiry.cancel()
            slot.expiry = None
        slot.expires_at = None

    def _expire(self, slot: Slot) -> None:
        slot.expiry = None
        if slot.state in SERVING and not slot.busy and slot.owned and not self._closing:
            self._begin_stop(slot, "idle")

    # -- shutdown ------------------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop every instance a gateway started, and those it is starting (the start is cut short, not
        awaited); leave the others alone."""
        self._closing = True
        for slot in self.slots.values():
            self._cancel_expiry(slot)
        starting = [s for s in self.slots.values() if s.start_task is not None and not s.start_task.done()]
        while any(s.start_task is not None and not s.start_task.done() for s in starting):
            # what a start has launched so far goes now (its wait then ends); one it launches later, next round
            await asyncio.gather(*(self.effects.stop(s.entry, None) for s in starting))
            await asyncio.wait([s.start_task for s in starting if s.start_task is not None], timeout=0.2)
        for slot in (*self.slots.values(), *self.leaving):
            if slot.state in (*SERVING, State.FROZEN) and slot.owned:
                self._begin_stop(slot, "shutdown")
        stops = [
            s.stop_task
            for s in (*self.slots.values(), *self.leaving)
            if s.stop_task is not None and not s.stop_task.done()
        ]
        if stops:
            await asyncio.wait(stops)
        self._wake_waiters()


def _load(slot: Slot) -> int:
    """The requests a place holds: in flight, waiting for their turn, and waiting for its start."""
    return slot.in_flight + slot.handed + len(slot.turns) + slot.awaiting_start


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
