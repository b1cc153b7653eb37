"""`lf serve` against fake runtimes (real processes, started in tens of milliseconds): routing, errors,
idle unload and its race with arriving requests, the queue, failed starts, keys, shutdown, adoption.
The real engines' turn is tests/test_e2e_gateway.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import run_lf

from fakes import Gateway, daemons, engines, free_ports, is_gone, read_record, use_fakes, wait_until


@pytest.fixture(autouse=True)
def fakes(isolated, monkeypatch):
    use_fakes(monkeypatch)
    return isolated / "state"


def project(tmp_path: Path, models: str, gateway: str = "") -> None:
    (tmp_path / "work" / "llamafarm.yaml").write_text(
        "version: v1\nname: gw\nnamespace: tests\nruntime:\n"
        + textwrap.indent(textwrap.dedent(gateway), "  ")
        + "  models:\n"
        + textwrap.indent(textwrap.dedent(models), "    ")
    )


def chat(gateway: Gateway, model: str, stream: bool = False, timeout: float = 30, **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=timeout)


def health(gateway: Gateway, **kwargs) -> dict:
    return httpx.get(gateway.url + "/health", timeout=10, **kwargs).json()


def component(gateway: Gateway, name: str) -> dict:
    return next(c for c in health(gateway)["components"] if c["name"] == name)


# -- routing and the OpenAI surface -------------------------------------------------------------------
def test_routes_by_name_alias_and_model_and_says_which_models_exist(tmp_path, fakes):
    a, b, port = free_ports(3)
    project(
        tmp_path,
        f"""\
        - {{name: alpha, provider: fake, model: model-a, aliases: [first], provider_config: {{port: {a}}}}}
        - {{name: beta, provider: fake, model: model-b, provider_config: {{port: {b}}}}}
        """,
    )
    with Gateway(tmp_path / "work", port) as gateway:
        models = httpx.get(gateway.url + "/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["alpha", "beta"]
        assert {m["lf"]["state"] for m in models["data"]} == {"idle"}
        for asked, served in (("alpha", "model-a"), ("first", "model-a"), ("model-b", "model-b"), ("beta", "model-b")):
            answer = chat(gateway, asked)
            assert answer.status_code == 200, answer.text
            # the model is named as the client named it; the fake's fingerprint says which instance answered
            assert answer.json()["model"] == asked and answer.json()["system_fingerprint"] == f"fp-{served}"
        missing = chat(gateway, "gamma")
        assert missing.status_code == 404
        error = missing.json()["error"]
        assert error["code"] == "model_not_found" and "alpha" in error["message"] and "beta" in error["message"]
        json_type = {"content-type": "application/json"}
        assert (
            httpx.post(gateway.url + "/v1/chat/completions", content=b"{not json", headers=json_type).status_code == 400
        )
        assert httpx.get(gateway.url + "/v1/models/first").json()["id"] == "alpha"
        assert httpx.get(gateway.url + "/nope").status_code == 404
    assert engines(fakes) == []  # SIGTERM stopped what it started


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(tmp_path):
    (a,), port = free_ports(1), free_ports(1)[0]
    project(tmp_path, f"- {{name: alpha, provider: fake, model: m, provider_config: {{port: {a}}}}}\n")
    with Gateway(tmp_path / "work", port, "--max-body", "2048") as gateway:
        big = {"model": "alpha", "messages": [{"role": "user", "content": "x" * 5000}]}
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=big)
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"

        def chunks():
            yield b'{"model": "alpha", "messages": [{"role": "user", "content": "'
            yield b"x" * 4096  # no Content-Length: refused while reading
            yield b'"}]}'

        refused = httpx.post(
            gateway.url + "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert refused.status_code == 413
        assert engines(tmp_path / "state") == []  # nothing was started for a refused request


# -- on demand -------------------------------------------------------------------------------------------
def test_concurrent_requests_for_a_stopped_model_make_one_start(tmp_path, fakes):
    (a,), port = free_ports(1), free_ports(1)[0]
    project(tmp_path, f"- {{name: slow, provider: fake-loading, model: m, provider_config: {{port: {a}}}}}\n")
    with Gateway(tmp_path / "work", port) as gateway:
        results = []
        threads = [threading.Thread(target=lambda: results.append(chat(gateway, "slow", timeout=60))) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert [r.status_code for r in results] == [200] * 8
        assert len(engines(fakes)) == 1
        assert gateway.text().count("started slow") == 1


def test_a_streaming_request_waiting_for_its_model_gets_sse_comments(tmp_path):
    (a,), port = free_ports(1), free_ports(1)[0]
    project(tmp_path, f"- {{name: slow, provider: fake-loading, model: m, provider_config: {{port: {a}}}}}\n")
    with Gateway(tmp_path / "work", port) as gateway:
        body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=60) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-accel-buffering"] == "no"
            text = "".join(response.iter_text())
        lines = [line for line in text.splitlines() if line]
        assert lines[0].startswith(": loading slow")  # sent at once, before the model is ready
        assert sum(line.startswith(": loading") for line in lines) >= 2  # and again while it loads (2.5 s)
        contents = [
            json.loads(line[6:])["choices"][0]["delta"].get("content") for line in lines if line.startswith("data: {")
        ]
        assert "".join(c for c in contents if c) == "Hello from the fake runtime."
        assert lines[-1] == "data: [DONE]"


def test_a_start_that_fails_tells_every_waiting_request_why(tmp_path, fakes):
    (a,), port = free_ports(1), free_ports(1)[0]
    project(tmp_path, f"- {{name: broken, provider: fake-bad-flag, model: m, provider_config: {{port: {a}}}}}\n")
    with Gateway(tmp_path / "work", port) as gateway:
        results = []
        threads = [threading.Thread(target=lambda: results.append(chat(gateway, "broken"))) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [r.status_code for r in results] == [503] * 3
        for r in results:
            message = r.json()["error"]["message"]
            assert (
                "broken could not be started" in message and "unrecognized arguments: --no-such-flag" in message
            )  # the log tail
        body = {"model": "broken", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        streamed = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=60)
        assert "unrecognized arguments" in streamed.text  # a quick failure still gets a proper status...
        assert streamed.status_code == 503 or 'data: {"error"' in streamed.text  # ...or an error event
        state = component(gateway, "broken")
        assert (
            state["state"] == "crashed"
            and state["status"] == "unhealthy"
            and any("--no-such-flag" in line for line in state["log_tail"])
        )
    assert engines(fakes) == []


# -- idle unload ----------------------------------------------------------------------------------------
def test_idle_instances_stop_after_their_ttl_and_keep_loaded_ones_stay(tmp_path, fakes):
    a, b, port = free_ports(3)
    project(
        tmp_path,
        f"""\
        - {{name: brief, provider: fake, model: m, idle_ttl: 1, provider_config: {{port: {a}}}}}
        - {{name: pinned, provider: fake, model: m, keep_loaded: true, provider_config: {{port: {b}}}}}
        """,
        gateway="gateway: {idle_ttl: 1}\n",
    )
    with Gateway(tmp_path / "work", port) as gateway:
        assert chat(gateway, "brief").status_code == 200 and chat(gateway, "pinned").status_code == 200
        done = time.monotonic()
        brief_pid, pinned_pid = read_record(fakes, "brief")["pid"], read_record(fakes, "pinned")["pid"]
        assert (
            component(gateway, "brief")["expires_at"] is not None and component(gateway, "pinned")["expires_at"] is None
        )
        assert wait_until(lambda: is_gone(brief_pid), timeout=10)
        assert time.monotonic() - done <= 1 + 1.0, "the idle instance outlived its TTL by more than a second"
        assert wait_until(lambda: read_record(fakes, "brief") is None) and not is_gone(pinned_pid)
        assert component(gateway, "brief")["state"] == "idle"
        time.sleep(1.5)
        assert not is_gone(pinned_pid)  # keep_loaded: never unloaded for idleness
        assert chat(gateway, "brief").status_code == 200  # and an unloaded model comes back on demand
    assert engines(fakes) == []


def test_an_instance_is_never_unloaded_while_it_streams(tmp_path, fakes):
    (a,), port = free_ports(1), free_ports(1)[0]
    project(
        tmp_path,
        f"- {{name: talker, provider: fake-slow-stream, model: m, idle_ttl: 0.5, provider_config: {{port: {a}}}}}\n",
    )
    with Gateway(tmp_path / "work", port) as gateway:
        body = {"model": "talker", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        pieces = 0
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    pieces += 1
                if pieces == 12:  # 12 × 0.2 s: well past the 0.5 s TTL, still streaming
                    break
            pid = read_record(fakes, "talker")["pid"]
            assert not is_gone(pid)
        assert wait_until(lambda: is_gone(pid), timeout=10)  # and once the client is gone, it goes too


@pytest.mark.slow
def test_requests_racing_the_idle_unload_are_all_answered(tmp_path, fakes):
    """Requests sent just before, at and just after the TTL expires (300 trials over 6 models at once),
    each streaming for ~0.2 s: every answer is whole (the model stays, or stops and starts again); none
    hangs, none fails, none is cut by an unload."""
    ports = free_ports(7)
    ttl = 0.3
    names = [f"m{i}" for i in range(6)]
    project(
        tmp_path,
        "".join(
            f"- {{name: {n}, provider: fake-brisk, model: m, idle_ttl: {ttl}, provider_config: {{port: {p}}}}}\n"
            for n, p in zip(names, ports)
        ),
    )
    offsets = [-0.15, -0.08, -0.04, -0.01, 0.0, 0.005, 0.01, 0.02, 0.05, 0.1]
    failures: list[str] = []
    trials = []

    def ask(client: httpx.Client, name: str) -> str | None:
        body = {"model": name, "stream": True, "messages": []}
        with client.stream("POST", f"{gateway.url}/v1/chat/completions", json=body) as response:
            text = response.read().decode()
        whole = (
            response.status_code == 200 and text.count('"content": "') == 6 and text.rstrip().endswith("data: [DONE]")
        )
        return None if whole else f"{response.status_code} {text[-300:]!r}"

    def race(name: str) -> None:
        with httpx.Client(timeout=20) as client:  # a hang shows up as a timeout, and fails the trial
            for i in range(50):
                try:
                    problems = [ask(client, name)]
                    time.sleep(max(0.0, ttl + offsets[i % len(offsets)]))
                    problems.append(ask(client, name))
                    trials.append(name)
                    failures.extend(f"{name} trial {i}: {p}" for p in problems if p)
                except httpx.HTTPError as exc:
                    failures.append(f"{name} trial {i}: {type(exc).__name__} {exc}")

    with Gateway(tmp_path / "work", ports[-1], "--max-loaded", "0") as gateway:  # no evictions: the TTL alone
        threads = [threading.Thread(target=race, args=(n,)) for n in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not any(t.is_alive() for t in threads), "a trial hung"
        assert failures == []
        assert len(trials) == 300
        stops = gateway.text().count("(idle)")
        assert stops > 50, f"only {stops} idle stops: the trials did not race the expiry"
    assert engines(fakes) == []


# -- the loaded-model budget and the queue ---------------------------------------------------------------
def test_when_every_loaded_model_is_busy_requests_queue_then_get_503(tmp_path, fakes):
    a, b, port = free_ports(3)
    project(
        tmp_path,
        f"""\
        - {{name: talker, provider: fake-slow-stream, model: m, provider_config: {{port: {a}}}}}
        - {{name: other, provider: fake, model: m, provider_config: {{port: {b}}}}}
        """,
    )
    with Gateway(tmp_path / "work", port, "--max-loaded", "1", "--max-queue", "1", "--queue-timeout", "30") as gateway:
        body = {"model": "talker", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=60) as busy:
            lines = busy.iter_lines()  # (kept: a dropped iterator would close the stream)
            assert next(lines).startswith((": loading talker", "data: {"))  # talker is loaded and busy for a minute
            queued = []
            waiter = threading.Thread(target=lambda: queued.append(chat(gateway, "other", timeout=60)))
            waiter.start()
            assert wait_until(lambda: health(gateway)["gateway"]["queued"] == 1, timeout=10)
            refused = chat(gateway, "other")
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
            assert refused.json()["error"]["code"] == "overloaded"
            assert [p.pid for p in engines(fakes)] == [read_record(fakes, "talker")["pid"]]
        # the stream is over: talker is idle, so it is evicted and the queued request served
        waiter.join(60)
        assert [r.status_code for r in queued] == [200]
        assert read_record(fakes, "talker") is None and len(engines(fakes)) == 1
        metrics = httpx.get(gateway.url + "/metrics").text
        assert 'lf_gateway_evictions_total{model="talker"} 1.0' in metrics


def test_a_model_started_for_a_request_is_not_evicted_for_the_queue_before_that_request_gets_it(tmp_path, fakes):
    """A request queued while another model starts must not evict that model in the instant between its
    start and the request that started it taking it (both are woken by the same start)."""
    a, b, port = free_ports(3)
    project(
        tmp_path,
        f"""\
        - {{name: talker, provider: fake-late-stream, model: m, provider_config: {{port: {a}}}}}
        - {{name: other, provider: fake, model: m, provider_config: {{port: {b}}}}}
        """,
    )
    with Gateway(tmp_path / "work", port, "--max-loaded", "1", "--max-queue", "1", "--queue-timeout", "30") as gateway:
        body = {"model": "talker", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=60) as busy:
            lines = busy.iter_lines()
            assert next(lines).startswith(": loading talker")  # talker starts: 1.5 s until it is healthy
            queued = []
            waiter = threading.Thread(target=lambda: queued.append(chat(gateway, "other", timeout=60)), daemon=True)
            waiter.start()
            assert wait_until(lambda: health(gateway)["gateway"]["queued"] == 1, timeout=10)  # queued during the start
            assert next(line for line in lines if line.startswith("data: {"))  # talker answers: the start was not lost
            assert health(gateway)["gateway"]["queued"] == 1, (
                "the queued request evicted the model its starter was waiting for"
            )
            assert [p.pid for p in engines(fakes)] == [read_record(fakes, "talker")["pid"]]
        waiter.join(60)
        assert [r.status_code for r in queued] == [200]


def test_a_model_started_for_a_request_that_went_away_makes_room_for_the_queue(tmp_path, fakes):
    a, b, port = free_ports(3)
    project(
        tmp_path,
        f"""\
        - {{name: slow, provider: fake-loading, model: m, provider_config: {{port: {a}}}}}
        - {{name: other, provider: fake, model: m, provider_config: {{port: {b}}}}}
        """,
    )
    with Gateway(tmp_path / "work", port, "--max-loaded", "1", "--queue-timeout", "60") as gateway:
        body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=60) as leaving:
            lines = leaving.iter_lines()
            assert next(lines).startswith(": loading slow")
            queued = []
            waiter = threading.Thread(target=lambda: queued.append(chat(gateway, "other", timeout=90)))
            waiter.start()
            assert wait_until(lambda: health(gateway)["gateway"]["queued"] == 1, timeout=10)
        # the client for `slow` went away while it loaded; once loaded and idle, it is the one to evict,
        # at once: not when the queued request's 60 s have run out
        waiter.join(20)
        assert not waiter.is_alive(), "the queued request still waits although an idle instance could make room"
        assert [r.status_code for r in queued] == [200]
        assert "stopped slow (evicted)" in gateway.text()
        assert health(gateway)["gateway"]["queued"] == 0


# -- health ------------------------------------------------------------------------------------------------
HUNG = """
import socket, sys, time
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(64)
print(sock.getsockname()[1], flush=True)
held = []
while True:
    conn, _ = sock.accept()
    held.append(conn)  # accepted, never answered
"""


def test_health_answers_from_its_cache_however_hung_a_runtime_is(tmp_path, fakes):
    hung = subprocess.Popen([sys.executable, "-c", HUNG], stdout=subprocess.PIPE, text=True)
    try:
        hung_port = int(hung.stdout.readline())
        ports = free_ports(4)
        project(
            tmp_path,
            "".join(
                f"- {{name: m{i}, provider: fake, model: m, provider_config: {{port: {p}}}}}\n"
                for i, p in enumerate(ports[:3])
            )
            + f"- {{name: stuck, provider: openai, model: x, base_url: 'http://127.0.0.1:{hung_port}/v1'}}\n",
        )
        with Gateway(tmp_path / "work", ports[3], "--probe-interval", "0.5") as gateway:
            for i in range(3):
                assert chat(gateway, f"m{i}").status_code == 200
            time.sleep(2.5)  # several probe rounds, each waiting on the hung one for its whole timeout
            for _ in range(20):
                started = time.monotonic()
                answer = httpx.get(gateway.url + "/health", timeout=5)
                assert time.monotonic() - started < 1.0, "/health waited for a probe"
            document = answer.json()
            assert answer.status_code == 200 and document["status"] == "degraded"
            states = {c["name"]: (c["state"], c["status"]) for c in document["components"]}
            assert states == {
                "m0": ("running", "healthy"),
                "m1": ("running", "healthy"),
                "m2": ("running", "healthy"),
                "stuck": ("external", "unhealthy"),
            }
            m0 = next(c for c in document["components"] if c["name"] == "m0")
            assert (
                m0["probes"] >= 2 and m0["latency_p50_ms"] is not None and m0["latency_p95_ms"] >= m0["latency_p50_ms"]
            )
            assert m0["details"]["model_loaded"] is True and m0["pid"] == read_record(fakes, "m0")["pid"]
            assert "no answer within" in next(c for c in document["components"] if c["name"] == "stuck")["message"]
    finally:
        hung.kill()
        hung.wait(10)


def test_metrics_parse_and_move(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    (a,), port = free_ports(1), free_ports(1)[0]
    project(tmp_path, f"- {{name: alpha, provider: fake, model: m, provider_config: {{port: {a}}}}}\n")
    with Gateway(tmp_path / "work", port) as gateway:

        def samples() -> dict:
            text = httpx.get(gateway.url + "/metrics").text
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }

        before = samples()
        assert chat(gateway, "alpha").status_code == 200
        assert chat(gateway, "alpha", stream=True).status_code == 200
        after = samples()
        key = ("lf_gateway_requests_total", (("endpoint", "chat/completions"), ("model", "alpha"), ("status", "200")))
        assert before.get(key, 0) == 0 and after[key] == 2
        assert after[("lf_gateway_instance_starts_total", (("model", "alpha"),))] == 1
        assert after[("lf_gateway_tokens_generated_total", (("model", "alpha"),))] >= 6
        assert after[("lf_gateway_time_to_first_token_seconds_count", (("model", "alpha"),))] == 1
        assert after[("lf_gateway_instances_loaded", ())] == 1


# -- keys and binding ------------------------------------------------------------------------------------
def test_a_non_loopback_address_needs_a_key_or_insecure(tmp_path):
    (port,) = free_ports(1)
    project(tmp_path, "- {name: alpha, provider: fake, model: m}\n")
    refused = run_lf("serve", "--host", "0.0.0.0", "--port", str(port), timeout=30)
    assert refused.returncode == 1 and "with no API key" in refused.stderr and "--insecure" in refused.stderr


GATEWAY_KEY = "gw-SECRET-key-3141"
UPSTREAM_KEY = "sk-upstream-SECRET-2718"


def test_keys_are_checked_added_upstream_and_never_shown(tmp_path, fakes):
    remote_port, local_port, port = free_ports(3)
    remote = subprocess.Popen(
        [sys.executable, "-m", "fakes.server", "--port", str(remote_port), "--reject-key"],
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        assert "listening" in remote.stderr.readline() + remote.stderr.readline()
        project(
            tmp_path,
            f"""\
            - {{name: local, provider: fake, model: m, provider_config: {{port: {local_port}}}}}
            - {{name: remote, provider: openai, model: gpt-x, base_url: "http://127.0.0.1:{remote_port}/v1", api_key: "${{UPSTREAM}}"}}
            """,
            gateway="gateway: {api_key: '${env:GW_KEY}'}\n",
        )
        env = {"GW_KEY": GATEWAY_KEY, "UPSTREAM": UPSTREAM_KEY}
        with Gateway(tmp_path / "work", port, "--host", "0.0.0.0", env=env) as gateway:
            body = {"model": "local", "messages": [{"role": "user", "content": "hi"}]}
            url = gateway.url + "/v1/chat/completions"
            assert httpx.post(url, json=body).status_code == 401
            assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert (
                httpx.get(gateway.url + "/health").status_code == 401
                and httpx.get(gateway.url + "/metrics").status_code == 401
            )
            assert httpx.get(gateway.url + "/health/liveness").status_code == 200  # for load balancers and lf itself
            auth = {"Authorization": f"Bearer {GATEWAY_KEY}"}
            assert httpx.post(url, json=body, headers=auth).status_code == 200
            # the remote answers 401 quoting the key it received: the gateway's own key must not have
            # been sent, and the upstream key it added must not come back
            outputs = []
            for stream in (False, True):
                answer = httpx.post(url, json={**body, "model": "remote", "stream": stream}, headers=auth)
                assert answer.status_code == 401
                assert "Incorrect API key provided: ***" in answer.text
                outputs.append(answer.text)
            outputs += [httpx.get(gateway.url + p, headers=auth).text for p in ("/health", "/metrics", "/v1/models")]
        outputs.append(gateway.text())
        outputs += [p.read_text(errors="replace") for p in (tmp_path / "state").rglob("*") if p.is_file()]
        for text in outputs:
            assert GATEWAY_KEY not in text and UPSTREAM_KEY not in text
    finally:
        remote.kill()
        remote.wait(10)


# -- shutdown, adoption, detach ---------------------------------------------------------------------------
def test_sigterm_stops_its_own_instances_and_leaves_the_others(tmp_path, fakes):
    a, b, port = free_ports(3)
    project(
        tmp_path,
        f"""\
        - {{name: mine, provider: fake, model: m, provider_config: {{port: {a}}}}}
        - {{name: yours, provider: fake, model: m, provider_config: {{port: {b}}}}}
        """,
    )
    assert run_lf("runtime", "start", "yours").returncode == 0
    yours = read_record(fakes, "yours")["pid"]
    gateway = Gateway(tmp_path / "work", port).start()
    try:
        assert chat(gateway, "mine").status_code == 200 and chat(gateway, "yours").status_code == 200
        assert read_record(fakes, "yours")["pid"] == yours  # used as it is, not restarted
        assert component(gateway, "yours")["owned"] is False and component(gateway, "mine")["owned"] is True
        mine = read_record(fakes, "mine")["pid"]
        assert gateway.terminate() == 0 or gateway.proc.returncode == -signal.SIGTERM
    finally:
        gateway.kill()
    assert is_gone(mine) and read_record(fakes, "mine") is None
    assert not is_gone(yours) and read_record(fakes, "yours")["pid"] == yours
    assert read_record(fakes, "lf-serve-" + str(port)) is None  # the gateway's own record goes with it
    run_lf("runtime", "stop", "yours", check=True)


def test_after_a_kill_9_the_next_gateway_adopts_and_its_sigterm_leaves_nothing(tmp_path, fakes):
    a, port = free_ports(2)
    project(tmp_path, f"- {{name: alpha, provider: fake, model: m, idle_ttl: 60, provider_config: {{port: {a}}}}}\n")
    with Gateway(tmp_path / "work", port) as first:  # killed below; its exit only cleans up after a failure
        assert chat(first, "alpha").status_code == 200
        pid = read_record(fakes, "alpha")["pid"]
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)

    status = json.loads(run_lf("runtime", "status", "--json").stdout)
    states = {i["name"]: i["state"] for i in status["instances"]}
    assert states["alpha"] == "running"  # still recorded: never an untracked process
    assert states[f"lf-serve-{port}"] == "crashed"  # and the killed gateway is reported as such

    with Gateway(tmp_path / "work", port) as second:
        assert component(second, "alpha")["owned"] is True and component(second, "alpha")["expires_at"] is not None
        assert chat(second, "alpha").status_code == 200
        assert read_record(fakes, "alpha")["pid"] == pid  # adopted, not restarted
    assert is_gone(pid) and daemons(fakes) == []


def test_lf_runtime_stop_ends_a_foreground_gateway_without_sigkill(tmp_path, fakes):
    """`lf serve` in a terminal (or under a service manager), stopped with `lf runtime stop lf-serve-PORT`: the
    stop holds the record's lock while it waits, so a gateway that waited for that lock on its way out was
    SIGKILLed after 10 s; it now leaves the record to the stop and ends on the SIGTERM, its instances stopped."""
    a, port = free_ports(2)
    project(tmp_path, f"- {{name: alpha, provider: fake, model: m, provider_config: {{port: {a}}}}}\n")
    with Gateway(tmp_path / "work", port) as gateway:
        assert chat(gateway, "alpha").status_code == 200
        stopped = run_lf("runtime", "stop", f"lf-serve-{port}", "--json", timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        (result,) = json.loads(stopped.stdout)["stopped"]
        assert result["was_running"] and not result["escalated"], result
        assert wait_until(lambda: gateway.proc.poll() is not None, timeout=10)
        assert gateway.proc.returncode == -signal.SIGTERM, gateway.text()
    assert daemons(fakes) == [] and engines(fakes) == []


def test_detach_runs_a_supervised_gateway_that_lf_runtime_stop_stops(tmp_path, fakes):
    a, port = free_ports(2)
    project(tmp_path, f"- {{name: alpha, provider: fake, model: m, provider_config: {{port: {a}}}}}\n")
    started = run_lf("serve", "--detach", "--port", str(port), "--json", timeout=60)
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    assert info["name"] == f"lf-serve-{port}" and info["base_url"] == f"http://127.0.0.1:{port}/v1"
    gateway_pid = info["pid"]
    answer = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "alpha", "messages": []}, timeout=30
    )
    assert answer.status_code == 200
    status = json.loads(run_lf("runtime", "status", "--json").stdout)
    states = {i["name"]: (i["runtime"], i["state"]) for i in status["instances"]}
    assert states[f"lf-serve-{port}"] == ("lf-serve", "running") and states["alpha"] == ("fake", "running")
    again = run_lf("serve", "--detach", "--port", str(port), timeout=60)
    assert again.returncode == 0 and "already running" in again.stdout
    stopped = run_lf("runtime", "stop", "lf-serve", timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert is_gone(gateway_pid) and daemons(fakes) == []  # its SIGTERM stopped the instance it started
