"""`lf serve` fits the models into the machine, with real processes (the gateway, fake engines): per-model limits
(429 past them, other models unaffected), answers that end (max_tokens set where a request sets none, a deadline
that ends a stream with finish_reason length), live reload of llamafarm.yaml under load (no stream cut), loading
progress, and embeddings refused without a start. The memory budget and context_size: auto with real engines are
in tests/test_e2e_gateway.py; the pool's decisions, one by one, in tests/test_pool.py."""

from __future__ import annotations

import json
import re
import textwrap
import threading
import time

import httpx
import pytest

from fakes import Gateway, engines, free_ports, use_fakes, wait_until


@pytest.fixture(autouse=True)
def fakes(isolated, monkeypatch):
    use_fakes(monkeypatch)
    return isolated / "state"


def write_project(work, models: str, gateway: str = "probe_interval: 0.3") -> None:
    text = "version: v1\nname: fit\nnamespace: tests\nruntime:\n"
    text += f"  gateway: {{{gateway}}}\n  models:\n" + textwrap.indent(textwrap.dedent(models).strip() + "\n", "    ")
    tmp = work / "llamafarm.yaml.tmp"
    tmp.write_text(text)
    tmp.replace(work / "llamafarm.yaml")  # as an editor saves: whole, at once


def stream(gateway: Gateway, model: str, timeout: float = 60, **extra) -> tuple[int, list[str]]:
    """A streamed chat: its status and the data lines it got (the last one says how it ended)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True, **extra}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=timeout) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, [response.text]
        return 200, [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def finish_reasons(lines: list[str]) -> list[str]:
    reasons = []
    for line in lines:
        if line == "[DONE]":
            continue
        event = json.loads(line)
        reasons += [c["finish_reason"] for c in event.get("choices", []) if c.get("finish_reason")]
    return reasons


# -- per model: max_concurrent, a queue, 429 ---------------------------------------------------------------------
def test_past_max_concurrent_and_its_queue_a_request_gets_429_while_another_model_answers(tmp_path, fakes):
    a, b, port = free_ports(3)
    write_project(
        tmp_path / "work",
        f"""
        - {{name: busy, provider: fake-steady, model: m, max_concurrent: 1, max_queue: 1, provider_config: {{port: {a}}}}}
        - {{name: other, provider: fake, model: m, provider_config: {{port: {b}}}}}
        """,
    )
    with Gateway(tmp_path / "work", port) as gateway:
        results: dict[str, tuple] = {}
        first = threading.Thread(target=lambda: results.__setitem__("first", stream(gateway, "busy")), daemon=True)
        first.start()
        assert wait_until(lambda: httpx.get(gateway.url + "/health").json()["components"][0]["in_flight"] == 1, 20)
        second = threading.Thread(target=lambda: results.__setitem__("second", stream(gateway, "busy")), daemon=True)
        second.start()
        assert wait_until(lambda: httpx.get(gateway.url + "/health").json()["components"][0]["waiting"] == 1, 10)
        third = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "busy", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert third.status_code == 429, third.text
        assert third.headers["retry-after"] and third.json()["error"]["code"] == "model_busy"
        other = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "other", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert other.status_code == 200  # another model is never held up
        first.join(120)
        second.join(120)
        assert results["first"][0] == 200 and results["second"][0] == 200  # the queued one was answered in turn


# -- answers that end ---------------------------------------------------------------------------------------------
def test_a_stream_past_the_request_timeout_ends_with_finish_reason_length_and_is_counted(tmp_path, fakes):
    a, port = free_ports(2)
    write_project(
        tmp_path / "work",
        f"- {{name: endless, provider: fake-slow-stream, model: m, provider_config: {{port: {a}}}}}",
        gateway="probe_interval: 0.3, request_timeout: 2",
    )
    with Gateway(tmp_path / "work", port) as gateway:
        started = time.monotonic()
        status, lines = stream(gateway, "endless")  # 300 tokens at 0.2 s: a minute if nothing ends it
        assert status == 200 and time.monotonic() - started < 30
        assert finish_reasons(lines) == ["length"] and lines[-1] == "[DONE]"
        metrics = httpx.get(gateway.url + "/metrics").text
        assert re.search(r'^lf_gateway_answers_cut_total\{model="endless",reason="deadline"\} 1\.0$', metrics, re.M)


def test_a_request_without_max_tokens_gets_the_default_and_one_above_the_limit_is_lowered(tmp_path, fakes):
    a, b, port = free_ports(3)
    write_project(
        tmp_path / "work",
        f"""
        - {{name: echo, provider: fake, model: m, max_tokens_limit: 50, provider_config: {{port: {a}}}}}
        - {{name: plain, provider: fake, model: m, max_tokens_default: 7, provider_config: {{port: {b}}}}}
        """,
        gateway="probe_interval: 0.3, max_tokens_default: 100",
    )
    with Gateway(tmp_path / "work", port) as gateway:
        for model, asked, sent in (("echo", None, 50), ("echo", 20, 20), ("echo", 4000, 50), ("plain", None, 7)):
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            if asked is not None:
                body["max_tokens"] = asked
            assert httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
            assert f"max_tokens={sent} " in _last_request_line(tmp_path, model), (model, asked)


def _last_request_line(tmp_path, model: str) -> str:
    log = next((tmp_path / "state").glob(f"projects/*/*/logs/{model}.log"))
    return [line for line in log.read_text().splitlines() if "max_tokens=" in line][-1]


# -- live reload -------------------------------------------------------------------------------------------------
def test_editing_llamafarm_yaml_under_load_adds_removes_and_restarts_models_and_cuts_no_stream(tmp_path, fakes):
    a, b, c, port = free_ports(4)
    work = tmp_path / "work"
    keep = f"- {{name: keep, provider: fake-brisk, model: m, provider_config: {{port: {a}}}}}"
    gone = f"- {{name: gone, provider: fake-brisk, model: m, provider_config: {{port: {b}}}}}"
    write_project(work, keep + "\n" + gone)
    with Gateway(work, port) as gateway:
        outcomes: list[tuple] = []
        stop = threading.Event()

        def load(model: str) -> None:
            while not stop.is_set():
                status, lines = stream(gateway, model)
                outcomes.append((model, status, finish_reasons(lines)))
                if status != 200:
                    return  # a removed model: new requests are refused, as they should be

        workers = [threading.Thread(target=load, args=(m,), daemon=True) for m in ("keep", "keep", "gone")]
        for worker in workers:
            worker.start()
        assert wait_until(lambda: len(outcomes) >= 6, 30)

        new = f"- {{name: new, provider: fake-brisk, model: m, provider_config: {{port: {c}}}}}"
        write_project(work, keep + "\n" + new)  # gone removed, new added
        assert wait_until(
            lambda: [m["id"] for m in httpx.get(gateway.url + "/v1/models").json()["data"]] == ["keep", "new"], 15
        )
        assert stream(gateway, "new")[0] == 200
        assert wait_until(lambda: "stopped gone (removed from llamafarm.yaml)" in gateway.text(), 15)

        changed = keep.replace("model: m", "model: m2")
        write_project(work, changed + "\n" + new)  # keep changed: restarted once its streams end
        assert wait_until(lambda: "stopped keep (changed in llamafarm.yaml)" in gateway.text(), 30), gateway.text()
        assert wait_until(lambda: stream(gateway, "keep")[1] and "fp-m2" in json.dumps(stream(gateway, "keep")[1]), 30)

        (work / "llamafarm.yaml").write_text("version: v1\nruntime: {models: [{name: broken}]}\n")  # invalid
        assert wait_until(lambda: "not reloaded" in gateway.text(), 15)
        assert stream(gateway, "keep")[0] == 200 and stream(gateway, "new")[0] == 200  # the running config stays
        stop.set()
        for worker in workers:
            worker.join(60)
    cut = [o for o in outcomes if o[1] == 200 and o[2] != ["stop"]]
    assert cut == [], f"streams that did not end normally: {cut}"
    refused = [o for o in outcomes if o[1] != 200]
    assert all(model == "gone" and status == 404 for model, status, _ in refused), refused
    assert len(outcomes) > 20


# -- loading progress, embeddings ------------------------------------------------------------------------------
def test_clients_of_a_loading_model_see_its_stage_and_health_shows_it(tmp_path, fakes):
    a, port = free_ports(2)
    write_project(
        tmp_path / "work", f"- {{name: slow, provider: fake-loading, model: m, provider_config: {{port: {a}}}}}"
    )
    with Gateway(tmp_path / "work", port) as gateway:
        comments: list[str] = []

        def read() -> None:
            body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=60) as response:
                comments.extend(line for line in response.iter_lines() if line.startswith(":"))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        seen: dict = {}

        def loading() -> bool:
            component = httpx.get(gateway.url + "/health").json()["components"][0]
            seen.update(component.get("loading") or {})
            return seen.get("stage") == "loading model"

        assert wait_until(loading, 20), seen
        model = httpx.get(gateway.url + "/v1/models").json()["data"][0]["lf"]
        assert model["state"] in ("starting", "running")
        reader.join(60)
    assert any("loading model" in line for line in comments), comments


def test_embeddings_a_runtime_has_off_are_refused_without_starting_anything(tmp_path, fakes):
    (port,) = free_ports(1)
    write_project(
        tmp_path / "work",
        "- {name: chatty, provider: llamacpp, model: smollm2-135m, provider_config: {embeddings: false}}",
    )
    with Gateway(tmp_path / "work", port) as gateway:
        answer = httpx.post(gateway.url + "/v1/embeddings", json={"model": "chatty", "input": "hi"}, timeout=10)
        assert answer.status_code == 501 and "embeddings: true" in answer.json()["error"]["message"]
        assert engines(fakes) == []
