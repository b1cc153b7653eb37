"""What the core's actions report while they work (events), and what ensure_running returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lf.daemon.records import RuntimeRecord


@dataclass(frozen=True)
class Starting:
    """An instance is about to be started, unless it turns out to be running already."""

    name: str
    runtime: str
    model: str
    through: str | None = None  # the gateway that starts it, when one serves it


@dataclass(frozen=True)
class Waiting:
    """Still waiting for an instance to become healthy."""

    name: str
    elapsed: float
    stage: str = "starting"  # lf.daemon.supervisor.Loading's
    percent: float | None = None


@dataclass(frozen=True)
class Notice:
    """Something the user should hear (a warning), whatever happens next."""

    text: str


@dataclass(frozen=True)
class Endpoint:
    """Where to send OpenAI API requests for one model entry."""

    name: str  # the model entry
    base_url: str
    model: str  # the name requests use
    api_key: str | None = None
    record: RuntimeRecord | None = None  # the running instance lf started (managed entries, not through a gateway)
    started: bool = False  # this call started it
    gateway: str | None = None  # the lf serve it goes through (its record's name)

    @classmethod
    def of(cls, record: RuntimeRecord, api_key: str | None, started: bool = False) -> Endpoint:
        return cls(record.name, record.base_url, record.model, api_key, record, started)
