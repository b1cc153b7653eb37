"""The gateway's pool, decision by decision, with fake effects (no process, no socket): a fake clock that moves only
when a test moves it, and starts and stops that finish when a test lets them. Every guarantee of the pool is here in
milliseconds; tests/test_gateway.py checks the same wiring with real processes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from lf.config.gateway import GatewayConfig
from lf.config.project import ModelEntry
from lf.core.events import Endpoint
from lf.daemon.instance import Instance
from lf.daemon.records import RuntimeRecord
from lf.daemon.states import InvalidTransition, State
from lf.errors import LfError
from lf.gateway.events import EventBus, Started, Stopped
from lf.gateway.pool import CouldNotStart, Frozen, Pool, QueueFull, QueueTimeout, TooBusy, TooLarge
from lf.models.budget import Budget, Need


class FakeTimer:
    def __init__(self, clock: FakeClock, at: float, callback):
        self.clock, self.at, self.callback, self.cancelled = clock, at, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.timers: list[FakeTimer] = []

    def now(self) -> float:
        return self.t

    def call_later(self, delay: float, callback) -> FakeTimer:
        timer = FakeTimer(self, self.t + delay, callback)
        self.timers.append(timer)
        return timer

    async def advance(self, seconds: float) -> None:
        """Move time on, firing each timer that falls due, in order, and let the loop act on it."""
        end = self.t + seconds
        while True:
            due = sorted((t for t in self.timers if not t.cancelled and t.at <= end), key=lambda t: t.at)
            if not due:
                break
            timer = due[0]
            self.timers.remove(timer)
            self.t = timer.at
            timer.callback()
            await settle()
        self.t = end
        await settle()


async def settle() -> None:
    """Let every task that can run, run (a few rounds of the loop)."""
    for _ in range(20):
        await asyncio.sleep(0)


@dataclass
class FakeEffects:
    """Starts and stops that the test finishes (gates), failures on demand, and a record of what happened."""

    clock: FakeClock = field(default_factory=FakeClock)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    loaded: set[str] = field(default_factory=set)  # what would hold memory now
    most_loaded: int = 0
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    stop_gates: dict[str, asyncio.Event] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    outside: dict[str, Endpoint] = field(default_factory=dict)  # started by `lf runtime start`
    pid: int = 100
    needs: dict[str, int] = field(default_factory=dict)  # bytes an instance of each model takes (estimate)
    memory: int = 100 * 2**30  # the budget
    parallel: int | None = None  # the engines' slots
    rooms: dict[str, int | None] = field(default_factory=dict)  # the room each start was given

    def endpoint(self, name: str, owner: str = "gateway") -> Endpoint:
        self.pid += 1
        instance = Instance(name, "fake", "fake", ("fake",), "127.0.0.1", 9000, "/v1", f"model-of-{name}", owner=owner)
        record = RuntimeRecord(instance, pid=self.pid, create_time=1.0, started_at=1.0, log_path="-")
        return Endpoint(name, instance.base_url, instance.model, None, record)

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    async def running(self, entry: ModelEntry) -> Endpoint | None:
        return self.outside.get(entry.name)

    async def start(self, entry: ModelEntry, room: int | None, progress=None) -> Endpoint:
        self.started.append(entry.name)
        self.rooms[entry.name] = room
        self.loaded.add(entry.name)
        self.most_loaded = max(self.most_loaded, len(self.loaded))
        if entry.name in self.gates:
            await self.gates[entry.name].wait()
        if entry.name in self.failing:
            self.loaded.discard(entry.name)
            raise LfError(f"{entry.name} exited before it became healthy", hint="its log says why")
        return self.endpoint(entry.name)

    async def stop(self, entry: ModelEntry, endpoint: Endpoint | None) -> None:
        self.stopped.append(entry.name)
        if endpoint is None and entry.name in self.gates:  # whatever runs under that name: a start ends with it
            self.failing.add(entry.name)
            self.gates[entry.name].set()
        if entry.name in self.stop_gates:
            await self.stop_gates[entry.name].wait()
        self.loaded.discard(entry.name)
        await asyncio.sleep(0)

    async def need(self, entry: ModelEntry, room: int | None) -> Need | None:
        if entry.context_size == "auto" and room is not None:  # as lf fits a context: as much as the room holds
            return Need(max(self.needs.get(entry.name, 0), min(room, 4 * self.needs.get(entry.name, 0))))
        return Need(self.needs[entry.name]) if entry.name in self.needs else None

    async def measure(self, endpoint: Endpoint) -> int | None:
        return None

    def budget(self) -> Budget:
        return Budget(self.memory)

    def slots(self, entry: ModelEntry) -> int | None:
        return self.parallel

    def embeddings(self, entry: ModelEntry) -> bool | None:
        return None

    def now(self) -> float:
        return self.clock.now()

    def wall(self) -> float:
        return self.clock.now()

    def call_later(self, delay: float, callback):
        return self.clock.call_later(delay, callback)


def entry(name: str, **fields) -> ModelEntry:
    return ModelEntry(name=name, provider="fake", model=f"model-of-{name}", managed=True, **fields)


def make(*entries: ModelEntry, effects: FakeEffects | None = None, **config) -> tuple[Pool, FakeEffects, list]:
    effects = effects or FakeEffects()
    events = EventBus()
    seen: list = []
    events.subscribe(seen.append)
    settings = {"idle_ttl": 300.0, "max_loaded": 0, "max_queue": 64, "queue_timeout": 120.0, **config}
    return Pool(GatewayConfig(**settings), list(entries), effects, events), effects, seen


async def use(pool: Pool, slot) -> None:
    """One request that comes and goes."""
    await pool.acquire(slot)
    pool.release(slot)


def run(test):
    """Run an async test body on a fresh event loop."""
    asyncio.run(asyncio.wait_for(test(), 10))


# -- start or serve: decided once, in the state machine -------------------------------------------------
def test_a_crowd_for_an_idle_model_makes_one_start_and_everyone_gets_it():
    async def body():
        pool, effects, seen = make(entry("a"))
        effects.gate("a")
        slot = pool.slots["a"]
        crowd = [asyncio.create_task(pool.acquire(slot)) for _ in range(20)]
        await settle()
        assert slot.state == State.STARTING and effects.started == ["a"]
        effects.gates["a"].set()
        endpoints = await asyncio.gather(*crowd)
        assert effects.started == ["a"] and len({id(e) for e in endpoints}) == 1
        assert slot.state == State.RUNNING and slot.in_flight == 20
        assert [e for e in seen if isinstance(e, Started)] == [Started("a", 0.0)]
        for _ in crowd:
            pool.release(slot)
        assert slot.in_flight == 0 and slot.expires_at is not None

    run(body)


def test_a_request_during_a_stop_waits_for_it_then_starts_afresh():
    async def body():
        pool, effects, _ = make(entry("a"), idle_ttl=10)
        slot = pool.slots["a"]
        await use(pool, slot)
        effects.stop_gates["a"] = asyncio.Event()
        await effects.clock.advance(10)  # its TTL: the stop begins, and takes a while
        assert slot.state == State.STOPPING
        request = asyncio.create_task(pool.acquire(slot))
        await settle()
        assert not request.done() and effects.started == ["a"]  # not sent to an instance on its way out
        effects.stop_gates["a"].set()
        endpoint = await request
        assert effects.started == ["a", "a"] and effects.stopped == ["a"] and slot.endpoint is endpoint

    run(body)


# -- idle unload ----------------------------------------------------------------------------------------
def test_an_idle_instance_stops_after_its_ttl_and_never_with_a_request_in_flight():
    async def body():
        pool, effects, seen = make(entry("a"), idle_ttl=60)
        slot = pool.slots["a"]
        await pool.acquire(slot)
        await effects.clock.advance(600)  # a long answer: far past the TTL
        assert effects.stopped == [] and slot.state == State.RUNNING
        await pool.acquire(slot)  # two answers overlap; the first ends, the second goes on past the TTL
        pool.release(slot)
        await effects.clock.advance(600)
        assert effects.stopped == [] and slot.state == State.RUNNING
        pool.release(slot)
        await effects.clock.advance(59)
        assert effects.stopped == []
        # a request that arrives as the TTL runs out takes it first: the expiry then finds it busy
        await pool.acquire(slot)
        await effects.clock.advance(120)
        assert effects.stopped == []
        pool.release(slot)
        await effects.clock.advance(60)
        assert effects.stopped == ["a"] and slot.state == State.IDLE
        assert Stopped("a", "idle") in seen

    run(body)


def test_keep_loaded_and_instances_started_outside_the_gateway_are_never_unloaded_for_idleness():
    async def body():
        pool, effects, _ = make(entry("pinned", keep_loaded=True), entry("theirs"), idle_ttl=1)
        effects.outside["theirs"] = effects.endpoint("theirs", owner="cli")
        await pool.adopt()
        assert pool.slots["theirs"].state == State.RUNNING and not pool.slots["theirs"].owned
        for name in ("pinned", "theirs"):
            await use(pool, pool.slots[name])
        await effects.clock.advance(3600)
        assert effects.stopped == []

    run(body)


# -- the budget of loaded models, eviction, the queue -----------------------------------------------------
def test_with_a_budget_of_one_two_models_take_turns_and_are_never_both_loaded():
    async def body():
        pool, effects, seen = make(entry("a"), entry("b"), max_loaded=1)
        for name in ("a", "b", "a", "b", "a"):
            slot = pool.slots[name]
            await pool.acquire(slot)
            pool.release(slot)
        assert effects.started == ["a", "b", "a", "b", "a"] and effects.stopped == ["a", "b", "a", "b"]
        assert effects.most_loaded == 1
        assert sum(1 for e in seen if isinstance(e, Stopped) and e.evicted) == 4

    run(body)


def test_a_busy_model_is_never_evicted_the_request_queues_then_gets_room():
    async def body():
        pool, effects, _ = make(entry("a"), entry("b"), max_loaded=1)
        a, b = pool.slots["a"], pool.slots["b"]
        await pool.acquire(a)  # a request in flight on a
        waiting = asyncio.create_task(pool.acquire(b))
        await settle()
        assert pool.waiting == 1 and effects.stopped == [] and not waiting.done()
        pool.release(a)  # a is idle now: b may evict it
        await waiting
        assert effects.stopped == ["a"] and b.state == State.RUNNING and effects.most_loaded == 1

    run(body)


def test_a_full_queue_refuses_at_once_and_a_long_wait_times_out():
    async def body():
        pool, effects, _ = make(entry("a"), entry("b"), entry("c"), max_loaded=1, max_queue=1, queue_timeout=30)
        await pool.acquire(pool.slots["a"])
        first = asyncio.create_task(pool.acquire(pool.slots["b"]))
        await settle()
        with pytest.raises(QueueFull):
            await pool.acquire(pool.slots["c"])
        await effects.clock.advance(30)
        with pytest.raises(QueueTimeout):
            await first
        assert pool.waiting == 0 and effects.started == ["a"]

    run(body)


def test_a_model_started_for_a_queued_request_is_not_evicted_by_another_queued_one():
    async def body():
        pool, effects, _ = make(entry("a"), entry("b"), entry("c"), max_loaded=1)
        a = pool.slots["a"]
        await pool.acquire(a)
        effects.gate("b")
        for_b = asyncio.create_task(pool.acquire(pool.slots["b"]))
        for_c = asyncio.create_task(pool.acquire(pool.slots["c"]))
        await settle()
        pool.release(a)  # room: one of them starts its model; the other must not evict it before its request has it
        await settle()
        effects.gates["b"].set()
        await settle()
        done = [t for t in (for_b, for_c) if t.done()]
        assert len(done) == 1 and effects.most_loaded == 1
        winner = pool.slots["b"] if done[0] is for_b else pool.slots["c"]
        assert winner.in_flight == 1 and winner.state == State.RUNNING

    run(body)


# -- failures and odd states -------------------------------------------------------------------------------
def test_a_start_that_fails_tells_every_waiting_request_and_the_next_request_tries_again():
    async def body():
        pool, effects, _ = make(entry("a"))
        slot = pool.slots["a"]
        effects.gate("a")
        effects.failing.add("a")
        crowd = [asyncio.create_task(pool.acquire(slot)) for _ in range(5)]
        await settle()
        effects.gates["a"].set()
        results = await asyncio.gather(*crowd, return_exceptions=True)
        assert all(isinstance(r, CouldNotStart) and "exited before it became healthy" in r.message for r in results)
        assert slot.state == State.CRASHED and slot.in_flight == 0 and effects.started == ["a"]
        effects.failing.clear()
        await pool.acquire(slot)
        assert effects.started == ["a", "a"] and slot.state == State.RUNNING

    run(body)


def test_a_frozen_instance_is_refused_at_once_and_serves_again_once_resumed():
    async def body():
        pool, _effects, _ = make(entry("a"))
        slot = pool.slots["a"]
        await use(pool, slot)
        pool.observed(slot, frozen=True, health=None)
        assert slot.state == State.FROZEN
        with pytest.raises(Frozen, match="stopped by a signal"):
            await pool.acquire(slot)
        pool.observed(slot, frozen=False, health=None)
        assert slot.state == State.RUNNING
        assert await pool.acquire(slot) is slot.endpoint

    run(body)


def test_every_change_of_state_follows_the_one_table():
    async def body():
        pool, _, seen = make(entry("a"))
        slot = pool.slots["a"]
        with pytest.raises(InvalidTransition):
            pool._set(slot, State.STOPPING)  # idle: nothing to stop
        await use(pool, slot)
        await pool.stop_now(slot, "stopped from the page")
        changes = [(e.old, e.new) for e in seen if type(e).__name__ == "StateChanged"]
        assert changes == [
            (State.IDLE, State.STARTING),
            (State.STARTING, State.RUNNING),
            (State.RUNNING, State.STOPPING),
            (State.STOPPING, State.IDLE),
        ]

    run(body)


def test_shutdown_stops_what_a_gateway_started_and_leaves_the_rest():
    async def body():
        pool, effects, _ = make(entry("mine"), entry("theirs"))
        effects.outside["theirs"] = effects.endpoint("theirs", owner="cli")
        await pool.adopt()
        await use(pool, pool.slots["mine"])
        await pool.close()
        assert effects.stopped == ["mine"] and pool.slots["theirs"].state == State.RUNNING
        with pytest.raises(LfError, match="shutting down"):
            await pool.acquire(pool.slots["mine"])

    run(body)


def test_shutdown_cuts_a_start_in_progress_short_instead_of_waiting_for_it():
    async def body():
        pool, effects, _ = make(entry("slow"))
        effects.gate("slow")  # a model that would take minutes to load
        request = asyncio.create_task(pool.acquire(pool.slots["slow"]))
        await settle()
        await pool.close()
        assert effects.stopped == ["slow"] and "slow" not in effects.loaded
        with pytest.raises(CouldNotStart):
            await request

    run(body)


# -- the memory budget ---------------------------------------------------------------------------------------
MiB = 2**20


def test_a_budget_that_holds_one_of_two_models_swaps_them_and_never_holds_both():
    async def body():
        effects = FakeEffects(needs={"a": 300 * MiB, "b": 400 * MiB}, memory=600 * MiB)
        pool, effects, seen = make(entry("a"), entry("b"), effects=effects)
        for name in ("a", "b", "b", "a", "b"):
            await use(pool, pool.slots[name])
            assert pool.used().ram <= effects.memory
        assert effects.started == ["a", "b", "a", "b"] and effects.most_loaded == 1
        assert [e.reason for e in seen if isinstance(e, Stopped)] == ["evicted"] * 3

    run(body)


def test_models_that_fit_together_stay_loaded_together():
    async def body():
        effects = FakeEffects(needs={"a": 300 * MiB, "b": 200 * MiB}, memory=600 * MiB)
        pool, effects, _ = make(entry("a"), entry("b"), effects=effects)
        for name in ("a", "b", "a", "b"):
            await use(pool, pool.slots[name])
        assert effects.started == ["a", "b"] and effects.stopped == [] and pool.used().ram == 500 * MiB

    run(body)


def test_a_model_larger_than_the_whole_budget_is_refused_at_once_with_both_numbers():
    async def body():
        effects = FakeEffects(needs={"small": 100 * MiB, "huge": 900 * MiB}, memory=600 * MiB)
        pool, effects, _ = make(entry("small"), entry("huge"), effects=effects)
        await use(pool, pool.slots["small"])
        with pytest.raises(TooLarge) as refused:
            await pool.acquire(pool.slots["huge"])
        assert "900.0 MiB" in refused.value.message and "600.0 MiB" in refused.value.message
        assert "context_size" in refused.value.hint
        assert effects.started == ["small"] and effects.stopped == []  # nothing started, nothing evicted for it

    run(body)


def test_what_the_gateway_did_not_start_counts_in_the_budget_but_is_never_evicted():
    async def body():
        effects = FakeEffects(needs={"mine": 300 * MiB}, memory=600 * MiB)
        effects.outside["theirs"] = effects.endpoint("theirs", owner="cli")
        pool, effects, _ = make(entry("theirs"), entry("mine"), effects=effects, queue_timeout=5)
        await pool.adopt()
        pool.measured(pool.slots["theirs"], 450 * MiB)  # its measured memory
        with pytest.raises(QueueTimeout):
            waiting = asyncio.create_task(pool.acquire(pool.slots["mine"]))
            await settle()
            assert pool.waiting == 1
            await effects.clock.advance(5)
            await waiting
        assert effects.stopped == [] and effects.started == []

    run(body)


def test_context_auto_gets_the_room_left_next_to_what_is_loaded():
    async def body():
        effects = FakeEffects(needs={"a": 200 * MiB, "fit": 100 * MiB}, memory=1000 * MiB)
        pool, effects, _ = make(entry("a"), entry("fit", context_size="auto"), effects=effects)
        await use(pool, pool.slots["a"])
        await use(pool, pool.slots["fit"])
        assert effects.rooms["fit"] == 800 * MiB  # the budget minus what a holds
        assert pool.slots["fit"].need == Need(400 * MiB)  # what the fitted context takes
        assert effects.stopped == []

    run(body)


# -- per model: max_concurrent, then a queue, then 429 ---------------------------------------------------------
def test_past_max_concurrent_requests_wait_their_turn_in_order_then_get_429():
    async def body():
        pool, effects, _ = make(entry("a", max_concurrent=1, max_queue=2), entry("b"))
        a = pool.slots["a"]
        await pool.acquire(a)
        second = asyncio.create_task(pool.acquire(a))
        third = asyncio.create_task(pool.acquire(a))
        await settle()
        assert not second.done() and not third.done() and len(a.turns) == 2
        with pytest.raises(TooBusy):
            await pool.acquire(a)  # the fourth: the queue is full
        await use(pool, pool.slots["b"])  # another model answers meanwhile
        pool.release(a)
        await settle()
        assert second.done() and not third.done() and a.in_flight == 1  # first come, first served
        pool.release(a)
        await settle()
        assert third.done() and a.in_flight == 1

    run(body)


def test_the_default_max_concurrent_is_twice_the_engine_slots():
    async def body():
        pool, _, _ = make(entry("a"), effects=FakeEffects(parallel=4))
        assert pool.slots["a"].max_concurrent == 8

    run(body)


# -- several places for one model (replicas, peers) ------------------------------------------------------------------
def test_requests_for_a_model_with_two_places_are_shared_even_past_their_concurrency():
    from dataclasses import replace

    async def body():
        smol = entry("smol")
        pool, effects, _ = make(smol, replace(smol, name="smol-r2", replica_of="smol"), effects=FakeEffects(parallel=2))
        places = pool.places("smol")
        assert [p.name for p in places] == ["smol", "smol-r2"]
        for slot in places:
            await use(pool, slot)
        counts: dict[str, int] = {}

        async def request() -> None:
            slot = pool.choose(places)
            await pool.acquire(slot)
            counts[slot.name] = counts.get(slot.name, 0) + 1
            await asyncio.sleep(0.001)
            pool.release(slot)

        await asyncio.gather(*(request() for _ in range(40)))  # 40 at once: 8 in flight, 32 waiting their turn
        assert counts == {"smol": 20, "smol-r2": 20}

    run(body)


def test_a_place_that_fails_three_times_is_taken_out_and_the_model_is_served_by_the_others():
    from dataclasses import replace

    async def body():
        smol = entry("smol")
        pool, _, _ = make(smol, replace(smol, name="smol-r2", replica_of="smol"))
        places = pool.places("smol")
        for slot in places:
            await use(pool, slot)
        for _ in range(3):
            pool.failed(places[1], "ReadError")
        assert all(pool.choose(places) is places[0] for _ in range(5))
        pool.succeeded(places[1])  # its probe found it answering again
        assert {pool.choose(places, exclude=(places[0],)).name} == {"smol-r2"}

    run(body)
