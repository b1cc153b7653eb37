"""The pool's seam: everything it does to the world goes through `Effects` (is an instance running, start it, stop
it, what time is it, call me later). The gateway passes `CoreEffects`, which calls lf's core (the same functions
as the CLI) in worker threads; the pool's unit tests pass a fake, so every decision the pool makes (start or
serve, queue, evict, expire) is tested in milliseconds without a process (as llama-swap's scheduler tests and
Ollama's sched_test.go do)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import anyio

from lf.config.gateway import GatewayConfig
from lf.config.project import ModelEntry, Project
from lf.core import actions
from lf.core.events import Endpoint, Waiting
from lf.core.targets import Overrides, build_spec
from lf.daemon.process import tree_memory
from lf.errors import LfError, NotInstalledError
from lf.gateway.events import EventBus, Pulling
from lf.models.budget import Budget, Need, configured_budget


class Timer(Protocol):
    def cancel(self) -> None: ...


Progress = Callable[[str, float | None], None]  # (stage, percent) of a start, as the engine tells it


class Effects(Protocol):
    async def running(self, entry: ModelEntry) -> Endpoint | None:
        """The endpoint of the entry's instance if one runs (started by anyone), else None."""
        ...

    async def start(self, entry: ModelEntry, room: int | None, progress: Progress | None = None) -> Endpoint:
        """Start the entry's instance (or find it running) and wait until it is healthy; LfError if it cannot.
        `room`: the memory `context_size: auto` may take; `progress` hears how far the start is (stage, percent)."""
        ...

    async def need(self, entry: ModelEntry, room: int | None) -> Need | None:
        """What an instance of the entry would take (with `context_size: auto`, fitted in `room`); None when lf
        cannot tell before it runs."""
        ...

    async def measure(self, endpoint: Endpoint) -> int | None:
        """The resident memory of the endpoint's process tree now; None when it cannot be read."""
        ...

    def budget(self) -> Budget:
        """The memory the gateway's models may take together."""
        ...

    def slots(self, entry: ModelEntry) -> int | None:
        """Requests the entry's engine serves at once (its parallel slots); None when lf does not know."""
        ...

    def embeddings(self, entry: ModelEntry) -> bool | None:
        """Whether the entry's instance serves /v1/embeddings (False: its runtime has it off); None: lf cannot tell."""
        ...

    async def stop(self, entry: ModelEntry, endpoint: Endpoint | None) -> None:
        """Stop the instance `endpoint` names (only that very process: not one started since)."""
        ...

    def now(self) -> float:
        """Monotonic seconds (what idle times and deadlines are measured in)."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch (what the page and /health show)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...


class CoreEffects:
    """The real world: lf's core, in worker threads (a start blocks for seconds), and the event loop's clock."""

    def __init__(self, project: Project | None, config: GatewayConfig, events: EventBus):
        self.project = project
        self.config = config
        self.events = events
        self._budget = configured_budget(config.memory_budget)

    async def running(self, entry: ModelEntry) -> Endpoint | None:
        return await anyio.to_thread.run_sync(actions.running, entry, self.project)

    async def start(self, entry: ModelEntry, room: int | None, progress: Progress | None = None) -> Endpoint:
        loop = asyncio.get_running_loop()
        return await anyio.to_thread.run_sync(self._ensure_running, entry, room, loop, progress)

    def _ensure_running(
        self, entry: ModelEntry, room: int | None, loop: asyncio.AbstractEventLoop, progress: Progress | None
    ) -> Endpoint:
        def heard(event: object) -> None:  # from this worker thread to the loop, where the pool's state lives
            if progress is not None and isinstance(event, Waiting):
                loop.call_soon_threadsafe(progress, event.stage, event.percent)

        def start() -> Endpoint:
            return actions.ensure_running(
                entry, self.project, owner="gateway", timeout=self.config.start_timeout, room=room, on_event=heard
            )

        try:
            return start()
        except NotInstalledError as exc:
            from lf.models.hub import ModelNotPulledError, pull  # only now: a start that succeeds never loads it

            if not self.config.pull or not isinstance(exc, ModelNotPulledError):
                raise
            loop.call_soon_threadsafe(self.events.emit, Pulling(entry.name, str(exc.ref)))
            pull(exc.ref)
            return start()

    async def need(self, entry: ModelEntry, room: int | None) -> Need | None:
        return await anyio.to_thread.run_sync(self._need, entry, room)

    def _need(self, entry: ModelEntry, room: int | None) -> Need | None:
        try:
            spec = build_spec(entry, self.project, Overrides(), single=True)
        except LfError:
            return None  # a model that is not there yet (a pull on demand), or settings the start will refuse
        if spec.context_auto:
            spec = actions.fit_context(spec, room)
        estimate = actions.memory_estimate(spec)
        if estimate is None:
            return None
        offloaded = self._offloaded(spec, estimate)
        return Need(estimate.total - offloaded, offloaded)

    def _offloaded(self, spec, estimate) -> int:
        """The part of an estimate on the GPU: weights and KV cache, when every layer is offloaded to a GPU lf found
        (a partial offload counts as RAM, the larger side)."""
        if self._budget.vram is None or spec.settings.get("gpu_layers") != -1:
            return 0
        return estimate.weights + estimate.kv_cache

    async def measure(self, endpoint: Endpoint) -> int | None:
        record = endpoint.record
        if record is None:
            return None
        return await anyio.to_thread.run_sync(tree_memory, record.pid)

    def budget(self) -> Budget:
        return self._budget

    def slots(self, entry: ModelEntry) -> int | None:
        settings = self._settings(entry)
        parallel = settings.get("parallel") if settings is not None else None
        return int(parallel) if isinstance(parallel, int) else None

    def embeddings(self, entry: ModelEntry) -> bool | None:
        settings = self._settings(entry)
        if settings is None or settings.get("embeddings") is None:
            return None  # a runtime without the setting, or a default its hooks decide: the server answers
        return bool(settings["embeddings"])

    def _settings(self, entry: ModelEntry):
        try:
            return build_spec(entry, self.project, Overrides(), single=True, resolve_model=False).settings
        except LfError:
            return None

    async def stop(self, entry: ModelEntry, endpoint: Endpoint | None) -> None:
        pid = endpoint.record.pid if endpoint is not None and endpoint.record is not None else None
        await anyio.to_thread.run_sync(lambda: actions.stop_instance(entry.name, self.project, only_pid=pid))

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)
