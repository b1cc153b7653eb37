"""Processes: is a recorded process still ours, how to stop a process tree, who holds a port.

A pid alone is not an identity: pids get reused. A record stores the process's create time, and a live
process only counts as ours when its create time matches. On Linux this reads /proc directly so the
status path does not pay for importing psutil; elsewhere, and for everything that signals or inspects
other processes, psutil is imported where it is used.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Collection

CREATE_TIME_TOLERANCE = 0.5  # seconds: /proc has clock-tick resolution; psutil derives the same value

_boot_time: float | None = None
_clock_ticks: int | None = None


def _linux_proc_stat(pid: int) -> tuple[str, float] | None:
    """(state letter, create time as epoch seconds) from /proc/<pid>/stat, None if gone."""
    global _boot_time, _clock_ticks
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name may hold spaces and parentheses: split after the last ')'
    rest = data[data.rfind(")") + 2 :].split()
    state = rest[0]
    start_ticks = int(rest[19])
    if _boot_time is None:
        with open("/proc/stat", "rb") as fh:
            for line in fh:
                if line.startswith(b"btime"):
                    _boot_time = float(line.split()[1])
                    break
        _clock_ticks = os.sysconf("SC_CLK_TCK")
    return state, (_boot_time or 0.0) + start_ticks / (_clock_ticks or 100)


def process_create_time(pid: int) -> float | None:
    """The create time of a live (non-zombie) process, or None if there is none."""
    if sys.platform.startswith("linux") and os.path.isdir("/proc/self"):
        found = _linux_proc_stat(pid)
        if found is None or found[0] in ("Z", "X"):
            return None
        return found[1]
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_frozen(pid: int) -> bool:
    """True when `pid` is stopped by a signal (SIGSTOP, SIGTSTP, a debugger): alive, but it answers nothing."""
    if sys.platform.startswith("linux") and os.path.isdir("/proc/self"):
        found = _linux_proc_stat(pid)
        return found is not None and found[0] in ("T", "t")
    import psutil

    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False


def is_same_process(pid: int, create_time: float) -> bool:
    """True when `pid` is alive and is the very process that was recorded (not a reused pid)."""
    actual = process_create_time(pid)
    return actual is not None and abs(actual - create_time) < CREATE_TIME_TOLERANCE


def command_matches(pid: int, command: list[str]) -> bool:
    """A second guard against pid reuse before signalling: the process runs the recorded command."""
    import psutil

    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    # argv[0] may differ (an interpreter reached through a symlink), and a script launched directly
    # shows up as `interpreter script …`; the arguments must still be exactly ours. No recorded
    # command proves nothing: it never matches.
    if not command:
        return False
    return cmdline == command or (len(command) > 1 and cmdline[1:] == command[1:]) or cmdline[1:] == command


# -- stopping a process tree -----------------------------------------------------------------------
def tree(pid: int) -> list:
    """The process `pid` and every descendant (psutil.Process), [] when it is gone."""
    import psutil

    try:
        leader = psutil.Process(pid)
        return [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return []


def tree_memory(pid: int, exclude: Collection[int] = ()) -> int | None:
    """Resident memory of a process and its descendants (an engine may run workers); None when it is gone.
    The trees of `exclude` (other instances: a gateway's are its descendants) count with their own, not here."""
    import psutil

    procs = tree(pid)
    others = {q.pid for p in procs if p.pid in exclude for q in tree(p.pid)}
    total = None
    for proc in procs:
        if proc.pid in others:
            continue
        try:
            total = (total or 0) + proc.memory_info().rss
        except psutil.Error:
            pass  # gone meanwhile
    return total


def terminate_group(pid: int, timeout: float) -> bool:
    """Stop the process `pid` leads, its process group and every descendant. True if SIGKILL was needed."""
    procs = tree(pid)
    pgid = pid  # started with start_new_session: the leader's pid is the group id
    _signal_all(pgid, procs, signal.SIGTERM)
    _signal_all(pgid, procs, signal.SIGCONT)  # a frozen (SIGSTOPped) process must run to act on SIGTERM
    alive = _wait_gone(procs, timeout, reap=pid)
    escalated = False
    stragglers = alive + _group_members(pgid, exclude={p.pid for p in procs})
    if stragglers:
        escalated = True
        _signal_all(pgid, stragglers, signal.SIGKILL)
        _wait_gone(stragglers, 5.0, reap=pid)
    _reap(pid)
    return escalated


def mapped_files(proc) -> list[str]:
    """The files `proc` (psutil.Process) has mapped into memory; [] where psutil cannot list mappings (macOS:
    psutil dropped memory_maps there, and POSIX shared memory is no file there anyway)."""
    maps = getattr(proc, "memory_maps", None)
    if maps is None:
        return []
    return [m.path for m in maps(grouped=True)]


def _wait_gone(procs: list, timeout: float, reap: int) -> list:
    """The processes still running after up to `timeout` s. An exited process counts as gone at once, even
    while it waits to be reaped: a daemon is not lf's child, and its parent (init, or a container's PID 1
    that never reaps) decides when the zombie goes away."""
    import time

    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        _reap(reap)  # when lf itself launched it (a start that failed), lf is the parent that must reap
        alive = [proc for proc in procs if _running(proc)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(delay)
        delay = min(delay * 1.5, 0.05)


def _running(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


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


# -- ports -----------------------------------------------------------------------------------------
def port_is_free(host: str, port: int) -> bool:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        exclusive = getattr(socket, "SO_EXCLUSIVEADDRUSE", None)
        if exclusive is not None:
            # Windows: SO_REUSEADDR there lets a bind share a port another socket listens on, so a busy port
            # would look free; SO_EXCLUSIVEADDRUSE fails on it (and a port in TIME_WAIT binds anyway)
            sock.setsockopt(socket.SOL_SOCKET, exclusive, 1)
        else:
            # like the servers themselves: a port in TIME_WAIT is free, one with a listener is not
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> tuple[str, int | None]:
    """Who listens on `port`, as far as this user may see: ('pid 1234 (python3)', 1234)."""
    import psutil

    try:
        listeners = [
            conn.pid
            for conn in psutil.net_connections(kind="inet")
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid
        ]
    except (psutil.AccessDenied, OSError):
        # macOS lists every socket only to root; this user's own processes still answer one by one
        listeners = _own_listeners(port)
    for pid in listeners:
        try:
            name = psutil.Process(pid).name()
        except psutil.Error:
            name = "?"
        return f"pid {pid} ({name})", pid
    return "another process (its owner is not visible to this user)", None


def _own_listeners(port: int) -> list[int]:
    """The pids of this user's processes that listen on `port`, asked process by process (Process.net_connections:
    psutil 6 or newer)."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                for c in proc.net_connections(kind="inet")
            ):
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue  # another user's, or gone
    return found


def session_listens(sid: int, port: int) -> bool | None:
    """Does a process of session `sid` (a daemon started with start_new_session, and whatever it spawned,
    even reparented) listen on TCP `port`? None when this cannot be told here (no permission)."""
    if sys.platform.startswith("linux") and os.path.isdir("/proc/self"):
        return _linux_session_listens(sid, port)
    import psutil

    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) != sid:
                continue
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                    return True
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except (PermissionError, psutil.AccessDenied):
            return None
    return False


def _linux_session_listens(sid: int, port: int) -> bool | None:
    """The same from /proc, in 4 ms (psutil takes 18 ms here, measured): the listening sockets on `port`,
    then whether a process of the session holds one of them."""
    sockets: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if sockets:
            break  # each table takes the kernel ~3.5 ms to write out (measured): read the second only if needed
        try:
            with open(table) as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        sockets.add(f"socket:[{fields[9]}]")
        except OSError:
            pass
    if not sockets:
        return None  # nothing listens in this network namespace: nothing to compare with
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != sid:
                continue
            folder = f"/proc/{entry}/fd"
            if any(os.readlink(f"{folder}/{fd}") in sockets for fd in os.listdir(folder)):
                return True
        except (ProcessLookupError, FileNotFoundError):
            continue
        except PermissionError:
            return None
    return False


def family(pid: int) -> set[int]:
    """`pid` and its ancestors: a listener may be a daemon's child."""
    import psutil

    try:
        return {pid, *(p.pid for p in psutil.Process(pid).parents())}
    except psutil.Error:
        return {pid}
