"""Security properties, each checked against real processes: loopback by default, private files, names
that cannot escape the state dir, no shell anywhere, API keys never shown."""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from conftest import run_lf

from fakes import daemons, kill_daemons, read_record, record_file, use_fakes

LF_DIR = Path(__file__).resolve().parent.parent / "lf"
RUNTIMES_DIR = LF_DIR.parent / "runtimes"


@pytest.fixture(autouse=True)
def state(isolated, monkeypatch):
    use_fakes(monkeypatch)
    return isolated / "state"  # conftest's isolation kills whatever a test leaves running


def ok(result, code: int = 0):
    assert result.returncode == code, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def listening_ips(pid: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


# -- binding -------------------------------------------------------------------------------------
def test_binds_loopback_by_default(state, free_port):
    result = ok(run_lf("runtime", "start", "fake", "--port", str(free_port)))
    assert "Warning" not in result.stderr
    record = read_record(state, "fake")
    assert record["host"] == "127.0.0.1"
    assert listening_ips(record["pid"]) == {"127.0.0.1"}
    ok(run_lf("runtime", "stop", "fake"))


def test_binding_all_interfaces_only_when_asked_and_with_a_warning(state, tmp_path, free_port):
    result = ok(run_lf("runtime", "start", "fake", "--port", str(free_port), "--host", "0.0.0.0"))
    assert re.search(r"^Warning: fake will listen on 0\.0\.0\.0", result.stderr, re.M), result.stderr
    assert "Warning" not in result.stdout
    record = read_record(state, "fake")
    assert listening_ips(record["pid"]) == {"0.0.0.0"}
    assert record["base_url"] == f"http://127.0.0.1:{free_port}/v1"  # lf itself still talks over loopback
    ok(run_lf("runtime", "stop", "fake"))

    # asked for in llamafarm.yaml: the same warning
    (tmp_path / "work" / "llamafarm.yaml").write_text(
        "version: v1\nname: t\nnamespace: d\nruntime:\n  provider: fake\n  model: fake-model\n"
        f"  fake:\n    host: 0.0.0.0\n    port: {free_port}\n"
    )
    result = ok(run_lf("runtime", "start"))
    assert re.search(r"^Warning: fake will listen on 0\.0\.0\.0", result.stderr, re.M), result.stderr
    assert listening_ips(read_record(state, "fake")["pid"]) == {"0.0.0.0"}
    ok(run_lf("runtime", "stop", "fake"))


# -- private files -------------------------------------------------------------------------------
def run_lf_with_umask(umask: int, *args: str, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "lf", *args],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.umask(umask),
        env={**os.environ, **(env or {})},
    )


def test_state_files_are_private_even_with_an_open_umask(state, tmp_path, free_port):
    nested = tmp_path / "deep" / "er" / "state"  # lf creates every missing folder on the way
    ok(run_lf_with_umask(0, "runtime", "start", "fake", "--port", str(free_port), env={"LF_STATE_DIR": str(nested)}))
    try:
        for folder in (
            tmp_path / "deep",
            tmp_path / "deep" / "er",
            nested,
            nested / "instances",
            nested / "logs",
            nested / "locks",
        ):
            assert mode(folder) == "0o700", folder
        for path in (nested / "instances" / "fake.json", nested / "logs" / "fake.log", nested / "locks" / "fake.lock"):
            assert mode(path) == "0o600", path
    finally:
        ok(run_lf("runtime", "stop", "fake", env={"LF_STATE_DIR": str(nested)}))
        kill_daemons(nested)


def test_loose_permissions_left_by_someone_else_are_tightened(state, free_port):
    for sub in ("instances", "logs", "locks"):
        (state / sub).mkdir(parents=True)
        (state / sub).chmod(0o777)
    state.chmod(0o777)
    log = state / "logs" / "fake.log"
    log.write_text("an old log\n")
    log.chmod(0o666)
    ok(run_lf_with_umask(0, "runtime", "start", "fake", "--port", str(free_port)))
    for folder in (state, state / "instances", state / "logs", state / "locks"):
        assert mode(folder) == "0o700", folder
    assert mode(log) == "0o600" and mode(record_file(state, "fake")) == "0o600"
    ok(run_lf("runtime", "stop", "fake"))


PRIVATE_DATA_DIR = """
from lf.models.catalog import models_dir
from lf.dirs import data_dir, ensure_private_dir
ensure_private_dir(models_dir())  # as `lf runtime install` and model builds create theirs
print(data_dir())
"""


def test_data_dir_is_created_private(tmp_path):
    data = tmp_path / "fresh" / "data"
    result = subprocess.run(
        [sys.executable, "-c", PRIVATE_DATA_DIR],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.umask(0),
        env={**os.environ, "LF_DATA_DIR": str(data)},
    )
    assert result.returncode == 0, result.stderr
    for folder in (tmp_path / "fresh", data, data / "models"):
        assert mode(folder) == "0o700", folder


# -- names ---------------------------------------------------------------------------------------
HOSTILE_NAMES = ["../escape", "../../escape", "a/b", "/etc/passwd", "..", ".hidden", "a\nb", "fake\n", "x" * 65, ""]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_hostile_names_are_refused_by_the_state_store(name):
    from lf.daemon.records import StateStore
    from lf.errors import UnknownNameError

    store = StateStore()
    for path_of in (store.record_path, store.log_path, store.lock_path):
        with pytest.raises(UnknownNameError):
            path_of(name)


def test_names_cannot_reach_outside_the_state_dir(state, tmp_path):
    secret = tmp_path / "secret.log"
    secret.write_text("the secret\n")
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    (state / "victim.json").parent.mkdir(parents=True, exist_ok=True)
    (state / "victim.json").write_text("{}")

    logs = run_lf("runtime", "logs", "../../secret")
    ok(logs, 4)
    assert "the secret" not in logs.stdout and "invalid instance name" in logs.stderr

    for name in ("../../victim", "../victim"):
        stop = ok(run_lf("runtime", "stop", name), 4)
        assert "invalid instance name" in stop.stderr
    assert victim.exists() and (state / "victim.json").exists()

    status = run_lf("runtime", "status", "../victim")
    assert status.returncode == 4 and "Traceback" not in status.stderr

    # a model entry cannot be named so that its files land elsewhere
    (tmp_path / "work" / "llamafarm.yaml").write_text(
        "version: v1\nname: t\nnamespace: d\nruntime:\n  models:\n    - {name: ../../evil, provider: fake, model: fake-model}\n"
    )
    start = run_lf("runtime", "start")
    ok(start, 5)
    assert "runtime.models[0].name" in start.stderr
    assert daemons(state) == [] and not (tmp_path / "evil.json").exists()


# -- no shell ------------------------------------------------------------------------------------
def _sources() -> list[Path]:
    return sorted(LF_DIR.rglob("*.py")) + sorted(RUNTIMES_DIR.rglob("hooks.py"))


def test_no_shell_anywhere_in_lf():
    offences = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            where = f"{path.relative_to(LF_DIR.parent)}:{node.lineno}"
            if any(
                k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                for k in node.keywords
            ):
                offences.append(f"{where}: {func}(shell=...)")
            if (
                func in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput")
                or func.startswith("os.exec")
                and func.endswith("e")
            ):
                offences.append(f"{where}: {func}")
            if func.split(".")[-1] in ("Popen", "run", "call", "check_call", "check_output") and node.args:
                if isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
                    offences.append(f"{where}: {func} with a command string")
    assert offences == []


def test_config_values_reach_the_runtime_as_single_arguments(state, tmp_path, free_port):
    hostile = "m; touch PWNED1 && $(touch PWNED2) `touch PWNED3` | touch PWNED4 > PWNED5 '\" *"
    (tmp_path / "work" / "llamafarm.yaml").write_text(
        "version: v1\nname: t\nnamespace: d\nruntime:\n  provider: fake\n"
        f"  model: {json.dumps(hostile)}\n  fake:\n    port: {free_port}\n"
    )
    ok(run_lf("runtime", "start"))
    record = read_record(state, "fake")
    argv_line = next(
        line for line in Path(record["log_path"]).read_text().splitlines() if line.startswith("fake: argv ")
    )
    argv = json.loads(argv_line[len("fake: argv ") :])
    assert argv[argv.index("--model") + 1] == hostile
    ok(run_lf("runtime", "stop", "fake"))
    assert [p for p in tmp_path.rglob("PWNED*")] == []


# -- API keys ------------------------------------------------------------------------------------
LITERAL_KEY = "sk-literal-SECRET-5678"
ENV_KEY = "sk-env-SECRET-1234"
MANAGED_KEY = "sk-managed-SECRET-9012"


@pytest.fixture
def key_rejecting_server(free_port):
    """An OpenAI-like server that answers 401 and echoes the key it was sent, as careless servers do."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fakes.server", "--port", str(free_port), "--reject-key"],
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    assert "listening" in proc.stderr.readline() + proc.stderr.readline()
    yield free_port
    proc.kill()
    proc.wait(10)


def test_api_keys_never_appear_in_output_logs_or_errors(state, tmp_path, key_rejecting_server, monkeypatch):
    monkeypatch.setenv("FAKE_API_KEY", ENV_KEY)
    remote = f"http://127.0.0.1:{key_rejecting_server}/v1"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        local_port = sock.getsockname()[1]
    (tmp_path / "work" / "llamafarm.yaml").write_text(
        textwrap.dedent(
            f"""\
            version: v1
            name: keys
            namespace: default
            runtime:
              default_model: local
              models:
                - {{name: local, provider: fake, model: fake-model, api_key: {MANAGED_KEY}, provider_config: {{port: {local_port}}}}}
                - {{name: remote, provider: openai, model: gpt-x, base_url: "{remote}", api_key: {LITERAL_KEY}}}
                - {{name: remote-env, provider: openai, model: gpt-x, base_url: "{remote}", api_key: "${{FAKE_API_KEY}}"}}
            """
        )
    )
    outputs = []

    def lf(*args: str, code: int | None = 0):
        result = run_lf(*args)
        if code is not None:
            ok(result, code)
        assert "Traceback" not in result.stderr
        outputs.append((args, result.stdout + result.stderr))
        return result

    lf("config", "validate")
    lf("config", "validate", "--json")
    show = lf("config", "show", "--json")
    keys = {m["name"]: m["api_key"] for m in json.loads(show.stdout)["models"]}
    assert keys == {"local": "***", "remote": "***", "remote-env": "${FAKE_API_KEY}"}
    lf("config", "show")
    lf("runtime", "start", "local")
    lf("runtime", "status", code=None)
    lf("runtime", "status", "--json", code=None)
    lf("chat", "hi", "-m", "local")
    denied = lf("chat", "hi", "-m", "remote", code=9)
    assert "HTTP 401" in denied.stderr and "check the api_key" in denied.stderr
    lf("chat", "hi", "-m", "remote-env", code=9)
    lf("chat", "hi", "-m", "remote-env", "--json", code=9)
    lf("chat", "hi", "-m", "remote", "--no-stream", code=9)
    lf("runtime", "logs", "local")
    lf("runtime", "stop", "--all")

    # a key in the wrong place is an error that does not quote it
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: v1\nname: t\nnamespace: d\nruntime:\n  provider: fake\n  model: m\n"
        f"  api_key: [{LITERAL_KEY}]\n  fake:\n    api_key: {LITERAL_KEY}\n"
    )
    lf("config", "validate", str(bad), code=5)
    lf("config", "validate", str(bad), "--json", code=5)
    lf("runtime", "status", "-c", str(bad), code=5)

    files = [
        *state.glob("**/logs/*"),
        *state.glob("**/instances/*"),
    ]  # what lf writes about its instances, of every project
    assert any(p.suffix == ".log" for p in files)
    for path in files:
        outputs.append((str(path), path.read_text(errors="replace")))
    for where, text in outputs:
        for key in (LITERAL_KEY, ENV_KEY, MANAGED_KEY):
            assert key not in text, f"{key} shown by {where}:\n{text}"
