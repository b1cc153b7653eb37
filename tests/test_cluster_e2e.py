"""A real Ray cluster of two nodes on this machine, run by lf, serving SmolLM2 on llama.cpp through Ray Serve.

The cluster's environment (Ray Serve 2.60 and lf's dependencies; ~2 minutes to build, ~600 MB) lives in
$LF_TEST_CACHE/data (default ~/.cache/lf-test/data) so it survives between runs; the first deploy fetches the
model into it on the node, as any node would. Nothing is skipped: if the install fails, the tests fail.

One cluster serves every test that is not about the cluster's own life (module-scoped), and the tests run in
the order written: deploy, replicas killed, scaling, a node lost, stop. A second, loopback-only cluster checks
the default's binding. Two starts and two stops in all.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import run_lf

from fakes import Gateway, chromium, free_ports, wait_until

pytestmark = pytest.mark.e2e

CACHE = Path(os.environ.get("LF_TEST_CACHE") or "~/.cache/lf-test").expanduser()
CACHED_DATA = CACHE / "data"
QUESTION = "What is the capital of France? Answer in one sentence."
PROJECT = """\
version: v1
name: demo
namespace: test
runtime:
  models:
    - name: chat
      provider: llamacpp
      model: smollm2-135m
      replicas: 2
      spread: true
      provider_config: {threads: 1, context_size: 1024}
    - name: auto
      provider: llamacpp
      model: smollm2-135m
      min_replicas: 1
      max_replicas: 3
      target_ongoing_requests: 1
      scale_up_delay: 0
      scale_down_delay: 5
      spread: true
      provider_config: {threads: 1, context_size: 1024}
"""

EDITED = (
    PROJECT.split("    - name: auto")[0]
    + """\
    - name: extra
      provider: llamacpp
      model: smollm2-135m
      provider_config: {threads: 1, context_size: 1024}
"""
)


def machine_address() -> str:
    """This machine's address on its network (a UDP socket's source for a route out; nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
            address = sock.getsockname()[0]
        except OSError as exc:
            pytest.fail(f"a two-node cluster needs a network address on this machine: {exc}")
    if address.startswith("127."):
        pytest.fail("a two-node cluster needs a non-loopback address on this machine (Ray keeps loopback to one node)")
    return address


@pytest.fixture(scope="module")
def cluster_env():
    """The cluster's environment in the cached data dir (a fast no-op once built)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "cluster-e2e.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions on this machine: one installs, the other waits
        install = run_lf("cluster", "install", "--json", env={"LF_DATA_DIR": str(CACHED_DATA)}, timeout=1800)
        assert install.returncode == 0, f"lf cluster install failed:\n{install.stderr[-4000:]}"
    return json.loads(install.stdout)


def _lf(env: dict, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lf", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def cluster(cluster_env, tmp_path_factory):
    """A head and a worker on this machine, 4 logical CPUs each (room for more replicas of 1 CPU on either node
    than the tests run: only `spread` keeps them apart), the project's folder, and the environment lf runs with."""
    root = tmp_path_factory.mktemp("cluster")
    work = root / "work"
    work.mkdir()
    (work / "llamafarm.yaml").write_text(PROJECT)
    env = {"LF_STATE_DIR": str(root / "state"), "LF_DATA_DIR": str(CACHED_DATA)}
    address = machine_address()
    port, serve_port = free_ports(2)
    head = _lf(env, "cluster", "start", "--host", address, "--port", str(port), "--num-cpus", "4",
               "--serve-port", str(serve_port), "--json", cwd=work)  # fmt: skip
    assert head.returncode == 0, head.stderr
    worker = _lf(env, "cluster", "join", f"{address}:{port}", "--num-cpus", "4", "--json", cwd=work)
    info = {
        "root": root,
        "work": work,
        "env": env,
        "address": f"{address}:{port}",
        "serve_port": serve_port,
        "head": json.loads(head.stdout),
        "head_stderr": head.stderr,
        "worker": json.loads(worker.stdout) if worker.returncode == 0 else None,
        "worker_result": worker,
        "pids": set(),
    }
    info["pids"] |= _tree_pids(info["head"]["pid"])
    if info["worker"] is not None:
        info["pids"] |= _tree_pids(info["worker"]["pid"])
    yield info
    _lf(env, "cluster", "stop", cwd=work, timeout=180)  # a no-op once the last test stopped it


@pytest.fixture
def shared(cluster, monkeypatch):
    for key, value in cluster["env"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(cluster["work"])
    assert cluster["worker"] is not None, cluster["worker_result"].stderr
    return cluster


def _tree_pids(pid: int) -> set[int]:
    try:
        leader = psutil.Process(pid)
        return {leader.pid, *(p.pid for p in leader.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _status(cluster) -> dict:
    result = _lf(cluster["env"], "cluster", "status", "--json", cwd=cluster["work"])
    assert result.returncode in (0, 3), result.stderr
    return json.loads(result.stdout)


def _app(cluster, entry: str) -> dict:
    return next(a for a in _status(cluster)["applications"] if a["entry"] == entry)


def _replicas(app: dict) -> str:
    """An application's target and replicas, for an assertion's message."""
    replicas = ", ".join(f"{r['state']} on {str(r['node_id'])[:8]}" for r in app["replicas"])
    return f"{app['name']}: {app['status']}, target {app['target_replicas']}: {replicas}"


def _client(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)


def _ask(base_url: str, stream: bool = False, max_tokens: int = 32) -> str:
    client = _client(base_url)
    messages = [{"role": "user", "content": QUESTION}]
    if not stream:
        answer = client.chat.completions.create(model="chat", messages=messages, temperature=0, max_tokens=max_tokens)
        return answer.choices[0].message.content or ""
    chunks = client.chat.completions.create(
        model="chat", messages=messages, temperature=0, max_tokens=max_tokens, stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- the cluster ---------------------------------------------------------------------------------------------
def test_start_and_join_make_a_cluster_of_two_nodes(shared):
    head = shared["head"]
    assert head["name"] == "ray-head" and head["address"] == shared["address"] and head["loopback"] is False
    assert Path(head["token_file"]).stat().st_mode & 0o777 == 0o600
    assert "has no authentication" not in shared["head_stderr"]  # it says what protects it instead:
    assert "token authentication" in shared["head_stderr"] and "every network interface" in shared["head_stderr"]
    report = _status(shared)
    nodes = [n for n in report["nodes"] if n["alive"]]
    assert len(nodes) == 2 and sum(n["head"] for n in nodes) == 1, report["nodes"]
    assert all(n["cpus"] == 4 and n["memory_bytes"] > 0 and n["gpus"] == 0 for n in nodes)
    assert [(n["name"], n["state"]) for n in report["local_nodes"]] == [
        ("ray-head", "running"),
        ("ray-worker", "running"),
    ]
    assert report["auth"] == "token (lf's key)"
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["ray:bind"]["status"] == "warn" and "every network interface" in checks["ray:bind"]["detail"]
    assert checks["ray:bind"]["fix"] and checks["ray:auth"]["status"] == "ok"
    # an existing cluster, named by RAY_ADDRESS, from where lf did not start it: Ray's own RAY_AUTH_* let it in
    elsewhere = {"LF_STATE_DIR": str(shared["root"] / "elsewhere"), "RAY_ADDRESS": shared["address"]}
    refused = _lf({**shared["env"], **elsewhere}, "cluster", "status", "--json", cwd=shared["work"])
    assert refused.returncode == 3 and "cannot connect" in json.loads(refused.stdout)["error"]
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": head["token_file"]}
    other = _lf({**shared["env"], **elsewhere, **token}, "cluster", "status", "--json", cwd=shared["work"])
    assert other.returncode == 0, other.stderr
    seen = json.loads(other.stdout)
    assert seen["source"] == "RAY_ADDRESS" and seen["local_nodes"] == []
    assert sum(n["alive"] for n in seen["nodes"]) == 2
    # the nodes are lf instances like any other: in lf runtime status, healthy
    status = json.loads(run_lf("runtime", "status", "--all-projects", "--json").stdout)
    names = {i["name"]: i for i in status["instances"]}
    assert names["ray-head"]["state"] == "running" and names["ray-head"]["health"]["healthy"] is True
    assert names["ray-worker"]["state"] == "running"


def test_a_cluster_without_the_key_lets_nobody_in(shared):
    """Ray's token authentication is on: a driver without lf's key is refused by the head itself."""
    from lf.cluster import env as cluster_env

    code = (
        "import ray, sys\n"
        "try:\n"
        f"    ray.init(address={shared['address']!r}, logging_level='ERROR')\n"
        "    print('connected')\n"
        "except Exception as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    result = subprocess.run(
        [cluster_env.require_python(), "-c", code], capture_output=True, text=True, timeout=180, env=environment
    )
    assert "refused" in result.stdout and "connected" not in result.stdout, result.stdout + result.stderr[-2000:]


# -- deploy ----------------------------------------------------------------------------------------------------
def test_deploy_two_replicas_spread_over_both_nodes_answers_paris(shared):
    deployed = _lf(shared["env"], "cluster", "deploy", "chat", "--json", cwd=shared["work"], timeout=900)
    assert deployed.returncode == 0, deployed.stderr[-4000:]
    (entry,) = json.loads(deployed.stdout)["entries"]
    shared["base_url"] = entry["base_url"]
    assert entry["base_url"] == f"http://127.0.0.1:{shared['serve_port']}/test/demo/chat/v1"
    assert entry["status"] == "RUNNING" and len(entry["replicas"]) == 2
    assert "Paris" in _ask(entry["base_url"])
    assert "Paris" in _ask(entry["base_url"], stream=True)
    completion = _client(entry["base_url"]).completions.create(
        model="chat", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert "Paris" in completion.choices[0].text
    app = _app(shared, "chat")
    nodes = {r["node_id"] for r in app["replicas"] if r["state"] == "RUNNING"}
    assert len(nodes) == 2, app["replicas"]  # spread: one replica on each node
    assert app["base_url"] == entry["base_url"]


def test_streaming_is_passed_through_not_buffered(shared):
    """Tokens arrive as the engine makes them: the first long before the last."""
    client = _client(shared["base_url"])
    started = time.monotonic()
    arrivals = []
    for chunk in client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "Count from 1 to 60, one number per line."}],
        max_tokens=120,
        temperature=0,
        stream=True,
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) > 20
    assert arrivals[0] < arrivals[-1] / 3, (arrivals[0], arrivals[-1])


def test_each_replica_runs_lfs_engine_on_its_node_with_a_record(shared):
    state = shared["root"] / "state"
    records = [
        json.loads(p.read_text()) for p in (state / "projects" / "test" / "demo" / "instances").glob("chat-*.json")
    ]
    assert len(records) == 2
    for record in records:
        assert record["owner"] == "cluster" and record["runtime"] == "llamacpp" and record["host"] == "127.0.0.1"
        assert _alive(record["pid"])
        assert os.getsid(record["pid"]) == record["pid"]  # lf's own daemon: its session, its log, its record
        assert Path(record["log_path"]).is_file()


def test_lf_serve_cluster_is_the_front_door_and_takes_off_only_what_it_deployed(shared):
    """`lf serve --cluster`: the project's entries answer through the gateway (its names, its metrics), run by Ray
    Serve, not by a local engine, and it shows which node runs each replica; an edit of llamafarm.yaml is taken to
    the cluster; SIGTERM takes off the cluster what it deployed ("auto", "extra") and leaves what was there before
    it ("chat", deployed above)."""
    import httpx

    (port,) = free_ports(1)
    yaml = shared["work"] / "llamafarm.yaml"
    gateway = Gateway(shared["work"], port, "--cluster", "--probe-interval", "1").start(ready=False)
    try:
        assert wait_until(gateway.answers, timeout=600), gateway.text()
        assert f"chat: on the cluster at {shared['base_url']}" in gateway.text()
        assert "Paris" in _ask(gateway.url + "/v1") and "Paris" in _ask(gateway.url + "/v1", stream=True)
        answer = _client(gateway.url + "/v1").chat.completions.create(
            model="auto", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=32
        )
        assert "Paris" in (answer.choices[0].message.content or "") and answer.model == "auto"
        components = {c["name"]: c for c in httpx.get(gateway.url + "/health", timeout=10).json()["components"]}
        assert components["chat"]["managed"] is False and components["auto"]["managed"] is False
        metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
        served = [line for line in metrics.splitlines() if line.startswith("lf_gateway_requests_total{")]
        assert any('model="auto"' in line and 'status="200"' in line for line in served), served
        assert _app(shared, "auto")["status"] == "RUNNING"
        # where each entry's replicas run, as Ray says: in /health, /metrics and on the page in a real browser
        seen: list = []

        def spread_shown() -> bool:
            seen.append(httpx.get(gateway.url + "/health", timeout=10).json().get("cluster"))
            entries = {e["entry"]: e for e in (seen[-1] or {}).get("entries", [])}
            chat = entries.get("chat", {"replicas": []})
            running = [r for r in chat["replicas"] if r["state"] == "running"]
            return len(running) == 2 and len({r["node_id"] for r in running}) == 2 and "auto" in entries

        assert wait_until(spread_shown, timeout=90, interval=2), seen[-1]
        nodes = {r["node_id"] for e in seen[-1]["entries"] if e["entry"] == "chat" for r in e["replicas"]}
        metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
        for node in nodes:
            assert f'lf_gateway_cluster_replicas{{model="chat",node="{node}",state="running"}} 1.0' in metrics
        browser = chromium()
        try:
            browser.get(gateway.url + "/")
            line = '#cluster [data-entry="chat"]'
            assert wait_until(lambda: browser.find_elements("css selector", line), timeout=30)
            shown = browser.find_element("css selector", line).text
            assert "chat (running): 2 replicas on 2 nodes" in shown, shown
            assert all(node[:8] in shown for node in nodes), shown
        finally:
            browser.quit()
        instances = shared["root"] / "state" / "projects" / "test" / "demo" / "instances"
        assert not (instances / "chat.json").exists() and not (instances / "auto.json").exists()  # no local engine
        # llamafarm.yaml edited while it serves: the entry added is deployed to the cluster (never run here), the
        # one removed is taken off the cluster, the one left alone goes on answering
        yaml.write_text(EDITED)
        listed: list = []

        def reloaded() -> bool:
            listed.append([m["id"] for m in httpx.get(gateway.url + "/v1/models", timeout=10).json()["data"]])
            return "extra" in listed[-1] and "auto" not in listed[-1]

        assert wait_until(reloaded, timeout=600, interval=2), (listed[-1], gateway.text())
        answer = _client(gateway.url + "/v1").chat.completions.create(
            model="extra", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=32
        )
        assert "Paris" in (answer.choices[0].message.content or "")
        assert "taking auto off the cluster (gone from llamafarm.yaml)" in gateway.text(), gateway.text()
        apps = {a["entry"]: a for a in _status(shared)["applications"]}
        assert apps["extra"]["status"] == "RUNNING" and "auto" not in apps, apps
        assert not (instances / "extra.json").exists()  # on the cluster, not here
        assert "Paris" in _ask(gateway.url + "/v1")
    finally:
        code = gateway.terminate(timeout=300)
        yaml.write_text(PROJECT)
    assert code in (0, -signal.SIGTERM), gateway.text()
    assert "taking extra off the cluster" in gateway.text(), gateway.text()
    apps = {a["entry"]: a for a in _status(shared)["applications"]}
    assert "auto" not in apps and "extra" not in apps and apps["chat"]["status"] == "RUNNING", apps


def test_a_killed_replica_takes_its_engine_with_it_and_is_replaced(shared):
    """Ray kills a replica with SIGKILL (failed health check, restart): its engine must not live on."""
    state = shared["root"] / "state" / "projects" / "test" / "demo" / "instances"
    app = _app(shared, "chat")
    victim = app["replicas"][0]
    engine_record = state / f"chat-{victim['replica_id']}.json"
    engine = json.loads(engine_record.read_text())["pid"]
    os.kill(victim["pid"], signal.SIGKILL)
    assert wait_until(lambda: not _alive(engine), timeout=20, interval=0.2), "the engine outlived its replica"
    assert wait_until(lambda: not engine_record.exists(), timeout=10, interval=0.2)
    # Ray Serve starts another replica, on the node that lost one (spread); it answers
    assert wait_until(
        lambda: sum(r["state"] == "RUNNING" for r in _app(shared, "chat")["replicas"]) == 2, timeout=120, interval=2
    )
    assert "Paris" in _ask(shared["base_url"])


# -- scaling ---------------------------------------------------------------------------------------------------
def test_min1_max3_scales_up_under_load_one_per_node_and_down_when_idle(shared):
    deployed = _lf(shared["env"], "cluster", "deploy", "auto", "--json", cwd=shared["work"], timeout=900)
    assert deployed.returncode == 0, deployed.stderr[-4000:]
    (entry,) = json.loads(deployed.stdout)["entries"]
    assert len(entry["replicas"]) == 1
    stop = threading.Event()
    errors: list[str] = []

    def load() -> None:
        client = _client(entry["base_url"])
        while not stop.is_set():
            try:
                for _ in client.chat.completions.create(
                    model="auto",
                    messages=[{"role": "user", "content": "Write a long story about a lighthouse."}],
                    max_tokens=200,
                    stream=True,
                ):
                    pass
            except Exception as exc:  # noqa: BLE001 - counted, asserted on below
                errors.append(repr(exc))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    seen: list[dict] = []

    def scaled_up() -> bool:
        app = _app(shared, "auto")
        seen.append(app)
        running = [r for r in app["replicas"] if r["state"] == "RUNNING"]
        return app["target_replicas"] == 3 and len(running) == 2

    try:
        assert wait_until(scaled_up, timeout=240, interval=3), _replicas(seen[-1])
        # the load calls for three, and spread keeps it at one per node: the third waits for a node
        time.sleep(10)
        app = _app(shared, "auto")
        running = [r for r in app["replicas"] if r["state"] == "RUNNING"]
        assert len(running) == 2 and len({r["node_id"] for r in running}) == 2, app
    finally:
        stop.set()
        for thread in threads:
            thread.join(180)
    assert not errors, errors[:3]

    def scaled_down() -> bool:
        app = _app(shared, "auto")
        return app["target_replicas"] == 1 and sum(r["state"] == "RUNNING" for r in app["replicas"]) == 1

    assert wait_until(scaled_down, timeout=240, interval=3), _replicas(_app(shared, "auto"))
    # a replica Ray Serve removes stops its engine as lf does (its record goes too): one left, then none
    assert wait_until(lambda: len(_engines(shared, "auto")) == 1, timeout=60, interval=1), _engines(shared, "auto")
    assert wait_until(lambda: len(_engine_records(shared, "auto")) == 1, timeout=30, interval=1)
    removed = _lf(shared["env"], "cluster", "undeploy", "auto", "--json", cwd=shared["work"], timeout=300)
    assert removed.returncode == 0 and json.loads(removed.stdout)["deleted"] == ["test/demo/auto"], removed.stderr
    assert wait_until(lambda: _engines(shared, "auto") == [], timeout=60, interval=1), _engines(shared, "auto")
    assert wait_until(lambda: _engine_records(shared, "auto") == [], timeout=30, interval=1)


def _engine_records(cluster, entry: str) -> list[Path]:
    return sorted((cluster["root"] / "state" / "projects" / "test" / "demo" / "instances").glob(f"{entry}-*.json"))


def _engines(cluster, entry: str) -> list[int]:
    """The live engines of an entry's replicas on this machine, by their records."""
    pids = []
    for path in _engine_records(cluster, entry):
        try:
            pid = json.loads(path.read_text())["pid"]
        except (OSError, ValueError):
            continue
        if _alive(pid):
            pids.append(pid)
    return pids


# -- losing a node ---------------------------------------------------------------------------------------------
def test_a_lost_worker_node_leaves_the_head_answering(shared):
    worker = shared["worker"]["pid"]
    doomed = _tree_pids(worker)
    shared["pids"] |= doomed
    head_node = next(n["node_id"] for n in _status(shared)["nodes"] if n["head"] and n["alive"])
    for pid in doomed:  # the whole node at once, as a machine that loses power
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    lost = time.monotonic()
    answered = None
    while time.monotonic() - lost < 60:
        try:
            if "Paris" in _ask(shared["base_url"], max_tokens=16):
                answered = time.monotonic() - lost
                break
        except Exception:  # noqa: BLE001 - a request lost with the node: ask again
            time.sleep(0.5)
    assert answered is not None, "no answer within 60 s of losing the worker node"
    print(f"answered {answered:.1f}s after the worker node was lost")
    reports: list[dict] = []

    def only_the_head() -> bool:  # Ray declares a silent node dead after its health checks fail
        reports.append(_status(shared))
        return [n["node_id"] for n in reports[-1]["nodes"] if n["alive"]] == [head_node]

    assert wait_until(only_the_head, timeout=120, interval=3), reports[-1]["nodes"]

    def served_by_the_head_alone() -> bool:  # Ray Serve then drops the replica it lost with the node
        reports.append(_status(shared))
        chat = next(a for a in reports[-1]["applications"] if a["entry"] == "chat")
        running = [r for r in chat["replicas"] if r["state"] == "RUNNING"]
        return bool(running) and all(r["node_id"] == head_node for r in running)

    assert wait_until(served_by_the_head_alone, timeout=120, interval=3), _replicas(
        next(a for a in reports[-1]["applications"] if a["entry"] == "chat")
    )
    assert ("ray-worker", "crashed") in [(n["name"], n["state"]) for n in reports[-1]["local_nodes"]]
    assert "Paris" in _ask(shared["base_url"])


def test_stop_leaves_no_ray_process_lf_started(shared):
    shared["pids"] |= _tree_pids(shared["head"]["pid"])
    engines = {
        json.loads(p.read_text())["pid"]
        for p in (shared["root"] / "state" / "projects" / "test" / "demo" / "instances").glob("*.json")
    }
    shared["pids"] |= engines
    assert len(shared["pids"]) > 10
    stopped = _lf(shared["env"], "cluster", "stop", "--json", cwd=shared["work"], timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    left = [pid for pid in shared["pids"] if _alive(pid)]
    assert left == [], [psutil.Process(pid).cmdline() for pid in left if _alive(pid)]
    temp = [p for p in psutil.process_iter(["cmdline"]) if any(str(CACHED_DATA) in a for a in p.info["cmdline"] or [])]
    assert [p for p in temp if _in_state(p, shared["root"])] == []
    assert list((shared["root"] / "state").rglob("instances/*.json")) == []  # no record left behind either
    assert not (shared["root"] / "state" / "cluster" / "auth_token").exists()
    from lf.cluster.nodes import temp_dir_path

    assert not temp_dir_path().exists()  # Ray's session files went with the cluster


def _in_state(proc: psutil.Process, root: Path) -> bool:
    try:
        return proc.environ().get("LF_STATE_DIR", "").startswith(str(root))
    except psutil.Error:
        return False


# -- the default: loopback only ----------------------------------------------------------------------------------
def test_the_default_cluster_listens_on_loopback_only_and_takes_no_worker(cluster_env, tmp_path, monkeypatch):
    monkeypatch.setenv("LF_DATA_DIR", str(CACHED_DATA))
    (port,) = free_ports(1)
    started = run_lf("cluster", "start", "--port", str(port), "--json", timeout=300)
    try:
        assert started.returncode == 0, started.stderr
        head = json.loads(started.stdout)
        assert head["loopback"] is True and head["address"] == f"127.0.0.1:{port}"
        assert "Warning" not in started.stderr
        listening = set()
        for pid in _tree_pids(head["pid"]):
            try:
                listening |= {
                    c.laddr.ip for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN
                }
            except psutil.Error:
                pass
        assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip in listening), listening
        report = json.loads(run_lf("cluster", "status", "--json").stdout)
        checks = {c["name"]: c["status"] for c in report["checks"]}
        assert checks == {"ray:bind": "ok", "ray:auth": "ok"}, report["checks"]
        (Path.cwd() / "llamafarm.yaml").write_text(PROJECT)
        refused = run_lf("cluster", "deploy", "chat")  # replicas: 2, spread: true, on one node
        assert refused.returncode == 7 and "spread keeps one replica per node" in refused.stderr, refused.stderr
        joined = run_lf("cluster", "join", f"127.0.0.1:{port}")
        assert joined.returncode == 1 and "keeps such a cluster to its one node" in joined.stderr
    finally:
        pids = _tree_pids(json.loads(started.stdout)["pid"]) if started.returncode == 0 else set()
        assert run_lf("cluster", "stop", timeout=180).returncode == 0
        assert [pid for pid in pids if _alive(pid)] == []
