from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

# The tests' Ctrl-C reaches lf as it reaches it from a terminal, even when the suite itself was started with SIGINT
# ignored (a shell's background job, nohup): an ignored SIGINT is inherited by every process the tests start, and
# Python then never turns SIGINT into KeyboardInterrupt.
signal.signal(signal.SIGINT, signal.default_int_handler)


def _runtime_env_vars() -> list[str]:
    """Every variable a runtime's manifest declares (a user's LLAMACPP_PORT must not leak into tests)."""
    from lf.runtimes.registry import all_runtimes

    return sorted({name for runtime in all_runtimes().values() for name in runtime.env.values()})


RUNTIME_ENV_VARS = [*_runtime_env_vars(), "LF_DEBUG"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test gets its own state, data and working dir: nothing touches the user's lf."""
    state = tmp_path / "state"
    monkeypatch.setenv("LF_STATE_DIR", str(state))
    monkeypatch.setenv("LF_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LF_CONFIG", raising=False)
    for name in RUNTIME_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    from lf.runtimes.registry import all_runtimes

    all_runtimes.cache_clear()
    yield tmp_path
    from fakes import kill_daemons

    kill_daemons(state)  # a failing test must not leave daemons behind for the next one


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_lf(*args: str, input: str | None = None, timeout: float = 180, env: dict | None = None, check: bool = False):
    """Run the real `lf` in a subprocess (as a user would), with the test's isolated environment."""
    proc = subprocess.run(
        [sys.executable, "-m", "lf", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"lf {' '.join(args)} exited {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
        )
    return proc


def default_model_installed() -> bool:
    from lf.models.catalog import CATALOG

    return CATALOG["smollm2-135m"].path() is not None


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from lf.cli import app

    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(app, list(args), input=input)

    return invoke
