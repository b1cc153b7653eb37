"""The state dir under attack or out of order, provoked for real: planted symlinks and dirs of other users,
a read-only state dir, records a newer lf (or a tamperer) wrote, and logs that grow, rotate, get truncated
and lose the process that writes them. Fake runtimes live in tests/fakes/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import run_lf

from fakes import (
    daemons,
    drop_dac_override,
    is_gone,
    kill_daemons,
    log_pumps,
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
    for folder in (state_dir, *(state_dir / sub for sub in ("instances", "logs", "locks"))):
        if folder.is_dir():
            folder.chmod(0o700)  # a test that failed half-way may leave it read-only
    kill_daemons(state_dir)
    for pump in log_pumps(state_dir):
        pump.kill()


def clean(result, code: int):
    assert result.returncode == code, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    assert "Traceback" not in result.stderr and BUG not in result.stderr, result.stderr
    return result


def start(runtime: str, port: int, *args: str, env: dict | None = None):
    return clean(run_lf("runtime", "start", runtime, "--port", str(port), *args, env=env), 0)


def assert_nothing_left(state: Path) -> None:
    assert daemons(state) == [], "processes left behind"
    assert log_pumps(state) == [], "log pumps left behind"
    assert list((state / "instances").glob("*")) == [] if (state / "instances").is_dir() else True, (
        "records left behind"
    )


# == 5. a state dir that is not private ==========================================================
@pytest.mark.parametrize("dir_mode", [0o700, 0o777], ids=["private", "open-to-all"])
def test_planted_log_symlink_is_refused_and_its_target_left_alone(state, tmp_path, free_port, dir_mode):
    # Someone who could write in the state dir (open to all, or while it was) plants logs/fake.log -> a
    # file of the user's: lf must neither chmod the target nor append the daemon's output to it.
    from lf.daemon.records import StateStore

    StateStore().ensure()
    target = tmp_path / "precious.txt"
    target.write_text("the user's own file\n")
    target.chmod(0o644)
    (state / "logs" / "fake.log").symlink_to(target)
    for folder in (state, state / "logs"):
        folder.chmod(dir_mode)

    result = clean(run_lf("runtime", "start", "fake", "--port", str(free_port)), 1)
    assert f"Error: {state / 'logs' / 'fake.log'} is a symbolic link" in result.stderr
    assert "rm " in result.stderr  # the hint says how to fix it
    assert target.read_text() == "the user's own file\n" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE(state.stat().st_mode) == 0o700  # an open dir of the user's own is made private
    assert_nothing_left(state)


def test_planted_lock_symlink_creates_nothing_through_it(state, tmp_path, free_port):
    from lf.daemon.records import StateStore

    StateStore().ensure()
    target = tmp_path / "created-through-the-link"
    (state / "locks" / "fake.lock").symlink_to(target)  # dangling: O_CREAT would create the target
    result = clean(run_lf("runtime", "start", "fake", "--port", str(free_port)), 1)
    assert f"{state / 'locks' / 'fake.lock'} is a symbolic link" in result.stderr
    assert not target.exists()
    assert_nothing_left(state)


def test_planted_record_symlink_is_unreadable_and_its_process_never_signalled(state, tmp_path, free_port):
    # A record planted as a link to a file that names a bystander of the user's (its real pid, create time
    # and command line): following it would make `lf runtime stop` kill the bystander.
    from lf.daemon.process import process_create_time
    from lf.daemon.records import StateStore

    marker = tmp_path / "signalled"
    bystander = spawn_sentinel(marker)
    try:
        planted = tmp_path / "planted.json"
        planted.write_text(
            json.dumps(
                {
                    "name": "fake",
                    "runtime": "fake",
                    "pid": bystander.pid,
                    "create_time": process_create_time(bystander.pid),
                    "host": "127.0.0.1",
                    "port": free_port,
                    "base_url": f"http://127.0.0.1:{free_port}/v1",
                    "model": "m",
                    "command": psutil.Process(bystander.pid).cmdline(),
                    "log_path": str(tmp_path / "x.log"),
                    "started_at": time.time(),
                    "version": 2,
                }
            )
        )
        StateStore().ensure()
        record_file(state, "fake").symlink_to(planted)

        status = clean(run_lf("runtime", "status", "fake"), 3)
        assert re.search(r"^fake\s+\?\s+unknown\s", status.stdout, re.M), status.stdout
        assert "symbolic link" in status.stderr
        stop = clean(run_lf("runtime", "stop", "fake"), 0)
        assert "removed an unreadable record" in stop.stdout
        assert bystander.poll() is None and not marker.exists(), "the bystander was signalled"
        assert planted.exists() and not record_file(state, "fake").is_symlink()

        planted_text = planted.read_text()
        record_file(state, "fake").symlink_to(planted)  # a start writes its record over the link, not through it
        start("fake", free_port)
        assert planted.read_text() == planted_text and not record_file(state, "fake").is_symlink()
        clean(run_lf("runtime", "stop", "fake"), 0)
        assert bystander.poll() is None and not marker.exists(), "the bystander was signalled"
    finally:
        stop_process(bystander)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a dir to another user")
def test_state_dir_of_another_user_is_refused_with_how_to_fix_it(state, tmp_path, free_port):
    state.mkdir()
    os.chown(state, 65534, 65534)
    result = clean(run_lf("runtime", "start", "fake", "--port", str(free_port)), 1)
    assert f"Error: {state} belongs to another user (uid 65534)" in result.stderr
    assert "point LF_STATE_DIR at a dir of yours" in result.stderr
    assert daemons(state) == [] and list(state.iterdir()) == []


# == 8. a read-only state dir ====================================================================
READ_ONLY_MOUNT = """
import os, subprocess, sys
folder = sys.argv[1]
subprocess.run(["mount", "--bind", folder, folder], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", folder], check=True)
os.execv(sys.argv[2], sys.argv[2:])
"""


class ReadOnly:
    """The state dir made read-only for the lf commands run through it: by permissions (0500, and root
    stripped of CAP_DAC_OVERRIDE), or by a read-only bind mount in a private mount namespace."""

    def __init__(self, how: str, state: Path, tmp_path: Path):
        self.how, self.state = how, state
        self.on = False
        if how == "mount":
            probe = tmp_path / "mount-probe"
            probe.mkdir()
            if (
                not shutil.which("unshare")
                or subprocess.run(self._mount_argv(probe, ["/bin/true"]), capture_output=True, timeout=30).returncode
                != 0
            ):
                pytest.skip("no private mount namespace here (unshare --mount and mount need privileges)")
        elif (
            subprocess.run([sys.executable, "-c", "pass"], preexec_fn=drop_dac_override, capture_output=True).returncode
            != 0
        ):
            pytest.skip("cannot drop CAP_DAC_OVERRIDE here")

    def _mount_argv(self, folder: Path, argv: list[str]) -> list[str]:
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            READ_ONLY_MOUNT,
            str(folder),
            *argv,
        ]

    def set(self, on: bool) -> None:
        self.on = on
        if on:
            for lock in (self.state / "locks").glob("*"):
                lock.unlink()  # so the lock file cannot even be created
        if self.how == "chmod":
            for folder in (self.state, *(self.state / sub for sub in ("instances", "logs", "locks"))):
                folder.chmod(0o500 if on else 0o700)

    def lf(self, *args: str):
        argv = [sys.executable, "-m", "lf", *args]
        if not self.on:
            return run_lf(*args)
        if self.how == "mount":
            return subprocess.run(
                self._mount_argv(self.state, argv), capture_output=True, text=True, timeout=120, env=dict(os.environ)
            )
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=120, preexec_fn=drop_dac_override, env=dict(os.environ)
        )


@pytest.fixture(params=["chmod", "mount"])
def read_only(request, state, tmp_path):
    return ReadOnly(request.param, state, tmp_path)


def assert_names_the_dir(result, state: Path) -> None:
    assert str(state) in result.stderr, result.stderr
    assert "LF_STATE_DIR" in result.stderr, result.stderr  # what to do: the hint


def test_read_only_state_dir_stop_still_stops_and_every_command_says_why(state, free_port, read_only):
    start("fake", free_port)
    pid = read_record(state, "fake")["pid"]
    read_only.set(True)

    status = clean(read_only.lf("runtime", "status", "fake"), 0)  # reading needs no writing
    assert re.search(r"^fake\s+fake\s+running\s", status.stdout, re.M), status.stdout
    for args in (("runtime", "start", "fake-chatty"), ("chat", "hi", "--runtime", "fake-chatty")):
        assert_names_the_dir(clean(read_only.lf(*args), 1), state)
    assert daemons(state) == [psutil.Process(pid)], "something was launched into a read-only state dir"

    stop = clean(read_only.lf("runtime", "stop", "fake"), 1)
    assert is_gone(pid), "stop did not stop the daemon"
    assert "could not remove the record of fake" in stop.stderr and "lf stopped its process first" in stop.stderr
    assert_names_the_dir(stop, state)
    status = clean(read_only.lf("runtime", "status", "fake"), 3)
    assert re.search(r"^fake\s+fake\s+crashed\s", status.stdout, re.M), status.stdout
    assert_names_the_dir(clean(read_only.lf("runtime", "stop", "--all"), 1), state)

    read_only.set(False)
    assert "record cleaned up" in clean(run_lf("runtime", "stop", "fake"), 0).stdout
    assert_nothing_left(state)


def test_read_only_state_dir_restart_is_a_clear_error(state, free_port, read_only):
    start("fake", free_port)
    read_only.set(True)
    assert_names_the_dir(clean(read_only.lf("runtime", "restart", "fake"), 1), state)
    read_only.set(False)
    clean(run_lf("runtime", "stop", "fake"), 0)
    assert_nothing_left(state)


# == 9. records checked as strictly as llamafarm.yaml ============================================
def _rewrite_record(state: Path, name: str, **changes) -> None:
    path = record_file(state, name)
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


BAD_FIELDS = {
    "empty-command": {"command": []},  # nothing left to tell a reused pid from the daemon
    "unknown-health-rule": {"health_ready": "ready-when-green"},
    "health-rule-without-key": {"health_ready": "json:"},
    "health-rule-not-text": {"health_ready": ["json:x"]},
    "base-url-not-http": {"base_url": "file:///etc/passwd"},
    "negative-start-timeout": {"start_timeout": -5},
    "version-not-a-number": {"version": "2"},
    "log-pump-pid-not-a-pid": {"log_pump_pid": "1234"},
}


@pytest.mark.parametrize("change", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_record_field_lf_cannot_act_on_is_unknown_never_a_crash(state, free_port, change):
    start("fake", free_port)
    pid = read_record(state, "fake")["pid"]
    _rewrite_record(state, "fake", **change)

    status = clean(run_lf("runtime", "status"), 3)
    assert re.search(r"^fake\s+\?\s+unknown\s", status.stdout, re.M), status.stdout
    field = next(iter(change))
    assert "Warning: the record" in status.stderr and field in status.stderr, status.stderr
    clean(run_lf("runtime", "stop", "fake"), 0)
    os.kill(pid, signal.SIGKILL)  # unknown: not lf's to stop any more


def test_restart_drops_overrides_of_the_wrong_type(state, free_port):
    start("fake", free_port, "--ctx-size", "256")
    _rewrite_record(state, "fake", overrides={"port": free_port, "context_size": [256]})
    restart = clean(run_lf("runtime", "restart", "fake"), 0)
    assert "fake: restarted" in restart.stdout
    assert read_record(state, "fake")["overrides"] == {"port": free_port}
    clean(run_lf("runtime", "stop", "fake"), 0)


def test_restart_drops_an_unknown_override_naming_it(state, free_port):
    start("fake", free_port)
    _rewrite_record(state, "fake", overrides={"port": free_port, "future_key": 1, "settings": {"flash_attn": True}})
    restart = clean(run_lf("runtime", "restart", "fake"), 0)
    assert "future_key" in restart.stderr and "flash_attn" in restart.stderr
    clean(run_lf("runtime", "stop", "fake"), 0)


def test_record_checks_agree_with_overrides_and_manifests():
    from dataclasses import fields

    from lf.core.targets import Overrides
    from lf.daemon.records import OVERRIDE_CHECKS, is_health_rule
    from lf.runtimes.registry import all_runtimes

    assert set(OVERRIDE_CHECKS) == {f.name for f in fields(Overrides)}
    assert all(is_health_rule(rt.health_ready) for rt in all_runtimes().values() if rt.health_path)


# == 12. logs: exact tails, rotation, following ==================================================
def _numbered(n: int) -> list[str]:
    return [f"line {i} " + "x" * (i * 7919 % 250) for i in range(1, n + 1)]  # lengths vary from 0 to 249


@pytest.mark.parametrize("n", [1, 637, 5000, 19999, 20000, 25000])
def test_logs_n_prints_exactly_n_whole_lines(state, n):
    from lf.daemon.records import StateStore

    StateStore().ensure()
    lines = _numbered(20000)
    (state / "logs" / "big.log").write_text("\n".join(lines) + "\n")
    result = clean(run_lf("runtime", "logs", "big", "-n", str(n)), 0)
    assert result.stdout.splitlines() == lines[-n:]


def _get(url: str) -> None:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:  # between a rotation's rename and the new file
        return ""


def _log_files(log: Path) -> list[Path]:
    """The log and its rotated files, oldest first."""
    rotated = sorted(log.parent.glob(log.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [*rotated, log]


def test_log_rotates_while_the_daemon_runs_and_loses_no_line(state, free_port):
    env = {"LF_LOG_MAX_BYTES": "20000", "LF_LOG_BACKUPS": "100"}
    start("fake-chatty", free_port, env=env)
    record = read_record(state, "fake-chatty")
    pump = psutil.Process(record["log_pump_pid"])
    assert os.getpgid(pump.pid) == record["pid"] and pump.ppid() == record["pid"]  # in the daemon's group
    for _burst in range(20):
        _get(f"http://127.0.0.1:{free_port}/burst/150")  # 150 lines of ~100 bytes at once, 3000 in all
    log = state / "logs" / "fake-chatty.log"
    assert wait_until(lambda: "burst line 150 of 150" in _text(log) and len(_log_files(log)) > 10)
    assert record["pid"] in [p.pid for p in daemons(state)]  # rotated while it runs

    stop = clean(run_lf("runtime", "stop", "fake-chatty"), 0)
    assert stop.stdout.strip() == "fake-chatty: stopped"  # the pump needed no SIGKILL
    files = _log_files(log)
    for path in files:
        size = path.stat().st_size
        assert size <= 20000 + 200, f"{path.name} is {size} bytes"
        assert path.read_bytes().endswith(b"\n"), f"{path.name} was cut mid-line"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = "".join(path.read_text() for path in files)
    bursts = re.findall(r"^fake: burst line (\d+) of 150", text, re.M)
    assert bursts == [str(i) for _ in range(20) for i in range(1, 151)]
    requests = [int(n) for n in re.findall(r"^fake: request (\d+) ", text, re.M)]  # health probes too
    assert requests == list(range(1, len(requests) + 1)) and len(re.findall(r"GET /burst/150$", text, re.M)) == 20
    assert text.rstrip().endswith("fake: SIGTERM: shutting down")  # the daemon's last words, after stop's SIGTERM
    assert_nothing_left(state)


def test_log_keeps_only_the_backups_asked_for(state, free_port):
    start("fake-chatty", free_port, env={"LF_LOG_MAX_BYTES": "5000", "LF_LOG_BACKUPS": "2"})
    for _ in range(5):
        _get(f"http://127.0.0.1:{free_port}/burst/100")
    log = state / "logs" / "fake-chatty.log"
    clean(run_lf("runtime", "stop", "fake-chatty"), 0)
    assert sorted(p.name for p in log.parent.iterdir()) == ["fake-chatty.log", "fake-chatty.log.1", "fake-chatty.log.2"]
    assert sum(p.stat().st_size for p in _log_files(log)) < 3 * (5000 + 200)
    # `logs -n` reads on into the rotated files when the current one has fewer lines
    tail = clean(run_lf("runtime", "logs", "fake-chatty", "-n", "60"), 0).stdout.splitlines()
    assert len(tail) == 60 and tail[-1] == "fake: SIGTERM: shutting down"


def test_invalid_log_limits_are_refused_by_name(state, free_port):
    result = clean(run_lf("runtime", "start", "fake", "--port", str(free_port), env={"LF_LOG_MAX_BYTES": "5MB"}), 1)
    assert "LF_LOG_MAX_BYTES='5MB'" in result.stderr
    assert daemons(state) == []


class Follower:
    """`lf runtime logs NAME -f` in the background; its stdout collected by a thread."""

    def __init__(self, name: str, *args: str):
        import threading

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lf", "runtime", "logs", name, "-f", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ),
        )
        self.out = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while chunk := self.proc.stdout.read1(65536):
            self.out += chunk

    def text(self) -> str:
        return self.out.decode()

    def wait_for(self, text: str, timeout: float = 10) -> bool:
        return wait_until(lambda: text in self.text(), timeout)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        self.reader.join(5)
        return self.proc.stderr.read().decode()


def test_logs_follow_goes_on_after_truncation_and_rotation(state):
    from lf.daemon.records import StateStore

    StateStore().ensure()
    log = state / "logs" / "app.log"
    log.write_text("old 1\nold 2\n")
    follower = Follower("app", "-n", "1")
    try:
        assert follower.wait_for("old 2\n")
        with open(log, "a") as fh:
            fh.write("appended\n")
        assert follower.wait_for("appended\n")

        with open(log, "r+") as fh:  # truncated in place, as `: > app.log` or copytruncate do
            fh.truncate(0)
        time.sleep(0.5)
        with open(log, "a") as fh:
            fh.write("after truncation\n")
        assert follower.wait_for("after truncation\n"), follower.text()

        with open(log, "a") as fh:
            fh.write("last of the old file\n")
        log.rename(log.with_name("app.log.1"))  # rotated: the new file is another inode
        log.write_text("first of the new file\n")
        assert follower.wait_for("first of the new file\n"), follower.text()
    finally:
        messages = follower.stop()
    assert follower.text() == "old 2\nappended\nafter truncation\nlast of the old file\nfirst of the new file\n"
    assert "truncated" in messages and "rotated" in messages


def test_logs_follow_sees_every_line_across_the_pumps_rotations(state, free_port):
    # 100 lines make ~10 KB: each burst rotates the log at most once, and the follower sees every file
    start("fake-chatty", free_port, env={"LF_LOG_MAX_BYTES": "16000", "LF_LOG_BACKUPS": "1"})
    follower = Follower("fake-chatty", "-n", "0")
    try:
        time.sleep(0.5)  # following from here
        for _ in range(10):
            _get(f"http://127.0.0.1:{free_port}/burst/100")
            time.sleep(0.3)  # the follower polls every 0.2 s: it must keep up through a rotation per burst
        assert wait_until(lambda: follower.text().count("burst line 100 of 100 ") == 10), follower.text()
    finally:
        follower.stop()
    bursts = re.findall(r"^fake: burst line (\d+) of 100", follower.text(), re.M)
    assert bursts == [str(i) for _ in range(10) for i in range(1, 101)]
    assert len(_log_files(state / "logs" / "fake-chatty.log")) == 2  # it did rotate (and kept one)
    clean(run_lf("runtime", "stop", "fake-chatty"), 0)


def test_engine_outlives_a_killed_log_pump_and_stop_still_needs_no_sigkill(state, free_port):
    # fake-ticker is a shell loop printing a line every 50 ms, as a C engine writes its log: with SIGPIPE
    # at its default, the first line after the pump's death would kill it.
    start("fake-ticker", free_port)
    record = read_record(state, "fake-ticker")
    os.kill(record["log_pump_pid"], signal.SIGKILL)
    assert wait_until(lambda: is_gone(record["log_pump_pid"]))
    time.sleep(1.0)  # twenty lines' worth
    assert not is_gone(record["pid"]), "the engine died with its log pump"
    status = clean(run_lf("runtime", "status", "fake-ticker"), 0)
    assert re.search(r"^fake-ticker\s+fake-ticker\s+running\s", status.stdout, re.M), status.stdout
    logs = clean(run_lf("runtime", "logs", "fake-ticker", "-n", "1"), 0)
    assert f"the process that writes this log (pid {record['log_pump_pid']}) is gone" in logs.stderr
    assert "lf runtime restart fake-ticker" in logs.stderr
    stop = clean(run_lf("runtime", "stop", "fake-ticker"), 0)
    assert stop.stdout.strip() == "fake-ticker: stopped"
    assert_nothing_left(state)


def test_log_pump_never_writes_through_a_symlink_put_in_the_logs_place(state, tmp_path):
    # lf opens the log itself before a start (and refuses a link there); the pump opens it again after each
    # rotation or failed write, by path, and must refuse a link put there since.
    from lf.daemon import logpump

    log = tmp_path / "engine.log"
    target = tmp_path / "precious.txt"
    target.write_text("the user's own file\n")
    log.symlink_to(target)
    engine = ["sh", "-c", 'echo one; while [ -L "$1" ]; do sleep 0.05; done; echo two', "engine", str(log)]
    launcher = logpump.Launcher.spawn(
        str(log), 0, 0, engine, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        pump_pid = launcher.wait_ready(30)
        assert pump_pid and launcher.go(30) and launcher.failure is None
        launcher.close()
        time.sleep(0.5)  # "one" reached the pump, which could not write it
        assert target.read_text() == "the user's own file\n"
        log.unlink()
        launcher.proc.wait(10)
        assert wait_until(lambda: is_gone(pump_pid))
    finally:
        launcher.abandon()
    lines = log.read_text().splitlines()
    assert lines == ["--- lf: 4 bytes of output were lost here (Too many levels of symbolic links)", "two"], lines
    assert target.read_text() == "the user's own file\n"
