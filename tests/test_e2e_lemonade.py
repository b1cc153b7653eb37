"""End to end with a real Lemonade server in lf's own env, serving ONNX models through onnxruntime-genai.

The env and the built models live in $LF_TEST_CACHE/data (default ~/.cache/lf-test/data) so they survive
between runs on this machine; the first run installs Lemonade and builds the models (minutes), later runs
find them ready. Nothing here is skipped: if the install or a build fails, the tests fail.

Lemonade v6 refuses to start while another Lemonade server runs on the machine, so these tests hold a lock
for the whole session: two test sessions on this machine take turns instead of failing each other.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import run_lf

from fakes import group_processes, read_record
from fakes.platforms import listening_pid

pytestmark = pytest.mark.e2e

CACHE = Path(os.environ.get("LF_TEST_CACHE") or "~/.cache/lf-test").expanduser()
CACHED_DATA = CACHE / "data"
INSTALL_TIMEOUT = 3600  # a cold install downloads ~2 GB


@pytest.fixture(scope="session")
def lemonade_ready():
    """Lemonade installed and the tiny ONNX model built, in the cached data dir (a fast no-op when done)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lemonade-e2e.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        env = {"LF_DATA_DIR": str(CACHED_DATA)}
        started = time.monotonic()
        install = run_lf("runtime", "install", "lemonade", "--json", env=env, timeout=INSTALL_TIMEOUT)
        assert install.returncode == 0, f"lf runtime install lemonade failed:\n{install.stderr[-4000:]}"
        installed = json.loads(install.stdout)
        tiny = run_lf("models", "build-onnx", "--tiny", "--json", env=env, timeout=900)
        assert tiny.returncode == 0, f"lf models build-onnx --tiny failed:\n{tiny.stderr[-4000:]}"
        print(
            f"\nlemonade env ready in {time.monotonic() - started:.0f}s (already installed: {installed['already_installed']})"
        )
        yield {"generation": installed["generation"], "tiny": json.loads(tiny.stdout)["path"], "env": env}
        fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def cached_data(isolated, monkeypatch, lemonade_ready):
    """This test's lf uses the cached envs and models (state stays per test)."""
    monkeypatch.setenv("LF_DATA_DIR", str(CACHED_DATA))
    return lemonade_ready


def api_base(generation: str) -> str:
    return "/api/v0" if generation == "v6" else "/api/v1"


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _listening(port: int) -> bool:
    return listening_pid(port) is not None


def _another_free_port(not_this: int) -> int:
    import socket

    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != not_this:
            return port


def _stream_chunks(base_url: str, model: str) -> list[str]:
    """The SSE events of a streamed chat completion, as they arrive."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "stream": True, "max_tokens": 8}
    events = []
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.append(line[5:].strip())
    return events


def _stop_and_check_nothing_is_left(name: str, record: dict, isolated) -> None:
    pid = record["pid"]
    leader = psutil.Process(pid)
    family = [leader, *leader.children(recursive=True)]  # Lemonade's children, if this generation has any
    stop = run_lf("runtime", "stop", name)
    assert stop.returncode == 0, stop.stderr
    assert "stopped" in stop.stdout
    assert _alive(family) == []
    assert group_processes(pid) == []
    assert not _listening(record["port"])
    assert not (isolated / "state" / "instances" / f"{name}.json").exists()


def test_seed_shape_start_status_chat_stop(cached_data, isolated, free_port):
    model = cached_data["tiny"]
    (isolated / "work" / "llamafarm.yaml").write_text(
        f"version: v1\nname: lem\nnamespace: test\nruntime:\n  provider: lemonade\n  model: {model}\n"
        f"  lemonade:\n    backend: onnx\n    port: {free_port}\n    context_size: 1024\n"
    )
    started = run_lf("runtime", "start", "lemonade", timeout=360)
    assert started.returncode == 0, started.stderr
    record = read_record(isolated / "state", "lemonade")
    base_url = f"http://127.0.0.1:{free_port}{api_base(cached_data['generation'])}"
    assert record["base_url"] == base_url and base_url in started.stdout
    assert record["engine"] == "lemonade-server-dev"
    assert os.getsid(record["pid"]) == record["pid"]  # a detached daemon in its own session

    status = run_lf("runtime", "status", "--json")
    assert status.returncode == 0, status.stderr
    (inst,) = json.loads(status.stdout)["instances"]
    assert inst["state"] == "running" and inst["runtime"] == "lemonade" and inst["port"] == free_port
    assert inst["health"]["healthy"] and inst["health"]["model_loaded"] is True

    # the answer really streams: several server-sent events, then the end marker
    events = _stream_chunks(base_url, record["model"])
    assert len(events) >= 3 and events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["delta"] is not None

    chat = run_lf("chat", "Hello", "--max-tokens", "8")
    assert chat.returncode == 0, chat.stderr
    # random weights answer nonsense (often whitespace); more than lf's own closing newline arrived
    assert len(chat.stdout) > 1
    as_json = run_lf("chat", "Hello", "--max-tokens", "8", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["choices"][0]["message"]["content"]

    again = run_lf("runtime", "start", "lemonade")
    assert again.returncode == 0 and "already running" in again.stdout
    assert read_record(isolated / "state", "lemonade")["pid"] == record["pid"]

    # the env a running server uses is not pulled from under it
    refused = run_lf("runtime", "uninstall", "lemonade")
    assert refused.returncode == 1 and "stop it first" in refused.stderr
    assert (CACHED_DATA / "envs" / "lemonade" / "lf-installed.json").is_file()

    _stop_and_check_nothing_is_left("lemonade", record, isolated)


def test_llamafarm_shape_env_port_and_chat_auto_start(cached_data, isolated, free_port):
    # LlamaFarm's own shape: a local checkpoint + recipe in provider_config; LEMONADE_PORT beats the file
    file_port = _another_free_port(free_port)
    (isolated / "work" / "llamafarm.yaml").write_text(
        "version: v1\nname: lem\nnamespace: test\nruntime:\n  models:\n  - name: tiny-onnx\n    provider: lemonade\n"
        f"    model: tiny\n    provider_config:\n      port: {file_port}\n      backend: onnx\n      checkpoint: {cached_data['tiny']}\n      recipe: oga-cpu\n"
    )
    chat = run_lf("chat", "Hello", "--max-tokens", "6", env={"LEMONADE_PORT": str(free_port)}, timeout=360)
    assert chat.returncode == 0, chat.stderr
    assert "Starting tiny-onnx (lemonade" in chat.stderr and len(chat.stdout) > 1
    record = read_record(isolated / "state", "tiny-onnx")
    assert record["port"] == free_port and _listening(free_port) and not _listening(file_port)

    status = json.loads(run_lf("runtime", "status", "tiny-onnx", "--json").stdout)
    assert status["exit_code"] == 0 and status["instances"][0]["health"]["model_loaded"] is True

    _stop_and_check_nothing_is_left("tiny-onnx", record, isolated)


def test_a_model_lemonade_cannot_load_fails_the_start_and_leaves_nothing(cached_data, isolated, free_port):
    broken = isolated / "broken-onnx"
    broken.mkdir()
    (broken / "genai_config.json").write_text("{}")
    result = run_lf("runtime", "start", "lemonade", "--model", str(broken), "--port", str(free_port), timeout=360)
    assert result.returncode == 7, result.stderr
    assert "Lemonade could not load" in result.stderr
    assert not (isolated / "state" / "instances" / "lemonade.json").exists()
    assert not _listening(free_port)


def test_a_missing_model_names_the_build_command(cached_data, isolated, free_port):
    result = run_lf("runtime", "start", "lemonade", "--model", "./no-such-model", "--port", str(free_port))
    assert result.returncode == 8
    assert "does not exist" in result.stderr or "neither a known model" in result.stderr
    missing_default = run_lf(
        "runtime", "start", "lemonade", "--port", str(free_port), env={"LF_DATA_DIR": str(isolated / "empty-data")}
    )
    assert missing_default.returncode == 8  # no env in an empty data dir: the install command is named
    assert "lf runtime install lemonade" in missing_default.stderr


@pytest.mark.slow
def test_real_smollm2_onnx_answers(cached_data, isolated, free_port):
    """The real SmolLM2 weights, converted offline, answer a factual question through Lemonade."""
    built = run_lf("models", "build-onnx", "--json", env=cached_data["env"], timeout=1800)
    assert built.returncode == 0, built.stderr[-4000:]
    model = json.loads(built.stdout)["name"]  # found by name in lf's models dir
    started = run_lf("runtime", "start", "lemonade", "--model", model, "--port", str(free_port), timeout=360)
    assert started.returncode == 0, started.stderr
    record = read_record(isolated / "state", "lemonade")
    try:
        answer = run_lf(
            "chat",
            "-r",
            "lemonade",
            "What is the capital of France? Answer in one sentence.",
            "--temperature",
            "0",
            "--max-tokens",
            "32",
        )
        assert answer.returncode == 0, answer.stderr
        assert "Paris" in answer.stdout
        _status_polling_does_not_cut_an_answer_short()
    finally:
        _stop_and_check_nothing_is_left("lemonade", record, isolated)


def _status_polling_does_not_cut_an_answer_short() -> None:
    """Lemonade v6's /health halts the answer in progress: lf's probes must never touch it mid-answer.
    (The real model is slow enough, ~70 tokens/s, for status calls to land inside an answer.)"""
    import subprocess
    import sys

    ask = [
        "chat",
        "-r",
        "lemonade",
        "Tell me a long story about a dragon.",
        "--max-tokens",
        "160",
        "--temperature",
        "0",
    ]
    quiet = run_lf(*ask)
    assert quiet.returncode == 0, quiet.stderr
    busy = subprocess.Popen(
        [sys.executable, "-m", "lf", *ask], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    probes = 0
    while busy.poll() is None:
        status = run_lf("runtime", "status", "lemonade", "--json")
        assert json.loads(status.stdout)["instances"][0]["health"]["model_loaded"] is True
        probes += 1
    out, err = busy.communicate()
    assert busy.returncode == 0, err
    assert probes >= 3
    assert out == quiet.stdout  # the same answer, whole, while status was polled alongside
