"""The gateway under attack: `lf serve` in a subprocess against fake runtimes (real processes), asked what a page
on another site, a rebound DNS name, a flood of idle or slow connections, a huge or deep JSON body, an HTTP/1.0
client, a SIGTERM mid-stream or a crowd of log followers can make it do. The real browser's turn is
tests/test_gateway_attacks_browser.py."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import run_lf

from fakes import Gateway, engines, free_ports, read_record, use_fakes, wait_until

JSON = {"content-type": "application/json"}
KEY = "gw-attack-key-0123456789"


@pytest.fixture(autouse=True)
def fakes(isolated, monkeypatch):
    use_fakes(monkeypatch)
    return isolated / "state"


def project(tmp_path: Path, models: str, gateway: str = "") -> Path:
    work = tmp_path / "work"
    (work / "llamafarm.yaml").write_text(
        "version: v1\nname: attacks\nnamespace: tests\nruntime:\n"
        + textwrap.indent(textwrap.dedent(gateway), "  ")
        + "  models:\n"
        + textwrap.indent(textwrap.dedent(models), "    ")
    )
    return work


def one_model(tmp_path: Path, provider: str = "fake", gateway: str = "") -> tuple[Path, int]:
    model_port, port = free_ports(2)
    work = project(
        tmp_path,
        f"- {{name: alpha, provider: {provider}, model: m, provider_config: {{port: {model_port}}}}}\n",
        gateway,
    )
    return work, port


def chat(url: str, model: str = "alpha", stream: bool = False, **kwargs) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60, **kwargs)


def error_of(response: httpx.Response) -> dict:
    """OpenAI's error shape, checked: what every refusal of the gateway looks like."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    return error


def metric(gateway: Gateway, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(gateway.url + "/metrics", headers=gateway_auth(gateway), timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def gateway_auth(gateway: Gateway) -> dict:
    key = gateway.env.get("LF_GATEWAY_API_KEY")
    return {"authorization": f"Bearer {key}"} if key else {}


# -- other sites' pages, rebound names ------------------------------------------------------------------------------
BROWSER_REFUSALS = [
    ({**JSON, "Origin": "http://evil.example"}, 403, "cross_origin", "a page elsewhere (its fetch says where from)"),
    ({**JSON, "Origin": "null"}, 403, "cross_origin", "a sandboxed page or a file"),
    ({**JSON, "Sec-Fetch-Site": "cross-site"}, 403, "cross_origin", "another site, by the browser's word"),
    ({**JSON, "Sec-Fetch-Site": "same-site"}, 403, "cross_origin", "another port of this host"),
    ({"content-type": "text/plain"}, 415, "unsupported_media_type", "what a form or a no-cors fetch may send"),
    ({"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type", "a form's default"),
    ({"content-type": "multipart/form-data; boundary=x"}, 415, "unsupported_media_type", "a form with files"),
    ({}, 415, "unsupported_media_type", "no type at all (a blob's fetch)"),
    ({**JSON, "Host": "rebind.evil.example"}, 403, "wrong_host", "a name made to point here (DNS rebinding)"),
]


def test_what_a_page_elsewhere_could_send_starts_nothing_and_reaches_no_paid_endpoint(tmp_path, fakes):
    """The requests a browser sends for a page on another site (form, no-cors fetch, its Origin and Sec-Fetch-Site,
    a rebound Host) are refused before the model is resolved: no engine starts and an external entry's endpoint,
    to which the gateway would add the user's key, hears nothing."""
    model_port, remote_port, port = free_ports(3)
    remote_log = tmp_path / "remote.log"
    with open(remote_log, "wb") as log:
        remote = subprocess.Popen(
            [sys.executable, "-m", "fakes.server", "--port", str(remote_port), "--log-requests"],
            stderr=log,
            env=dict(os.environ),
        )
    try:
        assert wait_until(lambda: "listening" in remote_log.read_text(), timeout=10)
        work = project(
            tmp_path,
            f"""\
            - {{name: alpha, provider: fake, model: m, provider_config: {{port: {model_port}}}}}
            - {{name: paid, provider: openai, model: gpt-x, api_key: "sk-paid-key",
               base_url: "http://127.0.0.1:{remote_port}/v1"}}
            """,
        )
        with Gateway(work, port) as gateway:
            for model in ("alpha", "paid"):
                body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
                for headers, status, code, why in BROWSER_REFUSALS:
                    refused = httpx.post(gateway.url + "/v1/chat/completions", content=body, headers=headers)
                    assert refused.status_code == status, (why, refused.text)
                    assert error_of(refused)["code"] == code, why
            assert engines(fakes) == []
            assert "POST /v1/chat/completions" not in remote_log.read_text()  # the paid endpoint heard nothing
            assert gateway.text().count("POST /v1/chat/completions model=- 403") == 2 * 5  # each refusal logged
            # the same requests from a script (no browser headers), and from the gateway's own origin, pass
            same_origin = {**JSON, "Origin": gateway.url, "Sec-Fetch-Site": "same-origin"}
            assert chat(gateway.url).status_code == 200
            assert chat(gateway.url, headers=same_origin).status_code == 200
            assert "POST /v1/chat/completions" not in remote_log.read_text()
            assert chat(gateway.url, model="paid").status_code == 200
            assert "POST /v1/chat/completions" in remote_log.read_text()
    finally:
        remote.kill()
        remote.wait(10)


ROUTES = [
    ("GET", "/v1/models", {}),
    ("GET", "/v1/models/alpha", {}),
    ("POST", "/v1/chat/completions", JSON),
    ("POST", "/v1/completions", JSON),
    ("POST", "/v1/embeddings", JSON),
    ("GET", "/health", {}),
    ("GET", "/metrics", {}),
    ("GET", "/", {}),
    ("GET", "/", {"accept": "text/html"}),
    ("GET", "/ui/events", {}),
    ("GET", "/ui/log/alpha", {}),
    ("POST", "/ui/action", {**JSON, "x-lf-action": "1"}),
    ("GET", "/no/such/route", {}),
]


def test_a_web_app_the_user_allows_may_call_the_openai_routes_and_nothing_else(tmp_path, fakes):
    """allowed_origins (Ollama's OLLAMA_ORIGINS): an allowed origin's preflight is answered without the key (a
    browser sends none), its calls to /v1/* are answered with Access-Control-Allow-Origin, refusals included; any
    other origin is still refused, the page's routes stay same-origin, and a rebound Host is still refused."""
    work, port = one_model(tmp_path)
    app, extension = "http://app.example:3000", "chrome-extension://abcdef"
    with Gateway(
        work, port, "--allowed-origin", app, "--allowed-origin", "chrome-extension://*",
        env={"LF_GATEWAY_API_KEY": KEY},
    ) as gateway:  # fmt: skip
        url = gateway.url + "/v1/chat/completions"
        body = json.dumps({"model": "alpha", "messages": [{"role": "user", "content": "hi"}]})
        asked = {
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type",
        }
        for origin in (app, extension):
            preflight = httpx.options(url, headers={"origin": origin, **asked})
            assert preflight.status_code == 204, preflight.text
            assert preflight.headers["access-control-allow-origin"] == origin
            assert preflight.headers["access-control-allow-headers"] == "authorization,content-type"
            browser = {"origin": origin, "sec-fetch-site": "cross-site", "sec-fetch-mode": "cors", **JSON}
            answer = httpx.post(url, content=body, headers={**browser, "authorization": f"Bearer {KEY}"})
            assert answer.status_code == 200, answer.text
            assert answer.headers["access-control-allow-origin"] == origin and answer.json()["choices"]
            keyless = httpx.post(url, content=body, headers=browser)
            assert keyless.status_code == 401 and keyless.headers["access-control-allow-origin"] == origin
            models = httpx.get(gateway.url + "/v1/models", headers={**browser, "authorization": f"Bearer {KEY}"})
            assert models.status_code == 200 and models.headers["access-control-allow-origin"] == origin
        for origin in ("http://evil.example", "http://app.example:3001", "https://app.example:3000"):
            refused = httpx.post(
                url, content=body, headers={"origin": origin, "authorization": f"Bearer {KEY}", **JSON}
            )
            assert refused.status_code == 403 and error_of(refused)["code"] == "cross_origin", origin
            assert f"lf serve --allowed-origin {origin}" in error_of(refused)["message"]  # what lets a web app in
            assert "access-control-allow-origin" not in refused.headers
            assert httpx.options(url, headers={"origin": origin, **asked}).status_code == 403
        for method, path, headers in ROUTES:
            if path.startswith("/v1/"):
                continue
            answer = httpx.request(
                method,
                gateway.url + path,
                headers={**headers, "origin": app, "authorization": f"Bearer {KEY}"},
                content=json.dumps({"model": "alpha", "action": "stop"}) if method == "POST" else None,
            )
            assert answer.status_code == 403, (method, path, answer.text)
        rebound = httpx.options(url, headers={"origin": app, "host": "rebind.evil.example", **asked})
        assert rebound.status_code == 403 and error_of(rebound)["code"] == "wrong_host"
        assert read_record(fakes, "alpha") is not None  # the page's stop never went through


def test_a_foreign_host_is_refused_on_every_route_but_liveness(tmp_path, fakes):
    """DNS rebinding: a page whose name was made to point at 127.0.0.1 sends its own name as Host; it would
    read answers, model lists, pids and crash logs. Every route refuses it, but the liveness probe."""
    work, port = one_model(tmp_path)
    with Gateway(work, port, "--allowed-host", "llm.example.test") as gateway:
        assert chat(gateway.url).status_code == 200  # alpha runs, with a log to follow
        body = json.dumps({"model": "alpha", "messages": [], "action": "stop"})
        for host in ("rebind.evil.example", f"rebind.evil.example:{port}", "localhost.evil.example", "llm.example"):
            for method, path, headers in ROUTES:
                answer = httpx.request(
                    method,
                    gateway.url + path,
                    headers={**headers, "host": host},
                    content=body if method == "POST" else None,
                )
                assert answer.status_code == 403, (host, method, path, answer.text)
                assert error_of(answer)["code"] == "wrong_host"
            live = httpx.get(gateway.url + "/health/liveness", headers={"host": host})
            assert live.status_code == 200 and live.json() == {"status": "ok"}
        assert engines(fakes) and read_record(fakes, "alpha") is not None  # nothing was stopped
        # this machine's names, IP addresses and the names allowed by the user are this gateway
        for host in (
            "localhost",
            f"localhost:{port}",
            f"127.0.0.1:{port}",
            f"[::1]:{port}",
            socket.gethostname(),
            f"llm.example.test:{port}",
            "LLM.Example.Test.",
        ):
            assert httpx.get(gateway.url + "/v1/models", headers={"host": host}).status_code == 200, host


def test_with_a_key_every_route_needs_it_but_liveness_and_the_page_itself(tmp_path, fakes):
    """The JSON index at / names the models: with a key it needs the key like /v1/models (the page at / is only
    HTML: its data comes from /ui/events, which needs the key)."""
    work, port = one_model(tmp_path)
    with Gateway(work, port, env={"LF_GATEWAY_API_KEY": KEY}) as gateway:
        for method, path, headers in ROUTES:
            if headers.get("accept") == "text/html":
                continue
            answer = httpx.request(
                method, gateway.url + path, headers=headers, content=b"{}" if method == "POST" else None
            )
            assert answer.status_code == 401, (method, path, answer.text)
            assert error_of(answer)["code"] == "invalid_api_key" and answer.headers["www-authenticate"] == "Bearer"
        auth = {"authorization": f"Bearer {KEY}"}
        index = httpx.get(gateway.url + "/", headers=auth)
        assert index.status_code == 200 and index.json()["models"] == ["alpha"]
        assert httpx.get(gateway.url + "/", headers={"accept": "text/html"}).status_code == 200
        assert httpx.get(gateway.url + "/health/liveness").status_code == 200
        assert chat(gateway.url, headers=auth).status_code == 200


def test_the_official_clients_and_curl_work_as_before(tmp_path, fakes):
    """What scripts send passes the checks untouched: the openai client (chat, stream, models), httpx, curl."""
    from openai import OpenAI

    work, port = one_model(tmp_path)
    with Gateway(work, port, env={"LF_GATEWAY_API_KEY": KEY}) as gateway:
        client = OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
        answer = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "Hello from the fake runtime."
        streamed = client.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "Hello from the fake runtime."
        )
        assert [m.id for m in client.models.list()] == ["alpha"]
        curl = shutil.which("curl")
        if curl is not None:
            body = '{"model": "alpha", "messages": [{"role": "user", "content": "hi"}]}'
            done = subprocess.run(
                [curl, "-s", f"localhost:{port}/v1/chat/completions", "-H", "content-type: application/json",
                 "-H", f"Authorization: Bearer {KEY}", "-d", body],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert json.loads(done.stdout)["choices"][0]["message"]["content"] == "Hello from the fake runtime."
            forgot = subprocess.run(
                [curl, "-s", f"localhost:{port}/v1/chat/completions", "-H", f"Authorization: Bearer {KEY}", "-d", body],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert "Content-Type: application/json" in json.loads(forgot.stdout)["error"]["message"]  # says what to add


# -- idle, slow and too many connections ----------------------------------------------------------------------------
def _connect(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(sock)
    return socks


def _closed_by_peer(sock: socket.socket, wait: float) -> bool:
    """Has the other end closed this connection (within `wait` seconds)?"""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def test_idle_and_slowloris_connections_are_closed_after_the_read_timeout(tmp_path):
    """Connections that never send a request, that send their headers a byte at a time, or that stay idle after
    an answer: each is closed once the read timeout has passed, before any key check held them forever."""
    work, port = one_model(tmp_path)
    with Gateway(work, port, "--read-timeout", "1", env={"LF_GATEWAY_API_KEY": KEY}) as gateway:
        idle = _connect(port, 200)
        slow = _connect(port, 100)
        answered = _connect(port, 20)
        try:
            for sock in answered:  # one answer each, then idle on a kept-alive connection
                sock.sendall(b"GET /health/liveness HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = b""
                while not answer.endswith(b'{"status":"ok"}'):
                    answer += sock.recv(4096)
                assert b" 200 OK" in answer
            for sock in slow:
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            opened = time.monotonic()
            cut = set()
            while time.monotonic() - opened < 4:  # a header byte every 0.2 s: slowloris
                for i, sock in enumerate(slow):
                    if i not in cut:
                        try:
                            sock.sendall(b"X")
                        except OSError:
                            cut.add(i)
                time.sleep(0.2)
            assert all(_closed_by_peer(sock, 1) for sock in idle), "an idle connection was held past the timeout"
            # cut while it still trickled: the deadline runs from the connection's start, not from its last byte
            assert cut == set(range(len(slow))), f"{len(slow) - len(cut)} slowloris connections held as they trickled"
            assert all(_closed_by_peer(sock, 1) for sock in answered)
            assert httpx.get(gateway.url + "/health/liveness").status_code == 200
        finally:
            _close_all(idle + slow + answered)


def test_a_body_trickled_without_long_pauses_is_cut_at_the_least_rate(tmp_path):
    """A body sent a byte every 0.3 s never pauses as long as the read timeout (1 s), so the pause bound alone
    would hold its connection for as long as the client likes (100 kB: eight hours): the least rate (500 bytes a
    second after the first read timeout) ends it with 408, and the gateway answers others meanwhile."""
    work, port = one_model(tmp_path)
    with Gateway(work, port, "--read-timeout", "1") as gateway:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{"
            )
            sock.settimeout(0.3)
            answer, opened = b"", time.monotonic()
            while time.monotonic() - opened < 20 and b"\r\n\r\n" not in answer:
                try:
                    sock.sendall(b" ")
                    answer += sock.recv(65536)
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:300] or "the trickled body was held for 20 s"
            while chunk := sock.recv(65536):
                answer += chunk
        assert b"slower than 500 bytes a second" in answer, answer
        assert httpx.get(gateway.url + "/health/liveness").status_code == 200


def test_a_client_that_stops_reading_a_stream_is_dropped_and_lets_go_of_its_model(tmp_path):
    """A client that asks for a stream and then reads nothing (a small receive buffer, never read): once the
    connection's buffers are full, it has the read timeout (1 s) to read again; then it is dropped, its answer
    logged 499, and the model's place and engine are free again. Without the bound both stay held for as long
    as the client keeps the connection open."""
    work, port = one_model(tmp_path, provider="fake-flood")
    with Gateway(work, port, "--read-timeout", "1") as gateway:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        body = json.dumps({"model": "alpha", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        try:

            def in_flight() -> int:
                (alpha,) = httpx.get(gateway.url + "/health", timeout=10).json()["components"]
                return alpha["in_flight"]

            assert wait_until(lambda: in_flight() == 1, timeout=30), gateway.text()
            assert wait_until(lambda: in_flight() == 0, timeout=30), "the unread stream held its model"
            assert wait_until(lambda: "POST /v1/chat/completions model=alpha 499" in gateway.text(), timeout=10), (
                gateway.text()
            )
            assert chat(gateway.url, "alpha").status_code == 200  # the model answers the next client
        finally:
            sock.close()


def test_when_every_connection_is_busy_a_newcomer_gets_503_and_huge_headers_431(tmp_path, fakes):
    """At max_connections with every connection in an answer, nothing can be closed for a newcomer: it is told
    so at once (503, Retry-After), and served again once a connection is free. Headers past 64 KiB: 431."""
    work, port = one_model(tmp_path, provider="fake-slow-stream")
    with Gateway(work, port, "--max-connections", "16") as gateway:
        lines: list[list] = [[] for _ in range(16)]
        streams = [threading.Thread(target=_stream_lines, args=(gateway.url, "alpha", lines[i]), daemon=True)
                   for i in range(16)]  # fmt: skip
        for thread in streams:
            thread.start()
        assert wait_until(lambda: all(any(t.startswith("data: {") for _, t in got) for got in lines), timeout=60)
        refused = httpx.get(gateway.url + "/health/liveness", timeout=10)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "as many connections as it holds" in error_of(refused)["message"]
    with Gateway(work, port) as gateway:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"x" * 70_000 + b"\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert httpx.get(gateway.url + "/v1/models").status_code == 200


LOW_LIMIT = (
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'lf', *sys.argv[1:]])"
)


def test_a_flood_of_connections_under_a_low_file_limit_leaves_the_gateway_answering(tmp_path, fakes):
    """Under `ulimit -n 256`, 300 idle and 300 slowloris connections: the gateway keeps at most what its file
    limit allows (closing the longest idle for each newcomer), so its liveness probe, /health and a start on
    demand still answer, at once, while the flood is held open."""
    work, port = one_model(tmp_path)
    gateway = Gateway(work, port, "--read-timeout", "60")
    gateway.args = [sys.executable, "-c", LOW_LIMIT, *gateway.args[3:]]  # lf serve …, under a hard limit of 256
    with gateway:
        assert "at most 96 connections, not 1000" in gateway.text()
        flood = _connect(port, 300)
        slow = _connect(port, 300)
        try:
            for sock in slow:
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            started = time.monotonic()
            assert httpx.get(gateway.url + "/health/liveness", timeout=10).status_code == 200
            assert httpx.get(gateway.url + "/health", timeout=10).status_code in (200, 503)
            answer = chat(gateway.url)
            assert answer.status_code == 200, answer.text
            assert time.monotonic() - started < 20
            assert len(engines(fakes)) == 1
            closed = sum(_closed_by_peer(sock, 0.01) for sock in flood + slow)
            assert closed >= 600 - 96, f"only {closed} of the flood's connections were closed for newcomers"
            gateway_proc = psutil.Process(gateway.proc.pid)
            assert gateway_proc.num_fds() < 256
        finally:
            _close_all(flood + slow)


def test_with_1100_connections_open_a_start_on_demand_succeeds(tmp_path, fakes):
    """A gateway holding 1100 client connections (descriptors past 1024, where select() fails) still starts a
    model on demand, answers it, and answers its liveness probe."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1300:
        if hard != resource.RLIM_INFINITY and hard < 1300:
            pytest.skip("this test needs 1300 open files (ulimit -n)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1300, hard))
    work, port = one_model(tmp_path)
    with Gateway(work, port, "--read-timeout", "60", "--max-connections", "2000") as gateway:
        held = _connect(port, 1100)
        try:
            gateway_proc = psutil.Process(gateway.proc.pid)
            assert wait_until(lambda: gateway_proc.num_fds() > 1100, timeout=10)
            answer = chat(gateway.url)
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == "Hello from the fake runtime."
            assert len(engines(fakes)) == 1
            assert httpx.get(gateway.url + "/health/liveness").status_code == 200
            assert not any(_closed_by_peer(sock, 0.001) for sock in held)  # none was needed for room
        finally:
            _close_all(held)
        soft_now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert soft_now >= 1300


# -- huge bodies ----------------------------------------------------------------------------------------------------
ATTACK = """
import json, os, sys, threading, http.client
port, rounds, at_once = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
size = 10_000_000
head = b'{"model": "bulk", "messages": [{"role": "user", "content": "hi"}], "x": ['
objects = head + b",".join([b"{}"] * ((size - len(head)) // 3)) + b"]}"  # some 3.3 million objects: 30x in memory
numbers = head + b",".join([b"1234567890"] * ((size - len(head)) // 11)) + b"]}"  # 0.9 million numbers, parsed whole
os.nice(10)  # the bodies are made: from now on this process only sends them, and leaves the CPU to the gateway
statuses = []
def send(body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    answer = conn.getresponse()
    answer.read()
    statuses.append(answer.status)
for _ in range(rounds):
    threads = [threading.Thread(target=send, args=(objects if i % 2 == 0 else numbers,)) for i in range(at_once)]
    for t in threads: t.start()
    for t in threads: t.join()
print(json.dumps(statuses))
"""


def _attack(port: int, rounds: int, at_once: int) -> list[int]:
    """10 MB bodies from another process (its work must not be this one's): `at_once` at a time, `rounds` times."""
    done = subprocess.run(
        [sys.executable, "-c", ATTACK, str(port), str(rounds), str(at_once)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def bodies_project(tmp_path):
    """A steady stream's model, and "bulk": an external endpoint that reads a whole body and answers 401 without
    parsing it (so that parsing 10 MB is the gateway's work alone)."""
    steady_port, bulk_port, port = free_ports(3)
    bulk = subprocess.Popen(
        [sys.executable, "-m", "fakes.server", "--port", str(bulk_port), "--reject-key"],
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    work = project(
        tmp_path,
        f"""\
        - {{name: steady, provider: fake-long-stream, model: m, provider_config: {{port: {steady_port}}}}}
        - {{name: bulk, provider: openai, model: m, base_url: "http://127.0.0.1:{bulk_port}/v1"}}
        """,
    )
    yield work, port
    bulk.kill()
    bulk.wait(10)


def test_a_10_mb_body_never_holds_up_another_stream_by_100_ms(bodies_project, fakes):
    """A stream of a token every 20 ms, while 10 MB bodies arrive four at a time (3.3 million `{}` objects, which
    Python's parser takes most of a second for, and a million numbers): no gap between two of the stream's
    chunks exceeds 20 ms + 100 ms. The objects' body is refused (413: more values than a body may hold), the
    numbers' one forwarded whole."""
    work, port = bodies_project
    with Gateway(work, port) as gateway:
        assert chat(gateway.url, "bulk").status_code == 401  # it answers (with a refusal)
        arrivals: list[float] = []

        def read() -> None:
            body = {"model": "steady", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=120) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        arrivals.append(time.monotonic())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert wait_until(lambda: len(arrivals) > 50, timeout=30)
        time.sleep(2)
        attack_from = time.monotonic()
        statuses = _attack(port, rounds=3, at_once=4)
        attack_to = time.monotonic()
        time.sleep(0.5)
        before = [b - a for a, b in zip(arrivals, arrivals[1:]) if b < attack_from]
        during = [b - a for a, b in zip(arrivals, arrivals[1:]) if b > attack_from and a < attack_to]
        print(
            f"gaps between chunks (20 ms apart upstream): before the bodies max {max(before) * 1000:.0f} ms, "
            f"during {len(during)} gaps over {attack_to - attack_from:.1f} s max {max(during) * 1000:.0f} ms"
        )
        assert len(during) > 20
        assert max(during) <= 0.020 + 0.100, f"a chunk waited {max(during) * 1000:.0f} ms behind the bodies"
        assert sorted(set(statuses)) == [401, 413] and len(statuses) == 12, statuses


def _tree_rss(pid: int) -> int:
    """The gateway's resident memory and its body worker's (the engines are processes of their own)."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children():
        try:
            if "jsonworker" in " ".join(child.cmdline()):
                total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def test_forty_10_mb_bodies_at_once_stay_within_bounded_memory(bodies_project, fakes):
    """40 bodies of 10 MB at once (half of them 3.3 million objects): the gateway and its body worker stay within
    300 MiB more than before, and hold no more than 60 MiB more once they are answered."""
    work, port = bodies_project
    with Gateway(work, port) as gateway:
        assert chat(gateway.url, "bulk").status_code == 401  # it answers (with a refusal)
        pid = gateway.proc.pid
        before = _tree_rss(pid)
        peak = before
        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, _tree_rss(pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        statuses = _attack(port, rounds=1, at_once=40)
        sampling = False
        sampler.join()
        time.sleep(2)
        after = _tree_rss(pid)
        mib = 1024 * 1024
        print(f"gateway + worker RSS: before {before / mib:.0f} MiB, peak {peak / mib:.0f}, after {after / mib:.0f}")
        assert sorted(set(statuses)) == [401, 413] and len(statuses) == 40, statuses
        assert peak - before < 300 * mib
        assert after - before < 60 * mib


# -- deep JSON ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding", [0, 400_000], ids=["parsed-in-the-gateway", "parsed-by-the-worker"])
def test_json_nested_960_levels_deep_is_a_400_in_openai_s_shape(tmp_path, fakes, padding):
    """JSON nested 960 levels deep parses, but the gateway could not write it again for the model (its stack is
    deeper): a 400 in OpenAI's error shape, for a small body and for a large one alike; 128 levels pass."""
    work, port = one_model(tmp_path)
    with Gateway(work, port) as gateway:
        pad = "x" * padding  # past LARGE: the worker parses it

        def body(depth: int) -> str:
            return f'{{"model": "alpha", "pad": "{pad}", "messages": [], "x": ' + "[" * depth + "]" * depth + "}"

        for opener in ("[", '{"a": '):
            nested = (
                body(960) if opener == "[" else body(0).replace('"x": ', '"x": ' + '{"a": ' * 960 + "1" + "}" * 960)
            )
            answer = httpx.post(gateway.url + "/v1/chat/completions", content=nested, headers=JSON, timeout=60)
            assert answer.status_code == 400, answer.text
            error = error_of(answer)
            assert error["code"] == "invalid_json" and "nested more than 128 levels" in error["message"]
        assert engines(fakes) == []
        ok = httpx.post(gateway.url + "/v1/chat/completions", content=body(127), headers=JSON, timeout=60)
        assert ok.status_code == 200, ok.text
        assert "Traceback" not in gateway.text() and " 500 " not in gateway.text()


# -- HTTP/1.0 -------------------------------------------------------------------------------------------------------
def _http10(port: int, method: str, path: str, body: bytes = b"") -> tuple[bytes, bytes]:
    """An HTTP/1.0 exchange on a raw socket: the answer's head and its body, read to the connection's end."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    answer_head, _, answer_body = data.partition(b"\r\n\r\n")
    return answer_head.lower(), answer_body


def test_an_http_1_0_client_gets_bodies_it_can_read(tmp_path, fakes):
    """HTTP/1.0 has no chunked encoding: a streamed answer, a relayed one and the page's JSON come as plain bytes
    ended by the connection's close."""
    work, port = one_model(tmp_path)
    with Gateway(work, port):
        for stream in (True, False):
            body = json.dumps({"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
            head, text = _http10(port, "POST", "/v1/chat/completions", body.encode())
            assert b" 200 " in head.split(b"\r\n")[0] and b"transfer-encoding" not in head, head
            assert b"connection: close" in head
            if stream:
                assert text.count(b"data: {") == 7 and text.endswith(b"data: [DONE]\n\n"), text[-200:]
            else:
                assert json.loads(text)["choices"][0]["message"]["content"] == "Hello from the fake runtime."
        head, text = _http10(port, "GET", "/v1/models")
        assert b"transfer-encoding" not in head and json.loads(text)["data"][0]["id"] == "alpha"
        head, text = _http10(port, "GET", "/metrics")
        assert b"transfer-encoding" not in head and b"lf_gateway_requests_total" in text


# -- SIGTERM mid-stream ---------------------------------------------------------------------------------------------
def _stream_lines(url: str, model: str, into: list, timeout: float = 60) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=timeout) as response:
            for line in response.iter_lines():
                if line:
                    into.append((time.monotonic(), line))
    except httpx.HTTPError as exc:
        into.append((time.monotonic(), f"broken: {type(exc).__name__}"))
    into.append((time.monotonic(), "end"))


def test_sigterm_lets_a_stream_finish_within_the_grace_and_refuses_new_requests(tmp_path, fakes):
    """A stream of 2 s in flight at SIGTERM (grace 5 s) ends whole, with [DONE]; meanwhile new connections are
    refused; then the gateway stops its model and exits."""
    work, port = one_model(tmp_path, provider="fake-short-stream")
    gateway = Gateway(work, port).start()
    try:
        lines: list = []
        reader = threading.Thread(target=_stream_lines, args=(gateway.url, "alpha", lines), daemon=True)
        reader.start()
        assert wait_until(lambda: any(text.startswith("data: {") for _, text in lines), timeout=30)
        gateway.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(gateway.url + "/health/liveness", timeout=5)
        reader.join(30)
        texts = [text for _, text in lines]
        assert texts[-2:] == ["data: [DONE]", "end"], texts[-5:]
        assert sum('"content"' in t for t in texts) == 10
        assert gateway.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        gateway.kill()
    log = gateway.text()
    assert "POST /v1/chat/completions model=alpha 200" in log and "stopped alpha (shutdown)" in log
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    assert engines(fakes) == []


def test_sigterm_ends_a_stream_past_the_grace_with_an_error_event_and_no_traceback(tmp_path, fakes):
    """A stream of a minute in flight at SIGTERM, with a grace of 2 s: it goes on for those 2 s, then ends with an
    SSE error event saying the gateway is shutting down (its log says 503), and the gateway exits without a
    traceback; a request still waiting for its model gets the same error event."""
    model_port, loading_port, port = free_ports(3)
    work = project(
        tmp_path,
        f"""\
        - {{name: talker, provider: fake-slow-stream, model: m, provider_config: {{port: {model_port}}}}}
        - {{name: sleepy, provider: fake-slow, model: m, provider_config: {{port: {loading_port}}}}}
        """,
    )
    gateway = Gateway(work, port, "--shutdown-grace", "2").start()
    try:
        streaming: list = []
        waiting: list = []
        threads = [
            threading.Thread(target=_stream_lines, args=(gateway.url, "talker", streaming), daemon=True),
            threading.Thread(target=_stream_lines, args=(gateway.url, "sleepy", waiting), daemon=True),
        ]
        for thread in threads:
            thread.start()
        assert wait_until(lambda: sum(t.startswith("data: {") for _, t in streaming) >= 3, timeout=30)
        assert wait_until(lambda: any(t.startswith(": loading sleepy") for _, t in waiting), timeout=30)
        signalled = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        for lines in (streaming, waiting):
            (at, last), (_, end) = lines[-2:]
            assert end == "end" and last.startswith("data: {"), lines[-3:]
            error = json.loads(last[6:])["error"]
            assert error["code"] == "shutting_down" and "shutting down" in error["message"]
            assert 2 <= at - signalled < 2 + 3, f"cut {at - signalled:.1f}s after SIGTERM"
        after = [t for at, t in streaming if at > signalled + 0.5 and '"content"' in t]
        assert len(after) >= 5, "the stream did not go on during the grace"
        assert gateway.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        gateway.kill()
    log = gateway.text()
    assert "model=talker 503" in log and "model=sleepy 503" in log
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    assert engines(fakes) == []


# -- keys that lock everyone out or no one, where it listens --------------------------------------------------------
@pytest.mark.parametrize(
    "key, says",
    [
        ("x", "1 characters long: at least 12"),
        ("elevenchars", "11 characters long: at least 12"),
        (" ", "spaces or control characters"),
        (" padded-key-0123456789", "spaces or control characters"),
        ("padded-key-0123456789 ", "spaces or control characters"),
        ("tab\tkey-0123456789", "spaces or control characters"),
        ("bell\x07key-0123456789", "spaces or control characters"),
    ],
)
def test_a_key_no_client_could_send_or_anyone_could_guess_is_refused_before_listening(tmp_path, key, says):
    work, port = one_model(tmp_path)
    for how in ("env", "file"):
        if how == "file":
            text = (work / "llamafarm.yaml").read_text()
            (work / "llamafarm.yaml").write_text(
                text.replace("runtime:\n", f"runtime:\n  gateway: {{api_key: {json.dumps(key)}}}\n")
            )
        env = {"LF_GATEWAY_API_KEY": key} if how == "env" else {}
        done = run_lf("serve", "--port", str(port), env=env, timeout=30)
        assert done.returncode == 1, (how, done.stderr)
        assert says in done.stderr and "openssl rand -hex 24" in done.stderr, (how, done.stderr)
        assert "Traceback" not in done.stderr and "listening on" not in done.stderr
        if len(key.strip()) > 4:
            assert key.strip() not in done.stderr  # never printed
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0  # it never listened


def test_a_twelve_character_key_is_enough_and_the_log_says_where_it_listens(tmp_path):
    work, port = one_model(tmp_path)
    with Gateway(work, port, "--host", "0.0.0.0", env={"LF_GATEWAY_API_KEY": "twelve-chars"}) as gateway:
        assert chat(gateway.url).status_code == 401
        assert chat(gateway.url, headers={"authorization": "Bearer twelve-chars"}).status_code == 200
        assert (
            f"listening on http://0.0.0.0:{port} (every address of this machine; from here: http://127.0.0.1:{port})"
            in gateway.text()
        )
    with Gateway(work, port) as gateway:
        assert f"lf-serve: listening on http://127.0.0.1:{port} for alpha" in gateway.text()
    with socket.socket() as taken:  # a port taken: no word of listening, an error naming the port
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        done = run_lf("serve", "--port", str(port), timeout=60)
    assert done.returncode != 0 and str(port) in done.stderr and "listening on" not in done.stderr, done.stderr


# -- what is counted, what needs the key ----------------------------------------------------------------------------
def test_a_404_for_an_unknown_model_and_a_client_that_leaves_are_logged_and_counted(tmp_path, fakes):
    """An unknown model is a 404 in the log and in lf_gateway_requests_total (model "-"); a client that drops a
    stream is a 499 there, not the 200 the model began with."""
    work, port = one_model(tmp_path, provider="fake-slow-stream")
    with Gateway(work, port, env={"LF_GATEWAY_API_KEY": KEY}) as gateway:
        auth = {"authorization": f"Bearer {KEY}"}
        missing = chat(gateway.url, model="nope", headers=auth)
        assert missing.status_code == 404 and error_of(missing)["code"] == "model_not_found"
        assert "POST /v1/chat/completions model=- 404" in gateway.text()
        assert metric(gateway, "lf_gateway_requests_total", model="-", endpoint="chat/completions", status="404") == 1
        body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        for left in (1, 2):  # once while the model starts for it, once with the model running
            with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=auth, timeout=60) as r:
                pieces = 0
                for line in r.iter_lines():
                    pieces += line.startswith("data: {")
                    if pieces == 3:
                        break  # and leave
            gone = "POST /v1/chat/completions model=alpha 499"
            assert wait_until(lambda: gateway.text().count(gone) == left, timeout=10)  # noqa: B023
        labels = {"model": "alpha", "endpoint": "chat/completions"}
        assert metric(gateway, "lf_gateway_requests_total", **labels, status="499") == 2
        assert metric(gateway, "lf_gateway_requests_total", **labels, status="200") == 0


# -- log followers --------------------------------------------------------------------------------------------------
def test_log_followers_are_bounded_with_a_clear_503(tmp_path, fakes):
    """Each followed log costs a thread: eight at once; the ninth gets 503 saying so; one closed, one more may."""
    work, port = one_model(tmp_path)
    with Gateway(work, port) as gateway:
        assert chat(gateway.url).status_code == 200
        url = gateway.url + "/ui/log/alpha"
        followers = []
        try:
            for _ in range(8):
                follower = httpx.stream("GET", url, timeout=30)
                response = follower.__enter__()
                assert response.status_code == 200
                lines = response.iter_lines()  # kept: a dropped iterator closes its connection
                assert next(line for line in lines if line.startswith("data: "))
                followers.append((follower, lines))
            refused = httpx.get(url, timeout=10)
            assert refused.status_code == 503 and refused.headers["retry-after"]
            error = error_of(refused)
            assert error["code"] == "too_many_followers" and "8 logs are being followed" in error["message"]
            followers.pop()[0].__exit__(None, None, None)
            time.sleep(0.5)
            with httpx.stream("GET", url, timeout=30) as again:
                assert again.status_code == 200
            assert httpx.get(gateway.url + "/health/liveness").status_code == 200
            threads = [t for t in psutil.Process(gateway.proc.pid).threads()]
            assert len(threads) < 8 + 20
        finally:
            for follower, _ in followers:
                follower.__exit__(None, None, None)


# -- one gateway per project ----------------------------------------------------------------------------------------
def test_a_second_gateway_for_the_same_project_is_refused_naming_the_first(tmp_path, fakes):
    """Two `lf serve` for one project on two ports: the second exits non-zero naming the first one's address and
    pid, and the first keeps its record, its model and its answers."""
    work, port = one_model(tmp_path)
    (other_port,) = free_ports(1)
    with Gateway(work, port) as first:
        assert chat(first.url).status_code == 200
        record = read_record(fakes, f"lf-serve-{port}")
        model = read_record(fakes, "alpha")
        second = run_lf("serve", "--port", str(other_port), timeout=60)
        assert second.returncode == 1, second.stderr
        assert f"already runs at http://127.0.0.1:{port} (pid {first.proc.pid})" in second.stderr, second.stderr
        assert f"lf runtime stop lf-serve-{port}" in second.stderr
        detached = run_lf("serve", "--detach", "--port", str(other_port), timeout=60)
        assert detached.returncode == 1 and f"already runs at http://127.0.0.1:{port}" in detached.stderr
        assert read_record(fakes, f"lf-serve-{port}") == record and read_record(fakes, "alpha") == model
        assert read_record(fakes, f"lf-serve-{other_port}") is None
        assert [p.pid for p in engines(fakes)] == [model["pid"]]
        assert chat(first.url).status_code == 200
