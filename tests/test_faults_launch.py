"""Faults of a launch: a process with more than 1024 descriptors open, a failed launch's leftovers, and
`kill -9` of lf at every instant of a start.

The kills hit named steps exactly (tests/fakes/pause/sitecustomize.py makes the `lf` subprocess pause
there and say so) and sweep the whole launch in small time steps from the moment lf enters it.
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
from conftest import default_model_installed, run_lf

from fakes import FAKES_DIR, daemons, kill_daemons, log_pumps, read_record, record_file, use_fakes, wait_until


@pytest.fixture
def state(isolated, monkeypatch):
    use_fakes(monkeypatch)
    state_dir = isolated / "state"
    yield state_dir
    kill_daemons(state_dir)


# -- more than 1024 descriptors open ---------------------------------------------------------------
MANY_FDS = textwrap.dedent(
    """
    import json, os, resource, signal, socket, sys

    import psutil

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1500, hard), hard))
    held = [socket.socket() for _ in range(400)]  # as a gateway's connections
    pipes = []
    while len(held) + 2 * len(pipes) < 1120:
        pipes.append(os.pipe())
    probe = os.pipe()
    assert min(probe) > 1100, probe  # every descriptor lf opens from here on is past select's limit
    for fd in probe:
        os.close(fd)

    from lf.core import actions
    from lf.core.targets import Overrides
    from lf.daemon import supervisor
    from lf.daemon.instance import Instance
    from lf.daemon.records import StateStore
    from lf.errors import LfError, StartError

    port, other_port = int(sys.argv[1]), int(sys.argv[2])
    out = {}
    (started,) = actions.start("llamacpp", None, Overrides(port=port))
    out["pid"] = started.record.pid
    out["healthy"] = started.health is not None and started.health.healthy

    plan = Instance(
        name="missing", runtime="llamacpp", engine="none", argv=("/nonexistent/engine", "--port", str(other_port)),
        host="127.0.0.1", port=other_port, api_base="/v1", model="none",
    )
    try:
        supervisor.start("missing", StateStore(), lambda: plan)
        out["failed"] = None
    except StartError as exc:
        out["failed"] = exc.message

    # the disk is full when the record is written: the launcher, waiting for its go, is left to exit
    engine = (sys.executable, "-c", "import time; time.sleep(60)", "--port", str(other_port))
    plan = Instance(
        name="full", runtime="llamacpp", engine="none", argv=engine, host="127.0.0.1", port=other_port,
        api_base="/v1", model="none",
    )
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (400, resource.RLIM_INFINITY))  # the log header fits, a record not
    try:
        supervisor.start("full", StateStore(), lambda: plan)
        out["full"] = None
    except LfError as exc:
        out["full"] = exc.message
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    me = psutil.Process()
    out["zombies"] = [c.pid for c in me.children() if c.status() == psutil.STATUS_ZOMBIE]
    out["children"] = [c.pid for c in me.children() if c.pid != out["pid"]]  # the engine is one
    out["open_fds"] = len(os.listdir("/proc/self/fd"))
    print(json.dumps(out))
    """
)


@pytest.mark.e2e
@pytest.mark.skipif(not default_model_installed(), reason="needs the default model: lf models fetch smollm2-135m")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts descriptors in /proc")
def test_a_process_with_1100_descriptors_open_starts_a_real_engine_and_reaps_a_failed_launch(isolated):
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1500:
        pytest.skip("the hard limit on open files is below 1500")
    from fakes import free_ports

    port, other_port = free_ports(2)
    try:
        result = subprocess.run(
            [sys.executable, "-c", MANY_FDS, str(port), str(other_port)], capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert out["healthy"] is True, out
        assert psutil.Process(out["pid"]).status() != psutil.STATUS_ZOMBIE  # outlives the process that started it
        assert out["failed"] and "could not run /nonexistent/engine" in out["failed"], out
        assert out["full"] and "File too large" in out["full"], out
        assert out["zombies"] == [], f"a failed launch left its launcher unreaped: {out}"
        assert out["children"] == [], f"a failed launch left a process behind: {out}"
        assert not record_file(isolated / "state", "missing").exists()
        assert not record_file(isolated / "state", "full").exists()
    finally:
        stopped = run_lf("runtime", "stop", "--all")
        assert stopped.returncode == 0, stopped.stderr


# -- kill -9 of lf at every instant of a start -----------------------------------------------------
def paused_start(tmp_path: Path, where: str, seconds: float, port: int) -> tuple[subprocess.Popen, Path]:
    """`lf runtime start fake` that pauses `seconds` on entering `where` and writes a marker then."""
    marker = tmp_path / f"paused-{time.monotonic_ns()}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(FAKES_DIR / "pause"), os.environ.get("PYTHONPATH", "")]),
        "LF_TEST_PAUSE": f"{where}:{seconds}",
        "LF_TEST_PAUSE_MARKER": str(marker),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "lf", "runtime", "start", "fake", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    if not wait_until(lambda: marker.exists() or proc.poll() is not None, timeout=30, interval=0.002):
        proc.kill()
        pytest.fail(f"lf never reached {where}")
    assert proc.poll() is None, f"lf exited before reaching {where}: {proc.communicate()}"
    return proc, marker


def of_this_start(marker: Path) -> list[psutil.Process]:
    """Every live process the killed `lf` started (its children inherit its environment, which names the
    marker): a fork about to exec the launcher, the launcher, its log pump, the engine."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("LF_TEST_PAUSE_MARKER") == str(marker):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def in_transit(proc: psutil.Process, state: Path) -> bool:
    """Still becoming something: lf's fork before its exec, or the launcher before its go (the log pump is
    a fork of the launcher too, but works from /)."""
    try:
        argv = proc.cmdline()
        return argv[1:3] == ["-m", "lf"] or (PUMP in argv[:4] and proc.cwd() == str(state))
    except psutil.Error:
        return False


PUMP = str(Path(__file__).resolve().parents[1] / "lf" / "daemon" / "logpump.py")


def settled(state: Path, marker: Path) -> bool:
    """Nothing of the start is in transit, twice in a row (a process in the middle of an exec may escape
    one look at /proc)."""
    before = of_this_start(marker)
    if any(in_transit(p, state) for p in before):
        return False
    time.sleep(0.1)
    after = of_this_start(marker)
    return {p.pid for p in after} == {p.pid for p in before} and not any(in_transit(p, state) for p in after)


def after_a_kill(state: Path, marker: Path) -> str:
    """Check what a start killed with SIGKILL left: no engine, or an engine its record names (which
    `lf runtime stop` then stops). Returns which of the two it was."""
    # a launcher still waiting for its go reads end of file and exits without running the engine
    assert wait_until(lambda: settled(state, marker), timeout=15), (
        f"a launcher was left waiting: {[(p.pid, p.cmdline()) for p in of_this_start(marker)]}"
    )
    left = of_this_start(marker)
    engines = [p for p in left if p.cwd() == str(state)]
    record = read_record(state, "fake")
    if not engines:
        assert wait_until(lambda: of_this_start(marker) == [], timeout=10), "a log pump outlived an abandoned start"
        return "no engine"
    described = [(p.pid, p.cmdline()) for p in left]
    assert record is not None, f"an engine runs and no record names it: {described}"
    (engine,) = engines
    assert engine.pid == record["pid"], f"the record names pid {record['pid']}, the engine is {described}"
    assert abs(engine.create_time() - record["create_time"]) < 0.5
    stop = run_lf("runtime", "stop", "fake")
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.strip().startswith("fake: stopped"), stop.stdout
    assert wait_until(lambda: of_this_start(marker) == [], timeout=10)
    assert not record_file(state, "fake").exists()
    return "engine recorded"


# every step of a launch, with what a kill there must leave
STEPS = {
    "lf.daemon.logpump:Launcher.spawn": "no engine",  # nothing runs yet
    "lf.daemon.logpump:Launcher.wait_ready": "no engine",  # the launcher is starting
    "lf.daemon.supervisor:process_create_time": "no engine",  # the launcher waits for go, no record yet
    "lf.daemon.records:atomic_write": "no engine",  # the record is being written
    "lf.daemon.logpump:Launcher.go": "no engine",  # the record is saved, the engine does not run yet
    "lf.daemon.supervisor:wait_until_healthy": "engine recorded",  # the engine runs
}


def test_kill_9_at_any_step_of_a_start_leaves_no_engine_without_a_record(state, tmp_path, free_port):
    outcomes = {}
    for where in STEPS:
        proc, marker = paused_start(tmp_path, where, 2.0, free_port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        outcomes[where] = after_a_kill(state, marker)
    assert outcomes == STEPS
    assert "the start was abandoned before the engine ran" in (state / "logs" / "fake.log").read_text()


SWEEP_STEP = 0.003  # s between two kills
SWEEP_RUNS = 50  # at least; the sweep goes on until a kill comes after the launch, so load cannot shorten it
PAUSE = 0.3  # s lf pauses on entering launch(): time for this test to see the marker


@pytest.mark.slow
def test_kill_9_swept_over_a_whole_launch_never_leaves_an_engine_without_a_record(state, tmp_path, free_port):
    outcomes: list[tuple[float, str]] = []
    run = 0
    while True:
        proc, marker = paused_start(tmp_path, "lf.daemon.supervisor:launch", PAUSE, free_port)
        entered = marker.stat().st_mtime  # when lf entered launch()
        delay = entered + PAUSE + run * SWEEP_STEP - time.time()
        if delay > 0:
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        outcomes.append((round(run * SWEEP_STEP * 1000), after_a_kill(state, marker)))
        run += 1
        if run >= SWEEP_RUNS and all(o == "engine recorded" for _ms, o in outcomes[-5:]):
            break
        assert run < 300, f"the launch never finished within the sweep: {outcomes}"
    print(f"\n{run} kills, ms after launch() began → outcome: {outcomes}")
    assert any(o == "no engine" for _ms, o in outcomes)
    stopped = run_lf("runtime", "stop", "--all")
    assert stopped.returncode == 0, stopped.stderr
    assert daemons(state) == [] and log_pumps(state) == []
