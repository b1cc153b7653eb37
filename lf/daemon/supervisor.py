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
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType

from lf.daemon.health import Health, local_url, probe_once
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
from lf.errors import ExitStatus, LfError, StartError
from lf.files import exclusive_lock, read_tail
from lf.platform import require_daemons, termination_signals

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
    settings: Mapping = field(
        default_factory=_empty
    )  # the model as named and the resolved settings (JSON-able), recorded
    owner: str = "cli"
    install_hint: str | None = None  # shown when the executable cannot be run
    project_folder: str | None = None  # the folder of the llamafarm.yaml it comes from (shown by status)
    leftover_files: tuple[str, ...] = ()  # globs of files its processes may leave behind (stop removes theirs)

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
    changed: tuple[str, ...] = ()  # already running, but with other settings than asked for: `name: old → new`


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
    return f"{record.name!r} of {project_label(record.project, record.project_folder)}"


def stop_command(record: RuntimeRecord, store: StateStore) -> str:
    """The command that stops `record`'s instance, from where the user is (`store`'s project)."""
    if record.project == store.project:
        return f"lf runtime stop {record.name}"
    return f"lf runtime stop {record.name} --project {record.project or NO_PROJECT}"


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
    require_daemons()  # Windows: a clear error, not a traceback from the first POSIX call
    launched: subprocess.Popen | None = None
    record: RuntimeRecord | None = None
    try:
        with store.lock(name):
            existing = store.load_or_none(name)  # an unreadable one: a fresh start replaces it
            if existing is not None and existing.process_alive():
                record = existing
            else:
                # one launch at a time across lf processes, from choosing a port until the record that
                # claims it is saved: two starts never pick the same free port
                with _ports_lock(store):
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
def _ports_lock(store: StateStore) -> Iterator[None]:
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


def launch(plan: LaunchPlan, store: StateStore) -> tuple[RuntimeRecord, subprocess.Popen]:
    """Launch the plan as a daemon and write its record. The caller holds the instance's lock.

    The daemon's stdout and stderr reach its log through its log pump (lf.daemon.logpump), a small process
    in its process group that appends them and rotates the log at LF_LOG_MAX_BYTES. The log is opened here
    first, never through a symlink, so a start in a state dir that cannot be written fails before anything runs."""
    from lf.daemon import logpump
    from lf.daemon.records import RecordNotRemoved
    from lf.files import open_append, write_error

    try:
        max_bytes, backups = logpump.limits()
    except ValueError as exc:
        raise LfError(
            str(exc), hint="set it to a number of bytes (0: never rotate), or unset it for the default"
        ) from None
    log_path = store.log_path(plan.name)
    store.ensure()
    try:
        store.remove(plan.name)  # a stale record (crashed process) or a corrupt one
    except RecordNotRemoved as exc:
        raise LfError(
            f"cannot start {plan.name}: its old record {exc.path} cannot be removed ({exc.reason})", hint=exc.fix
        ) from None
    fd = open_append(log_path)
    header = f"\n--- lf: starting {plan.name} ({plan.runtime}, {plan.engine}) on {plan.host}:{plan.port} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    status_read, status_write = os.pipe()
    try:
        try:
            os.write(fd, header.encode())
        except OSError as exc:
            raise write_error(log_path, exc) from exc
        proc = subprocess.Popen(
            logpump.argv(
                os.path.abspath(log_path), max_bytes, backups, status_write, list(plan.argv)
            ),  # execs plan.argv in place
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and process group: survives the terminal, stoppable as a group
            close_fds=True,
            pass_fds=(status_write,),
            env={**os.environ, **plan.env},
            cwd=str(store.root),
        )
    except BaseException as exc:
        os.close(status_read)
        if isinstance(exc, OSError):
            raise StartError(
                f"could not run {exc.filename or plan.argv[0]}: {exc.strerror or exc}", hint=plan.install_hint
            ) from exc
        raise
    finally:
        os.close(fd)
        os.close(status_write)
    try:
        pump_pid, failure, finished = logpump.read_report(status_read, timeout=30.0)
    finally:
        os.close(status_read)
    if failure is not None:
        proc.wait(10)  # the launcher exits at once, and its pump with it
        raise StartError(f"could not run {plan.argv[0]}: {failure}", hint=plan.install_hint)
    if pump_pid is None or not finished:
        terminate_group(proc.pid, 2.0)
        raise StartError(
            f"could not start {plan.name}: its launcher {'exited' if finished else 'did not run it within 30s'}",
            hint=f"last lines of {log_path}:\n{read_tail(log_path, LOG_TAIL_LINES)}",
        )
    pump_create_time = process_create_time(pump_pid)
    launched = logpump.Launched(proc, pump_pid, pump_create_time)
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
        settings=dict(plan.settings),
        owner=plan.owner,
        project=store.project,
        project_folder=plan.project_folder,
        log_pump_pid=pump_pid if pump_create_time is not None else None,
        log_pump_create_time=pump_create_time,
        leftover_files=list(plan.leftover_files),
    )
    try:
        store.save(record)
    except BaseException:
        terminate_group(proc.pid, 2.0)
        raise
    return record, launched


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
            on_wait(elapsed)
        time.sleep(interval)
        if elapsed > 3.0:
            interval = min(interval * 1.5, 0.1)


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
        if not record.process_alive() or not command_matches(record.pid, record.command):
            store.remove(name)
            return StopResult(name, False, note="was not running (its process had exited); record cleaned up")
        leftovers = held_files(record.pid, record.leftover_files) if record.leftover_files else []
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
