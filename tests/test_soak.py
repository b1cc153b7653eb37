"""Soak: 200 start/stop cycles of a light fake runtime, then nothing may be left: no process, no record,
no zombie, no file descriptor the cycles opened and forgot."""

from __future__ import annotations

import os
import sys
import time

import psutil
import pytest

from fakes import daemons, kill_daemons, use_fakes

CYCLES = 200

pytestmark = pytest.mark.slow


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else psutil.Process().num_fds()


def zombie_children() -> list[int]:
    return [p.pid for p in psutil.Process().children(recursive=True) if p.status() == psutil.STATUS_ZOMBIE]


def test_200_start_stop_cycles_leave_nothing_behind(isolated, monkeypatch, free_port):
    use_fakes(monkeypatch)
    from lf.core.actions import start_spec
    from lf.daemon.records import StateStore
    from lf.daemon.supervisor import stop
    from lf.runtimes.launch import InstanceSpec
    from lf.runtimes.registry import get_runtime

    state = isolated / "state"
    store = StateStore()
    runtime = get_runtime("fake")

    def cycle() -> int:
        spec = InstanceSpec(
            name="fake",
            runtime=runtime,
            model="fake-model",
            model_path=None,
            host="127.0.0.1",
            port=free_port,
            port_auto=False,
        )
        result = start_spec(spec, store=store, timeout=20)
        assert not result.already_running and result.health is not None and result.health.healthy
        stopped = stop("fake", store, timeout=5)
        assert stopped.was_running and not stopped.escalated, stopped.note
        return result.record.pid

    try:
        cycle()  # warm-up: lazy imports and caches open what they keep open
        fds_before = open_fds()
        started = time.monotonic()
        pids = {cycle() for _ in range(CYCLES)}
        duration = time.monotonic() - started
        fds_after = open_fds()

        assert len(pids) == CYCLES
        assert [
            pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        ] == []
        assert zombie_children() == []
        assert daemons(state) == []
        assert store.names() == []
        assert list((state / "instances").iterdir()) == []  # no temp files either
        assert fds_after <= fds_before, f"open fds grew from {fds_before} to {fds_after}"
        print(
            f"\nsoak: {CYCLES} cycles in {duration:.1f}s ({duration / CYCLES * 1000:.0f} ms each); open fds {fds_before} -> {fds_after}",
            file=sys.stderr,
        )
    finally:
        kill_daemons(state)
