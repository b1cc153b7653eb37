"""Start, wait for, and stop runtime daemons.

A daemon is the runtime's server process, started in its own session (so its own process group), with
stdin closed and stdout+stderr appended to a log file in the state dir. Its record names it by pid *and*
create time, so a reused pid is never mistaken for it, and nothing is ever signalled unless it is
provably the process lf started.

What to launch arrives as an Instance (lf.daemon.instance), a frozen value a runtime worked out; the record
carries it as it is, and nothing here changes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from lf.daemon import logpump
from lf.daemon.health import Health, probe_once
from lf.daemon.instance import Instance
from lf.daemon.process import (
    command_matches,
    family,
    mapped_files,
    port_is_free,
    port_owner,
    process_create_time,
    session_listens,
    terminate_group,
    tree,
)
from lf.daemon.records import NO_PROJECT, CorruptRecord, RuntimeRecord, StateStore, project_label
from lf.daemon.states import State, check_transition
from lf.errors import ExitStatus, LfError, StartError
from lf.files import exclusive_lock, read_tail
from lf.platform import require_daemons, termination_signals

LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class StartResult:
    record: RuntimeRecord
    already_running: bool
    health: Health | None = None
    note: str | None = None
    changed: tuple[str, ...] = ()  # already running, but with other settings than asked for: `name: old → new`
    gateway: str | None = None  # started by this lf serve (its record's name), which serves the entry


@dataclass(frozen=True)
class StopResult:
    name: str
    was_running: bool
    escalated: bool = False  # SIGKILL was needed
    note: str = ""
    project: str | None = None  # the project whose instance it is ("namespace/name"; None: no project)
    elsewhere: tuple = ()  # not running here: the projects that run an instance of this name


def choose_port(
    host: str,
    port: int,
    auto: bool,
    taken: set[int] | frozenset[int] = frozenset(),
    store: StateStore | None = None,
    span: int = 100,
) -> int:
    """`port` if it is free; with `auto` (nobody chose it) the first free one counting up from it. A port
    held by one of lf's own instances is named as such, with the command that stops it. A port a live
    instance is recorded with counts as taken even before its engine binds it (callers hold the ports
    lock of `start`, so two launches never choose the same one)."""
    store = store or StateStore()
    recorded = {r.port: r for r in store.all_records() if r.process_alive()}  # every project's
    if not auto:
        holder = recorded.get(port)
        if holder is None and (port in taken or not port_is_free(host, port)):
            owner, pid = port_owner(port)
            holder = _instance_holding(pid, store) if pid else None
            if holder is None:
                raise StartError(
                    f"port {port} on {host} is already in use by {owner}",
                    hint="stop that process, or choose another port with --port",
                )
        if holder is not None:
            raise StartError(
                f"port {port} on {host} is already in use by lf's instance {describe_instance(holder, store)} (pid {holder.pid})",
                hint=f"{stop_command(holder, store)}, or choose another port with --port",
            )
        return port
    for candidate in range(port, port + span):
        if candidate not in taken and candidate not in recorded and port_is_free(host, candidate):
            return candidate
    raise StartError(f"no free port in {port}-{port + span - 1} on {host}", hint="choose one with --port")


def _instance_holding(pid: int, store: StateStore) -> RuntimeRecord | None:
    """The recorded instance (of any project) `pid` belongs to: the daemon itself or one of its children."""
    pids = family(pid)
    return next((r for r in store.all_records() if r.pid in pids and r.process_alive()), None)


def describe_instance(record: RuntimeRecord, store: StateStore) -> str:
    """`'name'`, with its project when it is not the one `store` holds."""
    if record.project == store.project:
        return repr(record.name)
    return f"{record.name!r} of {project_label(record.project, record.instance.project_folder)}"


def stop_command(record: RuntimeRecord, store: StateStore) -> str:
    """The command that stops `record`'s instance, from where the user is (`store`'s project)."""
    if record.project == store.project:
        return f"lf runtime stop {record.name}"
    return f"lf runtime stop {record.name} --project {record.project or NO_PROJECT}"


def start(
    name: str,
    store: StateStore,
    plan_for: Callable[[], Instance],
    *,
    wait: bool = True,
    timeout: float | None = None,
    on_wait: Callable[[Loading], None] | None = None,
    after_healthy: Callable[[RuntimeRecord, Health | None, float], Health | None] | None = None,
) -> StartResult:
    """Start the instance `name` (or find it running) and, unless wait=False, wait until it is healthy.

    `plan_for` is called under the instance's lock, and only when something must be launched, so
    concurrent starts make one daemon. If the wait is interrupted (Ctrl-C) or fails, what this call
    launched is stopped again: no half-started orphan is left behind.
    """
    require_daemons()  # Windows: a clear error, not a traceback from the first POSIX call
    launched: logpump.Launched | None = None
    record: RuntimeRecord | None = None
    try:
        with store.lock(name):
            existing = store.load_or_none(name)  # an unreadable one: a fresh start replaces it
            if existing is not None and existing.process_alive():
                record = existing
            else:
                check_transition(State.CRASHED if existing is not None else State.STOPPED, State.STARTING)
                # one launch at a time across lf processes, from choosing a port until the record that
                # claims it is saved: two starts never pick the same free port
                with ports_lock(store):
                    plan = plan_for()
                    with _signals_deferred():  # a signal now would leave a daemon without a record
                        record, launched = launch(plan, store)
        if not wait:
            return StartResult(record, already_running=launched is None, note="not waiting for health (--no-wait)")
        timeout = record.start_timeout if timeout is None else timeout
        health = wait_until_healthy(record, timeout, launched, on_wait)
        if after_healthy is not None:
            health = after_healthy(record, health, timeout) or health
    except BaseException:
        # Ctrl-C, SIGTERM, SIGHUP or a failure before healthy: what this call launched goes away again
        # (with --no-wait, only until the record is saved; after that the daemon is on its own)
        if launched is not None and record is not None and wait:
            stop(name, store, timeout=5.0, only_pid=record.pid)
        raise
    return StartResult(record, already_running=launched is None, health=health)


@contextmanager
def ports_lock(store: StateStore) -> Iterator[None]:
    from lf.dirs import ensure_private_dir

    store.ensure()
    # one lock for the whole state dir (every project's ports); not a valid instance name: no clash
    with exclusive_lock(ensure_private_dir(store.root / "locks") / ".ports.lock"):
        yield


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends, then act on the first one that came. Only
    the main thread can set handlers; the gateway's worker threads never receive signals anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _frame: held.append(signum)) for signum in _HELD_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if held:
            signal.raise_signal(held[0])


_HELD_SIGNALS = (signal.SIGINT, *termination_signals())


def launch(plan: Instance, store: StateStore) -> tuple[RuntimeRecord, logpump.Launched]:
    """Launch the instance as a daemon and write its record. The caller holds the instance's lock.

    The daemon's stdout and stderr reach its log through its log pump (lf.daemon.logpump), a small process
    in its process group that appends them and rotates the log at LF_LOG_MAX_BYTES. The log is opened here
    first, never through a symlink, so a start in a state dir that cannot be written fails before anything runs.
    The record is saved before the engine may run (the launcher waits for lf's `go`): should lf be killed at
    any instant of this, either no engine runs or a record names it. Whatever fails, the launcher is reaped."""
    from lf.daemon.records import RecordNotRemoved
    from lf.files import open_append, write_error

    try:
        max_bytes, backups = logpump.limits()
    except ValueError as exc:
        raise LfError(
            str(exc), hint="set it to a number of bytes (0: never rotate), or unset it for the default"
        ) from None
    if plan.project != store.project:
        raise ValueError(f"{plan.name} belongs to {project_label(plan.project)}, not to {project_label(store.project)}")
    log_path = store.log_path(plan.name)
    store.ensure()
    try:
        store.remove(plan.name)  # a stale record (crashed process) or a corrupt one
    except RecordNotRemoved as exc:
        raise LfError(
            f"cannot start {plan.name}: its old record {exc.path} cannot be removed ({exc.reason})", hint=exc.fix
        ) from None
    fd = open_append(log_path)
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    header = f"\n--- lf: starting {plan.name} ({plan.runtime}, {plan.engine}) on {plan.host}:{plan.port} at {when}\n"
    try:
        try:
            os.write(fd, header.encode())
        except OSError as exc:
            raise write_error(log_path, exc) from exc
        launcher = logpump.Launcher.spawn(
            os.path.abspath(log_path),
            max_bytes,
            backups,
            list(plan.argv),  # execed in place of the launcher, once told to go
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            close_fds=True,
            env={**os.environ, **plan.env},
            cwd=str(store.root),
        )
    except OSError as exc:
        raise StartError(
            f"could not run {exc.filename or plan.argv[0]}: {exc.strerror or exc}", hint=plan.install_hint
        ) from exc
    finally:
        os.close(fd)
    saved = False
    try:
        pump_pid = launcher.wait_ready(timeout=30.0)
        if pump_pid is None:
            what = "exited" if launcher.exited() else "did not answer within 30s"
            raise StartError(
                f"could not start {plan.name}: its launcher {what}",
                hint=f"last lines of {log_path}:\n{read_tail(log_path, LOG_TAIL_LINES)}",
            )
        record = _record_of(plan, launcher.pid, pump_pid, log_path)
        store.save(record)
        saved = True
        finished = launcher.go(timeout=30.0)
        if launcher.failure is not None:
            raise StartError(f"could not run {plan.argv[0]}: {launcher.failure}", hint=plan.install_hint)
        if not finished:
            raise StartError(
                f"could not start {plan.name}: its launcher did not run it within 30s",
                hint=f"last lines of {log_path}:\n{read_tail(log_path, LOG_TAIL_LINES)}",
            )
    except BaseException:
        launcher.abandon()  # first nothing runs, then no record: never an engine without one
        if saved:
            try:
                store.remove(plan.name)
            except RecordNotRemoved:
                pass  # it names a process that is gone: the next start or stop clears it
        raise
    launcher.close()
    return record, logpump.Launched(launcher.proc, record.log_pump_pid, record.log_pump_create_time)


def _record_of(plan: Instance, pid: int, pump_pid: int, log_path) -> RuntimeRecord:
    """The record of `plan` launched as `pid` (the launcher: the engine keeps its pid and create time)."""
    pump_create_time = process_create_time(pump_pid)
    return RuntimeRecord(
        instance=plan,
        pid=pid,
        create_time=process_create_time(pid) or time.time(),
        started_at=time.time(),
        log_path=str(log_path),
        log_pump_pid=pump_pid if pump_create_time is not None else None,
        log_pump_create_time=pump_create_time,
    )


@dataclass(frozen=True)
class Loading:
    """How far a start is, while lf waits for it: seconds so far, the stage, and the percent where the engine
    says it (its runtime declares how: `[health] progress`, a pattern of its log)."""

    elapsed: float
    stage: str  # launching (no answer yet) | loading model (the engine says so) | starting (it answers, not ready)
    percent: float | None = None


def wait_until_healthy(
    record: RuntimeRecord,
    timeout: float,
    proc: logpump.Launched | None = None,
    on_wait: Callable[[Loading], None] | None = None,
) -> Health | None:
    """Poll the health endpoint until ready; fail fast if the process exits first."""
    probe = record.health_probe()
    started = time.monotonic()
    progress = _ProgressReader(record) if on_wait is not None and record.instance.progress else None
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
        if record.process_frozen():
            raise frozen_error(record)
        if probe is None:
            return None
        last = probe_once(probe, timeout=min(1.0, max(0.2, timeout)))
        if last.healthy:
            if proc is not None:
                _check_answered_by_daemon(record)
            return last
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            raise StartError(
                f"{record.name} did not become healthy within {timeout:g}s ({last.message})",
                hint=f"raise --timeout, or look at its log: lf runtime logs {record.name}\n{read_tail(record.log_path, 10)}",
            )
        if on_wait is not None:
            stage = "launching" if not last.reachable else "loading model" if last.status_code == 503 else "starting"
            on_wait(Loading(elapsed, stage, progress.percent() if progress else None))
        time.sleep(interval)
        if elapsed > 3.0:
            interval = min(interval * 1.5, 0.1)


class _ProgressReader:
    """The latest percent the engine's log states (by its runtime's pattern), read at most twice a second."""

    def __init__(self, record: RuntimeRecord):
        import re

        self.path = record.log_path
        self.pattern = re.compile(record.instance.progress or "")
        self.read_at = 0.0
        self.last: float | None = None

    def percent(self) -> float | None:
        now = time.monotonic()
        if now - self.read_at >= 0.5:
            self.read_at = now
            found = self.pattern.findall(read_tail(self.path, 20))
            if found:
                try:
                    self.last = float(found[-1])
                except ValueError:
                    pass
        return self.last


def frozen_error(record: RuntimeRecord, exit_status: ExitStatus = ExitStatus.START_FAILED) -> LfError:
    """What waiting on a process stopped by a signal (SIGSTOP) would come to: nothing, so say so at once."""
    return LfError(
        f"{record.name} is frozen: its process (pid {record.pid}) is stopped by a signal and answers nothing",
        hint=f"resume it with: kill -CONT {record.pid}, or start it afresh with: lf runtime restart {record.name}",
        exit_status=exit_status,
    )


def _check_answered_by_daemon(record: RuntimeRecord) -> None:
    """Health only counts when it comes from the process lf started: a foreign server that took the port
    between the free-port check and the engine's bind would otherwise pass for it."""
    if session_listens(record.pid, record.port) is False:
        owner, _pid = port_owner(record.port)
        raise StartError(
            f"port {record.port} is answered by {owner}, not by the {record.runtime} lf started",
            hint=f"another server took the port while {record.name} was starting; stop that process, or choose another port with --port",
        )


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
        if not record.process_alive() or not command_matches(record.pid, list(record.instance.argv)):
            # nothing is signalled: with the recorded process gone, what sits in its old group has no identity
            # lf can prove (a bystander, or a process the system gave that group id to since)
            store.remove(name)
            return StopResult(name, False, note="was not running (its process had exited); record cleaned up")
        leftovers = (
            held_files(record.pid, list(record.instance.leftover_files)) if record.instance.leftover_files else []
        )
        check_transition(State.FROZEN if record.process_frozen() else State.RUNNING, State.STOPPING)
        store.mark_stopping(name)  # `lf runtime status` says "stopping" until it is gone
        escalated = terminate_group(record.pid, timeout)
        removed = remove_files(leftovers)
        store.remove(name)
        note = (
            "stopped"
            + (" (needed SIGKILL)" if escalated else "")
            + (f"; removed {removed} file(s) it left behind" if removed else "")
        )
        return StopResult(name, True, escalated, note=note)


def held_files(pid: int, patterns: list[str]) -> list[str]:
    """The files matching `patterns` that `pid` or its descendants have open or mapped now: the ones this
    instance made. Taken before it is stopped, since a process killed in the middle leaves them behind,
    and another instance's files (same names, same user) are never anyone's but their own processes'."""
    import fnmatch

    import psutil

    found: set[str] = set()
    for proc in tree(pid):
        paths: list[str] = []
        try:
            paths += [f.path for f in proc.open_files()]
            paths += mapped_files(proc)
        except psutil.Error:
            continue
        found.update(p for p in paths if any(fnmatch.fnmatchcase(p, pattern) for pattern in patterns))
    return sorted(found)


def remove_files(paths: list[str]) -> int:
    removed = 0
    for path in paths:
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass  # the process removed it itself on its way out
        except OSError:
            pass  # not ours to remove after all (permissions): left as it is
    return removed
