"""A page on another site, in a real headless Chromium (Debian's chromium and chromedriver; `bash
scripts/ensure-browser` installs them), against a real `lf serve` with fake runtimes: what it tries, with every
means a page has, and what the gateway lets it do (nothing but the liveness probe)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fakes import Gateway, chromium, engines, free_ports, use_fakes, wait_until

REBOUND = "rebind.evil.example"


@pytest.fixture(autouse=True)
def fakes(isolated, monkeypatch):
    use_fakes(monkeypatch)
    return isolated / "state"


class _Site:
    """A web server for one page (another origin, or the attacker's server before the rebinding)."""

    def __init__(self, html: str, port: int = 0):
        page = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _project(work: Path, model_port: int, remote_port: int) -> None:
    (work / "llamafarm.yaml").write_text(
        "version: v1\nname: browser\nnamespace: tests\nruntime:\n  models:\n"
        + textwrap.indent(
            f"- {{name: alpha, provider: fake, model: m, provider_config: {{port: {model_port}}}}}\n"
            f"- {{name: paid, provider: openai, model: gpt-x, base_url: 'http://127.0.0.1:{remote_port}/v1', "
            "api_key: sk-paid-key}\n",
            "    ",
        )
    )


def _remote(port: int, log: Path) -> subprocess.Popen:
    """The external entry's endpoint: it logs every request it hears."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fakes.server", "--port", str(port), "--log-requests"],
            stderr=out,
            env=dict(os.environ),
        )
    assert wait_until(lambda: "listening" in log.read_text(), timeout=10)
    return proc


CROSS_ORIGIN_PAGE = """<!doctype html><html><body>
<form id=form method=POST enctype=text/plain action="{url}/v1/chat/completions" target=sink>
<input name='{name}' value='{value}'></form>
<iframe name=sink></iframe>
<script>
const url = "{url}/v1/chat/completions";
const tries = [];
for (const model of ["alpha", "paid"]) {{
  const body = JSON.stringify({{model, messages: [{{role: "user", content: "hi"}}]}});
  tries.push(fetch(url, {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body}}));
  tries.push(fetch(url, {{method: "POST", mode: "no-cors", body: new Blob([body])}}));
  const json = {{"Content-Type": "application/json"}};
  tries.push(fetch(url, {{method: "POST", headers: json, body}}));
  tries.push(fetch(url, {{method: "POST", headers: {{...json, "Authorization": "Bearer x"}}, body}}));
}}
Promise.allSettled(tries).then((r) => {{
  document.title = "tried: " + r.map((x) => x.status).join(",");
  document.getElementById("form").submit();
}});
</script></body></html>"""


def test_a_page_on_another_origin_cannot_start_a_model_nor_spend_a_paid_key(tmp_path, fakes):
    """A form (text/plain, the JSON smuggled in a field's name), no-cors fetches (text/plain, a typeless blob) and
    preflighted fetches (JSON, a key) from another origin, for a model lf runs and for an external entry whose
    key the gateway would add upstream: no engine starts, the external endpoint hears nothing."""
    model_port, remote_port, port = free_ports(3)
    work = tmp_path / "work"
    _project(work, model_port, remote_port)
    remote_log = tmp_path / "remote.log"
    remote = _remote(remote_port, remote_log)
    browser = chromium()
    try:
        with Gateway(work, port) as gateway:
            body = json.dumps({"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "x": ""})
            page = _Site(CROSS_ORIGIN_PAGE.format(url=gateway.url, name=body[:-2], value='"}'))
            try:
                browser.get(f"http://127.0.0.1:{page.port}/")
                assert wait_until(lambda: browser.title.startswith("tried"), timeout=20), browser.title
                time.sleep(2)  # the form's post lands in its frame
            finally:
                page.close()
            assert engines(fakes) == []
            assert "POST /v1/chat/completions" not in remote_log.read_text()
            log = gateway.text()
            refused = [line for line in log.splitlines() if "POST /v1/chat/completions" in line]
            # the form and the two no-cors fetches per model reach the gateway and are refused; a preflight
            # (OPTIONS) is refused, so the browser never sends its POST
            assert len(refused) >= 3 and all(" 403 " in line for line in refused), log
            assert "OPTIONS /v1/chat/completions model=- 403" in log
    finally:
        browser.quit()
        remote.kill()
        remote.wait(10)


REBINDING_PAGE = """<!doctype html><html><body>attacker
<script>
// served first by the attacker's server; once the name points at the gateway (here: the gateway took the
// attacker's port), the same origin's requests reach it and the page could read every answer
async function attempt() {{
  const probe = await fetch("/v1/models", {{cache: "no-store"}}).then((r) => r.text()).catch(() => "attacker");
  if (probe.includes("attacker")) {{ setTimeout(attempt, 200); return; }}
  const seen = {{}};
  const start = async (r) => new TextDecoder().decode((await r.body.getReader().read()).value).slice(0, 300);
  for (const path of ["/v1/models", "/health", "/metrics", "/ui/events", "/", "/health/liveness"]) {{
    const r = await fetch(path, {{cache: "no-store"}});
    seen["GET " + path] = [r.status, await start(r)];  // the first piece: /ui/events never ends
  }}
  const body = JSON.stringify({{model: "alpha", messages: [{{role: "user", content: "hi"}}]}});
  const json = {{"Content-Type": "application/json"}};
  const r = await fetch("/v1/chat/completions", {{method: "POST", headers: json, body}});
  seen["POST /v1/chat/completions"] = [r.status, await start(r)];
  document.title = "seen " + JSON.stringify(seen);
}}
attempt();
</script></body></html>"""


def test_a_rebound_name_reads_nothing_but_liveness(tmp_path, fakes):
    """DNS rebinding, as a browser lives it: a page loaded from rebind.evil.example:PORT, whose name then points at
    the gateway on that same port (the browser resolves it to 127.0.0.1; the attacker's server gives the port up to
    the gateway). Its same-origin requests reach the gateway with its own name as Host: all refused (403), but
    the liveness probe; nothing starts."""
    model_port, remote_port = free_ports(2)
    work = tmp_path / "work"
    _project(work, model_port, remote_port)
    attacker = _Site(REBINDING_PAGE.format())
    port = attacker.port
    browser = chromium(f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1")
    try:
        browser.get(f"http://{REBOUND}:{port}/")
        assert "attacker" in browser.page_source
        attacker.close()  # the name now leads to the gateway
        with Gateway(work, port) as gateway:
            assert wait_until(lambda: browser.title.startswith("seen "), timeout=30), browser.title
            seen = json.loads(browser.title[len("seen ") :])
            assert seen.pop("GET /health/liveness")[0] == 200
            for what, (status, text) in seen.items():
                assert status == 403 and "wrong_host" in text, (what, status, text)
                assert "alpha" not in text and "paid" not in text, what
            assert engines(fakes) == []
            assert "GET /v1/models model=- 403" in gateway.text()
    finally:
        browser.quit()


ALLOWED_APP_PAGE = """<!doctype html><html><body>
<script>
const body = JSON.stringify({{model: "alpha", messages: [{{role: "user", content: "hi"}}]}});
fetch("{url}/v1/chat/completions", {{method: "POST", headers: {{"Content-Type": "application/json"}}, body}})
  .then(async (r) => {{
    const answer = await r.json();
    document.title = "answered " + r.status + " " + JSON.stringify(answer.choices[0].message.content);
  }})
  .catch((e) => {{ document.title = "failed " + e; }});
</script></body></html>"""


def test_a_web_app_on_an_allowed_origin_reads_answers_and_the_same_page_elsewhere_cannot(tmp_path, fakes):
    """allowed_origins in a real browser: the page's preflighted JSON fetch is answered and readable from the
    origin the user allowed; the same page served from another origin fails (the browser blocks it) and starts
    nothing."""
    model_port, remote_port, port = free_ports(3)
    work = tmp_path / "work"
    _project(work, model_port, remote_port)
    browser = chromium()
    allowed = _Site("")  # its port is the origin to allow; the page is written once the gateway's URL is known
    try:
        with Gateway(work, port, "--allowed-origin", f"http://127.0.0.1:{allowed.port}") as gateway:
            html = ALLOWED_APP_PAGE.format(url=gateway.url)
            allowed.close()
            allowed, other = _Site(html, allowed.port), _Site(html)
            try:
                browser.get(f"http://127.0.0.1:{other.port}/")
                assert wait_until(lambda: browser.title.startswith(("answered", "failed")), timeout=20)
                assert browser.title.startswith("failed"), browser.title
                assert engines(fakes) == []
                browser.get(f"http://127.0.0.1:{allowed.port}/")
                assert wait_until(lambda: browser.title.startswith(("answered", "failed")), timeout=30)
                assert browser.title.startswith('answered 200 "'), browser.title
                assert len(browser.title) > len('answered 200 ""'), browser.title
            finally:
                other.close()
    finally:
        allowed.close()
        browser.quit()
