"""The cheap path: `lf runtime status` (and `lf --help`) must not import what they do not need.

Scripts call `lf runtime status --json` in loops, and most of its start-up time is imports. These tests
run the real command in a fresh interpreter and assert on *which* modules it imported (sys.modules at the
end), never on time: bench/run.py measures the time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from fakes.platforms import LINUX
from lf.daemon.instance import Instance
from lf.daemon.process import process_create_time
from lf.daemon.records import RuntimeRecord, StateStore

# Heavy modules the status path can do without: the probes speak HTTP over a plain socket, process
# identity comes from /proc (Linux's; elsewhere psutil asks), output is plain JSON or text, and typer below
# 0.29 parses without pydantic.
STATUS_AVOIDS = (
    "httpx",
    "pydantic",
    "rich",
    *(("psutil",) if LINUX else ()),
    "lf.gateway",
    "starlette",
    "uvicorn",
    "prometheus_client",
    "anyio",
)
# `lf --help` is rendered by typer with rich; it needs neither an HTTP client nor process tools.
HELP_AVOIDS = ("httpx", "pydantic", "psutil")

# Runs `lf ARGS…` exactly as `python -m lf` would, then reports every module that got imported.
WRAPPER = textwrap.dedent(
    """
    import json, runpy, sys
    report = sys.argv[1]
    sys.argv = ["lf", *sys.argv[2:]]
    code = 0
    try:
        runpy.run_module("lf", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    with open(report, "w") as fh:
        json.dump({"exit_code": code, "modules": sorted(sys.modules)}, fh)
    """
)

HEALTHY_SERVER = textwrap.dedent(
    """
    import http.server
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"status": "ok", "data": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """
)


def run_lf_reporting_modules(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, int, set[str]]:
    report = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(report), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert report.exists(), f"lf {' '.join(args)} did not finish normally\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    data = json.loads(report.read_text())
    return proc, data["exit_code"], set(data["modules"])


def imported(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


@pytest.fixture
def healthy_server():
    """A live process answering 200 on every GET: stands in for a running runtime and an external one."""
    proc = subprocess.Popen([sys.executable, "-c", HEALTHY_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield proc, port
    finally:
        proc.kill()
        proc.wait(10)


def _record(name: str, pid: int, create_time: float, port: int, log_path, project: str | None = None) -> RuntimeRecord:
    import time

    return RuntimeRecord(
        instance=Instance(
            name=name,
            runtime="llamacpp",
            engine="xllamacpp",
            argv=(sys.executable, "-c", "server"),
            host="127.0.0.1",
            port=port,
            api_base="/v1",
            model="smollm2-135m",
            health_path="/health",
            health_ready="http-ok",
            project=project,
        ),
        pid=pid,
        create_time=create_time,
        log_path=str(log_path),
        started_at=time.time() - 300,
    )


def test_importing_the_status_command_imports_nothing_heavy():
    code = "import json, sys, lf.cli, lf.cli.runtime, lf.core.actions, lf.core.status, lf.daemon.health, lf.daemon.records, lf.daemon.process, lf.daemon.states; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    modules = set(json.loads(proc.stdout))
    assert "lf.core.status" in modules
    loaded = [m for m in (*STATUS_AVOIDS, "yaml") if imported(modules, m)]
    assert not loaded, (
        f"importing the status command's modules imported {loaded}: import them inside the function that needs them"
    )


def test_status_with_running_stopped_external_and_crashed_instances_stays_light(tmp_path, healthy_server):
    server, port = healthy_server
    (tmp_path / "work" / "llamafarm.yaml").write_text(
        textwrap.dedent(
            f"""\
            version: v1
            name: cheap
            namespace: tests
            runtime:
              models:
                - name: m1
                  provider: llamacpp
                  model: smollm2-135m
                - name: m2
                  provider: llamacpp
                  model: smollm2-135m
                - name: ext
                  provider: openai
                  model: any
                  base_url: http://127.0.0.1:{port}/v1
            """
        )
    )
    store = StateStore(project="tests/cheap")  # the project's own instances
    log = tmp_path / "old.log"
    log.write_text("loading\nsegfault\n")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store.save(_record("m1", server.pid, process_create_time(server.pid), port, log, store.project))
    store.save(_record("old", gone.pid, 1.0, port + 1 if port < 65535 else port - 1, log, store.project))

    for attempt in (
        "first call",
        "repeated call",
    ):  # a script's loop: the second call may reuse what the first prepared
        proc, code, modules = run_lf_reporting_modules(tmp_path, "runtime", "status", "--json")

        data = json.loads(proc.stdout)
        states = {i["name"]: i["state"] for i in data["instances"]}
        assert states == {"m1": "running", "m2": "stopped", "ext": "external", "old": "crashed"}, proc.stderr
        health = {i["name"]: (i["health"] or {}).get("healthy") for i in data["instances"]}
        assert health["m1"] is True and health["ext"] is True  # both probes really ran
        assert code == 3  # a stopped and a crashed instance
        assert {"lf.core.status", "lf.daemon.health"} <= modules  # the path under guard did run
        # the first call after llamafarm.yaml changed validates it (pydantic's models, the slow path) and
        # caches the result; every call after that reads the cached form and needs none of them
        avoid = STATUS_AVOIDS if attempt == "repeated call" else tuple(m for m in STATUS_AVOIDS if m != "pydantic")
        loaded = [m for m in avoid if imported(modules, m)]
        assert not loaded, f"`lf runtime status --json` ({attempt}) imported {loaded}; it needs none of them"


def test_status_without_a_config_does_not_load_a_yaml_parser(tmp_path):
    proc, code, modules = run_lf_reporting_modules(tmp_path, "runtime", "status", "--json")
    assert json.loads(proc.stdout)["instances"][0]["state"] == "stopped"
    assert code == 3
    assert "lf.core.status" in modules
    loaded = [m for m in (*STATUS_AVOIDS, "yaml") if imported(modules, m)]
    assert not loaded, f"`lf runtime status --json` with no llamafarm.yaml imported {loaded}"


def test_help_stays_light(tmp_path):
    proc, code, modules = run_lf_reporting_modules(tmp_path, "--help")
    assert code in (0, None) and "runtime" in proc.stdout
    loaded = [m for m in HELP_AVOIDS if imported(modules, m)]
    assert not loaded, f"`lf --help` imported {loaded}"
