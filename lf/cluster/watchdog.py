"""Stops a replica's engine when the replica is gone, however it went.

    python -m lf.cluster.watchdog REPLICA_PID REPLICA_CREATE_TIME INSTANCE PROJECT

lf's supervisor starts an engine in a session of its own, so that it survives the command that started it: right
for `lf runtime start`, wrong under Ray, which kills a replica with SIGKILL when its health check fails, when its
node is lost, or when it restarts it. Each replica starts this small process first (lf.cluster.replica), in its
own session too. It waits for the replica's exit (a pidfd where Linux has them: no polling), then stops the
engine the way `lf runtime stop` does (its process group and descendants, by its record), and any process still
carrying the replica's mark in its environment (an engine whose record was not written yet).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

MARKER_ENV = "LF_CLUSTER_REPLICA"  # in a replica's environment, so in its engine's: names the replica's instance


class Stopping(Exception):
    """SIGTERM: the node is going down (lf cluster stop signals each of its processes): clean up now."""


def wait_for_exit(pid: int, create_time: float | None) -> None:
    from lf.daemon.process import is_same_process

    if create_time is not None and not is_same_process(pid, create_time):
        return
    try:
        fd = os.pidfd_open(pid)  # Linux 5.3+
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while not poller.poll(60_000):
                pass
        finally:
            os.close(fd)
        return
    while create_time is None or is_same_process(pid, create_time):  # no pidfd: look twice a second
        if create_time is None and not _exists(pid):
            return
        time.sleep(0.5)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def marked(name: str) -> list[int]:
    """Processes of this user (not this one) whose environment carries the replica's mark."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "uids"]):
        if proc.pid == os.getpid() or (proc.info["uids"] and proc.info["uids"].real != os.getuid()):
            continue
        try:
            if proc.environ().get(MARKER_ENV) == name:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def clean_up(name: str, project: str | None) -> None:
    from lf.daemon import supervisor
    from lf.daemon.process import terminate_group
    from lf.daemon.records import StateStore

    result = supervisor.stop(name, StateStore(project=project), timeout=10.0)
    print(f"lf watchdog: {name}'s replica is gone; engine: {result.note}", flush=True)
    for pid in marked(name):
        print(f"lf watchdog: stopping pid {pid}, started by {name}'s replica", flush=True)
        terminate_group(pid, 5.0)


def _stopping(_signum, _frame) -> None:
    raise Stopping


def main(argv: list[str]) -> int:
    replica_pid, create_time, name, project = int(argv[1]), argv[2], argv[3], argv[4] or None
    signal.signal(signal.SIGTERM, _stopping)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    started = None if create_time == "None" else float(create_time)
    try:
        wait_for_exit(replica_pid, started)
    except Stopping:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough: finish cleaning up
    clean_up(name, project)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
