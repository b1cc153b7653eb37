"""The habits people arrive with from Ollama: `lf ps`, `lf pull`, `lf run`, and a word typed at the top level
that lives in a group (`lf status`) answered with the command meant. Also what `lf doctor`, `lf config show`
and `--set` completion tell a newcomer about the gateway and the runtimes."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import default_model_installed, run_lf
from test_chat_repl import PROMPT, Terminal, recorder  # noqa: F401 (recorder: the fixture, found by its name)

from fakes import Gateway, free_ports, read_record, use_fakes
from fakes.hfhub import FakeHub, write_gguf

QUESTION = "What is the capital of France?"


@pytest.fixture
def fakes(isolated, monkeypatch):
    use_fakes(monkeypatch)
    return isolated / "state"


def project(work: Path, models: str, gateway: str = "") -> None:
    (work / "llamafarm.yaml").write_text(
        "version: v1\nname: hour\nnamespace: tests\nruntime:\n"
        + (f"  gateway: {{{gateway}}}\n" if gateway else "")
        + "  models:\n"
        + models
    )


def ps(*args: str, env: dict | None = None) -> dict:
    result = run_lf("ps", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- lf ps ---------------------------------------------------------------------------------------------------
def test_ps_lists_what_runs_with_its_memory_and_nothing_that_does_not(tmp_path, fakes, free_port):
    project(
        tmp_path / "work",
        f"    - {{name: alpha, provider: fake, model: model-a, provider_config: {{port: {free_port}}}}}\n"
        "    - {name: beta, provider: fake, model: model-b}\n",
    )
    assert ps()["instances"] == []
    empty = run_lf("ps")
    assert empty.returncode == 0 and empty.stdout.split() == [
        "NAME",
        "MODEL",
        "RUNTIME",
        "STATE",
        "PID",
        "MEMORY",
        "UPTIME",
        "UNTIL",
    ]
    run_lf("runtime", "start", "alpha", check=True)
    (alpha,) = ps()["instances"]  # beta is configured, not running: not listed
    record = read_record(fakes, "alpha")
    assert (alpha["name"], alpha["model"], alpha["state"], alpha["pid"]) == (
        "alpha",
        "model-a",
        "running",
        record["pid"],
    )
    rss = sum(
        p.memory_info().rss for p in [psutil.Process(record["pid"]), *psutil.Process(record["pid"]).children(True)]
    )
    assert 0.5 * rss < alpha["memory_bytes"] < 2 * rss  # the process tree's resident memory
    assert (alpha["until"], alpha["expires_at"]) == ("-", None)  # no gateway: nothing unloads it
    table = run_lf("ps").stdout.splitlines()
    assert table[0].split() == ["NAME", "MODEL", "RUNTIME", "STATE", "PID", "MEMORY", "UPTIME", "UNTIL"]
    assert table[1].split()[:5] == ["alpha", "model-a", "fake", "running", str(record["pid"])] and "MiB" in table[1]
    run_lf("runtime", "stop", "--all", check=True)
    assert ps()["instances"] == []


def test_ps_asks_the_projects_gateway_when_it_unloads_each_model(tmp_path, fakes):
    a, b, c, port = free_ports(4)
    project(
        tmp_path / "work",
        f"    - {{name: alpha, provider: fake, model: model-a, provider_config: {{port: {a}}}}}\n"
        f"    - {{name: beta, provider: fake, model: model-b, keep_loaded: true, provider_config: {{port: {b}}}}}\n"
        f"    - {{name: gamma, provider: fake, model: model-c, provider_config: {{port: {c}}}}}\n",
        gateway=f"idle_ttl: 90, port: {port}",
    )
    key = {"LF_GATEWAY_API_KEY": "the-gateway-key-7"}
    run_lf("runtime", "start", "gamma", check=True)  # started by lf runtime start: the gateway never unloads it
    with Gateway(tmp_path / "work", port, env=key) as gateway:
        for model in ("alpha", "beta"):
            response = httpx.post(
                gateway.url + "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": "Bearer the-gateway-key-7"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
        shown = ps(env=key)
        by_name = {i["name"]: i for i in shown["instances"]}
        assert shown["gateways"] == [f"http://127.0.0.1:{port}/v1"]
        assert set(by_name) == {"alpha", "beta", "gamma", f"lf-serve-{port}"}
        assert 80 < by_name["alpha"]["expires_in_s"] <= 90 and by_name["alpha"]["until"].startswith("in 1m")
        assert by_name["alpha"]["expires_at"]
        assert (by_name["beta"]["until"], by_name["beta"]["expires_at"]) == ("forever", None)  # keep_loaded
        assert by_name["gamma"]["until"] == "-"
        # the gateway's memory is its own: the instances it started (its descendants) count on their rows
        serve = psutil.Process(by_name[f"lf-serve-{port}"]["pid"])
        whole = sum(p.memory_info().rss for p in [serve, *serve.children(recursive=True)])
        assert by_name[f"lf-serve-{port}"]["memory_bytes"] < whole - 0.5 * by_name["alpha"]["memory_bytes"]
        # without the key the gateway does not say: ps still lists, and says why it cannot tell
        blind = run_lf("ps", "--json")
        assert blind.returncode == 0 and "did not say when it unloads" in blind.stderr
        assert {i["name"]: i["until"] for i in json.loads(blind.stdout)["instances"]}["alpha"] == "-"
        assert "the-gateway-key-7" not in blind.stdout + blind.stderr + run_lf("ps", env=key).stdout
    run_lf("runtime", "stop", "--all", check=True)


# -- lf pull -------------------------------------------------------------------------------------------------
@pytest.fixture
def hub(isolated, monkeypatch, tmp_path):
    """A local fake Hugging Face Hub (tests/fakes/hfhub.py) and a private HF cache; nothing reaches the internet."""
    monkeypatch.setenv("HF_HOME", str(isolated / "hf"))
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    fake = FakeHub()
    fake.add("org/Tiny-GGUF", {"tiny-Q4_K_M.gguf": write_gguf(tmp_path / "tiny.gguf", "tiny", 4096).read_bytes()})
    with fake.start() as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        yield fake


def test_pull_is_models_pull(hub, isolated):
    pulled = run_lf("pull", "org/Tiny-GGUF:Q4_K_M", "--json")
    assert pulled.returncode == 0, pulled.stderr
    short = json.loads(pulled.stdout)
    assert Path(short["path"]).is_file() and str(isolated / "hf") in short["path"] and not short["already_present"]
    long = json.loads(run_lf("models", "pull", "org/Tiny-GGUF:Q4_K_M", "--json", check=True).stdout)
    assert set(long) == set(short) and long["path"] == short["path"]  # the same command, the same file
    assert long["already_present"] and long["downloaded_bytes"] == 0
    assert hub.sent("tiny-Q4_K_M.gguf") == short["files"][0]["size"]  # its bytes sent once: downloaded once
    bad = run_lf("pull", "not a ref")
    assert bad.returncode == 2 and "lf models fetch NAME" in bad.stderr  # the long form's own error


# -- lf run --------------------------------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.skipif(not default_model_installed(), reason="needs the default model: lf models fetch smollm2-135m")
def test_run_starts_the_model_and_answers_then_ps_shows_it():
    # the system prompt and temperature 0 make the 135M model's answer the same on every run
    steady = ("--system", "You are a helpful assistant.", "--temperature", "0", "--max-tokens", "48")
    answer = run_lf("run", "smollm2-135m", QUESTION, *steady)
    assert answer.returncode == 0, answer.stderr
    assert "Paris" in answer.stdout
    assert "Starting llamacpp" in answer.stderr  # it was not running: run started it
    again = run_lf("run", "smollm2-135m", QUESTION, *steady, "--json")  # running now: no start, the same answer
    assert "Starting" not in again.stderr
    assert "Paris" in json.loads(again.stdout)["choices"][0]["message"]["content"]
    (llamacpp,) = ps()["instances"]
    assert (llamacpp["name"], llamacpp["model"], llamacpp["state"]) == ("llamacpp", "smollm2-135m", "running")
    assert llamacpp["memory_bytes"] > 50 * 1024**2
    run_lf("runtime", "stop", "llamacpp", check=True)


def test_run_is_chat_with_the_model_named():
    """`lf run` calls `lf chat`'s own function: its errors are chat's, with chat's exit codes."""
    refused = run_lf("run", "smollm2-135m", "")
    assert refused.returncode == 2 and "the message is empty" in refused.stderr
    unknown = run_lf("run", "smollm2-135m", "hi", "-c", "nope.yaml")
    assert unknown.returncode == 5 and "nope.yaml" in unknown.stderr
    project_file = Path("llamafarm.yaml")
    project_file.write_text("version: v1\nname: x\nnamespace: y\nruntime: {provider: llamacpp, model: smollm2-135m}\n")
    missing = run_lf("run", "nosuch", "hi")
    assert missing.returncode == 4 and "nosuch" in missing.stderr  # chat's resolution of a model name


class RunTerminal(Terminal):
    """`lf run ARGS…` on a pseudo-terminal (test_chat_repl's Terminal, which runs `lf chat`)."""

    def __init__(self, *args: str):
        env = {**os.environ, "TERM": "xterm", "INPUTRC": os.devnull}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.execve(sys.executable, [sys.executable, "-m", "lf", "run", *args], env)
            finally:
                os._exit(127)
        self.seen, self.pos, self.eof, self.status = b"", 0, False, None


def test_run_without_a_prompt_on_a_terminal_is_the_interactive_chat(recorder):  # noqa: F811
    with RunTerminal("recorder") as term:
        term.expect("Chatting with rec-model")
        term.expect(PROMPT)
        term.enter("Say one")
        term.expect("Answer 1.")
        term.expect(PROMPT)
        term.enter("/exit")
        assert term.wait() == 0
    assert [m["content"] for m in recorder.messages(0)] == ["Say one"]


# -- did you mean ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "typed, meant",
    [
        (["status"], "lf runtime status"),
        (["stop", "llamacpp"], "lf runtime stop llamacpp"),
        (["list"], "lf models list"),
        (["ls"], "lf models list"),
        (["logs", "chat", "-f"], "lf runtime logs chat -f"),
        (["fetch", "gemma3-270m"], "lf models fetch gemma3-270m"),
        (["validate"], "lf config validate"),
        (["chta", "hi there"], "lf chat 'hi there'"),
    ],
)
def test_a_word_of_a_group_typed_at_the_top_is_a_usage_error_naming_the_command(typed, meant):
    result = run_lf(*typed)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"Error: no command {typed[0]!r}", f"  did you mean: {meant}"]


def test_a_word_nothing_resembles_gets_the_usual_usage_error():
    result = run_lf("xyzzy")
    assert result.returncode == 2 and "No such command 'xyzzy'" in result.stderr and "did you mean" not in result.stderr


def test_the_shortcuts_are_listed_and_cost_the_start_up_nothing_new():
    help_text = run_lf("--help").stdout
    for name in ("ps", "pull", "run"):
        assert f"\n  {name} " in help_text, name
    # `lf runtime status` (what scripts call in loops) loads none of them
    probe = "import sys; from lf.cli import main; sys.argv = ['lf', 'runtime', 'status', '--json']\n"
    probe += "try:\n    main()\nexcept SystemExit:\n    pass\n"
    shortcuts = ("lf.cli.ps", "lf.cli.run", "lf.core.ps", "lf.core.service")
    probe += f"print(sorted(m for m in sys.modules if m in {shortcuts!r}), file=sys.stderr)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert loaded.stderr.strip().splitlines()[-1] == "[]"


# -- lf doctor: the gateway's port, only the runtimes the project uses ----------------------------------------
def test_doctor_checks_the_gateways_port_and_only_the_ports_the_project_uses(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        project(
            tmp_path / "work",
            "    - {name: chat, provider: llamacpp, model: smollm2-135m}\n",
            gateway=f"port: {port}",
        )
        result = run_lf("doctor", "--json", timeout=120)
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    ports = sorted(name for name in checks if name.startswith("port:"))
    assert ports == ["port:chat", "port:gateway"]  # not vllm's, lemonade's, llama-cpp-python's
    gateway = checks["port:gateway"]
    assert gateway["status"] == "warn" and f"{port} on 127.0.0.1 (runtime.gateway.port) is in use" in gateway["detail"]
    assert "LF_GATEWAY_PORT" in gateway["fix"]
    (tmp_path / "work" / "llamafarm.yaml").unlink()
    plain = {c["name"]: c for c in json.loads(run_lf("doctor", "--json", timeout=120).stdout)["checks"]}
    assert "11500" in plain["port:gateway"]["detail"] and "(the default)" in plain["port:gateway"]["detail"]
    assert sorted(n for n in plain if n.startswith("port:")) == ["port:gateway", "port:llamacpp"]


# -- lf config show: the gateway's settings and each entry's aliases -------------------------------------------
def test_config_show_has_the_gateways_settings_with_their_source_and_never_the_key(tmp_path):
    project(
        tmp_path / "work",
        "    - {name: chat, provider: llamacpp, model: smollm2-135m, aliases: [smol, tiny]}\n",
        gateway="idle_ttl: 45, api_key: the-file-key-9",
    )
    shown = run_lf("config", "show", "--json", env={"LF_GATEWAY_MAX_LOADED": "2"})
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["models"][0]["aliases"] == ["smol", "tiny"]
    gateway = data["gateway"]
    assert gateway["idle_ttl"] == {"value": 45, "source": "config"}
    assert gateway["max_loaded"] == {"value": 2, "source": "env"}
    assert gateway["port"] == {"value": 11500, "source": "default"}
    assert gateway["api_key"] == {"value": "***", "source": "config"}
    assert "the-file-key-9" not in shown.stdout + shown.stderr
    text = run_lf("config", "show", env={"LF_GATEWAY_API_KEY": "the-env-key-3"})
    assert "the-env-key-3" not in text.stdout + text.stderr and "gateway:" in text.stdout


# -- --set NAME= completes the target runtime's setting names --------------------------------------------------
def complete(words: list[str]) -> list[str]:
    """What the committed bash completion answers (the same call bash's script makes)."""
    env = {
        **os.environ,
        "COMP_WORDS": " ".join(words),
        "COMP_CWORD": str(len(words) - 1),
        "_LF_COMPLETE": "complete_bash",
    }
    result = subprocess.run([sys.executable, "-m", "lf"], capture_output=True, text=True, env=env, timeout=60)
    return result.stdout.split()


def test_set_completes_the_setting_names_of_the_runtime_the_target_names(tmp_path):
    vllm = complete(["lf", "runtime", "start", "vllm", "--set", ""])
    assert {"tensor_parallel_size=", "kv_cache_space=", "dtype="} <= set(vllm) and "parallel=" not in vllm
    llamacpp = complete(["lf", "runtime", "start", "llamacpp", "--set", "ca"])
    assert llamacpp == ["cache_type_k=", "cache_type_v="]
    assert complete(["lf", "runtime", "start", "llamacpp", "--set", "pooling="]) == [
        "pooling=cls",
        "pooling=last",
        "pooling=mean",
        "pooling=none",
        "pooling=rank",
    ]
    # an entry of the project: its provider's settings; no target: the project's runtimes
    project(tmp_path / "work", "    - {name: big, provider: vllm, model: /models/x}\n")
    assert "tensor_parallel_size=" in complete(["lf", "runtime", "start", "big", "--set", ""])
    assert "tensor_parallel_size=" in complete(["lf", "runtime", "start", "--set", "te"])
    assert "threads=" not in complete(["lf", "runtime", "start", "--set", ""])
