"""Fake runtimes for fault tests: small Python servers (server.py) declared as runtime folders (runtimes/).

Tests make them visible with `use_fakes(monkeypatch)`, which sets LF_RUNTIMES_PATH (and PYTHONPATH, so
the daemons lf starts can run `python -m fakes.server`) for that test only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

FAKES_DIR = Path(__file__).resolve().parent
RUNTIMES_DIR = FAKES_DIR / "runtimes"
TESTS_DIR = FAKES_DIR.parent


def use_fakes(monkeypatch) -> None:
    from lf.runtimes.registry import all_runtimes

    monkeypatch.setenv("LF_RUNTIMES_PATH", str(RUNTIMES_DIR))
    paths = [str(TESTS_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    all_runtimes.cache_clear()


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def daemons(state_dir: Path) -> list[psutil.Process]:
    """Live processes lf started for this test: daemons run with the state dir as their working dir."""
    found = []
    wanted = str(state_dir)
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE and proc.cwd() == wanted:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def log_pumps(state_dir: Path) -> list[psutil.Process]:
    """Live log pumps (lf.daemon.logpump) writing logs in this state dir: they work from /, so `daemons`
    does not list them; they go once their daemon's output ends."""
    found = []
    logs = str(state_dir) + os.sep
    for proc in psutil.process_iter():
        try:
            argv = proc.cmdline()
            if (
                proc.status() != psutil.STATUS_ZOMBIE
                and len(argv) > 4
                and argv[3].endswith("logpump.py")
                and argv[4].startswith(logs)
            ):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def group_processes(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) members of a process group: what must be gone after `lf runtime stop`."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def kill_daemons(state_dir: Path) -> None:
    """Safety net after a test: SIGKILL whatever it left behind, recorded or not."""
    for proc in daemons(state_dir):
        try:
            proc.kill()
        except psutil.Error:
            pass


def drop_dac_override() -> None:
    """In a child: make root obey file permissions, as any other user does (no CAP_DAC_OVERRIDE)."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def free_ports(n: int) -> list[int]:
    """n distinct ports nobody listens on (held together while chosen, so they differ)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def record_files(state_dir: Path) -> list[Path]:
    """Every record in the state dir: of no project (instances/) and of each project (projects/NS/NAME/instances/)."""
    return sorted([*state_dir.glob("instances/*.json"), *state_dir.glob("projects/*/*/instances/*.json")])


def record_file(state_dir: Path, name: str) -> Path:
    """The record of the instance `name`, whichever project it belongs to (a test runs one project at a
    time); where a record of no project would be when there is none."""
    found = [path for path in record_files(state_dir) if path.name == f"{name}.json"]
    assert len(found) <= 1, f"more than one record named {name}: {found}"
    return found[0] if found else state_dir / "instances" / f"{name}.json"


def read_record(state_dir: Path, name: str) -> dict | None:
    try:
        return json.loads(record_file(state_dir, name).read_text())
    except (FileNotFoundError, ValueError):
        return None


def lf_process(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m lf ...` running in the background, e.g. to be interrupted with SIGINT."""
    return subprocess.Popen(
        [sys.executable, "-m", "lf", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


SENTINEL = """
import os, signal, sys, time
def hit(signum, frame):
    with open(sys.argv[1], "a") as fh:
        fh.write(f"signal {signum}\\n")
    os._exit(1)
signal.signal(signal.SIGTERM, hit)
signal.signal(signal.SIGINT, hit)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def spawn_sentinel(marker: Path, **popen) -> subprocess.Popen:
    """A bystander process that writes `marker` if it is ever signalled (SIGTERM, SIGINT)."""
    proc = subprocess.Popen([sys.executable, "-c", SENTINEL, str(marker)], stdout=subprocess.PIPE, text=True, **popen)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)


class Gateway:
    """`lf serve` in a subprocess, as a user runs it; its stderr goes to a file the test can read."""

    def __init__(self, work: Path, port: int, *args: str, env: dict | None = None):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = work / f"serve-{port}-{time.monotonic_ns()}.log"
        self.args = [sys.executable, "-m", "lf", "serve", "--port", str(port), *args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, ready: bool = True) -> Gateway:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        if ready and not wait_until(self.answers, timeout=30):
            self.kill()
            raise AssertionError(f"lf serve did not answer on {self.url}:\n{self.text()}")
        return self

    def answers(self) -> bool:
        import urllib.request

        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"lf serve exited with {self.proc.returncode}:\n{self.text()}")
        try:
            with urllib.request.urlopen(self.url + "/health/liveness", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.kill()


def engines(state_dir: Path) -> list[psutil.Process]:
    """The model servers lf started for this test (not the gateway itself); one that exits meanwhile is not one."""
    found = []
    for proc in daemons(state_dir):
        try:
            if proc.cmdline()[1:4] != ["-m", "lf", "serve"]:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def chromium(*flags: str):
    """Debian's Chromium, headless, driven by selenium (scripts/ensure-browser installs both)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, (
        "this test needs Debian's chromium and chromium-driver: make test installs them (scripts/ensure-browser)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        *flags,
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
