"""What happens in the gateway, as typed events: the pool and the request path emit them, and the log, the metrics
and the dashboard subscribe (one event type, many readers; no component reaches into another's fields)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from lf.daemon.states import State

log = logging.getLogger("lf.gateway")


@dataclass(frozen=True)
class StateChanged:
    model: str
    old: State
    new: State


@dataclass(frozen=True)
class SlotChanged:
    """A model's bookkeeping changed (requests in flight, waiting requests, its expiry): what the page shows."""

    model: str


@dataclass(frozen=True)
class Started:
    model: str
    seconds: float


@dataclass(frozen=True)
class StartFailed:
    model: str
    message: str


@dataclass(frozen=True)
class Stopped:
    model: str
    reason: str  # idle, evicted, shutdown, stopped from the page, …

    @property
    def evicted(self) -> bool:
        return self.reason == "evicted"


@dataclass(frozen=True)
class Pulling:
    model: str
    ref: str


@dataclass(frozen=True)
class Routed:
    """A router sent a request to one of its routes' targets (or its default)."""

    router: str
    route: str  # the route's name, or "default"
    target: str
    seconds: float  # the message's embedding


@dataclass(frozen=True)
class QueueChanged:
    waiting: int


@dataclass(frozen=True)
class RequestFinished:
    """One request answered (or refused): never its content, never a key."""

    method: str
    path: str  # the gateway's route, e.g. /v1/chat/completions
    endpoint: str  # the OpenAI endpoint it was forwarded to, e.g. chat/completions ("" when refused first)
    model: str  # the entry that answered, "-" when none
    status: int
    seconds: float
    stream: bool = False
    ttft: float | None = None  # seconds to the first token of a streamed answer
    tokens: int = 0
    tokens_per_s: float | None = None
    cut: str | None = None  # lf ended the answer: "deadline" (request_timeout) or "max_tokens_default"
    upstream: str | None = None  # the place that answered: an instance's name, or a peer's


Event = StateChanged | SlotChanged | Started | StartFailed | Stopped | Pulling | QueueChanged | RequestFinished | Routed


class EventBus:
    """Delivers each event to every subscriber, in order, on the event loop (or the thread that emits)."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []

    def subscribe(self, subscriber: Callable[[Event], None]) -> None:
        self._subscribers.append(subscriber)

    def emit(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:  # a reader's bug must not break the pool or a request
                log.exception("an event subscriber failed on %s", type(event).__name__)


def log_event(event: Event) -> None:
    """The gateway's log, one line per event that matters to an operator (key=value pairs in --log-format json)."""
    if isinstance(event, Started):
        log.info("started %s in %.1fs", event.model, event.seconds, extra={"event": "started", "model": event.model})
    elif isinstance(event, StartFailed):
        first = event.message.splitlines()[0] if event.message else ""
        log.warning("could not start %s: %s", event.model, first, extra={"event": "start_failed", "model": event.model})
    elif isinstance(event, Stopped):
        log.info("stopped %s (%s)", event.model, event.reason, extra={"event": "stopped", "model": event.model})
    elif isinstance(event, Pulling):
        log.info(
            "pulling %s for %s (pull is on)", event.ref, event.model, extra={"event": "pull", "model": event.model}
        )
    elif isinstance(event, RequestFinished):
        log.info(
            "%s %s model=%s %d %.3fs",
            event.method,
            event.path,
            event.model,
            event.status,
            event.seconds,
            extra={
                "event": "request",
                "model": event.model,
                "status": event.status,
                "seconds": round(event.seconds, 4),
            },
        )
