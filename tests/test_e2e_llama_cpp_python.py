"""End to end with the real llama-cpp-python server in lf's own env and the real SmolLM2 GGUF.

The env lives in $LF_TEST_CACHE/data (default ~/.cache/lf-test/data) and survives between runs; the first
run on a machine compiles llama-cpp-python (~15 minutes on 2 cores; pip then caches the wheel). Nothing is
skipped: a failed install fails the tests.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest
from conftest import run_lf

from fakes import group_processes

pytestmark = pytest.mark.e2e

CACHE = Path(os.environ.get("LF_TEST_CACHE") or "~/.cache/lf-test").expanduser()
CACHED_DATA = CACHE / "data"
QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="session")
def llama_cpp_python_ready():
    env = {"LF_DATA_DIR": str(CACHED_DATA)}
    fetched = run_lf("models", "fetch", "smollm2-135m", timeout=900)
    assert fetched.returncode == 0, fetched.stderr[-4000:]
    started = time.monotonic()
    install = run_lf("runtime", "install", "llama-cpp-python", "--json", env=env, timeout=3600)
    assert install.returncode == 0, f"lf runtime install llama-cpp-python failed:\n{install.stderr[-4000:]}"
    print(
        f"\nllama-cpp-python env ready in {time.monotonic() - started:.0f}s (already installed: {json.loads(install.stdout)['already_installed']})"
    )


@pytest.fixture
def cached_data(isolated, monkeypatch, llama_cpp_python_ready):
    monkeypatch.setenv("LF_DATA_DIR", str(CACHED_DATA))


def test_start_status_chat_stop(cached_data, isolated, free_port):
    started = run_lf("runtime", "start", "llama-cpp-python", "--port", str(free_port))
    assert started.returncode == 0, started.stderr
    assert f"http://127.0.0.1:{free_port}/v1" in started.stdout
    record = json.loads((isolated / "state" / "instances" / "llama-cpp-python.json").read_text())
    pid = record["pid"]
    # the server runs on the env's interpreter, not lf's
    assert psutil.Process(pid).cmdline()[:3] == [
        str(CACHED_DATA / "envs" / "llama-cpp-python" / "bin" / "python"),
        "-m",
        "llama_cpp.server",
    ]
    assert record["model_path"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")

    status = run_lf("runtime", "status", "llama-cpp-python", "--json")
    assert status.returncode == 0, status.stderr
    (inst,) = json.loads(status.stdout)["instances"]
    assert inst["state"] == "running" and inst["engine"] == "llama_cpp.server"
    assert inst["health"]["healthy"] and inst["health"]["model_loaded"]

    answer = run_lf("chat", "-r", "llama-cpp-python", QUESTION, "--temperature", "0", "--max-tokens", "48")
    assert answer.returncode == 0, answer.stderr
    assert "Paris" in answer.stdout
    as_json = run_lf("chat", "-r", "llama-cpp-python", QUESTION, "--temperature", "0", "--max-tokens", "48", "--json")
    assert "Paris" in json.loads(as_json.stdout)["choices"][0]["message"]["content"]

    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    stop = run_lf("runtime", "stop", "llama-cpp-python")
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stderr
    assert [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert group_processes(pid) == []
    assert not (isolated / "state" / "instances" / "llama-cpp-python.json").exists()


def test_env_var_port_and_chat_auto_start(cached_data, isolated, free_port):
    chat = run_lf(
        "chat",
        "-r",
        "llama-cpp-python",
        QUESTION,
        "--temperature",
        "0",
        "--max-tokens",
        "48",
        env={"LLAMA_CPP_PYTHON_PORT": str(free_port)},
    )
    try:
        assert chat.returncode == 0, chat.stderr
        assert "Starting llama-cpp-python" in chat.stderr and "Paris" in chat.stdout
        record = json.loads((isolated / "state" / "instances" / "llama-cpp-python.json").read_text())
        assert record["port"] == free_port
    finally:
        assert run_lf("runtime", "stop", "llama-cpp-python").returncode == 0
