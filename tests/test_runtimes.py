"""The runtime registry and how the llamacpp runtime's command line is built."""

from __future__ import annotations

import os
import stat

import pytest

from fakes.platforms import linux_only
from lf.config.names import default_entry
from lf.core.targets import Overrides, build_spec
from lf.errors import NotInstalledError, UnknownNameError
from lf.runtimes.folders import runtimes_dir
from lf.runtimes.launch import make_plan
from lf.runtimes.registry import all_runtimes, get_runtime, runtime_names


def build_argv(spec) -> tuple[list[str], str]:
    plan = make_plan(spec, spec.port)
    return list(plan.argv), plan.engine


def test_every_runtime_folder_has_a_manifest_and_a_readme():
    for folder in runtimes_dir().iterdir():
        if folder.is_dir():
            assert (folder / "manifest.toml").is_file(), folder
            assert (folder / "README.md").is_file(), folder
    assert set(runtime_names()) == set(all_runtimes())


def test_llama_server_on_path_is_preferred(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "llama-server"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    spec = build_spec(default_entry("llamacpp"), None, Overrides(model=str(model), port=12345, threads=3), single=True)
    argv, engine = build_argv(spec)
    assert engine == "llama-server"
    assert argv == [
        str(fake),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        "12345",
        "-c",
        "4096",
        "-t",
        "3",
        "-np",
        "4",
        "--alias",
        str(model),
    ]


@linux_only("the threads default is checked against the affinity mask (os.sched_getaffinity)")
def test_embedded_engine_without_llama_server(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-server anywhere
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    spec = build_spec(default_entry("llamacpp"), None, Overrides(model=str(model)), single=True)
    argv, engine = build_argv(spec)
    assert engine == "xllamacpp"
    assert argv[1:3] == ["-m", "lf.runtimes.engines.xllamacpp_server"]
    assert argv[argv.index("--threads") + 1] == str(len(os.sched_getaffinity(0)))  # all cores by default
    assert spec.port == 11634 and spec.host == "127.0.0.1"


def test_a_model_path_is_resolved_and_a_missing_one_explained(tmp_path):
    runtime = get_runtime("llamacpp")
    model = tmp_path / "x.gguf"
    model.write_bytes(b"GGUF")
    spec = build_spec(default_entry(runtime.name), None, Overrides(model=str(model)), single=True)
    assert spec.model_path == str(model.resolve())
    with pytest.raises(
        NotInstalledError, match="does not exist"
    ):  # a path: a file that is not here (exit 8), not an unknown name
        build_spec(default_entry(runtime.name), None, Overrides(model=str(tmp_path / "nope.gguf")), single=True)
    with pytest.raises(
        UnknownNameError, match="neither a known model name nor an existing file"
    ):  # a bare name: exit 4
        build_spec(default_entry(runtime.name), None, Overrides(model="nope"), single=True)


def test_binding_all_interfaces_warns(tmp_path):
    model = tmp_path / "x.gguf"
    model.write_bytes(b"GGUF")
    spec = build_spec(default_entry("llamacpp"), None, Overrides(model=str(model), host="0.0.0.0"), single=True)
    assert spec.host == "0.0.0.0"
    assert "reachable from other machines" in " ".join(spec.warnings)  # the start says it (tests/test_security.py)
    assert make_plan(spec, spec.port).base_url.startswith("http://127.0.0.1:")  # lf itself talks to it over loopback


def test_health_rules_say_only_what_the_endpoint_tells():
    from lf.daemon.health import interpret

    assert interpret("http-ok", 200, b"", 1.0).model_loaded is True  # llama.cpp: 200 only once loaded
    assert interpret("http-ok", 503, b"", 1.0).message == "loading model"
    assert interpret("answers", 200, b"", 1.0).model_loaded is None  # an external API: alive, no more
    assert not interpret("answers", 401, b"", 1.0).healthy
    assert interpret("json:model_loaded", 200, b'{"model_loaded": null}', 1.0).model_loaded is False
    assert interpret("json:model_loaded", 200, b'{"model_loaded": "m"}', 1.0).model_loaded is True
    assert interpret("loaded-by-lf", 200, b"", 1.0).model_loaded is True
    external = {name: get_runtime(name).health_ready for name in ("openai", "ollama")}
    assert external == {"openai": "answers", "ollama": "answers"}
