"""lf cluster without a cluster: how entries map onto Ray Serve's options, llamafarm.yaml's replica fields and
runtime.cluster, the vLLM command lines for GPUs across nodes, which cluster lf talks to, the code Ray ships, and
the watchdog that stops a replica's engine (real processes, no Ray). The real cluster: test_cluster_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fakes import free_ports, read_record, use_fakes, wait_until
from lf.cluster import placement
from lf.config.project import ModelEntry, load_project
from lf.errors import ConfigError, ExitStatus

REPO = Path(__file__).resolve().parent.parent
CHAT = "    - name: chat\n      provider: llamacpp\n      model: smollm2-135m\n"


def _project(tmp_path: Path, models: str, extra: str = "") -> Path:
    path = tmp_path / "llamafarm.yaml"
    path.write_text(f"version: v1\nname: demo\nnamespace: test\nruntime:\n{extra}  models:\n{models}")
    return path


def _entry(**scaling) -> ModelEntry:
    return ModelEntry(name="chat", provider="llamacpp", model="smollm2-135m", scaling=scaling)


# -- llamafarm.yaml -------------------------------------------------------------------------------------------
def test_replica_fields_and_the_cluster_section_are_read(tmp_path):
    path = _project(
        tmp_path,
        "    - name: chat\n      provider: llamacpp\n      model: smollm2-135m\n      replicas: 2\n      spread: true\n"
        "    - name: auto\n      provider: llamacpp\n      model: smollm2-135m\n      min_replicas: 0\n"
        "      max_replicas: 4\n      target_ongoing_requests: 3\n      scale_down_delay: 20\n",
        extra="  cluster:\n    address: 10.0.0.5:6379\n    serve_port: 12000\n",
    )
    project = load_project(path)
    assert project.cluster == {"address": "10.0.0.5:6379", "serve_port": 12000}
    chat, auto = project.models
    assert chat.scaling == {"replicas": 2, "spread": True}
    assert auto.scaling == {"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 3, "scale_down_delay": 20}
    again = load_project(path)  # the cached normalised form keeps them too
    assert again.models[1].scaling == auto.scaling and again.cluster == project.cluster


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("replicas: 2\n      max_replicas: 4", "max_replicas scales the model, but replicas fixes its copies at 2"),
        ("min_replicas: 3\n      max_replicas: 2", "min_replicas: 3 is above max_replicas (2)"),
        ("target_ongoing_requests: 2", "only applies when the model scales, and it has no max_replicas"),
        ("replicas: 0", "replicas: 0 is below the minimum"),
        ("spread: yes-please", "spread: expected"),
    ],
)
def test_replica_fields_that_cannot_work_are_located_errors(cli, tmp_path, fields, message):
    path = _project(
        tmp_path, f"    - name: chat\n      provider: llamacpp\n      model: smollm2-135m\n      {fields}\n"
    )
    result = cli("config", "validate", str(path))
    assert result.exit_code == ExitStatus.CONFIG, result.stdout
    assert message in result.stderr and f"{path}:" in result.stderr


def test_an_unknown_key_in_the_cluster_section_is_a_warning(cli, tmp_path):
    path = _project(
        tmp_path,
        "    - name: chat\n      provider: llamacpp\n      model: smollm2-135m\n",
        extra="  cluster:\n    adress: 10.0.0.5:6379\n",
    )
    result = cli("config", "validate", str(path))
    assert result.exit_code == 0
    assert "runtime.cluster.adress" in result.stderr and "did you mean 'address'" in result.stderr


# -- Ray Serve's options ----------------------------------------------------------------------------------------
def test_a_fixed_number_of_replicas_is_num_replicas():
    options = placement.serve_options(_entry(replicas=3))
    assert options["num_replicas"] == 3
    assert "autoscaling_config" not in options and "max_replicas_per_node" not in options
    assert options["ray_actor_options"] == {"num_cpus": 1.0}
    assert placement.serve_options(_entry())["num_replicas"] == 1


def test_a_range_is_ray_serves_autoscaling_config():
    options = placement.serve_options(
        _entry(min_replicas=1, max_replicas=4, target_ongoing_requests=2, scale_up_delay=0, scale_down_delay=5)
    )
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 0,
        "downscale_delay_s": 5,
    }
    assert "num_replicas" not in options
    assert placement.serve_options(_entry(max_replicas=2))["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 2,
    }


def test_spread_is_at_most_one_replica_per_node():
    assert placement.serve_options(_entry(replicas=2, spread=True))["max_replicas_per_node"] == 1
    assert "max_replicas_per_node" not in placement.serve_options(_entry(replicas=2, spread=False))


def test_min_above_max_is_refused_even_without_the_schema():
    with pytest.raises(ConfigError, match="above max_replicas"):
        placement.serve_options(_entry(min_replicas=3, max_replicas=2))


def test_each_project_and_entry_has_its_own_application_and_route(tmp_path):
    models = "    - name: chat\n      provider: llamacpp\n      model: smollm2-135m\n"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = load_project(_project(tmp_path / "a", models))
    path = _project(tmp_path / "b", models)
    path.write_text(path.read_text().replace("name: demo", "name: other project"))
    two = load_project(path)
    apps = [placement.entry_app(p, p.models[0]) for p in (one, two)]
    assert [a.app_name for a in apps] == ["test/demo/chat", "test/other project/chat"]
    assert [a.route_prefix for a in apps] == ["/test/demo/chat", "/test/other-project/chat"]
    assert apps[0].base_url("http://127.0.0.1:11560") == "http://127.0.0.1:11560/test/demo/chat/v1"


def test_spread_replicas_no_node_can_take_are_refused_before_anything_runs():
    from lf.cluster.deploy import _require_nodes_for_spread
    from lf.cluster.nodes import ClusterError

    def app(**scaling):
        return placement.EntryApp(
            "chat", "test/demo/chat", "/test/demo/chat", placement.serve_options(_entry(**scaling))
        )

    one_node = lambda: [{"node_id": "a", "alive": True}]  # noqa: E731
    with pytest.raises(ClusterError, match="2 are wanted from the start, and the cluster has 1 node") as caught:
        _require_nodes_for_spread(app(replicas=2, spread=True), one_node)
    assert caught.value.exit_status == ExitStatus.START_FAILED and "lf cluster join" in caught.value.hint
    _require_nodes_for_spread(app(replicas=2), one_node)  # without spread they share the node
    _require_nodes_for_spread(app(min_replicas=1, max_replicas=4, spread=True), one_node)  # scaling up may wait
    with pytest.raises(ClusterError):
        _require_nodes_for_spread(app(min_replicas=2, max_replicas=4, spread=True), one_node)


# -- vLLM across GPUs and nodes (command lines only: no GPU here) ------------------------------------------------
def test_tensor_and_pipeline_parallel_run_vllms_workers_through_the_cluster():
    entry = ModelEntry(name="big", provider="vllm", model="org/model")
    plan = placement.parallel_plan(entry, {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}, "10.0.0.5:6379")
    assert plan is not None and plan.gpus == 4
    assert dict(plan.settings) == {
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 2,
        "distributed_executor_backend": "ray",
        "ray_address": "10.0.0.5:6379",
    }
    assert plan.bundles == ({"GPU": 1, "CPU": 1},) * 4 and plan.strategy == "SPREAD"
    one_node = placement.parallel_plan(entry, {"tensor_parallel_size": 4}, "10.0.0.5:6379")
    assert one_node is not None and one_node.strategy == "PACK"
    assert placement.parallel_plan(entry, {}, "10.0.0.5:6379") is None
    assert placement.parallel_plan(_entry(), {"tensor_parallel_size": 2}, "x:1") is None  # not vLLM


def test_the_vllm_command_line_of_a_parallel_entry(tmp_path):
    """lf's own launch plan for vLLM, with the settings a parallel plan adds: the flags and RAY_ADDRESS."""
    from dataclasses import replace

    from lf.core.targets import Overrides, build_spec
    from lf.runtimes.launch import hooks_of
    from lf.runtimes.registry import ResolvedEngine, get_runtime

    model = tmp_path / "hf-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    entry = ModelEntry(name="big", provider="vllm", model=str(model), managed=True)
    plan = placement.parallel_plan(entry, {"tensor_parallel_size": 2, "pipeline_parallel_size": 3}, "10.0.0.5:6379")
    assert plan is not None
    spec = build_spec(entry, None, Overrides(settings=dict(plan.settings)), single=True)
    runtime = get_runtime("vllm")
    engine = ResolvedEngine(runtime.engines[0], None, "/envs/vllm/bin/python", "test")
    hooks = hooks_of(runtime)
    assert hooks is not None and hooks.plan is not None
    launch = hooks.plan(replace(spec), engine, 11800)
    argv = " ".join(launch.argv)
    assert argv.startswith("/envs/vllm/bin/python -m vllm.entrypoints.openai.api_server --model " + str(model))
    assert "--tensor-parallel-size 2" in argv and "--pipeline-parallel-size 3" in argv
    assert "--distributed-executor-backend ray" in argv
    assert launch.env["RAY_ADDRESS"] == "10.0.0.5:6379"


def test_on_a_cluster_without_gpus_the_parallel_path_is_refused_as_vllm_would():
    entry = ModelEntry(name="big", provider="vllm", model="org/model")
    plan = placement.parallel_plan(entry, {"tensor_parallel_size": 2}, "x:1")
    assert plan is not None
    with pytest.raises(ConfigError, match="current platform cpu does not support ray") as caught:
        placement.require_gpus(plan, 0)
    assert "replicas" in (caught.value.hint or "")
    with pytest.raises(ConfigError, match="needs 2 GPUs"):
        placement.require_gpus(plan, 1)
    placement.require_gpus(plan, 2)
    with pytest.raises(ConfigError, match="distributed_executor_backend is 'mp'"):
        placement.parallel_plan(entry, {"tensor_parallel_size": 2, "distributed_executor_backend": "mp"}, "x:1")


def test_deploy_plans_a_parallel_vllm_entry_only_where_there_are_gpus(tmp_path):
    from lf.cluster.deploy import plan_apps
    from lf.cluster.nodes import Cluster

    path = _project(
        tmp_path,
        "    - name: big\n      provider: vllm\n      model: org/model\n      api_key: sk-not-for-the-cluster\n"
        "      provider_config: {tensor_parallel_size: 2, pipeline_parallel_size: 2}\n",
    )
    project = load_project(path)
    cluster = Cluster("10.0.0.5:6379")
    with pytest.raises(ConfigError, match="current platform cpu does not support ray"):
        plan_apps(project, project.models, cluster, cluster_gpus=lambda: 0)
    ((app, init),) = plan_apps(project, project.models, cluster, cluster_gpus=lambda: 4)
    assert init["settings"] == {
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 2,
        "distributed_executor_backend": "ray",
        "ray_address": "10.0.0.5:6379",
    }
    assert init["entry"]["api_key"] is None and "sk-not" not in json.dumps(init)  # no key travels to the cluster
    assert app.app_name == "test/demo/big"


def test_the_same_entry_as_a_ray_serve_llm_config():
    entry = ModelEntry(
        name="big", provider="vllm", model="org/model", scaling={"min_replicas": 1, "max_replicas": 2, "spread": True}
    )
    settings = {"tensor_parallel_size": 2, "pipeline_parallel_size": 2, "context_size": 4096, "dtype": "bfloat16"}
    plan = placement.parallel_plan(entry, settings, "x:1")
    config = placement.serve_llm_config(entry, "/models/org-model", settings, plan)
    assert config["model_loading_config"] == {"model_id": "big", "model_source": "/models/org-model"}
    assert config["engine_kwargs"] == {
        "max_model_len": 4096,
        "dtype": "bfloat16",
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 2,
        "distributed_executor_backend": "ray",
    }
    assert config["placement_group_config"] == {"bundle_per_worker": {"GPU": 1, "CPU": 1}, "strategy": "SPREAD"}
    assert config["deployment_config"] == {
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 2},
        "max_replicas_per_node": 1,
    }


# -- which cluster ----------------------------------------------------------------------------------------------
def _fake_head(state: Path, address: str, name: str = "ray-head", **settings) -> None:
    """A record of a running node: this test process stands in for it (alive, and ours)."""
    from lf.daemon.instance import Instance
    from lf.daemon.process import process_create_time
    from lf.daemon.records import RuntimeRecord, StateStore

    instance = Instance(
        name=name,
        runtime="ray",
        engine="ray",
        argv=tuple(psutil.Process().cmdline()),
        host=address.rpartition(":")[0],
        port=1,
        api_base="",
        model="Ray head",
        owner="cluster",
        settings={
            "address": address,
            "token_file": str(state / "cluster" / "auth_token"),
            "serve_host": "127.0.0.1",
            "serve_port": 12345,
            **settings,
        },
    )
    StateStore(state).save(
        RuntimeRecord(
            instance=instance,
            pid=os.getpid(),
            create_time=process_create_time(os.getpid()) or 0.0,
            started_at=time.time(),
            log_path=str(state / "logs" / f"{name}.log"),
        )
    )


def test_which_cluster_flag_then_env_then_file_then_the_head_here(isolated, monkeypatch):
    from lf.cluster.nodes import ClusterError, connect

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ClusterError, match="no Ray cluster to talk to") as caught:
        connect()
    assert caught.value.exit_status == ExitStatus.NOT_RUNNING and "lf cluster start" in caught.value.hint
    _fake_head(isolated / "state", "10.0.0.9:6379", loopback=False)
    here = connect()
    assert (here.address, here.source) == ("10.0.0.9:6379", "lf cluster start")
    assert here.env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(isolated / "state/cluster/auth_token")}
    assert here.serve_url == "http://127.0.0.1:12345"  # the Serve port lf's head chose
    project = load_project(_project(isolated, CHAT, extra="  cluster:\n    address: 10.1.1.1:7000\n"))
    assert connect(None, project).address == "10.1.1.1:7000"
    assert connect(None, project).env == {}  # another cluster: Ray's own RAY_AUTH_* decide
    monkeypatch.setenv("RAY_ADDRESS", "10.2.2.2:7001")
    assert connect(None, project).source == "RAY_ADDRESS"
    assert connect("10.3.3.3:7002", project).address == "10.3.3.3:7002"


def test_a_machine_that_only_joined_talks_to_the_cluster_it_joined(isolated, monkeypatch):
    from lf.cluster.nodes import connect

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _fake_head(isolated / "state", "10.0.0.9:6379", name="ray-worker")
    cluster = connect()
    assert (cluster.address, cluster.source, cluster.local_head) == ("10.0.0.9:6379", "lf cluster join", None)
    assert cluster.env["RAY_AUTH_TOKEN_PATH"] == str(isolated / "state" / "cluster" / "auth_token")


def test_a_loopback_head_is_reached_on_loopback(isolated, monkeypatch):
    from lf.cluster.nodes import LOOPBACK_SWITCH, connect

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _fake_head(isolated / "state", "127.0.0.1:6379", loopback=True)
    cluster = connect("localhost:6379")
    assert cluster.local_head is not None and cluster.address == "127.0.0.1:6379"
    assert cluster.env[LOOPBACK_SWITCH] == "0"


def test_joining_a_loopback_head_is_refused_with_what_to_do_instead(cli):
    result = cli("cluster", "join", "127.0.0.1:6379")
    assert result.exit_code == ExitStatus.ERROR
    assert "keeps such a cluster to its one node" in result.stderr
    assert "lf cluster start --host ADDRESS" in result.stderr


def test_joining_without_the_clusters_key_says_how_to_bring_it(cli, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    result = cli("cluster", "join", "10.0.0.5:6379")
    assert result.exit_code == ExitStatus.ERROR
    assert "no key for the cluster at 10.0.0.5:6379" in result.stderr and "--token-file" in result.stderr


@pytest.mark.parametrize("address", ["10.0.0.5", "10.0.0.5:port", ":6379", "10.0.0.5:70000"])
def test_an_address_that_is_not_host_port_is_a_usage_error(cli, address):
    result = cli("cluster", "join", address)
    assert result.exit_code == ExitStatus.USAGE
    assert "is not a Ray address" in result.stderr and "HOST:PORT" in result.stderr


def test_a_wildcard_host_is_refused(cli):
    result = cli("cluster", "start", "--host", "0.0.0.0")
    assert result.exit_code == ExitStatus.USAGE
    assert "not an address other nodes can reach" in result.stderr


def test_status_without_a_cluster_lists_nothing_and_exits_3(cli, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = cli("cluster", "status", "--json")
    assert result.exit_code == ExitStatus.NOT_RUNNING
    report = json.loads(result.stdout)
    assert report["local_nodes"] == [] and report["nodes"] == [] and report["address"] is None
    assert report["error"] == "no Ray cluster to talk to"


def test_a_cluster_nobody_answers_at_is_said_at_once(cli, monkeypatch):
    (port,) = free_ports(1)
    monkeypatch.setenv("LF_DATA_DIR", str(_installed_env_stub(Path(os.environ["LF_DATA_DIR"]))))
    started = time.monotonic()
    result = cli("cluster", "status", "--address", f"127.0.0.1:{port}", "--json")
    assert result.exit_code == ExitStatus.NOT_RUNNING
    assert f"cannot reach the Ray head at 127.0.0.1:{port}" in json.loads(result.stdout)["error"]
    assert time.monotonic() - started < 20  # not Ray's own minute of retries


def _installed_env_stub(data: Path) -> Path:
    """An env lf takes for installed (its marker and interpreter), for checks that stop before Ray runs."""
    env = data / "envs" / "cluster"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)
    (env / "lf-installed.json").write_text("{}")
    return data


def test_deploy_needs_a_project(cli):
    result = cli("cluster", "deploy")
    assert result.exit_code == ExitStatus.CONFIG
    assert "needs a llamafarm.yaml" in result.stderr and "lf config init" in result.stderr


def test_commands_that_need_the_cluster_env_say_how_to_install_it(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = cli("cluster", "start")
    assert result.exit_code == ExitStatus.NOT_INSTALLED
    assert "lf cluster install" in result.stderr


# -- what the cluster env holds, what Ray ships ---------------------------------------------------------------
def test_the_cluster_env_is_ray_serve_and_lfs_own_dependencies_only():
    from lf.cluster.env import RAY_REQUIREMENT, requirements

    reqs = requirements()
    assert reqs[0] == RAY_REQUIREMENT == "ray[serve]==2.60.0"
    names = {r.split(">")[0].split("<")[0].split("=")[0].split(";")[0].strip() for r in reqs[1:]}
    assert {"xllamacpp", "httpx", "psutil", "pydantic", "starlette"} <= names
    assert not names & {"pytest", "openai", "selenium"}  # the test extra stays out
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'cluster = ["ray[serve]==2.60.0"]' in pyproject  # `pip install lf[cluster]` on a node: the same Ray


def test_the_code_ray_ships_is_lf_with_its_runtime_folders(isolated):
    from lf.cluster.package import stage

    old = isolated / "data" / "cluster" / "code" / "0123456789abcdef"  # an earlier lf's, unused for two days
    (old / "lf").mkdir(parents=True)
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    root = stage()
    assert not old.exists()
    assert (root / "lf" / "__init__.py").is_file() and (root / "lf" / "cluster" / "replica.py").is_file()
    assert (root / "lf" / "runtimes" / "builtin" / "llamacpp" / "manifest.toml").is_file()
    assert not list(root.rglob("__pycache__")) and not list(root.rglob("*.pyc"))
    assert stage() == root  # made once per version of the code
    assert root.parent.stat().st_mode & 0o777 == 0o700


def test_lf_never_imports_ray():
    """lf's own process talks to Ray only through the driver it runs in the cluster env."""
    code = (
        "import sys, lf.cli.cluster, lf.cluster.deploy, lf.cluster.status, lf.cluster.nodes, lf.cluster.bridge;"
        "print(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


# -- the watchdog: a replica killed takes its engine with it ------------------------------------------------------
def _replica_stand_in() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)


def _watchdog(replica: subprocess.Popen, name: str, project: str | None) -> subprocess.Popen:
    from lf.daemon.process import process_create_time

    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lf.cluster.watchdog",
            str(replica.pid),
            repr(process_create_time(replica.pid)),
            name,
            project or "",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_a_killed_replicas_engine_is_stopped_by_its_watchdog(isolated, monkeypatch, cli):
    """The engine of a replica Ray kills (SIGKILL: no __del__) is in a session of its own and would live on."""
    use_fakes(monkeypatch)
    replica = _replica_stand_in()
    watchdog = _watchdog(replica, "fake", None)
    started = cli("runtime", "start", "fake")
    assert started.exit_code == 0, started.stderr
    engine = read_record(isolated / "state", "fake")["pid"]
    time.sleep(1.0)
    assert psutil.pid_exists(engine) and watchdog.poll() is None  # nothing happens while the replica lives
    replica.kill()
    replica.wait()
    assert wait_until(lambda: not _alive(engine), timeout=15), "the engine outlived its replica"
    assert watchdog.wait(15) == 0
    assert "fake's replica is gone; engine: stopped" in watchdog.stdout.read()
    assert read_record(isolated / "state", "fake") is None  # and its record is gone


def test_the_watchdog_also_stops_an_engine_whose_record_was_not_written_yet(isolated):
    """Killed between launching its engine and recording it: the engine carries the replica's mark."""
    from lf.cluster.watchdog import MARKER_ENV

    replica = _replica_stand_in()
    watchdog = _watchdog(replica, "chat-abc123", "test/demo")
    engine = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env={**os.environ, MARKER_ENV: "chat-abc123"},
        start_new_session=True,
    )
    other = subprocess.Popen(  # another replica's engine: left alone
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env={**os.environ, MARKER_ENV: "chat-zzz999"},
        start_new_session=True,
    )
    try:
        os.kill(replica.pid, signal.SIGKILL)
        replica.wait()
        assert watchdog.wait(20) == 0
        assert engine.wait(5) is not None
        assert other.poll() is None
    finally:
        for proc in (engine, other, replica):
            proc.kill()
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- lf serve --cluster: where the replicas run, in /health, /metrics and the page's data ------------------------
class _Cluster:
    """What a gateway asks of a cluster (lf.gateway.app.Elsewhere), answering `view` as told."""

    def __init__(self, view):
        self.placed: dict[str, str] = {}
        self.view = view

    def place(self, project):
        return self.placed

    def take_off(self) -> None:
        pass


def _gateway_asking(view):
    from starlette.testclient import TestClient

    from lf.config.gateway import GatewayConfig
    from lf.gateway.app import Gateway

    gateway = Gateway(None, GatewayConfig(port=8123), [], None, elsewhere=_Cluster(view) if view else None)
    return gateway, TestClient(gateway.app(), base_url="http://127.0.0.1:8123")


def _replica(node: str, state: str = "running") -> dict:
    return {"node_id": node, "node_address": "10.0.0.1", "state": state}


def test_the_gateway_shows_where_each_deployed_entry_runs_as_the_cluster_last_said():
    answers = [
        {
            "address": "10.0.0.1:6379",
            "checked_at": 1.0,
            "error": None,
            "nodes": [],
            "entries": [
                {
                    "entry": "chat",
                    "status": "running",
                    "message": "",
                    "target_replicas": 3,
                    "nodes": 2,
                    "replicas": [_replica("node-a"), _replica("node-b"), _replica("node-b", "starting")],
                }
            ],
        }
    ]
    gateway, client = _gateway_asking(lambda: answers[0])
    with client:
        assert wait_until(lambda: client.get("/health").json().get("cluster") == answers[0], timeout=5)
        metrics = client.get("/metrics").text
        assert 'lf_gateway_cluster_replicas{model="chat",node="node-a",state="running"} 1.0' in metrics
        assert 'lf_gateway_cluster_replicas{model="chat",node="node-b",state="running"} 1.0' in metrics
        assert 'lf_gateway_cluster_replicas{model="chat",node="node-b",state="starting"} 1.0' in metrics
        assert gateway.dashboard.snapshot()["cluster"] == answers[0]  # what the page renders


def test_a_cluster_that_cannot_be_asked_is_said_and_the_gateway_goes_on():
    def broken() -> dict:
        raise RuntimeError("the driver died")

    gateway, client = _gateway_asking(broken)
    with client:
        assert wait_until(lambda: (client.get("/health").json().get("cluster") or {}).get("error"), timeout=5)
        assert client.get("/health").json()["cluster"]["error"] == "RuntimeError: the driver died"
        assert client.get("/health/liveness").status_code == 200


def test_a_gateway_without_a_cluster_says_nothing_of_one():
    gateway, client = _gateway_asking(None)
    with client:
        assert "cluster" not in client.get("/health").json()
        assert "lf_gateway_cluster_replicas{" not in client.get("/metrics").text


def test_an_edited_llamafarm_yaml_is_taken_to_the_cluster_and_only_what_this_gateway_deployed_is_taken_off(
    tmp_path, monkeypatch
):
    """Front.place with the cluster's calls recorded: an entry added or changed is deployed, one removed is taken
    off when this gateway deployed it and left when it was there before; a stop after the edit takes off what
    this gateway deployed, the added entry included."""
    import threading

    from lf.cluster import deploy as deploy_module
    from lf.cluster.deploy import DeployedEntry, DeployResult
    from lf.cluster.front import Front

    calls: list = []

    def deploy(project, address, entries=None, **_):
        calls.append(("deploy", sorted(entries or [])))
        deployed = tuple(DeployedEntry(n, f"lf-{n}", f"http://ray/{n}/v1", "RUNNING", "", ()) for n in entries or [])
        return DeployResult("ray:6379", "http://ray", deployed)

    def undeploy(project, address, entries=None):
        calls.append(("undeploy", sorted(entries or []), sorted(e.name for e in project.models)))
        return entries

    monkeypatch.setattr(deploy_module, "deploy", deploy)
    monkeypatch.setattr(deploy_module, "undeploy", undeploy)
    entry = "    - {{name: {}, provider: llamacpp, model: smollm2-135m{}}}\n"
    first = load_project(_project(tmp_path, entry.format("a", "") + entry.format("b", "") + entry.format("c", "")))
    front = Front.__new__(Front)  # as Front(...) leaves it: a, b, c deployed, c there before this gateway
    front.project, front.address, front.on_event, front._lock = first, None, None, threading.Lock()
    front.placed = {n: f"http://ray/{n}/v1" for n in "abc"}
    front.before, front.ours = {"c"}, ["a", "b"]

    edited = _project(
        tmp_path, entry.format("a", "") + entry.format("b", ", context_size: 512") + entry.format("d", "")
    )
    placed = front.place(load_project(edited))
    assert placed == {n: f"http://ray/{n}/v1" for n in "abd"}
    assert calls == [("deploy", ["b", "d"])]  # a is as it was; c is gone but not this gateway's to take off
    assert sorted(front.ours) == ["a", "b", "d"]

    gone = _project(tmp_path, entry.format("d", ""))
    calls.clear()
    assert front.place(load_project(gone)) == {"d": "http://ray/d/v1"}
    assert calls == [("undeploy", ["a", "b"], ["a", "b", "d"])]  # named in the project that had them
    calls.clear()
    front.take_off()
    assert calls == [("undeploy", ["d"], ["d"])]
