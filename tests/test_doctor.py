"""`lf doctor` on this machine, for real: every check present, and failures made to happen (a port taken, a state
dir open to others or not ours, an invalid config, a missing model, a missing engine) give the right verdict,
fix and exit code."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest
from conftest import default_model_installed, run_lf

CHECK_FAILED = 10


def doctor(*args: str, env: dict | None = None):
    proc = run_lf("doctor", "--json", *args, env=env, timeout=120)
    data = json.loads(proc.stdout)
    assert data["exit_code"] == proc.returncode, proc.stderr
    return proc, {c["name"]: c for c in data["checks"]}, data


def write_config(folder, models: str) -> None:
    (folder / "llamafarm.yaml").write_text(f"version: v1\nname: doc\nnamespace: default\nruntime:\n  models:\n{models}")


@pytest.mark.skipif(not default_model_installed(), reason="needs the default model: lf models fetch smollm2-135m")
def test_every_check_is_present_and_this_machine_passes():
    proc, checks, data = doctor()
    for name in (
        "python",
        "lf",
        "cpu",
        "memory",
        "gpus",
        "npus",
        "state_dir",
        "config",
        "engine:llamacpp",
        "engine:llama-cpp-python",
        "port:llamacpp",
        "port:gateway",
        "memory_budget",
        "model:llamacpp",
        "service",
    ):
        assert name in checks, name
    assert "port:llama-cpp-python" not in checks  # a runtime the project does not use: its port is not checked
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in data["checks"])
    assert all(c["status"] in ("ok", "warn", "fail") for c in data["checks"])
    assert all(c["fix"] for c in data["checks"] if c["status"] != "ok")  # every warning and failure says what to do
    assert proc.returncode == 0, [c for c in data["checks"] if c["status"] == "fail"]
    assert "AVX" in checks["cpu"]["detail"] and "threads by default" in checks["cpu"]["detail"]
    assert checks["engine:llamacpp"]["status"] == "ok" and "CPU" in checks["engine:llamacpp"]["detail"].upper()
    assert checks["model:llamacpp"]["status"] == "ok" and "smollm2-135m" in checks["model:llamacpp"]["detail"]


def test_a_taken_port_names_its_holder_and_fails():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        # the embedded default instance on a port chosen through its env var: lf would refuse a taken one
        proc, checks, _ = doctor(env={"LLAMACPP_PORT": str(port)})
    check = checks["port:llamacpp"]
    assert check["status"] == "fail"
    assert f"{port} on 127.0.0.1 is in use by pid {os.getpid()}" in check["detail"]
    assert "stop that process" in check["fix"]
    assert proc.returncode == CHECK_FAILED


def test_a_taken_default_port_nobody_chose_is_a_warning(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        write_config(
            tmp_path / "work",
            "    - {name: a, provider: llamacpp, model: smollm2-135m}\n    - {name: b, provider: llamacpp, model: smollm2-135m}\n",
        )
        # two instances: a port from the environment is where they start counting, so a taken one is skipped
        proc, checks, _ = doctor(env={"LLAMACPP_PORT": str(port)})
    assert checks["port:a"]["status"] == "warn" and "next free port" in checks["port:a"]["detail"]
    assert checks["port:a"]["fix"]


def test_a_state_dir_open_to_others_is_made_private_and_said(isolated):
    state = isolated / "state"
    state.mkdir()
    state.chmod(0o777)
    proc, checks, _ = doctor()
    check = checks["state_dir"]
    assert check["status"] == "warn" and "was open to other users (mode 0777): lf made it 0700" in check["detail"]
    assert check["fix"]
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert proc.returncode in (0, CHECK_FAILED) and checks["state_dir"]["status"] != "fail"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a dir to another user needs root")
def test_a_state_dir_of_another_user_fails(isolated):
    state = isolated / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    proc, checks, _ = doctor()
    check = checks["state_dir"]
    assert check["status"] == "fail" and "belongs to another user" in check["detail"]
    assert "LF_STATE_DIR" in check["fix"]
    assert proc.returncode == CHECK_FAILED


def test_a_state_dir_that_is_a_file_fails(isolated):
    (isolated / "state").write_text("not a dir")
    proc, checks, _ = doctor()
    assert checks["state_dir"]["status"] == "fail" and checks["state_dir"]["fix"]
    assert proc.returncode == CHECK_FAILED


def test_an_invalid_config_fails_with_where_and_how(tmp_path):
    write_config(tmp_path / "work", "    - {name: a, provider: llamacp, model: smollm2-135m}\n")
    proc, checks, _ = doctor()
    check = checks["config"]
    assert check["status"] == "fail"
    assert "llamafarm.yaml:6:" in check["detail"] and "did you mean 'llamacpp'" in check["detail"]
    assert check["fix"] == "see every problem with: lf config validate"
    assert proc.returncode == CHECK_FAILED
    assert not [name for name in checks if name.startswith("model:")]  # nothing is guessed from a broken file


def test_a_missing_model_fails_with_its_hint(tmp_path):
    write_config(
        tmp_path / "work",
        "    - {name: gone, provider: llamacpp, model: ./missing.gguf}\n"
        "    - {name: typo, provider: llamacpp, model: smollm2-135}\n",
    )
    proc, checks, _ = doctor()
    gone, typo = checks["model:gone"], checks["model:typo"]
    assert gone["status"] == "fail" and "does not exist" in gone["detail"] and "check the path" in gone["fix"]
    assert typo["status"] == "fail" and "smollm2-135m" in typo["fix"]  # did you mean
    assert proc.returncode == CHECK_FAILED


def test_a_missing_engine_the_project_needs_fails(tmp_path):
    write_config(tmp_path / "work", "    - {name: py, provider: llama-cpp-python, model: smollm2-135m}\n")
    proc, checks, _ = doctor()  # the isolated data dir has no llama-cpp-python env
    check = checks["engine:llama-cpp-python"]
    assert check["status"] == "fail" and check["fix"] == "install it with: lf runtime install llama-cpp-python"
    assert proc.returncode == CHECK_FAILED


def test_text_output_gives_each_fix_under_its_check(tmp_path):
    write_config(tmp_path / "work", "    - {name: gone, provider: llamacpp, model: ./missing.gguf}\n")
    proc = run_lf("doctor")
    assert proc.returncode == CHECK_FAILED
    lines = proc.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("FAIL") and "model:gone" in line)
    assert "fix: check the path" in lines[at + 1]
    assert "failed" in proc.stderr


@pytest.mark.skipif(not default_model_installed(), reason="needs the default model: lf models fetch smollm2-135m")
def test_a_model_that_cannot_fit_fails_by_the_estimate_start_uses(tmp_path):
    from lf.hardware import memory

    huge = 1 << 20  # tokens of context: SmolLM2's KV cache alone is 22.5 GiB
    write_config(
        tmp_path / "work",
        f"    - {{name: small, provider: llamacpp, model: smollm2-135m}}\n    - {{name: huge, provider: llamacpp, model: smollm2-135m, provider_config: {{context_size: {huge}}}}}\n",
    )
    proc, checks, _ = doctor()
    assert checks["model:small"]["status"] == "ok" and "fits: needs about" in checks["model:small"]["detail"]
    if memory().available > 40 * 1024**3:
        pytest.skip("this machine has room even for that context")
    assert checks["model:huge"]["status"] == "fail" and "needs about" in checks["model:huge"]["detail"]
    assert "context_size" in checks["model:huge"]["fix"]
    assert proc.returncode == CHECK_FAILED
    refused = run_lf("runtime", "start", "huge", "--dry-run")  # start says the same of it
    assert "does NOT fit" in refused.stdout, refused.stdout + refused.stderr


@pytest.mark.skipif(not default_model_installed(), reason="needs the default model: lf models fetch smollm2-135m")
def test_the_memory_budget_is_shown_and_a_model_that_cannot_fit_in_it_is_named(isolated):
    models = "    - {name: chat, provider: llamacpp, model: smollm2-135m}\n"
    write_config(isolated / "work", models)
    _, checks, _ = doctor()
    budget = checks["memory_budget"]
    assert budget["status"] == "ok" and "the machine's memory" in budget["detail"], budget
    assert "1 model(s) need about" in budget["detail"] and "all fit at once" in budget["detail"]

    _, checks, _ = doctor(env={"LF_GATEWAY_MEMORY_BUDGET": "50MiB"})
    budget = checks["memory_budget"]
    assert budget["status"] == "warn" and "50.0 MiB (LF_GATEWAY_MEMORY_BUDGET)" in budget["detail"], budget
    assert "chat needs about" in budget["detail"] and "memory_budget" in budget["fix"]
