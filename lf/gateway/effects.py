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
from lf.core.events import Endpoint
from lf.errors import NotInstalledError
from lf.gateway.events import EventBus, Pulling


class Timer(Protocol):
    def cancel(self) -> None: ...


class Effects(Protocol):
    async def running(self, entry: ModelEntry) -> Endpoint | None:
        """The endpoint of the entry's instance if one runs (started by anyone), else None."""
        ...

    async def start(self, entry: ModelEntry) -> Endpoint:
        """Start the entry's instance (or find it running) and wait until it is healthy; LfError if it cannot."""
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

    async def running(self, entry: ModelEntry) -> Endpoint | None:
        return await anyio.to_thread.run_sync(actions.running, entry, self.project)

    async def start(self, entry: ModelEntry) -> Endpoint:
        loop = asyncio.get_running_loop()
        return await anyio.to_thread.run_sync(self._ensure_running, entry, loop)

    def _ensure_running(self, entry: ModelEntry, loop: asyncio.AbstractEventLoop) -> Endpoint:
        try:
            return actions.ensure_running(entry, self.project, owner="gateway", timeout=self.config.start_timeout)
        except NotInstalledError as exc:
            from lf.models.hub import ModelNotPulledError, pull  # only now: a start that succeeds never loads it

            if not self.config.pull or not isinstance(exc, ModelNotPulledError):
                raise
            loop.call_soon_threadsafe(self.events.emit, Pulling(entry.name, str(exc.ref)))
            pull(exc.ref)
            return actions.ensure_running(entry, self.project, owner="gateway", timeout=self.config.start_timeout)

    async def stop(self, entry: ModelEntry, endpoint: Endpoint | None) -> None:
        pid = endpoint.record.pid if endpoint is not None and endpoint.record is not None else None
        await anyio.to_thread.run_sync(lambda: actions.stop_instance(entry.name, self.project, only_pid=pid))

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)
