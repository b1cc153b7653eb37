"""Faults, each provoked for real: stale and foreign records, busy ports, crashing, hanging and stubborn
runtimes, concurrent commands, broken state, hostile configs, Ctrl-C. Fake runtimes live in tests/fakes/.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import default_model_installed, run_lf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakes import (
    SENTINEL,
    daemons,
    drop_dac_override,
    is_gone,
    kill_daemons,
    lf_process,
    read_record,
    record_file,
    record_files,
    spawn_sentinel,
    stop_process,
    use_fakes,
    wait_until,
)


@pytest.fixture(autouse=True)
def state(isolated, monkeypatch):
    """The test's state dir, with the fake runtimes visible (conftest kills whatever a test leaves running)."""
    use_fakes(monkeypatch)
    state_dir = isolated / "state"
    yield state_dir
    kill_daemons(state_dir)  # before conftest does: the records below must go only once nothing runs
    for path in record_files(state_dir):
        path.unlink()  # all killed above; some records here are corrupt on purpose


BUG = "this is a bug in lf"  # what the error boundary says about an unexpected exception


def assert_clean_exit(proc, code: int) -> None:
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    assert "Traceback" not in proc.stderr and BUG not in proc.stderr, proc.stderr


def assert_nothing_left(state: Path, name: str) -> None:
    assert daemons(state) == [], "processes left behind"
    assert not record_file(state, name).exists(), "record left behind"
    leftovers = [p.name for p in (state / "instances").glob(".*")] if (state / "instances").is_dir() else []
    assert leftovers == [], f"temp files left behind: {leftovers}"


def write_record(name: str, pid: int, create_time: float, port: int, log_lines: list[str] = ()) -> None:
    """A record as lf writes it, pointing at a process of the test's choosing."""
    from lf.daemon.instance import Instance
    from lf.daemon.records import RuntimeRecord, StateStore

    store = StateStore()
    store.ensure()
    log_path = store.log_path(name)
    log_path.write_text("".join(f"{line}\n" for line in log_lines))
    store.save(
        RuntimeRecord(
            instance=Instance(
                name=name,
                runtime="fake",
                engine="fake-server",
                argv=(sys.executable, "-m", "fakes.server", "--port", str(port)),
                host="127.0.0.1",
                port=port,
                api_base="/v1",
                model="fake-model",
                health_path="/health",
                health_ready="http-ok",
                start_timeout=20,
            ),
            pid=pid,
            create_time=create_time,
            log_path=str(log_path),
            started_at=time.time() - 60,
        )
    )


def start_fake(runtime: str, port: int, *args: str):
    result = run_lf("runtime", "start", runtime, "--port", str(port), *args)
    assert_clean_exit(result, 0)
    return result


# -- stale and foreign records -------------------------------------------------------------------
LEADER = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(child.pid, flush=True)
sys.stdin.read()
"""


def test_stale_record_is_reported_crashed_and_replaced_without_signalling_anyone(state, tmp_path, free_port):
    # The recorded process is gone, but a bystander still sits in its old process group: signalling
    # that group (instead of checking the recorded process first) would hit the bystander.
    marker = tmp_path / "signalled"
    leader = subprocess.Popen(
        [sys.executable, "-c", LEADER, SENTINEL, str(marker)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    bystander = psutil.Process(int(leader.stdout.readline()))
    from lf.daemon.process import process_create_time

    gone_pid, gone_create_time = leader.pid, process_create_time(leader.pid)
    leader.stdin.close()
    leader.wait(10)
    assert os.getpgid(bystander.pid) == gone_pid
    try:
        write_record(
            "fake", gone_pid, gone_create_time, free_port, ["fake: loading model", "fake: error: out of memory"]
        )

        status = run_lf("runtime", "status", "fake")
        assert_clean_exit(status, 3)
        assert re.search(r"^fake\s+fake\s+crashed\s", status.stdout, re.M), status.stdout
        assert "fake: error: out of memory" in status.stderr
        (inst,) = json.loads(run_lf("runtime", "status", "fake", "--json").stdout)["instances"]
        assert inst["state"] == "crashed" and inst["pid"] is None
        assert inst["log_tail"][-1] == "fake: error: out of memory"

        stop = run_lf("runtime", "stop", "fake")
        assert_clean_exit(stop, 0)
        assert "was not running" in stop.stdout
        assert not record_file(state, "fake").exists()

        write_record("fake", gone_pid, gone_create_time, free_port)
        started = start_fake("fake", free_port)
        assert "fake: running at" in started.stdout
        assert read_record(state, "fake")["pid"] != gone_pid
        run_lf("runtime", "stop", "fake", check=True)

        assert bystander.is_running() and bystander.status() != psutil.STATUS_ZOMBIE
        assert not marker.exists(), marker.read_text()
    finally:
        bystander.kill()


def test_recorded_pid_now_owned_by_a_foreign_process_is_never_signalled(state, tmp_path, free_port):
    marker = tmp_path / "signalled"
    foreign = spawn_sentinel(marker, start_new_session=True)  # leads its own group, like a daemon would
    try:
        # the pid was ours once; it now belongs to a younger process (same interpreter, so even the
        # command-line guard passes: only the create time tells them apart)
        write_record("fake", foreign.pid, psutil.Process(foreign.pid).create_time() - 3600, free_port)

        status = run_lf("runtime", "status", "fake", "--json")
        assert status.returncode == 3
        (inst,) = json.loads(status.stdout)["instances"]
        assert inst["state"] == "crashed" and inst["pid"] is None

        stop = run_lf("runtime", "stop", "fake", "--timeout", "1")
        assert_clean_exit(stop, 0)
        assert "was not running" in stop.stdout and not record_file(state, "fake").exists()

        write_record("fake", foreign.pid, psutil.Process(foreign.pid).create_time() - 3600, free_port)
        started = start_fake("fake", free_port)
        assert "already running" not in started.stdout
        assert read_record(state, "fake")["pid"] != foreign.pid
        run_lf("runtime", "stop", "fake", check=True)

        assert foreign.poll() is None, "the foreign process was killed"
        assert not marker.exists(), marker.read_text()
    finally:
        stop_process(foreign)


# -- ports ---------------------------------------------------------------------------------------
LISTENER = """
import socket, sys, time
sock = socket.socket()
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen()
print("ready", flush=True)
time.sleep(600)
"""


def foreign_listener(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_port_held_by_a_foreign_listener_is_refused_naming_its_owner(state, free_port):
    listener = foreign_listener(free_port)
    try:
        result = run_lf("runtime", "start", "fake", "--port", str(free_port))
        assert_clean_exit(result, 7)
        name = psutil.Process(listener.pid).name()
        assert f"port {free_port}" in result.stderr
        assert f"pid {listener.pid} ({name})" in result.stderr
        assert_nothing_left(state, "fake")
        assert listener.poll() is None
    finally:
        stop_process(listener)


def test_auto_assigned_port_moves_past_a_foreign_listener(state):
    from lf.runtimes.registry import get_runtime

    default_port = get_runtime("fake").default_port
    listener = foreign_listener(default_port)
    try:
        result = run_lf("runtime", "start", "fake")
        assert_clean_exit(result, 0)
        record = read_record(state, "fake")
        assert record["port"] != default_port and default_port < record["port"] < default_port + 100
        (inst,) = json.loads(run_lf("runtime", "status", "fake", "--json").stdout)["instances"]
        assert inst["state"] == "running" and inst["health"]["healthy"]
        run_lf("runtime", "stop", "fake", check=True)
    finally:
        stop_process(listener)


# -- runtimes that die, hang or resist -------------------------------------------------------------
def test_runtime_exiting_during_start_fails_fast_with_its_log(state, free_port):
    started = time.monotonic()
    result = run_lf("runtime", "start", "fake-bad-flag", "--port", str(free_port), "--timeout", "30")
    elapsed = time.monotonic() - started
    assert_clean_exit(result, 7)
    assert elapsed < 10, f"took {elapsed:.1f}s: waited for the timeout instead of noticing the exit"
    assert "exited with exit code 2 before it became healthy" in result.stderr
    assert "unrecognized arguments: --no-such-flag" in result.stderr  # the log tail
    assert_nothing_left(state, "fake-bad-flag")


@pytest.mark.e2e
def test_bad_model_file_fails_fast_with_the_engine_log(state, tmp_path, free_port):
    from fakes.hfhub import write_gguf

    # a header lf reads (a file it cannot read is refused before anything runs: test_faults_gguf.py), with
    # nothing of a model in it: the engine refuses it
    bad = write_gguf(tmp_path / "broken.gguf", "broken", padding=4096)
    started = time.monotonic()
    result = run_lf("runtime", "start", "llamacpp", "--model", str(bad), "--port", str(free_port), "--timeout", "60")
    elapsed = time.monotonic() - started
    assert_clean_exit(result, 7)
    assert elapsed < 20, f"took {elapsed:.1f}s: waited for the timeout instead of noticing the exit"
    assert "before it became healthy" in result.stderr
    assert "error: llama.cpp server failed to start" in result.stderr  # from the engine's log
    assert_nothing_left(state, "llamacpp")


@pytest.mark.e2e
@pytest.mark.skipif(not default_model_installed(), reason="needs the default model: lf models fetch smollm2-135m")
def test_sigkilled_runtime_is_crashed_and_chat_says_how_to_start_it(state, free_port):
    start_fake("llamacpp", free_port)
    pid = read_record(state, "llamacpp")["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: is_gone(pid))

    status = run_lf("runtime", "status", "llamacpp", "--json")
    assert status.returncode == 3
    (inst,) = json.loads(status.stdout)["instances"]
    assert inst["state"] == "crashed" and inst["pid"] is None

    down = run_lf("chat", "hi", "--no-auto-start", "--max-tokens", "4")
    assert_clean_exit(down, 3)
    assert "llamacpp is crashed" in down.stderr and "lf runtime start llamacpp" in down.stderr

    again = run_lf("chat", "Say hi", "--max-tokens", "8", env={"LLAMACPP_PORT": str(free_port)})
    assert_clean_exit(again, 0)
    assert "Starting llamacpp" in again.stderr and again.stdout.strip()
    new_pid = read_record(state, "llamacpp")["pid"]
    assert new_pid != pid and not is_gone(new_pid)
    run_lf("runtime", "stop", "llamacpp", check=True)
    assert_nothing_left(state, "llamacpp")


@pytest.mark.parametrize("json_out", [False, True], ids=["text", "json"])
def test_runtime_ignoring_sigterm_is_killed_after_the_timeout(state, free_port, json_out):
    start_fake("fake-ignore-term", free_port)
    pid = read_record(state, "fake-ignore-term")["pid"]
    stop = run_lf("runtime", "stop", "fake-ignore-term", "--timeout", "1", *(["--json"] if json_out else []))
    assert_clean_exit(stop, 0)
    if json_out:
        (result,) = json.loads(stop.stdout)["stopped"]
        assert result["was_running"] and result["escalated"]
    else:
        assert "stopped (needed SIGKILL)" in stop.stdout
    assert is_gone(pid)
    assert_nothing_left(state, "fake-ignore-term")


def test_stop_leaves_no_worker_behind(state, free_port):
    start_fake("fake-workers", free_port)
    record = read_record(state, "fake-workers")
    log = Path(record["log_path"]).read_text()
    workers = [int(pid) for pid in re.findall(r"worker pid (\d+)", log)]
    assert len(workers) == 3
    family = [record["pid"], *workers]
    assert all(not is_gone(pid) for pid in family)
    assert any(os.getsid(pid) != record["pid"] for pid in workers)  # one left the session
    assert any(psutil.Process(pid).ppid() != record["pid"] for pid in workers)  # one was orphaned

    stop = run_lf("runtime", "stop", "fake-workers")
    assert_clean_exit(stop, 0)
    assert stop.stdout.strip() == "fake-workers: stopped"  # every worker got SIGTERM: none needed SIGKILL
    assert [pid for pid in family if not is_gone(pid)] == []
    assert_nothing_left(state, "fake-workers")


def test_hung_runtime_status_is_bounded_and_unhealthy(state, tmp_path):
    config = tmp_path / "work" / "llamafarm.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            version: v1
            name: hung
            namespace: default
            runtime:
              models:
                - {name: hang-a, provider: fake-hang, model: fake-model}
                - {name: hang-b, provider: fake-hang, model: fake-model}
            """
        )
    )
    assert_clean_exit(run_lf("runtime", "start", "--no-wait"), 0)
    time.sleep(1.1)  # past the fake's start_timeout (1 s): no longer "starting"

    import threading

    from lf.config.project import load_optional
    from lf.core.status import collect
    from lf.daemon.records import StateStore

    probe_timeout = 0.5
    project = load_optional()
    reports = []
    started = time.monotonic()
    worker = threading.Thread(
        target=lambda: reports.append(collect(None, project, StateStore.of(project), probe_timeout)), daemon=True
    )
    worker.start()
    worker.join(probe_timeout + 10)  # fail, rather than hang, if a probe has no deadline
    elapsed = time.monotonic() - started
    assert reports, f"status still waiting after {elapsed:.1f}s"
    (report,) = reports
    assert elapsed < probe_timeout + 0.2, f"status took {elapsed:.2f}s"
    assert [(i.name, i.state.value, i.health.healthy) for i in report.instances] == [
        ("hang-a", "unhealthy", False),
        ("hang-b", "unhealthy", False),
    ]

    status = run_lf("runtime", "status", "--json", "--probe-timeout", str(probe_timeout), timeout=30)
    assert status.returncode == 6, status.stderr
    for inst in json.loads(status.stdout)["instances"]:
        assert inst["state"] == "unhealthy"
        assert inst["health"]["message"] == f"no answer within {probe_timeout:g}s"
    run_lf("runtime", "stop", "--all", check=True)
    assert daemons(state) == []


def test_runtime_dying_mid_stream_keeps_the_printed_text(state, free_port):
    start_fake("fake-midstream", free_port)
    chat = run_lf("chat", "hi", "--runtime", "fake-midstream")
    assert_clean_exit(chat, 9)
    assert chat.stdout == "Hello from the\n"  # the three tokens that arrived, and the line ended
    assert "broke mid-answer" in chat.stderr and "lf runtime status" in chat.stderr

    status = run_lf("runtime", "status", "fake-midstream", "--json")
    assert json.loads(status.stdout)["instances"][0]["state"] == "crashed"
    run_lf("runtime", "stop", "fake-midstream", check=True)


# -- concurrency ---------------------------------------------------------------------------------
def test_ten_concurrent_starts_make_exactly_one_daemon(state, free_port):
    procs = [lf_process("runtime", "start", "fake", "--port", str(free_port)) for _ in range(10)]
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        outputs.append((proc.returncode, stdout, stderr))
    assert [code for code, _, _ in outputs] == [0] * 10, outputs
    verbs = sorted("already" if "already running" in out else "started" for _, out, _ in outputs)
    assert verbs == ["already"] * 9 + ["started"], outputs
    running = daemons(state)
    assert [p.pid for p in running] == [read_record(state, "fake")["pid"]]
    run_lf("runtime", "stop", "fake", check=True)
    assert_nothing_left(state, "fake")


def test_start_and_stop_racing_leave_no_orphan_and_no_stale_record(state, free_port):
    start = ("runtime", "start", "fake", "--port", str(free_port))
    stop = ("runtime", "stop", "fake")
    orders = [(start, stop, start), (stop, start, start), (start, start, stop)]
    for round_ in range(9):
        procs = []
        for command in orders[round_ % 3]:
            procs.append(lf_process(*command))
            time.sleep(0.05 * (round_ // 3))  # all at once, then staggered so stops land mid-start
        for proc in procs:
            _, stderr = proc.communicate(timeout=60)
            assert "Traceback" not in stderr and BUG not in stderr, stderr

        record = read_record(state, "fake")
        running = [p.pid for p in daemons(state)]
        if record is None:
            assert running == [], f"round {round_}: processes without a record: {running}"
        else:
            assert running == [record["pid"]], f"round {round_}: record names {record['pid']}, running: {running}"
        run_lf("runtime", "stop", "fake", check=True)
        assert_nothing_left(state, "fake")


# -- broken state --------------------------------------------------------------------------------
VALID = {
    "name": "fake",
    "runtime": "fake",
    "pid": 4242,
    "create_time": 1.0,
    "host": "127.0.0.1",
    "port": 19410,
    "base_url": "http://127.0.0.1:19410/v1",
    "model": "fake-model",
    "command": ["python"],
    "log_path": "/nonexistent.log",
    "started_at": 1.0,
    "health_url": "http://127.0.0.1:19410/health",
    "extra": {},
}
CORRUPT = {
    "empty": b"",
    "truncated": json.dumps(VALID).encode()[:57],
    "not-utf8": b"\xff\xfe\x00garbage",
    "not-an-object": b"[1, 2, 3]",
    "missing-fields": b'{"name": "fake"}',
    "pid-is-text": json.dumps({**VALID, "pid": "4242"}).encode(),
    "pid-is-huge": json.dumps({**VALID, "pid": 2**70}).encode(),
    "extra-is-a-list": json.dumps({**VALID, "extra": []}).encode(),
    "command-is-text": json.dumps({**VALID, "command": "rm -rf /"}).encode(),
    "health-url-is-a-number": json.dumps({**VALID, "health_url": 7}).encode(),
    "name-escapes": json.dumps({**VALID, "name": "../../escape"}).encode(),
    "nan-create-time": json.dumps({**VALID, "create_time": float("nan")}).encode(),
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_record_warns_and_stop_cleans_it_up(state, free_port, content):
    from lf.daemon.records import StateStore

    StateStore().ensure()
    record_file(state, "fake").write_bytes(content)

    status = run_lf("runtime", "status")
    assert_clean_exit(status, 3)
    assert re.search(r"^fake\s+\?\s+unknown\s", status.stdout, re.M), status.stdout
    assert "Warning: the record" in status.stderr and "lf runtime stop fake" in status.stderr
    as_json = run_lf("runtime", "status", "--json")
    assert_clean_exit(as_json, 3)
    states = {i["name"]: i["state"] for i in json.loads(as_json.stdout)["instances"]}
    assert states["fake"] == "unknown"

    stop = run_lf("runtime", "stop", "fake")
    assert_clean_exit(stop, 0)
    assert "removed an unreadable record" in stop.stdout
    assert not record_file(state, "fake").exists()

    record_file(state, "fake").write_bytes(content)  # and a start replaces it
    start_fake("fake", free_port)
    assert read_record(state, "fake")["port"] == free_port
    run_lf("runtime", "stop", "fake", check=True)
    assert_nothing_left(state, "fake")


def run_lf_limited(*args: str, preexec) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lf", *args],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=preexec,
        env=dict(os.environ),
    )


@pytest.mark.parametrize("readonly", ["instances", "state"])
def test_unwritable_state_dir_is_a_clear_error(state, free_port, readonly):
    from lf.daemon.records import StateStore

    if readonly == "instances":
        StateStore().ensure()
        folder = state / "instances"
    else:
        folder = state
        folder.mkdir()
    folder.chmod(0o500)
    try:
        result = run_lf_limited("runtime", "start", "fake", "--port", str(free_port), preexec=drop_dac_override)
    finally:
        folder.chmod(0o700)
    assert_clean_exit(result, 1)
    assert re.search(r"^Error: (could not write|cannot create directory) .*Permission denied", result.stderr, re.M), (
        result.stderr
    )
    assert "permissions" in result.stderr  # the hint
    assert_nothing_left(state, "fake")


def _file_size_limit(limit: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process

    return preexec


def test_disk_full_while_starting_leaves_no_half_written_record(state, free_port):
    # files may grow to 400 bytes: the log header fits, the ~800-byte record does not
    result = run_lf_limited("runtime", "start", "fake", "--port", str(free_port), preexec=_file_size_limit(400))
    assert_clean_exit(result, 1)
    assert "Error: could not write" in result.stderr and "File too large" in result.stderr
    assert "free disk space" in result.stderr
    assert_nothing_left(state, "fake")


REWRITE = """
import sys
from pathlib import Path
from lf.errors import LfError
from lf.files import atomic_write
try:
    atomic_write(Path(sys.argv[1]), "x" * 10000)
except LfError as exc:
    print(exc.message)
"""


def test_disk_full_rewrite_keeps_the_previous_record_whole(tmp_path):
    folder = tmp_path / "instances"
    folder.mkdir()
    path = folder / "record.json"
    path.write_text('{"old": true}\n')
    result = subprocess.run(
        [sys.executable, "-c", REWRITE, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_file_size_limit(400),
    )
    assert result.returncode == 0, result.stderr
    assert "could not write" in result.stdout and "File too large" in result.stdout
    assert path.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in folder.iterdir()) == ["record.json"]


# -- hostile llamafarm.yaml ----------------------------------------------------------------------
BASE_CONFIG = {
    "version": "v1",
    "name": "fuzz",
    "namespace": "default",
    "runtime": {
        "default_model": "a",
        "models": [
            {
                "name": "a",
                "provider": "fake",
                "model": "fake-model",
                "provider_config": {"port": 19410, "host": "127.0.0.1"},
            },
            {
                "name": "b",
                "provider": "openai",
                "model": "gpt",
                "base_url": "http://127.0.0.1:1/v1",
                "api_key": "${KEY}",
                "model_api_parameters": {"temperature": 0.1},
            },
        ],
    },
}
PLAUSIBLE = st.sampled_from(
    [
        "fake",
        "openai",
        "llamacpp",
        "ollama",
        "a",
        "b",
        "v1",
        11634,
        128,
        0,
        65536,
        "0.0.0.0",
        "${KEY}",
        "${KEY:-x}",
        "http://127.0.0.1:9/v1",
        "../x",
        "",
    ]
)
SCALARS = st.one_of(
    PLAUSIBLE,
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


PATHS = list(_paths(BASE_CONFIG))


@st.composite
def mutated_configs(draw) -> bytes:
    import copy

    import yaml

    doc = copy.deepcopy(BASE_CONFIG)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(PATHS))
        value = draw(VALUES)
        if not path:
            doc = value
            continue
        parent = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            pass
    return yaml.safe_dump(doc, allow_unicode=draw(st.booleans())).encode()


YAML_FRAGMENTS = st.sampled_from(
    [
        "&a [1, 2]",
        "*a",
        "*undefined",
        "<<: *a",
        "!!python/object:os.system",
        "!!binary AAAA",
        "!!set {a, b}",
        "? [a, b]\n: c",
        "2001-12-14",
        "0x1F",
        "1e400",
        "-.inf",
        ".nan",
        "!!int '12'",
        "%TAG ! tag:x,2000:",
        "---",
        "...",
        "{",
        "[",
        "'",
        '"\\x',
        "\t",
        "\ufeff",
        ": :",
    ]
)


@st.composite
def yaml_soup(draw) -> bytes:
    lines = draw(st.lists(st.one_of(YAML_FRAGMENTS, st.text(max_size=20)), max_size=12))
    indent = draw(st.lists(st.integers(min_value=0, max_value=6), min_size=len(lines), max_size=len(lines)))
    return "\n".join(" " * i + line for i, line in zip(indent, lines)).encode("utf-8", "surrogatepass")


FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def check_config_bytes(path: Path, content: bytes, cli) -> None:
    from lf.config.project import load_project
    from lf.errors import ConfigError

    path.write_bytes(content)
    try:
        load_project(path)
    except ConfigError as exc:
        assert exc.message.startswith(str(path)), exc.message  # located: the file, and line:column where known
        assert int(exc.exit_status) == 5
    result = cli("config", "validate", str(path))
    assert result.exit_code in (0, 5), (result.exit_code, result.output, result.exception)
    assert BUG not in result.output, result.output
    result = cli("config", "validate", str(path), "--json")
    assert result.exit_code in (0, 5), (result.exit_code, result.output, result.exception)
    assert BUG not in result.output, result.output


@FUZZ
@given(content=mutated_configs())
def test_fuzz_config_with_wrong_types_and_huge_values(tmp_path, cli, content):
    check_config_bytes(tmp_path / "llamafarm.yaml", content, cli)


@FUZZ
@given(content=st.one_of(yaml_soup(), st.binary(max_size=300)))
def test_fuzz_config_random_yaml_and_bytes(tmp_path, cli, content):
    check_config_bytes(tmp_path / "llamafarm.yaml", content, cli)


BOMBS = {
    # valid but for its size: 9**10 strings once the aliases are expanded (by `config show --json`, a chat request)
    "billion-laughs": "version: v1\nname: x\nnamespace: y\nlaughs:\n  - &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"  - &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(9))
    + "runtime: {provider: fake, model: m, model_api_parameters: {stop: *j}}\n",
    "deep-nesting": "a: " + "[" * 50000 + "]" * 50000 + "\n",
    "deep-mapping": "".join(" " * i + f"k{i}:\n" for i in range(3000)),
    "huge-int": "version: v1\nname: x\nnamespace: y\nruntime: {provider: fake, model: m, fake: {port: "
    + "9" * 5000
    + "}}\n",
    "huge-float": "version: v1\nname: x\nnamespace: y\nruntime: {provider: fake, model: m, fake: {port: 1e99999}}\n",
    "long-string": "version: v1\nname: " + "x" * 900_000 + "\nnamespace: y\n",
    "too-large": "# " + "x" * 2_000_000 + "\n",
    "non-utf8": "version: v1\nname: caf\xe9\n",
    "binary": "\x00\x01\x02",
    "python-tag": "version: !!python/object/apply:os.system ['touch pwned']\n",
}


@pytest.mark.parametrize("text", BOMBS.values(), ids=BOMBS.keys())
def test_hostile_config_is_refused_in_bounded_time_and_memory(tmp_path, text):
    path = tmp_path / "work" / "llamafarm.yaml"
    path.write_bytes(text.encode("latin-1") if "\xe9" in text else text.encode())

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB

    for command in (("config", "validate", str(path)), ("config", "show", "--json", "-c", str(path))):
        result = subprocess.run(
            [sys.executable, "-m", "lf", *command], capture_output=True, text=True, timeout=30, preexec_fn=limits
        )
        assert_clean_exit(result, 5)
        assert re.search(rf"^Error: {re.escape(str(path))}(:\d+)*: ", result.stderr, re.M), result.stderr
    assert not (tmp_path / "work" / "pwned").exists()


# -- Ctrl-C --------------------------------------------------------------------------------------
def interrupt_when(proc: subprocess.Popen, ready, what: str) -> subprocess.CompletedProcess:
    if not wait_until(lambda: ready() or proc.poll() is not None, timeout=30):
        proc.kill()
        pytest.fail(f"never reached: {what}")
    assert proc.poll() is None, f"exited before {what}: {proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def launched(state: Path, name: str):
    def ready() -> bool:
        record = read_record(state, name)
        return record is not None and not is_gone(record["pid"])

    return ready


def test_ctrl_c_while_waiting_for_start_stops_what_it_launched(state, free_port):
    proc = lf_process("runtime", "start", "fake-slow", "--port", str(free_port))
    result = interrupt_when(proc, launched(state, "fake-slow"), "the daemon was launched")
    assert_clean_exit(result, 130)
    assert "Interrupted" in result.stderr
    assert_nothing_left(state, "fake-slow")


def test_no_wait_start_keeps_what_it_launched(state, free_port):
    result = run_lf("runtime", "start", "fake-slow", "--port", str(free_port), "--no-wait")
    assert_clean_exit(result, 0)
    assert "launched at" in result.stdout
    record = read_record(state, "fake-slow")
    assert [p.pid for p in daemons(state)] == [record["pid"]]
    run_lf("runtime", "stop", "fake-slow", check=True)
    assert_nothing_left(state, "fake-slow")


def test_ctrl_c_while_chat_auto_starts_stops_what_it_launched(state):
    proc = lf_process("chat", "hi", "--runtime", "fake-slow")
    result = interrupt_when(proc, launched(state, "fake-slow"), "the daemon was launched")
    assert_clean_exit(result, 130)
    assert "Interrupted" in result.stderr
    assert_nothing_left(state, "fake-slow")


def test_ctrl_c_during_a_streamed_answer_keeps_the_text(state, free_port):
    start_fake("fake-slow-stream", free_port)
    proc = lf_process("chat", "hi", "--runtime", "fake-slow-stream")
    first = proc.stdout.read(10)  # the answer is streaming
    assert first == "Hello from"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, first + stdout, stderr)
    assert_clean_exit(result, 130)
    assert result.stdout.startswith("Hello from") and result.stdout.endswith("\n")
    assert "Interrupted" in result.stderr
    # the runtime was started on purpose, not half-started: it keeps running
    (inst,) = json.loads(run_lf("runtime", "status", "fake-slow-stream", "--json").stdout)["instances"]
    assert inst["state"] == "running"
    run_lf("runtime", "stop", "fake-slow-stream", check=True)
    assert_nothing_left(state, "fake-slow-stream")
