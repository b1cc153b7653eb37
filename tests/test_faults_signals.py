"""Faults of the second round: a signal at every step of a start, a foreign server on the port, a
record that proves nothing, a frozen runtime, a stop racing the reaper, two starts choosing a port at
once, a start that asks for other settings than the running instance has.

Steps of a start are hit exactly, not by luck: tests/fakes/pause/sitecustomize.py makes the `lf`
subprocess pause at a named function and say so, and the test acts at that moment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import run_lf

from fakes import (
    FAKES_DIR,
    daemons,
    is_gone,
    kill_daemons,
    read_record,
    record_file,
    spawn_sentinel,
    stop_process,
    use_fakes,
    wait_until,
)

BUG = "this is a bug in lf"


@pytest.fixture(autouse=True)
def state(isolated, monkeypatch):
    use_fakes(monkeypatch)
    state_dir = isolated / "state"
    yield state_dir
    kill_daemons(state_dir)


def paused_lf(tmp_path: Path, where: str, seconds: float, *args: str) -> tuple[subprocess.Popen, Path]:
    """`lf ARGS` that pauses `seconds` on entering `where` (module:Qualified.name) and writes a marker."""
    marker = tmp_path / f"paused-{time.monotonic_ns()}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(FAKES_DIR / "pause"), os.environ.get("PYTHONPATH", "")]),
        "LF_TEST_PAUSE": f"{where}:{seconds}",
        "LF_TEST_PAUSE_MARKER": str(marker),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "lf", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    if not wait_until(lambda: marker.exists() or proc.poll() is not None, timeout=30):
        proc.kill()
        pytest.fail(f"lf never reached {where}")
    assert proc.poll() is None, f"lf exited before reaching {where}: {proc.communicate()}"
    return proc, marker


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def assert_clean_exit(result, code: int) -> None:
    assert result.returncode == code, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    assert "Traceback" not in result.stderr and BUG not in result.stderr, result.stderr


# -- 1. a signal at every step of a start ---------------------------------------------------------
STEPS = {
    "planning": "lf.runtimes.launch:make_plan",  # before anything is launched
    "between-spawn-and-record": "lf.daemon.supervisor:process_create_time",  # the engine runs, no record yet
    "waiting-for-health": "lf.daemon.supervisor:wait_until_healthy",  # recorded, not healthy yet
}
SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
@pytest.mark.parametrize("step", STEPS.values(), ids=STEPS.keys())
def test_a_signal_at_any_step_of_a_start_leaves_no_process_and_no_record(state, tmp_path, free_port, step, signum):
    proc, _marker = paused_lf(tmp_path, step, 1.0, "runtime", "start", "fake", "--port", str(free_port))
    proc.send_signal(signum)
    result = finish(proc)
    assert_clean_exit(result, SIGNALS[signum])
    assert "Interrupted" in result.stderr or "Terminated by" in result.stderr
    assert wait_until(lambda: daemons(state) == [], timeout=10), f"a daemon was left behind: {daemons(state)}"
    assert not record_file(state, "fake").exists(), "a record was left behind"


# -- 2. a foreign server on the port ---------------------------------------------------------------
def test_health_from_a_foreign_server_on_the_port_is_not_taken_for_the_engine(state, tmp_path, free_port):
    # lf has checked the port is free and is about to launch; another server takes the port now
    proc, _marker = paused_lf(
        tmp_path, "lf.runtimes.launch:make_plan", 0.5, "runtime", "start", "fake", "--port", str(free_port)
    )
    foreign = subprocess.Popen(
        [sys.executable, "-m", "fakes.server", "--port", str(free_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        assert wait_until(
            lambda: any(
                c.laddr.port == free_port
                for c in psutil.Process(foreign.pid).net_connections()
                if c.status == psutil.CONN_LISTEN
            ),
            timeout=20,
        )
        result = finish(proc)
        assert_clean_exit(result, 7)
        assert f"port {free_port} is answered by pid {foreign.pid}" in result.stderr, result.stderr
        assert "not by the fake lf started" in result.stderr
        assert not record_file(state, "fake").exists()
        assert foreign.poll() is None, "the foreign server must not be touched"
    finally:
        stop_process(foreign)


# -- 4. a record with no command proves nothing ----------------------------------------------------
def test_a_record_without_a_command_never_gets_a_foreign_process_signalled(state, tmp_path, free_port):
    from lf.daemon.instance import Instance
    from lf.daemon.records import RuntimeRecord, StateStore

    marker = tmp_path / "signalled"
    sentinel = spawn_sentinel(marker)
    try:
        store = StateStore()
        store.ensure()
        store.save(
            RuntimeRecord(
                instance=Instance(
                    name="fake",
                    runtime="fake",
                    engine="fake-server",
                    argv=(),
                    host="127.0.0.1",
                    port=free_port,
                    api_base="/v1",
                    model="fake-model",
                ),
                pid=sentinel.pid,
                create_time=psutil.Process(sentinel.pid).create_time(),
                log_path=str(store.log_path("fake")),
                started_at=time.time(),
            )
        )
        status = run_lf("runtime", "status", "fake", "--json")
        assert json.loads(status.stdout)["instances"][0]["state"] != "running", status.stdout
        stopped = run_lf("runtime", "stop", "fake")
        assert_clean_exit(stopped, 0)
        time.sleep(0.3)
        assert not marker.exists(), "lf signalled a process it cannot prove it started"
        assert sentinel.poll() is None
    finally:
        stop_process(sentinel)


# -- 13. a frozen runtime --------------------------------------------------------------------------
def test_a_frozen_runtime_is_reported_frozen_fails_a_start_fast_and_stops_without_sigkill(state, free_port):
    assert_clean_exit(run_lf("runtime", "start", "fake", "--port", str(free_port)), 0)
    pid = read_record(state, "fake")["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        status = run_lf("runtime", "status", "fake", "--json")
        assert status.returncode == 6, status.stderr
        (inst,) = json.loads(status.stdout)["instances"]
        assert inst["state"] == "frozen" and f"kill -CONT {pid}" in inst["message"]

        start = run_lf("runtime", "start", "fake", "--port", str(free_port))  # the runtime's start_timeout is 20 s
        assert_clean_exit(start, 7)
        assert "fake is frozen" in start.stderr and f"kill -CONT {pid}" in start.stderr

        chat = run_lf("chat", "hi", "--runtime", "fake")
        assert_clean_exit(chat, 6)
        assert "fake is frozen" in chat.stderr

        stop = run_lf("runtime", "stop", "fake", "--timeout", "5", "--json")
        assert_clean_exit(stop, 0)
        assert json.loads(stop.stdout)["stopped"][0]["escalated"] is False, (
            "SIGTERM should have worked once the process was resumed"
        )
        assert is_gone(pid)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


# -- 15. stop does not wait for the reaper ---------------------------------------------------------
NO_REAPER = """
import ctypes, json, subprocess, sys
PR_SET_CHILD_SUBREAPER = 36
assert ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
# the daemon is reparented to this process when `lf runtime start` exits, and this process never reaps it
lf = [sys.executable, "-m", "lf", "runtime"]
subprocess.run([*lf, "start", "fake", "--port", sys.argv[1]], check=True, capture_output=True)
stop = subprocess.run([*lf, "stop", "fake", "--timeout", "5", "--json"], capture_output=True, text=True)
print(stop.stdout)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux's")
def test_stop_counts_an_exited_daemon_as_gone_before_it_is_reaped(state, free_port):
    # as in a container whose PID 1 never reaps: the exited engine stays a zombie
    result = subprocess.run(
        [sys.executable, "-c", NO_REAPER, str(free_port)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    (stopped,) = json.loads(result.stdout)["stopped"]
    assert stopped["was_running"] is True
    assert stopped["escalated"] is False, "a zombie was taken for a live process: SIGKILL after the whole timeout"


# -- 14. two lf processes choosing a port at once --------------------------------------------------
def test_two_starts_at_once_never_choose_the_same_port(state, tmp_path):
    (tmp_path / "work" / "llamafarm.yaml").write_text(
        textwrap.dedent(
            """\
            version: v1
            name: two
            namespace: tests
            runtime:
              models:
                - {name: one, provider: fake, model: fake-model}
                - {name: two, provider: fake, model: fake-model}
            """
        )
    )
    # `one` has chosen its port and pauses before launching; `two` starts meanwhile
    first, _marker = paused_lf(tmp_path, "lf.runtimes.launch:make_plan", 1.0, "runtime", "start", "one")
    second = run_lf("runtime", "start", "two")
    first_result = finish(first)
    assert_clean_exit(first_result, 0)
    assert_clean_exit(second, 0)
    assert read_record(state, "one")["port"] != read_record(state, "two")["port"]
    status = run_lf("runtime", "status", "--json")
    assert status.returncode == 0, status.stdout


# -- 11. a start that asks for other settings --------------------------------------------------------
def test_start_of_a_running_instance_with_other_settings_says_so(state, tmp_path, free_port):
    assert_clean_exit(run_lf("runtime", "start", "fake", "--port", str(free_port)), 0)
    same = run_lf("runtime", "start", "fake", "--port", str(free_port), "--json")
    assert_clean_exit(same, 0)
    assert json.loads(same.stdout)["started"][0]["changed"] == [] and "other settings" not in same.stderr

    other = run_lf(
        "runtime", "start", "fake", "--port", str(free_port), "--ctx-size", "2048", "--model", "other-model", "--json"
    )
    assert_clean_exit(other, 0)
    (started,) = json.loads(other.stdout)["started"]
    assert started["already_running"] is True
    assert started["changed"] == ["context_size: 4096 → 2048", "model: fake-model → other-model"]
    assert "fake is already running with other settings" in other.stderr
    assert "lf runtime stop fake, then this start again" in other.stderr

    moved = run_lf("runtime", "start", "fake", "--port", str(free_port + 1))
    assert_clean_exit(moved, 0)
    assert f"port: {free_port} → {free_port + 1}" in moved.stderr
