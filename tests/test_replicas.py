"""Several places for one model: `replicas: N` local instances of an entry, and peers that serve the same model.
Requests go to the place with the fewest in flight; one that fails before its first byte is answered by another.
Real processes: `lf serve`, and the real llama.cpp engine with SmolLM2 for the done-when of the feature."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import textwrap
import time

import httpx
import pytest

from fakes import Gateway, free_ports, read_record, wait_until

pytestmark = pytest.mark.e2e


def write_project(work, models: str, gateway: str = "probe_interval: 0.3") -> None:
    (work / "llamafarm.yaml").write_text(
        f"version: v1\nname: copies\nnamespace: tests\nruntime:\n  gateway: {{{gateway}}}\n  models:\n"
        + textwrap.indent(textwrap.dedent(models).strip() + "\n", "    ")
    )


def shares(gateway: Gateway, model: str) -> dict[str, float]:
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    found = re.findall(
        rf'^lf_gateway_upstream_requests_total{{model="{model}",status="200",upstream="([^"]+)"}} (\S+)$', text, re.M
    )
    return {upstream: float(count) for upstream, count in found}


def test_two_replicas_share_the_load_and_one_killed_leaves_no_request_unanswered(tmp_path):
    from conftest import default_model_installed

    if not default_model_installed():
        pytest.skip("needs the default model: lf models fetch smollm2-135m")
    a, port = free_ports(2)
    write_project(
        tmp_path / "work",
        f"- {{name: smol, provider: llamacpp, model: smollm2-135m, replicas: 2, provider_config: {{port: {a}, parallel: 2}}}}",
    )
    body = {
        "model": "smol",
        "messages": [{"role": "user", "content": "Name a color."}],
        "max_tokens": 16,
        "temperature": 0,
    }
    with Gateway(tmp_path / "work", port) as gateway:
        assert httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=120).status_code == 200
        # the first request started both copies: the one it took, and the other beside it
        assert wait_until(lambda: read_record(tmp_path / "state", "smol-r2") is not None, 60)
        assert wait_until(
            lambda: {c["state"] for c in httpx.get(gateway.url + "/health").json()["components"]} == {"running"}, 60
        )
        before = shares(gateway, "smol")

        def ask(_: int) -> int:
            return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=300).status_code

        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            codes = list(pool.map(ask, range(40)))
        assert codes == [200] * 40
        after = shares(gateway, "smol")
        counts = {k: after.get(k, 0) - before.get(k, 0) for k in ("smol", "smol-r2")}
        components = {
            c["name"]: (c.get("failures"), c["state"]) for c in httpx.get(gateway.url + "/health").json()["components"]
        }
        assert all(n >= 0.3 * 40 for n in counts.values()), (counts, components, gateway.text()[-3000:])  # each: 30%+

        victim = read_record(tmp_path / "state", "smol-r2")["pid"]
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            futures = [pool.submit(ask, i) for i in range(40)]
            time.sleep(1.0)  # some are in flight on each copy when one dies
            os.kill(victim, signal.SIGKILL)
            codes = [f.result() for f in futures]
        assert codes == [200] * 40, codes  # none was streaming: each one the dead copy held went to the other
