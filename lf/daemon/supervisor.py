"""Start, wait for, and stop runtime daemons.

A daemon is the runtime's server process, started in its own session (so its own process group), with
stdin closed and stdout+stderr appended to a log file in the state dir. Its record names it by pid *and*
create time, so a reused pid is never mistaken for it, and nothing is ever signalled unless it is
provably the process lf started.

What to launch arrives as a LaunchPlan, a frozen value a runtime worked out; the record is written from
the plan and nothing here changes it.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

from lf.daemon.health import Health, local_url, probe_once
from lf.daemon.process import command_matches, family, port_is_free, port_owner, process_create_time, terminate_group
from lf.daemon.records import CorruptRecord, RuntimeRecord, StateStore
from lf.errors import StartError
from lf.files import read_tail

LOG_TAIL_LINES = 20


def _empty() -> Mapping:
    return MappingProxyType({})


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to launch one instance, decided before anything runs."""

    name: str  # the instance
    runtime: str
    engine: str
    argv: tuple[str, ...]
    host: str
    port: int
    api_base: str  # the OpenAI-compatible API's path, e.g. /v1
    model: str  # the name requests must use
    model_path: str | None = None
    health_path: str | None = None
    health_ready: str = "http-ok"  # how to read the health endpoint (lf.daemon.health.interpret)
    start_timeout: float = 60.0
    env: Mapping[str, str] = field(default_factory=_empty)  # added to the daemon's environment
    after_start: Mapping = field(default_factory=_empty)  # data the runtime's after-start step needs (JSON-able)
    overrides: Mapping = field(default_factory=_empty)  # command-line settings, recorded so `restart` reapplies them
    owner: str = "cli"
    install_hint: str | None = None  # shown when the executable cannot be run

    @property
    def base_url(self) -> str:
        return local_url(self.host, self.port, self.api_base)

    @property
    def health_url(self) -> str | None:
        return local_url(self.host, self.port, self.health_path) if self.health_path else None


@dataclass(frozen=True)
class StartResult:
    record: RuntimeRecord
    already_running: bool
    health: Health | None = None
    note: str | None = None


@dataclass(frozen=True)
class StopResult:
    name: str
    was_running: bool
    escalated: bool = False  # SIGKILL was needed
    note: str = ""


def choose_port(host: str, port: int, auto: bool, taken: set[int] | frozenset[int] = frozenset(), store: StateStore | None = None, span: int = 100) -> int:
    """`port` if it is free; with `auto` (nobody chose it) the first free one counting up from it. A port
    held by one of lf's own instances is named as such, with the command that stops it."""
    if not auto:
        if port in taken or not port_is_free(host, port):
            owner, pid = port_owner(port)
            instance = _instance_holding(pid, store or StateStore()) if pid else None
            if instance is not None:
                owner = f"lf's instance {instance!r} (pid {pid})"
            stop = f"lf runtime stop {instance}" if instance else "stop that process"
            raise StartError(f"port {port} on {host} is already in use by {owner}", hint=f"{stop}, or choose another port with --port")
        return port
    for candidate in range(port, port + span):
        if candidate not in taken and port_is_free(host, candidate):
            return candidate
    raise StartError(f"no free port in {port}-{port + span - 1} on {host}", hint="choose one with --port")


def _instance_holding(pid: int, store: StateStore) -> str | None:
    """The recorded instance `pid` belongs to (the daemon itself or one of its children)."""
    pids = family(pid)
    return next((r.name for r in store.records() if r.pid in pids and r.process_alive()), None)


def start(
    name: str,
    store: StateStore,
    plan_for: Callable[[], LaunchPlan],
    *,
    wait: bool = True,
    timeout: float | None = None,
    on_wait: Callable[[float], None] | None = None,
    after_healthy: Callable[[RuntimeRecord, Health | None, float], Health | None] | None = None,
) -> StartResult:
    """Start the instance `name` (or find it running) and, unless wait=False, wait until it is healthy.

    `plan_for` is called under the instance's lock, and only when something must be launched, so
    concurrent starts make one daemon. If the wait is interrupted (Ctrl-C) or fails, what this call
    launched is stopped again: no half-started orphan is left behind.
    """
    launched: subprocess.Popen | None = None
    with store.lock(name):
        existing = store.load_or_none(name)  # an unreadable one: a fresh start replaces it
        if existing is not None and existing.process_alive():
            record = existing
        else:
            record, launched = launch(plan_for(), store)
    if not wait:
        return StartResult(record, already_running=launched is None, note="not waiting for health (--no-wait)")
    timeout = record.start_timeout if timeout is None else timeout
    try:
        health = wait_until_healthy(record, timeout, launched, on_wait)
        if after_healthy is not None:
            health = after_healthy(record, health, timeout) or health
    except BaseException:
        if launched is not None:
            stop(name, store, timeout=5.0, only_pid=record.pid)
        raise
    return StartResult(record, already_running=launched is None, health=health)


def launch(plan: LaunchPlan, store: StateStore) -> tuple[RuntimeRecord, subprocess.Popen]:
    """Launch the plan as a daemon and write its record. The caller holds the instance's lock."""
    store.remove(plan.name)  # a stale record (crashed process) or a corrupt one
    log_path = store.log_path(plan.name)
    store.ensure()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.chmod(log_path, 0o600)
    header = f"\n--- lf: starting {plan.name} ({plan.runtime}, {plan.engine}) on {plan.host}:{plan.port} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    os.write(fd, header.encode())
    try:
        proc = subprocess.Popen(
            list(plan.argv),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and process group: survives the terminal, stoppable as a group
            close_fds=True,
            env={**os.environ, **plan.env},
            cwd=str(store.root),
        )
    except OSError as exc:
        raise StartError(f"could not run {plan.argv[0]}: {exc.strerror or exc}", hint=plan.install_hint) from exc
    finally:
        os.close(fd)
    record = RuntimeRecord(
        name=plan.name,
        runtime=plan.runtime,
        pid=proc.pid,
        create_time=process_create_time(proc.pid) or time.time(),
        host=plan.host,
        port=plan.port,
        base_url=plan.base_url,
        model=plan.model,
        model_path=plan.model_path,
        command=list(plan.argv),
        log_path=str(log_path),
        started_at=time.time(),
        engine=plan.engine,
        health_url=plan.health_url,
        health_ready=plan.health_ready,
        start_timeout=plan.start_timeout,
        overrides=dict(plan.overrides),
        after_start=dict(plan.after_start),
        owner=plan.owner,
    )
    try:
        store.save(record)
    except BaseException:
        terminate_group(proc.pid, 2.0)
        raise
    return record, proc


def wait_until_healthy(
    record: RuntimeRecord,
    timeout: float,
    proc: subprocess.Popen | None = None,
    on_wait: Callable[[float], None] | None = None,
) -> Health | None:
    """Poll the health endpoint until ready; fail fast if the process exits first."""
    probe = record.health_probe()
    started = time.monotonic()
    # every 10 ms while a small model would be loading (about a second), then back off to 100 ms
    interval = 0.01
    while True:
        exited = proc.poll() is not None if proc is not None else not record.process_alive()
        if exited:
            code = proc.returncode if proc is not None else None
            detail = f" with exit code {code}" if code is not None else ""
            raise StartError(
                f"{record.name} exited{detail} before it became healthy",
                hint=f"last lines of {record.log_path}:\n{read_tail(record.log_path, LOG_TAIL_LINES)}",
            )
        if probe is None:
            return None
        last = probe_once(probe, timeout=min(1.0, max(0.2, timeout)))
        if last.healthy:
            return last
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            raise StartError(
                f"{record.name} did not become healthy within {timeout:g}s ({last.message})",
                hint=f"raise --timeout, or look at its log: lf runtime logs {record.name}\n{read_tail(record.log_path, 10)}",
            )
        if on_wait is not None:
            on_wait(elapsed)
        time.sleep(interval)
        if elapsed > 3.0:
            interval = min(interval * 1.5, 0.1)


def stop(name: str, store: StateStore, timeout: float = 10.0, only_pid: int | None = None) -> StopResult:
    """SIGTERM the instance's process group, SIGKILL what is left after `timeout`, reap, drop the record."""
    with store.lock(name):
        try:
            record = store.load(name)
        except CorruptRecord as exc:
            store.remove(name)
            return StopResult(name, False, note=f"removed an unreadable record ({exc.reason})")
        if record is None:
            return StopResult(name, False, note="not running")
        if only_pid is not None and record.pid != only_pid:
            return StopResult(name, False, note="replaced by another start")
        if not record.process_alive() or not command_matches(record.pid, record.command):
            store.remove(name)
            return StopResult(name, False, note="was not running (its process had exited); record cleaned up")
        escalated = terminate_group(record.pid, timeout)
        store.remove(name)
        return StopResult(name, True, escalated, note="stopped" + (" (needed SIGKILL)" if escalated else ""))

