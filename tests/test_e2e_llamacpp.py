"""End to end, with real processes: the embedded llama.cpp runtime and the real SmolLM2 model."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest
from conftest import run_lf

from fakes import group_processes, read_record

pytestmark = pytest.mark.e2e

QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.fixture
def started(isolated, free_port):
    result = run_lf("runtime", "start", "llamacpp", "--port", str(free_port), check=True)
    record = read_record(isolated / "state", "llamacpp")
    yield record, result
    run_lf("runtime", "stop", "--all")


def test_start_chat_status_stop(started, isolated, free_port):
    record, result = started
    assert f"http://127.0.0.1:{free_port}/v1" in result.stdout
    assert str(record["pid"]) in result.stdout and record["log_path"] in result.stdout

    # a detached daemon: its own session and process group, not ours
    pid = record["pid"]
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid
    assert os.getsid(pid) != os.getsid(0)
    assert oct(os.stat(isolated / "state" / "instances" / "llamacpp.json").st_mode & 0o777) == "0o600"
    assert oct(os.stat(record["log_path"]).st_mode & 0o777) == "0o600"
    assert oct(os.stat(isolated / "state").st_mode & 0o777) == "0o700"

    status = run_lf("runtime", "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    (inst,) = data["instances"]
    assert inst["state"] == "running" and inst["pid"] == pid and inst["port"] == free_port
    assert inst["health"]["reachable"] and inst["health"]["healthy"] and inst["health"]["model_loaded"]
    assert inst["health"]["latency_ms"] >= 0
    assert inst["model"] == "smollm2-135m"

    answer = run_lf("chat", QUESTION, "--temperature", "0", "--max-tokens", "48")
    assert answer.returncode == 0, answer.stderr
    assert "Paris" in answer.stdout

    piped = run_lf("chat", "--max-tokens", "16", input="Say hi\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip()

    as_json = run_lf("chat", QUESTION, "--temperature", "0", "--max-tokens", "48", "--json")
    response = json.loads(as_json.stdout)
    assert "Paris" in response["choices"][0]["message"]["content"]

    # starting what is already running is a no-op success
    again = run_lf("runtime", "start", "llamacpp", "--port", str(free_port))
    assert again.returncode == 0 and "already running" in again.stdout
    assert read_record(isolated / "state", "llamacpp")["pid"] == pid

    logs = run_lf("runtime", "logs", "llamacpp", "-n", "5")
    assert logs.returncode == 0 and len(logs.stdout.strip().splitlines()) <= 5

    members = group_processes(pid)
    assert members
    stop = run_lf("runtime", "stop", "llamacpp")
    assert stop.returncode == 0, stop.stderr
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert group_processes(pid) == []
    assert not (isolated / "state" / "instances" / "llamacpp.json").exists()

    again = run_lf("runtime", "stop", "llamacpp")
    assert again.returncode == 0 and "not running" in again.stdout


def test_sigkill_is_reported_as_crashed(started, isolated):
    record, _ = started
    os.kill(record["pid"], signal.SIGKILL)
    deadline = time.time() + 5
    while (
        psutil.pid_exists(record["pid"])
        and psutil.Process(record["pid"]).status() != psutil.STATUS_ZOMBIE
        and time.time() < deadline
    ):
        time.sleep(0.05)

    status = run_lf("runtime", "status", "--json")
    assert status.returncode == 3
    (inst,) = json.loads(status.stdout)["instances"]
    assert inst["state"] == "crashed"
    assert inst["pid"] is None

    down = run_lf("chat", "hi", "--no-auto-start")
    assert down.returncode == 3
    assert "lf runtime start llamacpp" in down.stderr

    stop = run_lf("runtime", "stop", "llamacpp")
    assert stop.returncode == 0 and "record cleaned up" in stop.stdout
    assert not (isolated / "state" / "instances" / "llamacpp.json").exists()


def test_restart_gives_a_new_process(started, isolated):
    record, _ = started
    restarted = run_lf("runtime", "restart", "llamacpp")
    assert restarted.returncode == 0, restarted.stderr
    new = read_record(isolated / "state", "llamacpp")
    assert new["pid"] != record["pid"]
    assert new["port"] == record["port"]  # the --port given to start stays in force
    assert not psutil.pid_exists(record["pid"]) or psutil.Process(record["pid"]).status() == psutil.STATUS_ZOMBIE
    assert json.loads(run_lf("runtime", "status", "--json").stdout)["instances"][0]["state"] == "running"


def test_chat_auto_starts_the_runtime(isolated, free_port):
    chat = run_lf("chat", QUESTION, "--temperature", "0", "--max-tokens", "48", env={"LLAMACPP_PORT": str(free_port)})
    try:
        assert chat.returncode == 0, chat.stderr
        assert "Paris" in chat.stdout
        assert "Starting llamacpp" in chat.stderr
        assert read_record(isolated / "state", "llamacpp")["port"] == free_port
    finally:
        run_lf("runtime", "stop", "--all")


def test_chat_without_a_message_on_a_terminal_is_interactive(started):
    """A real pseudo-terminal: `lf chat` prompts, answers each line, and leaves on /exit."""
    import pty
    import select
    import sys

    pid, fd = pty.fork()
    if pid == 0:  # the child: lf on a terminal
        os.execv(sys.executable, [sys.executable, "-m", "lf", "chat", "--max-tokens", "12", "--temperature", "0"])
    seen = b""

    def read_until_prompts(count: int, timeout: float = 60) -> None:
        nonlocal seen
        deadline = time.time() + timeout
        while seen.count(b">>> ") < count and time.time() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    return

    read_until_prompts(1)
    os.write(fd, b"Say hi\n")
    read_until_prompts(2)
    os.write(fd, b"/exit\n")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = seen.decode("utf-8", "replace")
    assert "Chatting with smollm2-135m" in text
    answer = text.split("Say hi", 1)[1].split(">>> ")[0]
    assert answer.strip()  # the model answered before the next prompt
    assert os.WEXITSTATUS(status) == 0


def test_chat_asking_for_another_model_than_the_running_one_says_so(started, tmp_path):
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    result = run_lf("chat", "--model", str(other), "hi")
    assert result.returncode == 1
    assert "llamacpp is serving smollm2-135m" in result.stderr
    assert f"lf runtime start llamacpp --model {other}" in result.stderr
