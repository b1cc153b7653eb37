"""Runtime envs (lf runtime install/uninstall), Lemonade's hooks and the ONNX build's pure parts.

The install tests build real venvs with real pip, offline: the requirements name a wheel made here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path

import pytest

from lf.config.names import Names
from lf.errors import ConfigError, ExitStatus, LfError, NotInstalledError
from lf.runtimes.launch import hooks_module


# -- a runtime whose env is one tiny local wheel ---------------------------------------------------
def make_wheel(folder: Path, name: str = "lf_probe_pkg", version: str = "1.0") -> Path:
    """A minimal valid wheel, so pip installs without any index."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VERSION = 'probe'\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: lf-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture
def probe_runtime(tmp_path, monkeypatch):
    """A runtime folder on LF_RUNTIMES_PATH with two install plans: the first is unavailable."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = make_wheel(wheels)
    folder = tmp_path / "user-runtimes" / "probe-rt"
    folder.mkdir(parents=True)
    (folder / "manifest.toml").write_text(
        f"""
name = "probe-rt"
description = "test runtime"
default_port = 12999
[health]
path = "/"
[[engines]]
name = "probe"
env_module = "lf_probe_pkg"
argv = ["{{python}}", "-m", "lf_probe_pkg"]
[[install]]
generation = "new"
available_if = "{wheels / "not-there-1.0-py3-none-any.whl"}"
steps = [{{ requirements = "requirements-new.txt" }}]
[[install]]
generation = "old"
steps = [{{ requirements = "requirements.txt" }}, {{ requirements = "requirements-extra.txt" }}]
"""
    )
    (folder / "requirements-new.txt").write_text("--no-index\nnot-there\n")
    (folder / "requirements.txt").write_text(f"--no-index\n{wheel}\n")
    (folder / "requirements-extra.txt").write_text(f"--no-index\n{wheel}\n")
    monkeypatch.setenv("LF_RUNTIMES_PATH", str(folder.parent))
    from lf.runtimes.registry import all_runtimes, get_runtime

    all_runtimes.cache_clear()
    return get_runtime("probe-rt")


def test_install_chooses_a_plan_records_it_and_is_idempotent(probe_runtime, cli):
    rt = probe_runtime
    assert rt.find_engine() is None
    assert "lf runtime install probe-rt" in rt.install_hint()

    result = cli("runtime", "install", "probe-rt")
    assert result.exit_code == 0, result.stderr
    assert "lf: creating a virtual environment" in result.stderr  # progress is visible, on stderr
    assert "trying the next way" in result.stderr  # the unavailable plan was skipped
    assert "[2/2] pip install -r requirements-extra.txt" in result.stderr
    assert "probe-rt (old): installed" in result.stdout

    info = json.loads((rt.env_dir / "lf-installed.json").read_text())
    assert info["generation"] == "old" and info["packages"]["lf_probe_pkg"] == "1.0"
    assert info["steps"] == [["-r", "requirements.txt"], ["-r", "requirements-extra.txt"]]
    assert rt.env_dir == Path(os.environ["LF_DATA_DIR"]) / "envs" / "probe-rt"

    found = rt.find_engine()
    assert found is not None and found.python == str(rt.env_python()) and "lf env" in found.source
    import subprocess

    # the package lives in the env, not in lf's own interpreter
    assert subprocess.run([found.python, "-c", "import lf_probe_pkg"]).returncode == 0
    assert subprocess.run([sys.executable, "-c", "import lf_probe_pkg"], capture_output=True).returncode != 0

    again = cli("runtime", "install", "probe-rt", "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout)["already_installed"] is True

    listed = json.loads(cli("runtime", "list", "--json").stdout)
    (row,) = [r for r in listed["runtimes"] if r["name"] == "probe-rt"]
    assert row["available"] and row["source"].startswith("lf env")

    # a changed requirements file is noticed
    (rt.folder / "requirements-extra.txt").write_text(
        (rt.folder / "requirements-extra.txt").read_text() + "# changed\n"
    )
    stale = cli("runtime", "install", "probe-rt")
    assert stale.exit_code == 0 and "--force" in stale.stderr

    gone = cli("runtime", "uninstall", "probe-rt")
    assert gone.exit_code == 0 and "removed" in gone.stdout
    assert not rt.env_dir.exists() and rt.find_engine() is None
    assert "not installed" in cli("runtime", "uninstall", "probe-rt").stdout


def test_a_failed_install_leaves_nothing_behind(probe_runtime, cli):
    rt = probe_runtime
    (rt.folder / "requirements-extra.txt").write_text("--no-index\nno-such-package-anywhere==9.9\n")
    result = cli("runtime", "install", "probe-rt")
    assert result.exit_code == int(ExitStatus.ERROR)
    assert "pip could not install requirements-extra.txt" in result.stderr
    assert not rt.env_dir.exists()  # no half-built env that the registry could pick up
    assert rt.find_engine() is None


def test_starting_a_runtime_whose_engine_is_missing_names_the_install_command(cli):
    for name in ("lemonade", "llama-cpp-python"):
        result = cli("runtime", "start", name, "--port", "12345")
        assert result.exit_code == int(ExitStatus.NOT_INSTALLED), result.stderr
        assert f"lf runtime install {name}" in result.stderr


def test_install_refuses_runtimes_without_an_env(cli):
    result = cli("runtime", "install", "ollama")
    assert result.exit_code == int(ExitStatus.ERROR)
    assert "no environment for lf to install" in result.stderr


def test_list_shows_where_to_get_env_runtimes(cli):
    rows = {r["name"]: r for r in json.loads(cli("runtime", "list", "--json").stdout)["runtimes"]}
    assert rows["lemonade"]["available"] is False
    assert rows["lemonade"]["install"] == "install it with: lf runtime install lemonade"
    table = cli("runtime", "list").stdout
    assert "lf runtime install llama-cpp-python" in table


def test_manifests_declare_their_env_vars_and_ports():
    from lf.runtimes.registry import get_runtime

    lem = get_runtime("lemonade")
    assert lem.default_port == 11534 and lem.health_ready == "json:model_loaded"
    assert lem.env == {
        "port": "LEMONADE_PORT",
        "host": "LEMONADE_HOST",
        "model": "LEMONADE_MODEL",
        "context_size": "LEMONADE_CONTEXT_SIZE",
        "backend": "LEMONADE_BACKEND",
    }
    assert [e.executable for e in lem.engines] == ["lemond", "lemonade-server", "lemonade-server-dev"]
    lcp = get_runtime("llama-cpp-python")
    assert lcp.default_port == 11734 and lcp.health_path == "/v1/models" and lcp.model_format == "gguf"
    from lf.runtimes.envs import install_plans

    assert [p.generation for p in install_plans(lem)] == ["v8", "v6"]
    for plan in install_plans(lem):
        for step in plan.steps:
            assert all((lem.folder / f).is_file() for f in step.files())
    assert "torch==2.13.0" in (lem.folder / "constraints.txt").read_text()


def test_config_accepts_both_lemonade_shapes(tmp_path):
    from lf.config.project import load_project

    seed = tmp_path / "seed.yaml"
    seed.write_text(
        "version: v1\nname: p\nnamespace: d\nruntime:\n  provider: lemonade\n  model: ./model\n"
        "  lemonade:\n    backend: onnx\n    port: 11600\n    context_size: 2048\n"
    )
    (entry,) = load_project(seed).models
    assert entry.provider_config == {"backend": "onnx", "port": 11600, "context_size": 2048}

    listed = tmp_path / "list.yaml"
    listed.write_text(
        "version: v1\nname: p\nnamespace: d\nruntime:\n  models:\n  - name: lem\n    provider: lemonade\n    model: m\n"
        "    provider_config: {port: 11601, backend: onnx, context_size: 1024, checkpoint: /x/y, recipe: oga-cpu}\n"
    )
    assert load_project(listed).models[0].provider_config["recipe"] == "oga-cpu"

    # a setting Lemonade does not have is kept and reported (LlamaFarm accepts it), not used
    odd = tmp_path / "odd.yaml"
    odd.write_text(
        "version: v1\nname: p\nnamespace: d\nruntime:\n  provider: lemonade\n  model: m\n  lemonade:\n    threads: 2\n"
    )
    (warning,) = load_project(odd).warnings
    assert "odd.yaml:8:5: runtime.lemonade.threads: lemonade does not use the setting 'threads'" in warning
    # a wrong value for one it has is an error: lf needs it
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: v1\nname: p\nnamespace: d\nruntime:\n  provider: lemonade\n  model: m\n  lemonade:\n    port: eleven\n"
    )
    with pytest.raises(ConfigError):
        load_project(bad)


# -- Lemonade's hooks --------------------------------------------------------------------------------
@pytest.fixture
def lemonade():
    from lf.runtimes.registry import get_runtime

    rt = get_runtime("lemonade")
    return rt, hooks_module(rt)


def _spec(rt, model="smollm2-135m-onnx", host="127.0.0.1", **settings):
    from lf.runtimes.launch import InstanceSpec

    return InstanceSpec(
        name="lemonade",
        runtime=rt,
        model=model,
        model_path=None,
        host=host,
        port=11534,
        port_auto=False,
        settings={"context_size": 2048, **settings},
    )


def _resolved(exe: str, generation: str | None):
    from lf.runtimes.registry import Engine, ResolvedEngine

    engine = Engine(name=Path(exe).name, argv=(), executable=Path(exe).name, generation=generation)
    return ResolvedEngine(engine, exe, sys.executable, "test")


def _fake_script_env(tmp_path: Path, dist: str) -> Path:
    """A pip-style env: bin/lemonade-server-dev with a shebang, and the given dist-info in site-packages."""
    env = tmp_path / f"env-{dist}"
    (env / "bin").mkdir(parents=True)
    (env / "lib" / "python3.11" / "site-packages" / f"{dist}.dist-info").mkdir(parents=True)
    python = env / "bin" / "python"
    python.symlink_to(sys.executable)
    script = env / "bin" / "lemonade-server-dev"
    script.write_text(f"#!{python}\nimport sys\n")
    script.chmod(0o755)
    return script


@pytest.fixture
def onnx_model(tmp_path):
    folder = tmp_path / "my-onnx"
    folder.mkdir()
    (folder / "genai_config.json").write_text("{}")
    return folder


def test_each_generation_gets_its_own_command_and_api(lemonade, tmp_path, onnx_model):
    rt, hooks = lemonade
    v6_script = _fake_script_env(tmp_path, "turnkeyml-6.2.5")
    v8_script = _fake_script_env(tmp_path, "lemonade_sdk-8.1.0")
    assert hooks.generation(rt, _resolved(str(v6_script), None)) == "v6"
    assert hooks.generation(rt, _resolved(str(v8_script), None)) == "v8"

    spec = _spec(rt, model=str(onnx_model))
    plan = hooks.plan(spec, _resolved(str(v6_script), None), 11534)
    # run through its interpreter: the process shows exactly this command line, so stop recognises it
    assert list(plan.argv) == [str(v6_script.parent / "python"), str(v6_script), "serve", "--port", "11534"]
    # v6's /health halts a running answer: it is probed on /models, the load checked once at start
    assert plan.api_base == "/api/v0" and plan.health_path == "/api/v0/models"
    assert plan.health_ready == "loaded-by-lf"
    assert plan.base_url == "http://127.0.0.1:11534/api/v0"
    assert plan.model == str(onnx_model)  # v6 names a checkpoint-loaded model by its checkpoint

    plan = hooks.plan(spec, _resolved(str(v8_script), None), 11534)
    assert list(plan.argv[2:]) == ["serve", "--port", "11534", "--host", "127.0.0.1", "--ctx-size", "2048", "--no-tray"]
    assert plan.api_base == "/api/v1" and plan.model == "user.my-onnx"
    # after start, the model is registered from its checkpoint (/pull) before /load: the plan hands the
    # checkpoint to after_healthy although requests use the served name
    assert plan.after_start["checkpoint"] == str(onnx_model) and plan.after_start["served_as"] == "user.my-onnx"
    assert spec.model == str(onnx_model)  # and the spec it was made from is unchanged

    assert list(hooks.plan(spec, _resolved("/opt/lemonade-server", "v9"), 11534).argv) == [
        "/opt/lemonade-server",
        "serve",
        "--port",
        "11534",
        "--host",
        "127.0.0.1",
        "--ctx-size",
        "2048",
        "--no-tray",
    ]
    assert list(hooks.plan(spec, _resolved("/opt/lemond", "v10"), 11534).argv) == [
        "/opt/lemond",
        "--port",
        "11534",
        "--host",
        "127.0.0.1",
    ]


def test_v6_refuses_other_hosts(lemonade, tmp_path, onnx_model):
    rt, hooks = lemonade
    script = _fake_script_env(tmp_path, "turnkeyml-6.2.5")
    spec = _spec(rt, model=str(onnx_model), host="0.0.0.0")
    with pytest.raises(LfError, match="localhost only"):
        hooks.plan(spec, _resolved(str(script), None), 11534)


def test_llamacpp_backend_follows_the_hardware_unless_chosen(lemonade, tmp_path):
    rt, hooks = lemonade
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    argv = hooks.plan(_spec(rt, model=str(gguf)), _resolved("/opt/lemonade-server", "v9"), 11534).argv
    assert argv[-2] == "--llamacpp" and argv[-1] == hooks.detect_llamacpp_backend()
    assert hooks.detect_llamacpp_backend() in ("cpu", "vulkan", "rocm", "metal")
    spec = _spec(rt, model=str(gguf), llamacpp_backend="vulkan")
    assert hooks.plan(spec, _resolved("/opt/lemonade-server", "v9"), 11534).argv[-1] == "vulkan"
    # a backend Lemonade does not have is refused where every setting is checked: the declaration
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: v1\nname: p\nnamespace: d\nruntime:\n  provider: lemonade\n  model: m\n  lemonade:\n    llamacpp_backend: cuda\n"
    )
    from lf.config.project import load_project

    with pytest.raises(ConfigError):
        load_project(bad)


def test_model_plans(lemonade, tmp_path, onnx_model, monkeypatch):
    rt, hooks = lemonade
    plan = hooks.model_plan(_spec(rt, model=str(onnx_model)), "v6")
    assert (plan.backend, plan.recipe, plan.checkpoint, plan.model_name) == ("onnx", "oga-cpu", str(onnx_model), None)

    # LlamaFarm's provider_config: checkpoint + recipe win over the model name
    plan = hooks.model_plan(_spec(rt, model="anything", checkpoint=str(onnx_model), recipe="oga-igpu"), "v8")
    assert (plan.checkpoint, plan.recipe, plan.served_as) == (str(onnx_model), "oga-igpu", "user.my-onnx")

    # a name from Lemonade's own model list is loaded by name
    plan = hooks.model_plan(_spec(rt, model="Qwen2.5-0.5B-Instruct-CPU"), "v6")
    assert (plan.model_name, plan.checkpoint, plan.backend) == ("Qwen2.5-0.5B-Instruct-CPU", None, "onnx")

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert hooks.model_plan(_spec(rt, model=str(gguf)), "v8").backend == "llamacpp"
    with pytest.raises(LfError, match="no llama.cpp backend"):
        hooks.model_plan(_spec(rt, model=str(gguf)), "v6")
    with pytest.raises(ConfigError, match="holds a onnx model"):
        hooks.model_plan(_spec(rt, model=str(onnx_model), backend="llamacpp"), "v8")
    monkeypatch.setenv("LEMONADE_BACKEND", "tensorrt")  # an unknown backend, wherever it comes from
    from lf.config.names import default_entry
    from lf.core.targets import Overrides, build_spec

    with pytest.raises(ConfigError):
        build_spec(default_entry(rt.name), None, Overrides(), single=True)
    monkeypatch.delenv("LEMONADE_BACKEND")
    with pytest.raises(NotInstalledError) as missing:
        hooks.model_plan(_spec(rt), "v6")  # the default model, not built in this data dir
    assert "lf models build-onnx" in missing.value.hint
    with pytest.raises(NotInstalledError, match="does not exist"):  # a path to nothing: exit 8, the file is not here
        hooks.model_plan(_spec(rt, model="./no/such/folder"), "v6")


def test_relative_model_paths_are_relative_to_the_project(lemonade, tmp_path, monkeypatch):
    """`-c other/llamafarm.yaml` with `model: ./models/m` means other/models/m, wherever lf runs."""
    from lf.config.project import load_project
    from lf.core.targets import Overrides, build_spec

    rt, hooks = lemonade
    project = tmp_path / "project"
    (project / "models" / "m").mkdir(parents=True)
    (project / "models" / "m" / "genai_config.json").write_text("{}")
    (project / "llamafarm.yaml").write_text(
        "version: v1\nname: p\nnamespace: n\nruntime:\n  provider: lemonade\n  model: ./models/m\n  lemonade: {backend: onnx}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_project(project / "llamafarm.yaml")
    spec = build_spec(Names(loaded).entry(None), loaded, Overrides(), single=True)
    plan = hooks.model_plan(spec, "v6")
    assert plan.checkpoint == str((project / "models" / "m").resolve())


# -- the ONNX build ------------------------------------------------------------------------------------
def test_build_onnx_needs_lemonades_env(cli):
    result = cli("models", "build-onnx", "--tiny")
    assert result.exit_code == int(ExitStatus.NOT_INSTALLED)
    assert "lf runtime install lemonade" in result.stderr


def test_tokenizer_config_fix(tmp_path):
    from lf.models.onnx import default_name, fix_tokenizer_config

    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizerFast", "eos_token": "<|im_end|>"})
    )
    fix_tokenizer_config(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config == {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|im_end|>"}
    assert default_name("smollm2-135m", tiny=True) == "smollm2-135m-onnx-tiny"
    assert default_name("/x/Foo.Q4.gguf", tiny=False) == "Foo.Q4-onnx"


def test_flag_and_env_ports_beat_the_config_file(lemonade, onnx_model):
    rt, hooks = lemonade
    spec = _spec(rt, model=str(onnx_model), port=1)  # provider_config's port; the flag/env chose 11534
    assert list(hooks.plan(spec, _resolved("/opt/lemonade-server", "v9"), spec.port).argv[2:4]) == ["--port", "11534"]
