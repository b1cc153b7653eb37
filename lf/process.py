"""Is a recorded process still ours? Cheap checks for the status path.

A pid alone is not an identity: pids get reused. A record stores the process's create time, and a live
process only counts as ours when its create time matches. On Linux this reads /proc directly so the
status path does not pay for importing psutil; elsewhere it uses psutil.
"""

from __future__ import annotations

import os
import sys

CREATE_TIME_TOLERANCE = 0.5  # seconds: /proc has clock-tick resolution; psutil derives the same value

_boot_time: float | None = None
_clock_ticks: int | None = None


def _linux_proc_stat(pid: int) -> tuple[str, float] | None:
    """(state letter, create time as epoch seconds) from /proc/<pid>/stat, None if gone."""
    global _boot_time, _clock_ticks
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
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


def is_same_process(pid: int, create_time: float) -> bool:
    """True when `pid` is alive and is the very process that was recorded (not a reused pid)."""
    actual = process_create_time(pid)
    return actual is not None and abs(actual - create_time) < CREATE_TIME_TOLERANCE
