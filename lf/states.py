"""Process states of a runtime instance, in one place (after Supervisor's states.py)."""

from __future__ import annotations

from enum import Enum


class ProcessState(str, Enum):
    STOPPED = "stopped"  # no record: never started, or stopped by lf
    STARTING = "starting"  # process alive, health endpoint not ready yet
    RUNNING = "running"  # process alive and its health endpoint answered ready
    UNHEALTHY = "unhealthy"  # process alive but its health endpoint fails or does not answer
    CRASHED = "crashed"  # record present, process gone without lf stopping it
    EXTERNAL = "external"  # not managed by lf (a remote endpoint or a server the user runs)
    UNKNOWN = "unknown"  # the record exists but cannot be read (corrupt or truncated)

    @property
    def is_alive(self) -> bool:
        return self in (ProcessState.STARTING, ProcessState.RUNNING, ProcessState.UNHEALTHY)
