"""A disk that fills up during `lf models pull`: a clear error naming the directory, how much was needed and
free, that the partial download is kept, and the same command then continues it. Against the local fake Hub
(tests/fakes/hfhub.py) and a real small file system (a tmpfs mounted for the test), or a file size limit."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fakes import FAKES_DIR, wait_until
from fakes.hfhub import FakeHub, write_gguf

MB = 1024 * 1024
REF = "org/Big-GGUF:Q4_0"
BUG = "this is a bug in lf"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def hf_env(isolated, monkeypatch):
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")


@pytest.fixture
def model(tmp_path) -> Path:
    return write_gguf(tmp_path / "big.gguf", "big", padding=5 * MB)


@pytest.fixture
def hub(monkeypatch, model):
    fake = FakeHub()
    fake.add("org/Big-GGUF", {"big-Q4_0.gguf": model})
    with fake.start() as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        yield fake


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB file system of its own (tmpfs), unmounted afterwards; skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def lf_pull(*args: str, env: dict | None = None, preexec=None, pause: tuple[str, float, Path] | None = None):
    """`lf models pull ARGS` in the background; with `pause`, it first stops at that function (and says so)."""
    env = {**os.environ, **(env or {})}
    if pause is not None:
        where, seconds, marker = pause
        env["PYTHONPATH"] = os.pathsep.join([str(FAKES_DIR / "pause"), env.get("PYTHONPATH", "")])
        env["LF_TEST_PAUSE"] = f"{where}:{seconds}"
        env["LF_TEST_PAUSE_MARKER"] = str(marker)
    return subprocess.Popen(
        [sys.executable, "-m", "lf", "models", "pull", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=preexec,
    )


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_continues(first_kept: int, model: Path, hub: FakeHub, hf_home: Path) -> None:
    """The same command, with room again, fetches only the rest and ends with the whole, checked file."""
    before = hub.sent("big-Q4_0.gguf")
    again = finish(lf_pull(REF, "--json", env={"HF_HOME": str(hf_home)}))
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert data["files"][0]["resumed_from"] == first_kept
    assert hub.sent("big-Q4_0.gguf") - before == model.stat().st_size - first_kept
    assert sha(Path(data["path"])) == sha(model)


def test_a_disk_that_fills_up_during_a_pull_stops_it_with_a_clear_error_and_keeps_the_partial_file(
    hub, model, small_disk, tmp_path
):
    hf_home = small_disk / "hf"
    blobs = hf_home / "hub" / "models--org--Big-GGUF" / "blobs"
    marker = tmp_path / "paused"
    # the model (5 MiB) fits when lf checks the space; then something else takes most of the disk
    proc = lf_pull(REF, env={"HF_HOME": str(hf_home)}, pause=("lf.models.hub:_download", 1.0, marker))
    assert wait_until(lambda: marker.exists() or proc.poll() is not None, timeout=60), "lf never began the download"
    assert proc.poll() is None, finish(proc).stderr
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 2 * MB))
    result = finish(proc)

    assert result.returncode == 1, result.stderr
    assert BUG not in result.stderr and "Traceback" not in result.stderr, result.stderr
    (partial,) = blobs.glob("*.incomplete")
    kept = partial.stat().st_size
    assert 0 < kept < model.stat().st_size
    error = result.stderr
    assert f"the download of big-Q4_0.gguf stopped at {kept / 1e6:.1f} MB of" in error, error
    assert "No space left on device" in error and str(blobs) in error, error
    assert " free, and it needs " in error and " more" in error, error
    assert f"are kept ({partial})" in error and f"lf models pull {REF}" in error, error

    filler.unlink()
    assert_continues(kept, model, hub, hf_home)


def _file_size_limit(limit: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process

    return preexec


def test_a_file_size_limit_reached_during_a_pull_is_a_clear_error_and_the_pull_continues_later(hub, model, tmp_path):
    hf_home = tmp_path / "hf"
    result = finish(lf_pull(REF, env={"HF_HOME": str(hf_home)}, preexec=_file_size_limit(2 * MB)))
    assert result.returncode == 1, result.stderr
    assert BUG not in result.stderr and "Traceback" not in result.stderr, result.stderr
    (partial,) = (hf_home / "hub" / "models--org--Big-GGUF" / "blobs").glob("*.incomplete")
    kept = partial.stat().st_size
    assert kept == 2 * MB
    assert "File too large" in result.stderr and "cannot grow past 2.1 MB" in result.stderr, result.stderr
    assert f"are kept ({partial})" in result.stderr
    assert_continues(kept, model, hub, hf_home)
