"""Start, stop and inspect runtime daemons.

A daemon is the runtime's server process, started in its own session (so its own process group), with
stdin closed and stdout+stderr appended to a log file in the state dir. Its record (lf.state) names it
by pid *and* create time, so a reused pid is never mistaken for it, and nothing is ever signalled
unless it is provably the process lf started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lf.errors import LfError, StartError
from lf.health import Health, probe_once
from lf.process import is_same_process, process_create_time
from lf.registry import Runtime
from lf.state import CorruptRecord, RuntimeRecord, StateStore

LOG_TAIL_LINES = 20


@dataclass
class InstanceSpec:
    """Everything needed to start one instance of a runtime."""

    name: str
    runtime: Runtime
    model: str  # the model's name as the user gave it
    model_path: str | None
    host: str
    port: int
    port_auto: bool  # True when nobody chose the port: lf may move to the next free one
    context_size: int | None = None
    threads: int | None = None
    settings: dict = field(default_factory=dict)  # runtime-specific settings (provider_config)
    api_key: str | None = None
    overrides: dict = field(default_factory=dict)  # command-line settings, kept so `restart` reapplies them
    project_folder: Path | None = None  # relative model and checkpoint paths are relative to llamafarm.yaml
    hook_state: dict = field(default_factory=dict)  # what a runtime's build_argv hook hands its after_healthy

    @property
    def base_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}{self.runtime.api_base}"


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@dataclass
class StartResult:
    record: RuntimeRecord
    already_running: bool
    health: Health | None = None
    note: str | None = None


@dataclass
class StopResult:
    name: str
    was_running: bool
    escalated: bool = False  # SIGKILL was needed
    note: str = ""


# -- ports ---------------------------------------------------------------------------------------
def port_is_free(host: str, port: int) -> bool:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # like the servers themselves: a port in TIME_WAIT is free, one with a listener is not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> str:
    """'pid 1234 (python3)' for whoever listens on `port`, as far as this user may see."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                try:
                    name = psutil.Process(conn.pid).name()
                except psutil.Error:
                    name = "?"
                return f"pid {conn.pid} ({name})"
    except (psutil.AccessDenied, OSError):
        pass
    return "another process (its owner is not visible to this user)"


def choose_port(spec: InstanceSpec, taken: set[int] | None = None, span: int = 100) -> int:
    taken = taken or set()
    if not spec.port_auto:
        if spec.port in taken or not port_is_free(spec.host, spec.port):
            raise StartError(
                f"port {spec.port} on {spec.host} is already in use by {port_owner(spec.port)}",
                hint="stop that process, or choose another port with --port",
            )
        return spec.port
    for port in range(spec.port, spec.port + span):
        if port not in taken and port_is_free(spec.host, port):
            return port
    raise StartError(f"no free port in {spec.port}-{spec.port + span - 1} on {spec.host}", hint="choose one with --port")


# -- start ---------------------------------------------------------------------------------------
def build_argv(spec: InstanceSpec) -> tuple[list[str], str]:
    resolved = spec.runtime.require_engine()
    # provider settings first: the resolved host, port and sizes (flag > env > file) must win
    values = {k: str(v) for k, v in spec.settings.items() if isinstance(v, (str, int, float))}
    values |= {
        "exe": resolved.exe or "",
        "python": resolved.python,
        "model": spec.model,
        "model_path": spec.model_path or spec.model,
        "host": spec.host,
        "port": str(spec.port),
        "context_size": str(spec.context_size),
        "threads": str(spec.threads or default_threads()),
    }
    hooks = spec.runtime.hooks()
    if hooks is not None and hasattr(hooks, "build_argv"):
        return hooks.build_argv(spec, resolved, values), resolved.engine.name
    try:
        argv = [part.format(**values) for part in resolved.engine.argv]
    except KeyError as exc:
        raise LfError(f"runtime {spec.runtime.name!r} needs the setting {exc.args[0]!r}") from None
    return argv, resolved.engine.name


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def start(
    spec: InstanceSpec,
    store: StateStore,
    *,
    wait: bool = True,
    timeout: float | None = None,
    taken_ports: set[int] | None = None,
    on_wait: Callable[[float], None] | None = None,
) -> StartResult:
    """Start `spec` as a daemon (or find it running) and, unless wait=False, wait until it is healthy.

    If the wait is interrupted (Ctrl-C) or fails, what this call launched is stopped again: no
    half-started orphan is left behind.
    """
    timeout = spec.runtime.start_timeout if timeout is None else timeout
    launched: subprocess.Popen | None = None
    with store.lock(spec.name):
        existing = store.load_or_none(spec.name)  # an unreadable one: a fresh start replaces it
        if existing is not None and is_same_process(existing.pid, existing.create_time):
            record = existing
        else:
            record, launched = _launch(spec, store, taken_ports)
    if not wait:
        return StartResult(record, already_running=launched is None, note="not waiting for health (--no-wait)")
    try:
        health = wait_until_healthy(record, timeout, launched, on_wait)
        hooks = spec.runtime.hooks()
        if hooks is not None and hasattr(hooks, "after_healthy"):
            health = hooks.after_healthy(spec, record, health, timeout) or health
    except BaseException:
        if launched is not None:
            stop(spec.name, store, timeout=5.0, only_pid=record.pid)
        raise
    return StartResult(record, already_running=launched is None, health=health)


def _launch(spec: InstanceSpec, store: StateStore, taken_ports: set[int] | None) -> tuple[RuntimeRecord, subprocess.Popen]:
    store.remove(spec.name)  # a stale record (crashed process) or a corrupt one
    spec.port = choose_port(spec, taken_ports)
    argv, engine = build_argv(spec)
    log_path = store.log_path(spec.name)
    store.ensure()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.chmod(log_path, 0o600)
    header = f"\n--- lf: starting {spec.name} ({spec.runtime.name}, {engine}) on {spec.host}:{spec.port} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    os.write(fd, header.encode())
    env = dict(os.environ)
    hooks = spec.runtime.hooks()
    if hooks is not None and hasattr(hooks, "process_env"):
        env.update(hooks.process_env(spec))
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and process group: survives the terminal, stoppable as a group
            close_fds=True,
            env=env,
            cwd=str(store.root),
        )
    except OSError as exc:
        raise StartError(f"could not run {argv[0]}: {exc.strerror or exc}", hint=spec.runtime.install_hint()) from exc
    finally:
        os.close(fd)
    create_time = process_create_time(proc.pid) or time.time()
    health_path = spec.runtime.health_path
    record = RuntimeRecord(
        name=spec.name,
        runtime=spec.runtime.name,
        pid=proc.pid,
        create_time=create_time,
        host=spec.host,
        port=spec.port,
        base_url=spec.base_url,
        model=spec.model,
        model_path=spec.model_path,
        command=argv,
        log_path=str(log_path),
        started_at=time.time(),
        engine=engine,
        health_url=f"http://{_url_host(spec.host)}:{spec.port}{health_path}" if health_path else None,
        extra={"health_ready": spec.runtime.health_ready, "start_timeout": spec.runtime.start_timeout, "overrides": spec.overrides},
    )
    try:
        store.save(record)
    except BaseException:
        _terminate_group(proc.pid, 2.0)
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
    last: Health | None = None
    while True:
        exited = proc.poll() is not None if proc is not None else not is_same_process(record.pid, record.create_time)
        if exited:
            code = proc.returncode if proc is not None else None
            detail = f" with exit code {code}" if code is not None else ""
            raise StartError(
                f"{record.name} exited{detail} before it became healthy",
                hint=f"last lines of {record.log_path}:\n{log_tail(record.log_path, LOG_TAIL_LINES)}",
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
                hint=f"raise --timeout, or look at its log: lf runtime logs {record.name}\n{log_tail(record.log_path, 10)}",
            )
        if on_wait is not None:
            on_wait(elapsed)
        time.sleep(interval)
        if elapsed > 3.0:
            interval = min(interval * 1.5, 0.1)


def log_tail(path: str | Path, lines: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.rstrip("\n").splitlines()[-lines:])


# -- stop ----------------------------------------------------------------------------------------
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
        if not is_same_process(record.pid, record.create_time) or not _command_matches(record):
            store.remove(name)
            return StopResult(name, False, note="was not running (its process had exited); record cleaned up")
        escalated = _terminate_group(record.pid, timeout)
        store.remove(name)
        return StopResult(name, True, escalated, note="stopped" + (" (needed SIGKILL)" if escalated else ""))


def _command_matches(record: RuntimeRecord) -> bool:
    """A second guard against pid reuse before signalling: the process runs the recorded command."""
    import psutil

    try:
        cmdline = psutil.Process(record.pid).cmdline()
    except psutil.Error:
        return False
    command = record.command
    # argv[0] may differ (an interpreter reached through a symlink), and a script launched directly
    # shows up as `interpreter script …`; the arguments must still be exactly ours
    return not command or cmdline == command or (len(command) > 1 and cmdline[1:] == command[1:]) or cmdline[1:] == command


def _terminate_group(pid: int, timeout: float) -> bool:
    """Stop the process `pid` leads, its process group and every descendant. True if SIGKILL was needed."""
    import psutil

    try:
        leader = psutil.Process(pid)
        procs = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    pgid = pid  # started with start_new_session: the leader's pid is the group id
    _signal_all(pgid, procs, signal.SIGTERM)
    _gone, alive = psutil.wait_procs(procs, timeout=timeout)
    escalated = False
    stragglers = alive + _group_members(pgid, exclude={p.pid for p in procs})
    if stragglers:
        escalated = True
        _signal_all(pgid, stragglers, signal.SIGKILL)
        psutil.wait_procs(stragglers, timeout=5.0)
    _reap(pid)
    return escalated


def _signal_all(pgid: int, procs: list, signum: int) -> None:
    import psutil

    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in procs:  # descendants that moved to their own group or session
        try:
            proc.send_signal(signum)
        except psutil.Error:
            pass


def _group_members(pgid: int, exclude: set[int]) -> list:
    import psutil

    members = []
    for proc in psutil.process_iter():
        if proc.pid in exclude:
            continue
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return members


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: init reaps it
