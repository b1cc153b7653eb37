"""The gateway's page (lf.gateway.dashboard): who may see it and act through it, against fake runtimes
(real `lf serve` processes), then the page itself in a real headless Chromium with two real llama.cpp
instances (the official openai client's requests appear live; the stop button stops; another origin
cannot act)."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import run_lf

from fakes import Gateway, chromium, engines, free_ports, read_record, use_fakes, wait_until

QUESTION = "What is the capital of France? Answer in one sentence."
ACTION = {"Content-Type": "application/json", "X-LF-Action": "1"}
PAGE_BUDGET = 100 * 1024  # bytes the page may transfer (it is one HTML file; the data comes as events)


def project(work: Path, models: str, gateway: str = "") -> None:
    (work / "llamafarm.yaml").write_text(
        "version: v1\nname: dash\nnamespace: tests\nruntime:\n"
        + (f"  gateway: {{{gateway}}}\n" if gateway else "")
        + "  models:\n"
        + models
    )


def fake_models(a: int, b: int) -> str:
    return (
        f"    - {{name: alpha, provider: fake, model: model-a, provider_config: {{port: {a}}}}}\n"
        f"    - {{name: beta, provider: fake, model: model-b, provider_config: {{port: {b}}}}}\n"
        "    - {name: remote, provider: openai, model: gpt-x, base_url: 'http://127.0.0.1:9/v1'}\n"
    )


def act(gateway: Gateway, action: str, model: str, headers: dict | None = None, **kwargs) -> httpx.Response:
    return httpx.post(
        gateway.url + "/ui/action",
        content=json.dumps({"action": action, "model": model}),
        headers=ACTION if headers is None else headers,
        timeout=60,
        **kwargs,
    )


def first_event(url: str, **kwargs) -> dict:
    with httpx.stream("GET", url, timeout=10, **kwargs) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                return json.loads(line[6:])
    raise AssertionError("no event")


@pytest.fixture
def fakes(isolated, monkeypatch):
    use_fakes(monkeypatch)
    return isolated / "state"


# -- what the page and its stream say ----------------------------------------------------------------------
def test_a_browser_gets_the_page_a_script_the_json_index_and_the_page_is_small_and_locked_down(tmp_path, fakes):
    a, b, port = free_ports(3)
    project(tmp_path / "work", fake_models(a, b))
    with Gateway(tmp_path / "work", port) as gateway:
        page = httpx.get(gateway.url + "/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert len(page.content) < PAGE_BUDGET
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
        assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")  # nothing from elsewhere (no CDN)
        nonce = csp.split("'nonce-")[1].split("'")[0]
        assert page.text.count(f'nonce="{nonce}"') == 2 and "{{nonce}}" not in page.text
        assert httpx.get(gateway.url + "/").json()["name"] == "lf serve"  # scripts keep the JSON index


def test_the_event_stream_shows_every_model_and_each_request_without_its_content(tmp_path, fakes):
    a, b, port = free_ports(3)
    project(tmp_path / "work", fake_models(a, b))
    with Gateway(tmp_path / "work", port) as gateway:
        secret = "the-words-of-the-question"
        body = {"model": "alpha", "messages": [{"role": "user", "content": secret}], "stream": True}
        assert httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
        snapshot = first_event(gateway.url + "/ui/events")
        models = {m["name"]: m for m in snapshot["models"]}
        assert set(models) == {"alpha", "beta", "remote"}
        alpha = models["alpha"]
        assert alpha["state"] == "running" and alpha["port"] == a and alpha["pid"] == read_record(fakes, "alpha")["pid"]
        assert alpha["memory_bytes"] > 1_000_000 and alpha["started_at"] and alpha["expires_at"] > time.time()
        assert alpha["last_request"]["tokens"] > 0
        assert models["beta"]["state"] == "idle" and models["remote"]["state"] == "external"
        (request,) = snapshot["requests"]
        assert (request["model"], request["path"], request["status"]) == ("alpha", "/v1/chat/completions", 200)
        assert secret not in json.dumps(snapshot)
        assert snapshot["gateway"]["project"] == "tests/dash" and snapshot["gateway"]["loaded"] == 1


def test_the_stream_pushes_a_change_at_once_and_nothing_while_nothing_changes(tmp_path, fakes):
    a, b, port = free_ports(3)
    project(tmp_path / "work", fake_models(a, b), gateway="probe_interval: 60")
    with Gateway(tmp_path / "work", port) as gateway:
        events: list[dict] = []

        def read():
            try:
                with httpx.stream("GET", gateway.url + "/ui/events", timeout=30) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            events.append(json.loads(line[6:]))
            except httpx.HTTPError:
                pass  # the gateway stopped at the end of the test

        threading.Thread(target=read, daemon=True).start()
        assert wait_until(lambda: len(events) == 1, timeout=10)
        time.sleep(1.5)
        assert len(events) == 1, "the stream sent snapshots while nothing changed"
        assert act(gateway, "start", "beta").status_code == 200
        assert wait_until(lambda: events[-1]["models"][1]["state"] == "running", timeout=5)
        assert len(events) <= 1 + 3, "more than one snapshot a second"


def test_a_log_is_followed_as_it_grows(tmp_path, fakes):
    a, b, port = free_ports(3)
    project(tmp_path / "work", fake_models(a, b))
    with Gateway(tmp_path / "work", port) as gateway:
        assert act(gateway, "start", "alpha").status_code == 200
        text = []
        with httpx.stream("GET", gateway.url + "/ui/log/alpha", timeout=30) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: "):
                    text.append(json.loads(line[6:]))
                    if "listening on" in "".join(text):
                        break
            log = Path(read_record(fakes, "alpha")["log_path"])
            with open(log, "a") as fh:
                fh.write("a line written after the page opened the log\n")
            for line in lines:
                if line.startswith("data: "):
                    text.append(json.loads(line[6:]))
                    if "after the page opened" in "".join(text):
                        break
        assert "after the page opened" in "".join(text)
        assert httpx.get(gateway.url + "/ui/log/remote").status_code == 404


# -- actions and who may take them -------------------------------------------------------------------------
def test_start_stop_restart_and_unload_go_through_the_core(tmp_path, fakes):
    a, b, port = free_ports(3)
    project(tmp_path / "work", fake_models(a, b))
    with Gateway(tmp_path / "work", port) as gateway:
        assert act(gateway, "start", "alpha").json()["state"] == "running"
        first = read_record(fakes, "alpha")["pid"]
        assert act(gateway, "restart", "alpha").json()["state"] == "running"
        assert read_record(fakes, "alpha")["pid"] != first
        assert act(gateway, "unload", "alpha").json()["state"] == "idle"
        assert read_record(fakes, "alpha") is None and engines(fakes) == []
        # one lf runtime start made: stop, yes; unload (the gateway's idle unload), no
        run_lf("runtime", "start", "beta", "--direct", check=True)  # its own daemon, beside the gateway
        assert act(gateway, "unload", "beta").status_code == 409
        assert act(gateway, "stop", "beta").json()["state"] == "idle"
        assert engines(fakes) == []
        assert act(gateway, "stop", "remote").status_code == 409
        assert act(gateway, "stop", "nobody").status_code == 404
        assert act(gateway, "explode", "alpha").status_code == 400


@pytest.mark.parametrize(
    "headers, why",
    [
        ({"Content-Type": "application/json"}, "no lf header: what a cross-origin form or simple fetch can send"),
        ({"Content-Type": "text/plain", "X-LF-Action": "1"}, "not JSON"),
        ({**ACTION, "Origin": "http://evil.example"}, "another origin"),
        ({**ACTION, "Sec-Fetch-Site": "cross-site"}, "another site, by the browser's word"),
        ({**ACTION, "Host": "evil.example"}, "a name made to point here (DNS rebinding)"),
    ],
)
def test_an_action_a_page_elsewhere_could_send_is_refused(tmp_path, fakes, headers, why):
    a, b, port = free_ports(3)
    project(tmp_path / "work", fake_models(a, b))
    with Gateway(tmp_path / "work", port) as gateway:
        assert act(gateway, "start", "alpha").status_code == 200
        refused = act(gateway, "stop", "alpha", headers=headers)
        assert refused.status_code == 403, why
        assert [p.pid for p in engines(fakes)] == [read_record(fakes, "alpha")["pid"]], why


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, to be another machine's client."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # no packet is sent: this picks the outgoing interface
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_from_another_machine_actions_need_the_key(tmp_path, fakes):
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    a, b, port = free_ports(3)
    project(tmp_path / "work", fake_models(a, b))
    with Gateway(tmp_path / "work", port, "--host", "0.0.0.0", "--insecure") as gateway:
        outside = f"http://{address}:{port}"
        refused = httpx.post(
            outside + "/ui/action", content='{"action": "start", "model": "alpha"}', headers=ACTION, timeout=30
        )
        assert refused.status_code == 403 and "API key" in refused.json()["error"]["message"]
        assert engines(fakes) == []
        assert act(gateway, "start", "alpha").status_code == 200  # from this machine: allowed
    with Gateway(tmp_path / "work", port, "--host", "0.0.0.0", env={"LF_GATEWAY_API_KEY": "sekret-key-1"}) as gateway:
        outside = f"http://{address}:{port}"
        body = '{"action": "start", "model": "beta"}'
        assert httpx.post(outside + "/ui/action", content=body, headers=ACTION, timeout=30).status_code == 401
        allowed = httpx.post(
            outside + "/ui/action", content=body, headers={**ACTION, "Authorization": "Bearer sekret-key-1"}, timeout=30
        )
        assert allowed.status_code == 200 and allowed.json()["state"] == "running"


def test_with_an_api_key_the_page_needs_it_and_takes_it_as_a_cookie(tmp_path, fakes):
    a, b, port = free_ports(3)
    project(tmp_path / "work", fake_models(a, b))
    with Gateway(tmp_path / "work", port, env={"LF_GATEWAY_API_KEY": "sekret/key 2"}) as gateway:
        assert httpx.get(gateway.url + "/ui/events").status_code == 401
        assert httpx.head(gateway.url + "/ui/events").status_code == 401  # how the page learns it must ask
        assert act(gateway, "start", "alpha").status_code == 401
        cookie = {"lf_gateway_key": "sekret%2Fkey%202"}  # as the page writes it (URL-encoded)
        assert first_event(gateway.url + "/ui/events", cookies=cookie)["models"][0]["name"] == "alpha"
        assert act(gateway, "start", "alpha", cookies=cookie).status_code == 200
        assert httpx.get(gateway.url + "/ui/events", cookies={"lf_gateway_key": "wrong"}).status_code == 401


# -- the page in a real browser ------------------------------------------------------------------------------
def _browser():
    return chromium("--window-size=1280,1000")


class _OtherOrigin:
    """A page on another origin (another port) that tries to stop a model through the gateway's action
    endpoint every way a page can without CORS: a simple fetch, a fetch with lf's header (preflighted),
    and a form post."""

    def __init__(self, gateway_url: str, model: str):
        body = json.dumps({"action": "stop", "model": model})
        self.html = f"""<!doctype html><html><body>
<form id=f method=POST enctype=text/plain action="{gateway_url}/ui/action" target=sink><input name='{body[:-1]}' value='"}}'></form>
<iframe name=sink></iframe>
<script>
const url = "{gateway_url}/ui/action", body = {json.dumps(body)};
Promise.allSettled([
  fetch(url, {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body}}),
  fetch(url, {{method: "POST", headers: {{"Content-Type": "application/json", "X-LF-Action": "1"}}, body}}),
]).then((r) => {{ document.title = "tried: " + r.map((x) => x.status).join(","); document.getElementById("f").submit(); }});
</script></body></html>""".encode()
        html = self.html

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(html)))
                self.end_headers()
                self.wfile.write(html)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _state_of(work: Path, name: str) -> str:
    status = run_lf("runtime", "status", name, "--json", "--config", str(work / "llamafarm.yaml"))
    (inst,) = json.loads(status.stdout)["instances"]
    return inst["state"]


@pytest.mark.e2e
def test_the_page_in_a_real_browser_with_two_real_models(tmp_path, isolated):
    from openai import OpenAI
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait as Wait

    def WebDriverWait(driver, timeout, **kwargs):  # the page redraws on every update: a found element may go stale
        return Wait(driver, timeout, ignored_exceptions=[StaleElementReferenceException], **kwargs)

    fetched = run_lf("models", "fetch", "gemma3-270m", timeout=900)
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    a, b, port = free_ports(3)
    work = tmp_path / "work"
    project(
        work,
        f"    - {{name: smol, provider: llamacpp, model: smollm2-135m, provider_config: {{port: {a}}}}}\n"
        f"    - {{name: gemma, provider: llamacpp, model: gemma3-270m, provider_config: {{port: {b}}}}}\n",
    )
    with Gateway(work, port) as gateway:
        client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=48
        )
        assert "Paris" in answer.choices[0].message.content
        client.completions.create(model="gemma", prompt="The capital of France is", temperature=0, max_tokens=8)

        browser = _browser()
        other = _OtherOrigin(gateway.url, "smol")
        try:
            browser.get(gateway.url + "/")
            cards = lambda: {  # noqa: E731
                c.get_attribute("data-model"): c for c in browser.find_elements(By.CSS_SELECTOR, "article.card")
            }
            state = lambda name: name in (found := cards()) and found[name].find_element(By.CSS_SELECTOR, ".state").text  # noqa: E731
            WebDriverWait(browser, 10).until(
                lambda _: set(cards()) == {"smol", "gemma"} and state("smol") == state("gemma") == "running"
            )
            assert browser.find_element(By.ID, "conn").text == "live"
            rows = lambda: browser.find_elements(By.CSS_SELECTOR, "#requests tbody tr")  # noqa: E731
            before = len(rows())
            assert before == 2

            # a request made elsewhere appears within 2 s, without a reload
            streamed = client.chat.completions.create(
                model="smol",
                messages=[{"role": "user", "content": QUESTION}],
                temperature=0,
                max_tokens=16,
                stream=True,
            )
            assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
            WebDriverWait(browser, 2, poll_frequency=0.05).until(lambda _: len(rows()) == before + 1)
            newest = WebDriverWait(browser, 5).until(
                lambda _: [td.text for td in rows()[0].find_elements(By.TAG_NAME, "td")]
            )
            assert (newest[1], newest[3]) == ("smol", "200")
            screenshot = browser.get_screenshot_as_png()
            target = os.environ.get("LF_SCREENSHOT")
            if target:  # make screenshot: the README's picture, from this very run
                Path(target).write_bytes(screenshot)

            # another origin cannot stop a model, however it tries
            browser.get(other.url)
            WebDriverWait(browser, 10).until(lambda b: b.title.startswith("tried"))
            time.sleep(1)  # the form post lands in its frame
            assert _state_of(work, "smol") == "running"
            browser.get(gateway.url + "/")
            WebDriverWait(browser, 10).until(lambda _: state("smol") == "running")

            # the stop button stops it: lf says so, and so does the page
            WebDriverWait(browser, 5).until(
                lambda _: cards()["gemma"].find_element(By.CSS_SELECTOR, '[data-action="stop"]').click() or True
            )
            WebDriverWait(browser, 30).until(lambda _: state("gemma") == "idle")
            assert _state_of(work, "gemma") == "idle"
            assert _state_of(work, "smol") == "running"
        finally:
            other.close()
            browser.quit()


def test_serve_open_opens_the_page_in_the_browser_once_it_answers(tmp_path, fakes):
    """--open hands the page's address to the user's browser ($BROWSER here: a script that notes it)."""
    a, b, port = free_ports(3)
    project(tmp_path / "work", fake_models(a, b))
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f"#!/bin/sh\nprintf '%s' \"$1\" > {opened}\n")
    browser.chmod(0o755)
    with Gateway(tmp_path / "work", port, "--open", env={"BROWSER": str(browser), "DISPLAY": ""}) as gateway:
        assert wait_until(opened.exists, timeout=10), gateway.text()
        url = opened.read_text()
        assert url == f"http://127.0.0.1:{port}/"
        page = httpx.get(url, headers={"Accept": "text/html"})
        assert page.status_code == 200 and "<title>lf serve</title>" in page.text


def test_the_log_pane_keeps_its_place_across_updates_and_follows_the_tail_only_from_the_bottom(tmp_path, fakes):
    """A real headless Chromium: the reader scrolls the log pane up with the mouse wheel; three updates of the page
    and new log lines later the same lines are under their eyes; back at the bottom, new lines are followed."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    a, b, port = free_ports(3)
    project(tmp_path / "work", fake_models(a, b))
    with Gateway(tmp_path / "work", port) as gateway:
        assert act(gateway, "start", "alpha").status_code == 200
        log = Path(read_record(fakes, "alpha")["log_path"])

        def write(first: int, count: int) -> str:
            with open(log, "a") as fh:
                fh.writelines(f"log line {n:04d}\n" for n in range(first, first + count))
            return f"log line {first + count - 1:04d}"

        last = write(0, 300)
        browser = _browser()
        try:
            browser.get(gateway.url + "/")
            wait = WebDriverWait(browser, 15)
            alpha = 'article[data-model="alpha"]'
            wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, f'{alpha} [data-action="log"]'))
            browser.find_element(By.CSS_SELECTOR, f'{alpha} [data-action="log"]').click()
            pre = browser.find_element(By.CSS_SELECTOR, f"{alpha} pre.log")

            def pane() -> list[int]:  # scrollTop, scrollHeight, clientHeight
                return browser.execute_script(
                    "const p = arguments[0]; return [p.scrollTop, p.scrollHeight, p.clientHeight]", pre
                )

            def at_bottom() -> bool:
                top, height, shown = pane()
                return height - top - shown < 4

            wait.until(lambda _: last in pre.text and pane()[1] > 2 * pane()[2])  # scrollable
            assert at_bottom(), pane()

            # scrolled up by the wheel, as a reader does
            ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(pre), 0, -600).perform()

            def settled(_) -> int | None:  # the wheel scrolls smoothly: wait until it has come to rest
                before = pane()[0]
                time.sleep(0.2)
                return before if before == pane()[0] and not at_bottom() else None

            place = wait.until(settled)
            assert place > 100, pane()  # mid-pane: a jump to the top would show

            # three updates of the page (a request each), and new lines in the log meanwhile
            def updated(seen: int, line: str) -> bool:  # the page drew a newer snapshot, and the log has the line
                version = browser.execute_script("return data.version")
                return version > seen and line in pre.get_attribute("textContent")

            body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}]}
            for i in range(3):
                seen = browser.execute_script("return data.version")
                assert httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
                last = write(300 + 10 * i, 10)
                wait.until(lambda _, seen=seen, last=last: updated(seen, last))
                time.sleep(0.3)  # the redraw after the event
                assert pane()[0] == place, f"update {i + 1}: the pane moved from {place} to {pane()[0]}"
            assert browser.find_element(By.CSS_SELECTOR, f"{alpha} pre.log").id == pre.id  # the very same pane

            # back at the bottom, new lines are followed
            browser.execute_script("arguments[0].scrollTop = arguments[0].scrollHeight", pre)
            wait.until(lambda _: at_bottom())
            last = write(400, 20)
            wait.until(lambda _: last in pre.get_attribute("textContent"))
            time.sleep(0.3)
            assert at_bottom(), pane()
        finally:
            browser.quit()


def test_stop_and_unload_say_how_they_differ(tmp_path, fakes):
    a, b, port = free_ports(3)
    project(tmp_path / "work", fake_models(a, b))
    with Gateway(tmp_path / "work", port) as gateway:
        page = httpx.get(gateway.url + "/", headers={"Accept": "text/html"}).text
    assert "whoever started it" in page and "only for an instance this gateway started" in page
    assert "Unload frees the memory of one this gateway started" in page  # said on the page, not only on hover
