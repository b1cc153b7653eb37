"""The states of an instance, the transitions between them, and the one classifier that decides
which state an instance is in (after Supervisor's states.py).

    stopped ──start──▶ starting ──healthy──▶ running ◀──recovers── unhealthy
       ▲                  │  │                 │  └──probe fails──────▲
       │                  │  └─start timeout──────────────────────────┘
       │                  ▼                    ▼
       └──stop/clean── crashed ◀── process gone without lf stopping it

`unknown` is a record lf cannot read (stop removes it); `external` is an endpoint lf does not run;
`frozen` is a live process stopped by a signal (SIGSTOP), from any live state and back to any.
"""

from __future__ import annotations

import time
from enum import Enum


class State(str, Enum):
    STOPPED = "stopped"  # no record: never started, or stopped by lf
    STARTING = "starting"  # process alive, not ready yet, within its runtime's start timeout
    RUNNING = "running"  # process alive and its health endpoint answered ready
    UNHEALTHY = "unhealthy"  # process alive, health failing or silent past the start timeout
    FROZEN = "frozen"  # process alive but stopped by a signal (SIGSTOP): it answers nothing until resumed
    CRASHED = "crashed"  # record present, process gone without lf stopping it
    EXTERNAL = "external"  # not managed by lf (a remote endpoint or a server the user runs)
    UNKNOWN = "unknown"  # the record exists but cannot be read (corrupt or truncated)

    @property
    def is_alive(self) -> bool:
        return self in (State.STARTING, State.RUNNING, State.UNHEALTHY, State.FROZEN)


# Every change of state an instance can go through; anything else is a bug in whoever asked for it.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.RUNNING, State.UNHEALTHY, State.FROZEN, State.CRASHED, State.STOPPED}),
    State.RUNNING: frozenset({State.UNHEALTHY, State.FROZEN, State.CRASHED, State.STOPPED}),
    State.UNHEALTHY: frozenset({State.RUNNING, State.FROZEN, State.CRASHED, State.STOPPED}),
    State.FROZEN: frozenset({State.STARTING, State.RUNNING, State.UNHEALTHY, State.CRASHED, State.STOPPED}),
    State.CRASHED: frozenset({State.STARTING, State.STOPPED}),
    State.UNKNOWN: frozenset({State.STARTING, State.STOPPED}),
    State.EXTERNAL: frozenset(),
}


class InvalidTransition(Exception):
    pass


def check_transition(current: State, new: State) -> State:
    """`new`, if an instance may go there from `current` (staying put is always allowed)."""
    if new != current and new not in TRANSITIONS[current]:
        raise InvalidTransition(f"an instance cannot go from {current.value} to {new.value}")
    return new


class _Unreadable:
    """Stands for a record that exists but cannot be read."""

    def __repr__(self) -> str:
        return "UNREADABLE"


UNREADABLE = _Unreadable()


def classify(record, alive: bool, health=None, now: float | None = None, frozen: bool = False) -> State:
    """The state of a managed instance from its record (None when there is none, UNREADABLE when it
    cannot be read), whether its process is alive and ours (and stopped by a signal), and its last
    health probe (None when not probed)."""
    if record is UNREADABLE:
        return State.UNKNOWN
    if record is None:
        return State.STOPPED
    if not alive:
        return State.CRASHED
    if frozen:
        return State.FROZEN
    if health is None or health.healthy:
        return State.RUNNING
    # a young process is still loading; past its runtime's start timeout it is a real problem
    age = (now if now is not None else time.time()) - record.started_at
    return State.STARTING if age < record.start_timeout else State.UNHEALTHY
