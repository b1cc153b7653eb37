"""Beyond one machine, first shape: peers. Two gateways A and B (their own state dirs, projects and ports), B a peer of
A: B's models are routed through A, a B that goes down answers its models with 503 and the reason within a probe,
and comes back by itself. Real processes (two `lf serve`, fake engines; the real engine for "Paris")."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import httpx
import pytest
from conftest import run_lf

from fakes import Gateway, engines, free_ports, read_record, use_fakes, wait_until

QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.fixture(autouse=True)
def fakes(isolated, monkeypatch):
    use_fakes(monkeypatch)
    return isolated


def site(root, name: str, models: str, gateway: str = "probe_interval: 0.3") -> tuple:
    """A project folder and a state dir of its own: what one machine of the team has."""
    work, state = root / name / "work", root / name / "state"
    work.mkdir(parents=True)
    (work / "llamafarm.yaml").write_text(
        f"version: v1\nname: {name}\nnamespace: tests\nruntime:\n  gateway: {{{gateway}}}\n  models:\n"
        + textwrap.indent(textwrap.dedent(models).strip() + "\n", "    ")
    )
    return work, {"LF_STATE_DIR": str(state), "LF_CONFIG": str(work / "llamafarm.yaml")}


def ask(gateway: Gateway, model: str, timeout: float = 30) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=timeout)


def peer(gateway: Gateway, name: str) -> dict:
    return next(p for p in httpx.get(gateway.url + "/health", timeout=10).json()["peers"] if p["name"] == name)


def test_a_peers_models_are_routed_through_the_gateway_and_its_outage_is_said_then_healed(tmp_path):
    a_engine, b_engine, a_port, b_port = free_ports(4)
    b_work, b_env = site(
        tmp_path, "b", f"- {{name: bmodel, provider: fake, model: mb, provider_config: {{port: {b_engine}}}}}"
    )
    a_work, a_env = site(
        tmp_path,
        "a",
        f"- {{name: amodel, provider: fake, model: ma, provider_config: {{port: {a_engine}}}}}",
        gateway=f"probe_interval: 0.3, peers: [{{name: b, url: 'http://127.0.0.1:{b_port}'}}]",
    )
    b = Gateway(b_work, b_port, env=b_env).start()
    try:
        with Gateway(a_work, a_port, env=a_env) as a:
            assert wait_until(lambda: peer(a, "b")["up"] is True, 10)
            ids = [m["id"] for m in httpx.get(a.url + "/v1/models").json()["data"]]
            assert ids == ["amodel", "b/bmodel"]
            for name in ("b/bmodel", "bmodel"):  # by the peer's name, and bare while only one place has it
                answer = ask(a, name)
                assert answer.status_code == 200, answer.text
                assert answer.json()["model"] == name and answer.json()["system_fingerprint"] == "fp-mb"
            assert ask(a, "amodel").json()["system_fingerprint"] == "fp-ma"  # its own models as before
            metrics = httpx.get(a.url + "/metrics").text
            assert (
                'lf_gateway_upstream_requests_total{model="b/bmodel",status="200",upstream="b"} 2.0' in metrics
            )  # both names
            assert 'lf_gateway_peer_up{peer="b"} 1.0' in metrics

            b.proc.send_signal(signal.SIGKILL)  # the other machine goes away, its engine with it
            b.proc.wait(10)
            engine = read_record(Path(b_env["LF_STATE_DIR"]), "bmodel")
            assert engine is not None
            os.kill(engine["pid"], signal.SIGKILL)
            assert wait_until(lambda: peer(a, "b")["up"] is False, 5)
            down = ask(a, "b/bmodel")
            assert down.status_code == 503 and "b/bmodel is down" in down.json()["error"]["message"]
            assert "connection refused" in down.json()["error"]["message"]
            assert ask(a, "amodel").status_code == 200  # the rest is not held up

            b = Gateway(b_work, b_port, env=b_env).start()  # back: A routes to it again by itself
            assert wait_until(lambda: ask(a, "b/bmodel").status_code == 200, 20)
    finally:
        b.kill()
        run_lf("runtime", "stop", "--all-projects", env=b_env)  # the engine B started again: none is left behind
    assert engines(Path(b_env["LF_STATE_DIR"])) == []


@pytest.mark.e2e
def test_a_model_only_the_peer_serves_answers_paris_through_the_other_gateway_with_the_openai_client(tmp_path):
    from conftest import default_model_installed
    from openai import OpenAI

    if not default_model_installed():
        pytest.skip("needs the default model: lf models fetch smollm2-135m")
    b_engine, a_port, b_port = free_ports(3)
    b_work, b_env = site(
        tmp_path,
        "b",
        f"- {{name: smol, provider: llamacpp, model: smollm2-135m, provider_config: {{port: {b_engine}}}}}",
    )
    a_work, a_env = site(
        tmp_path,
        "a",
        "- {name: remote, provider: openai, model: gpt-x, base_url: 'http://127.0.0.1:9/v1'}",
        gateway=f"probe_interval: 0.5, peers: [{{name: b, url: 'http://127.0.0.1:{b_port}/v1'}}]",
    )
    with Gateway(b_work, b_port, env=b_env), Gateway(a_work, a_port, env=a_env) as a:
        assert wait_until(lambda: peer(a, "b")["up"] is True, 10)
        client = OpenAI(base_url=a.url + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": QUESTION}]
        answer = client.chat.completions.create(model="b/smol", messages=messages, temperature=0, max_tokens=48)
        assert "Paris" in answer.choices[0].message.content and answer.model == "b/smol"
        chunks = client.chat.completions.create(
            model="smol", messages=messages, temperature=0, max_tokens=48, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "Paris" in text
