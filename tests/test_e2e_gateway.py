"""`lf serve` end to end: the official openai client, two real GGUF models on real llama.cpp engines
(SmolLM2-135M and Gemma 3 270M, both from packages), started on demand, unloaded when idle, swapped
under a budget of one, and upstreams that go away mid-answer."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import run_lf

from fakes import Gateway, daemons, engines, free_ports, is_gone, read_record, wait_until

pytestmark = pytest.mark.e2e
QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="session")
def gemma_installed():
    fetched = run_lf("models", "fetch", "gemma3-270m", timeout=900)
    assert fetched.returncode == 0, fetched.stderr[-2000:]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # gone between being listed and being asked
        return False


def two_models(tmp_path: Path, smol: str = "", gemma: str = "", gateway: str = "") -> list[int]:
    a, b, port = free_ports(3)
    (tmp_path / "work" / "llamafarm.yaml").write_text(
        "version: v1\nname: gw\nnamespace: tests\nruntime:\n"
        + (f"  gateway: {{{gateway}}}\n" if gateway else "")
        + "  models:\n"
        f"    - {{name: smol, provider: llamacpp, model: smollm2-135m, aliases: [small], {smol} provider_config: {{port: {a}}}}}\n"
        f"    - {{name: gemma, provider: llamacpp, model: gemma3-270m, {gemma} provider_config: {{port: {b}}}}}\n"
    )
    return [a, b, port]


def test_the_openai_client_talks_to_two_models_through_one_endpoint(tmp_path, gemma_installed):
    from openai import OpenAI

    *_, port = two_models(tmp_path)
    state = tmp_path / "state"
    with Gateway(tmp_path / "work", port) as gateway:
        client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        assert sorted(m.id for m in client.models.list()) == ["gemma", "smol"]

        answer = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=48
        )
        assert "Paris" in answer.choices[0].message.content  # started on demand for this very request
        assert answer.model == "smol"  # the name the client asked for, not the engine's
        streamed = list(
            client.chat.completions.create(
                model="small",
                messages=[{"role": "user", "content": QUESTION}],
                temperature=0,
                max_tokens=48,
                stream=True,
            )
        )
        assert "Paris" in "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        assert {chunk.model for chunk in streamed} == {"small"}  # an alias comes back as the alias

        completion = client.completions.create(
            model="gemma", prompt="The capital of France is", temperature=0, max_tokens=12
        )
        assert completion.model == "gemma" and completion.choices[0].text.strip()  # named as it was asked for
        assert read_record(state, "gemma")["model"] == "gemma3-270m"  # and the other model answered it
        pieces = client.completions.create(
            model="gemma", prompt="One, two, three,", temperature=0, max_tokens=8, stream=True
        )
        assert "".join(p.choices[0].text for p in pieces if p.choices).strip()
        last = {c["name"]: c["last_request"] for c in httpx.get(gateway.url + "/health").json()["components"]}
        assert (
            last["gemma"]["stream"]
            and last["gemma"]["ttft_ms"] > 0
            and last["gemma"]["tokens"] >= 2
            and last["gemma"]["tokens_per_s"] > 0
        )
        assert last["smol"]["tokens"] > 0 and last["smol"]["tokens_per_s"] > 0  # the streamed chat, the latest for smol

        assert {read_record(state, "smol")["model"], read_record(state, "gemma")["model"]} == {
            "smollm2-135m",
            "gemma3-270m",
        }
        assert read_record(state, "smol")["owner"] == "gateway"

        # a model that was stopped behind the gateway's back comes back on the next request
        assert run_lf("runtime", "stop", "smol").returncode == 0
        again = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
        )
        assert again.choices[0].message.content
    assert engines(state) == []


def test_an_idle_instance_stops_after_its_ttl_but_never_during_a_stream(tmp_path):
    *_, port = two_models(tmp_path, smol="idle_ttl: 2,")
    state = tmp_path / "state"
    with Gateway(tmp_path / "work", port) as gateway:
        body = {
            "model": "smol",
            "stream": True,
            "max_tokens": 400,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Write a long story about a robot who learns to paint."}],
        }
        alive_throughout = True
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=120) as response:
            started = None
            for line in response.iter_lines():
                if started is None and line.startswith("data: {"):
                    started, pid = time.monotonic(), read_record(state, "smol")["pid"]
                if started is not None:
                    alive_throughout &= not is_gone(pid)
            streamed_for = time.monotonic() - started
        ended = time.monotonic()
        assert streamed_for > 2 + 0.5, f"the answer took {streamed_for:.1f}s: not longer than the TTL"
        assert alive_throughout, "the instance went away while it was streaming"
        assert wait_until(lambda: is_gone(pid), timeout=15)
        assert time.monotonic() - ended <= 2 + 1, "the idle instance outlived its TTL by more than a second"
        assert wait_until(lambda: read_record(state, "smol") is None)
    assert engines(state) == []


def test_a_budget_of_one_swaps_two_models_and_never_runs_both(tmp_path, gemma_installed):
    *_, port = two_models(tmp_path)
    state = tmp_path / "state"
    most = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            live = [p for p in engines(state) if _alive(p)]
            most[0] = max(most[0], len(live))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with Gateway(tmp_path / "work", port, "--max-loaded", "1") as gateway:
            codes = []
            for model in ["smol", "gemma"] * 3:
                answer = httpx.post(
                    gateway.url + "/v1/completions",
                    json={"model": model, "prompt": "Hello", "max_tokens": 4},
                    timeout=120,
                )
                codes.append(answer.status_code)
            assert codes == [200] * 6
            assert gateway.text().count("(evicted)") == 5
    finally:
        sampling.set()
        sampler.join(5)
    assert most[0] == 1, f"{most[0]} engines were alive at once under --max-loaded 1"
    assert engines(state) == []


def test_a_client_that_goes_away_frees_the_engine_for_the_next_request(tmp_path):
    *_, port = two_models(tmp_path, smol="idle_ttl: 0,")
    (tmp_path / "work" / "llamafarm.yaml").write_text(
        (tmp_path / "work" / "llamafarm.yaml")
        .read_text()
        .replace("provider_config: {port:", "provider_config: {parallel: 1, port:", 1)
    )
    with Gateway(tmp_path / "work", port) as gateway:
        long = {
            "model": "smol",
            "stream": True,
            "max_tokens": 2000,
            "temperature": 0.8,
            "messages": [{"role": "user", "content": "Write a very long story."}],
        }
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=long, timeout=120) as response:
            lines = response.iter_lines()
            while '"content":"' not in next(lines):  # the answer has begun
                pass
        # the only slot was busy with 2000 tokens (~20 s here); the gateway closed that request upstream
        started = time.monotonic()
        quick = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "smol", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
            timeout=120,
        )
        waited = time.monotonic() - started
        assert quick.status_code == 200
        assert waited < 5, f"the next request waited {waited:.1f}s: the abandoned answer still held the slot"
        assert "cancel task" in Path(read_record(tmp_path / "state", "smol")["log_path"]).read_text()


def test_an_engine_killed_mid_stream_ends_the_stream_with_an_error(tmp_path):
    from openai import APIError, OpenAI

    *_, port = two_models(tmp_path)
    state = tmp_path / "state"
    with Gateway(tmp_path / "work", port) as gateway:
        client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        stream = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Write a long story."}], max_tokens=2000, stream=True
        )
        received = 0
        killed_at = None
        with pytest.raises(APIError, match="stopped answering mid-stream"):
            for _chunk in stream:
                received += 1
                if received == 5:
                    os.kill(read_record(state, "smol")["pid"], signal.SIGKILL)
                    killed_at = time.monotonic()
        assert time.monotonic() - killed_at < 2, "the client waited more than 2 s to hear that its stream broke"
        assert wait_until(
            lambda: (
                next(c for c in httpx.get(gateway.url + "/health").json()["components"] if c["name"] == "smol")["state"]
                == "crashed"
            ),
            timeout=15,
        )
        again = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
        )
        assert again.choices[0].message.content  # started again on demand
    assert daemons(state) == []


def test_embeddings_from_an_entry_that_asks_for_them_with_its_own_engine_flags(tmp_path):
    from openai import OpenAI

    a, port = free_ports(2)
    (tmp_path / "work" / "llamafarm.yaml").write_text(
        "version: v1\nname: emb\nnamespace: tests\nruntime:\n  models:\n"
        f"    - {{name: emb, provider: llamacpp, model: smollm2-135m, provider_config: {{port: {a}, embeddings: true, pooling: mean, batch_size: 256, engine_args: ['--ubatch-size=256']}}}}\n"
    )
    with Gateway(tmp_path / "work", port) as gateway:
        client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        vectors = client.embeddings.create(model="emb", input=["The capital of France is Paris.", "Bonjour"])
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == len(vectors.data[1].embedding) > 100
        command = read_record(tmp_path / "state", "emb")["command"]
        assert command[-6:] == ["--embeddings", "--pooling", "mean", "--batch-size", "256", "--ubatch-size=256"]


# -- the memory budget, with the real engines --------------------------------------------------------------------
def test_a_memory_budget_that_holds_one_of_two_models_swaps_them_and_never_runs_both(tmp_path, gemma_installed):
    # lf's estimates at 4096 tokens: SmolLM2 about 265 MiB, Gemma 3 about 431 MiB; 600 MiB holds one, not both
    *_, port = two_models(tmp_path)
    state = tmp_path / "state"
    most = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            live = [p for p in engines(state) if _alive(p)]
            most[0] = max(most[0], len(live))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with Gateway(tmp_path / "work", port, "--memory-budget", "600MiB") as gateway:
            codes = []
            for model in ["smol", "gemma"] * 3:
                answer = httpx.post(
                    gateway.url + "/v1/completions",
                    json={"model": model, "prompt": "Hello", "max_tokens": 4},
                    timeout=120,
                )
                codes.append(answer.status_code)
            assert codes == [200] * 6
            assert gateway.text().count("(evicted)") == 5
            health = httpx.get(gateway.url + "/health").json()["gateway"]
            assert health["memory_budget_bytes"] == 600 * 2**20 and 0 < health["memory_used_bytes"] <= 600 * 2**20
    finally:
        sampling.set()
        sampler.join(5)
    assert most[0] == 1, f"{most[0]} engines were alive at once under a budget that holds one"
    assert engines(state) == []


def test_a_model_larger_than_the_budget_is_refused_with_both_numbers_and_nothing_starts(tmp_path):
    *_, port = two_models(tmp_path)
    with Gateway(tmp_path / "work", port, "--memory-budget", "200MiB") as gateway:
        answer = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "smol", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            timeout=30,
        )
        assert answer.status_code == 503, answer.text
        message = answer.json()["error"]["message"]
        assert "200.0 MiB" in message and "MiB (lf's estimate)" in message and "context_size" in message
        assert engines(tmp_path / "state") == [] and read_record(tmp_path / "state", "smol") is None


@pytest.mark.parametrize("budget,larger", [("2GiB", True), ("470MiB", False)])
def test_context_auto_takes_what_the_budget_leaves(tmp_path, gemma_installed, budget, larger):
    *_, port = two_models(tmp_path, gemma="context_size: auto,")
    with Gateway(tmp_path / "work", port, "--memory-budget", budget) as gateway:
        answer = httpx.post(
            gateway.url + "/v1/completions", json={"model": "gemma", "prompt": "Hello", "max_tokens": 8}, timeout=120
        )
        assert answer.status_code == 200, answer.text
        component = next(c for c in httpx.get(gateway.url + "/health").json()["components"] if c["name"] == "gemma")
        context = component["context_size"]
        assert (context == 32768) if larger else (2048 <= context < 32768), context  # Gemma 3 270M was trained on 32768
        limit = 2 * 2**30 if larger else 470 * 2**20
        assert wait_until(lambda: _component(gateway, "gemma")["memory_bytes"] is not None, 10)
        assert _component(gateway, "gemma")["memory_bytes"] <= limit  # what the engine really takes fits
        status = run_lf("runtime", "status", "gemma", "--json")
        assert f'"context_size": {context}' in status.stdout


def _component(gateway: Gateway, name: str) -> dict:
    return next(c for c in httpx.get(gateway.url + "/health").json()["components"] if c["name"] == name)


def test_a_looping_answer_without_max_tokens_ends_with_finish_reason_length(tmp_path):
    from openai import OpenAI

    *_, port = two_models(tmp_path)
    with Gateway(tmp_path / "work", port, "--max-tokens-default", "64") as gateway:
        client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        prompt = "Count from 1 to 100000, one number per line, and never stop:"
        answer = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": prompt}], temperature=0
        )
        assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 64
        chunks = client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": prompt}], temperature=0, stream=True
        )
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert reasons == ["length"]
        metrics = httpx.get(gateway.url + "/metrics").text
        assert 'lf_gateway_answers_cut_total{model="smol",reason="max_tokens_default"} 2.0' in metrics
