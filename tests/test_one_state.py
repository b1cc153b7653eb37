"""One instance, one state, one name: while `lf serve` runs, the CLI and the gateway describe each model in the same
word in every state a test can reach, `lf chat` and `lf runtime start` go through the gateway (one front door, no
second daemon), and every name (entry, alias, model) means the same model to both. Real processes: the gateway,
fake engines, the `lf` command."""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
import threading

import httpx
import pytest
from conftest import run_lf

from fakes import Gateway, engines, free_ports, read_record, use_fakes, wait_until

ACTION = {"Content-Type": "application/json", "X-LF-Action": "1"}


@pytest.fixture(autouse=True)
def fakes(isolated, monkeypatch):
    use_fakes(monkeypatch)
    return isolated / "state"


def project(work, models: str, gateway: str = "probe_interval: 0.2") -> None:
    (work / "llamafarm.yaml").write_text(
        "version: v1\nname: one\nnamespace: tests\nruntime:\n"
        f"  gateway: {{{gateway}}}\n"
        "  models:\n" + "".join(f"    {line}\n" for line in textwrap.dedent(models).strip().splitlines())
    )


def views(gateway: Gateway, name: str) -> dict[str, str]:
    """The state word each view gives the model: lf runtime status --json, /health, /v1/models, the page."""
    status = json.loads(run_lf("runtime", "status", name, "--json").stdout)
    health = httpx.get(gateway.url + "/health", timeout=10).json()
    models = httpx.get(gateway.url + "/v1/models", timeout=10).json()
    with httpx.stream("GET", gateway.url + "/ui/events", timeout=10) as response:
        page = next(json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: "))
    return {
        "status": status["instances"][0]["state"],
        "health": next(c["state"] for c in health["components"] if c["name"] == name),
        "v1/models": next(m["lf"]["state"] for m in models["data"] if m["id"] == name),
        "page": next(m["state"] for m in page["models"] if m["name"] == name),
    }


def agree(gateway: Gateway, name: str, word: str, timeout: float = 10) -> None:
    seen: dict = {}

    def check() -> bool:
        seen.update(views(gateway, name))
        return set(seen.values()) == {word}

    assert wait_until(check, timeout=timeout, interval=0.2), f"{name}: expected {word!r} everywhere, saw {seen}"


def act(gateway: Gateway, action: str, model: str, timeout: float = 60) -> httpx.Response:
    body = json.dumps({"action": action, "model": model})
    return httpx.post(gateway.url + "/ui/action", content=body, headers=ACTION, timeout=timeout)


def requests_counted(gateway: Gateway, model: str) -> float:
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    found = re.search(
        rf'^lf_gateway_requests_total{{endpoint="chat/completions",model="{model}",status="200"}} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


# -- one word for every state -----------------------------------------------------------------------------
def test_the_cli_and_every_view_of_the_gateway_use_the_same_word_in_every_state(tmp_path, fakes):
    a, b, c, d, remote, port = free_ports(6)
    work = tmp_path / "work"
    project(
        work,
        f"""
        - {{name: plain, provider: fake, model: m, provider_config: {{port: {a}}}}}
        - {{name: slow, provider: fake-slow, model: m, provider_config: {{port: {b}}}}}
        - {{name: stubborn, provider: fake-ignore-term, model: m, provider_config: {{port: {c}}}}}
        - {{name: victim, provider: fake, model: m, provider_config: {{port: {d}}}}}
        - {{name: remote, provider: openai, model: gpt-x, base_url: "http://127.0.0.1:{remote}/v1"}}
        """,
    )
    with Gateway(work, port) as gateway:
        agree(gateway, "plain", "idle")
        status = run_lf("runtime", "status", "plain")
        assert status.returncode == 0 and "started on demand by lf serve" in status.stdout, status.stdout
        agree(gateway, "remote", "external")

        assert act(gateway, "start", "plain").status_code == 200
        agree(gateway, "plain", "running")

        loading = threading.Thread(target=lambda: act(gateway, "start", "slow", timeout=120), daemon=True)
        loading.start()
        agree(gateway, "slow", "starting")

        assert act(gateway, "start", "victim").status_code == 200
        pid = read_record(fakes, "victim")["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            agree(gateway, "victim", "frozen")
        finally:
            os.kill(pid, signal.SIGCONT)
        agree(gateway, "victim", "running")
        os.kill(pid, signal.SIGKILL)
        agree(gateway, "victim", "crashed")

        assert act(gateway, "start", "stubborn").status_code == 200
        stopping = threading.Thread(target=lambda: act(gateway, "stop", "stubborn", timeout=60), daemon=True)
        stopping.start()  # it ignores SIGTERM: the stop waits its timeout, then kills it
        agree(gateway, "stubborn", "stopping")
        stopping.join(60)
        agree(gateway, "stubborn", "idle")


# -- one front door ---------------------------------------------------------------------------------------
def test_with_lf_serve_running_lf_chat_goes_through_it_and_no_second_daemon_appears(tmp_path, fakes):
    a, port = free_ports(2)
    work = tmp_path / "work"
    project(work, f"- {{name: alpha, provider: fake, model: m, aliases: [chat], provider_config: {{port: {a}}}}}")
    with Gateway(work, port) as gateway:
        assert engines(fakes) == []
        for turn in (1, 2, 3):
            answer = run_lf("chat", "hi", "--model", "chat", "--no-stream")
            assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr
            assert "through lf serve" in answer.stderr
            assert requests_counted(gateway, "alpha") == turn  # the gateway answered it
            assert len(engines(fakes)) == 1  # its own instance, started on the first question; no other
        record = read_record(fakes, "alpha")
        assert record["owner"] == "gateway"  # its idle timer and its budget apply

        direct = run_lf("chat", "hi", "--model", "alpha", "--direct", "--no-stream")
        assert direct.returncode == 0 and "through lf serve" not in direct.stderr
        assert requests_counted(gateway, "alpha") == 3 and len(engines(fakes)) == 1  # the same instance, around it


def test_with_lf_serve_running_lf_runtime_start_asks_it_and_direct_goes_around(tmp_path, fakes):
    a, b, port = free_ports(3)
    work = tmp_path / "work"
    project(
        work,
        f"""
        - {{name: alpha, provider: fake, model: m, provider_config: {{port: {a}}}}}
        - {{name: beta, provider: fake, model: m, provider_config: {{port: {b}}}}}
        """,
    )
    with Gateway(work, port) as gateway:
        started = run_lf("runtime", "start", "alpha", "--json")
        assert started.returncode == 0, started.stderr
        assert json.loads(started.stdout)["started"][0]["gateway"] == f"lf-serve-{port}"
        assert read_record(fakes, "alpha")["owner"] == "gateway"
        assert httpx.get(gateway.url + "/health").json()["gateway"]["loaded"] == 1  # in its budget

        direct = run_lf("runtime", "start", "beta", "--direct", "--json")
        assert direct.returncode == 0 and json.loads(direct.stdout)["started"][0]["gateway"] is None
        assert read_record(fakes, "beta")["owner"] == "cli"
        agree(gateway, "beta", "running")  # seen by the gateway, never unloaded by it
        assert len(engines(fakes)) == 2


def test_an_alias_means_the_same_model_to_lf_chat_and_to_the_gateway(tmp_path, fakes):
    a, port = free_ports(2)
    work = tmp_path / "work"
    project(work, f"- {{name: alpha, provider: fake, model: model-a, aliases: [chat], provider_config: {{port: {a}}}}}")
    direct = run_lf("chat", "hi", "--model", "chat", "--no-stream")  # no gateway yet: its own daemon
    assert direct.returncode == 0 and direct.stdout.strip(), direct.stderr
    assert read_record(fakes, "alpha")["owner"] == "cli"
    typo = run_lf("chat", "hi", "--model", "chta")
    assert typo.returncode == 4 and "did you mean 'chat'" in typo.stderr
    with Gateway(work, port) as gateway:
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30).json()
        assert answer["model"] == "chat" and answer["system_fingerprint"] == "fp-model-a"
    status = run_lf("runtime", "status", "chat", "--json")
    assert json.loads(status.stdout)["instances"][0]["name"] == "alpha"
    assert run_lf("runtime", "stop", "chat").returncode == 0 and read_record(fakes, "alpha") is None
