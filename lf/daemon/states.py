"""The one vocabulary for an instance's lifecycle: its states, the transitions between them, what each means
to a script (the exit code of `lf runtime status`), and the classifier that decides which state an instance is
in (after Supervisor's states.py). The CLI, `/health`, `/v1/models`, `/metrics`, the dashboard and `lf doctor`
all speak these words; views format them, they never rename them.

    stopped ──start──▶ starting ──healthy──▶ running ◀──recovers── unhealthy
       ▲ │                │  │                 │  └──probe fails──────▲
       │ │                │  └─start timeout──────────────────────────┘
       │ ▼                ▼                    ▼
       │ idle ◀──stop── stopping ◀──────── (any live state)
       └──stop/clean── crashed ◀── process gone without lf stopping it

`idle` is a model a running `lf serve` starts on its next request (no process, and nothing wrong);
`stopping` is an instance on its way out; `unknown` is a record lf cannot read (stop removes it); `external`
is an endpoint lf does not run; `frozen` is a live process stopped by a signal (SIGSTOP), from any live state
and back to any.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Protocol

from lf.errors import ExitStatus


class State(str, Enum):
    STOPPED = "stopped"  # no process: never started, or stopped by lf
    IDLE = "idle"  # no process, and a running gateway starts it on the next request
    STARTING = "starting"  # process alive, not ready yet, within its runtime's start timeout
    RUNNING = "running"  # process alive and its health endpoint answered ready
    UNHEALTHY = "unhealthy"  # process alive, health failing or silent past the start timeout
    FROZEN = "frozen"  # process alive but stopped by a signal (SIGSTOP): it answers nothing until resumed
    STOPPING = "stopping"  # being stopped: it finishes what it answers, then goes
    CRASHED = "crashed"  # process gone without lf stopping it (or a start that failed)
    EXTERNAL = "external"  # not managed by lf (a remote endpoint or a server the user runs)
    UNKNOWN = "unknown"  # the record exists but cannot be read (corrupt or truncated)

    @property
    def is_alive(self) -> bool:
        """A process of this instance runs."""
        return self in _ALIVE

    @property
    def exit_status(self) -> ExitStatus:
        """What `lf runtime status` exits with for an instance in this state."""
        return _EXIT[self]


_ALIVE = frozenset({State.STARTING, State.RUNNING, State.UNHEALTHY, State.FROZEN, State.STOPPING})

# An external endpoint has no process: it counts as up unless its probe fails. An idle model is up too: the
# gateway that serves it starts it on demand.
_EXIT = {
    State.RUNNING: ExitStatus.OK,
    State.EXTERNAL: ExitStatus.OK,
    State.IDLE: ExitStatus.OK,
    State.STARTING: ExitStatus.UNHEALTHY,
    State.UNHEALTHY: ExitStatus.UNHEALTHY,
    State.FROZEN: ExitStatus.UNHEALTHY,
    State.STOPPING: ExitStatus.NOT_RUNNING,
    State.STOPPED: ExitStatus.NOT_RUNNING,
    State.CRASHED: ExitStatus.NOT_RUNNING,
    State.UNKNOWN: ExitStatus.NOT_RUNNING,
}

_LIVE_EXITS = frozenset({State.STOPPING, State.CRASHED, State.STOPPED, State.IDLE})
# Every change of state an instance can go through; anything else is a bug in whoever asked for it.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING, State.IDLE}),
    State.IDLE: frozenset({State.STARTING, State.RUNNING, State.STOPPED}),  # RUNNING: started outside the gateway
    State.STARTING: frozenset({State.RUNNING, State.UNHEALTHY, State.FROZEN} | _LIVE_EXITS),
    State.RUNNING: frozenset({State.UNHEALTHY, State.FROZEN} | _LIVE_EXITS),
    State.UNHEALTHY: frozenset({State.RUNNING, State.FROZEN} | _LIVE_EXITS),
    State.FROZEN: frozenset({State.STARTING, State.RUNNING, State.UNHEALTHY} | _LIVE_EXITS),
    State.STOPPING: frozenset({State.STOPPED, State.IDLE, State.CRASHED}),
    State.CRASHED: frozenset({State.STARTING, State.RUNNING, State.STOPPED, State.IDLE}),
    State.UNKNOWN: frozenset({State.STARTING, State.STOPPED, State.IDLE}),
    State.EXTERNAL: frozenset(),
}


class InvalidTransition(Exception):
    pass


def check_transition(current: State, new: State) -> State:
    """`new`, if an instance may go there from `current` (staying put is always allowed)."""
    if new != current and new not in TRANSITIONS[current]:
        raise InvalidTransition(f"an instance cannot go from {current.value} to {new.value}")
    return new


def exit_for(state: State, healthy: bool | None = None) -> ExitStatus:
    """The exit code for one instance: its state's, and UNHEALTHY for a probe that failed."""
    code = state.exit_status
    if code == ExitStatus.OK and healthy is False:
        return ExitStatus.UNHEALTHY
    return code


class _Unreadable:
    """Stands for a record that exists but cannot be read."""

    def __repr__(self) -> str:
        return "UNREADABLE"


UNREADABLE = _Unreadable()


class _Started(Protocol):
    @property
    def started_at(self) -> float: ...

    @property
    def start_timeout(self) -> float: ...


class _Healthy(Protocol):
    @property
    def healthy(self) -> bool: ...


def classify(
    record: _Started | _Unreadable | None,
    alive: bool,
    health: _Healthy | None = None,
    now: float | None = None,
    frozen: bool = False,
    served: bool = False,
) -> State:
    """The state of a managed instance from its record (None when there is none, UNREADABLE when it cannot be
    read), whether its process is alive and ours (and stopped by a signal), its last health probe (None when not
    probed), and whether a running gateway serves it (`served`: with no process, it is idle, not stopped)."""
    if isinstance(record, _Unreadable):
        return State.UNKNOWN
    if record is None:
        return State.IDLE if served else State.STOPPED
    if not alive:
        return State.CRASHED
    if frozen:
        return State.FROZEN
    if health is None or health.healthy:
        return State.RUNNING
    # a young process is still loading; past its runtime's start timeout it is a real problem
    age = (now if now is not None else time.time()) - record.started_at
    return State.STARTING if age < record.start_timeout else State.UNHEALTHY
