"""The first hour with lf, as a new user lives it: starter projects that run side by side, a busy port
that says it is lf's own, one JSON object on every --json error, one exit code per meaning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_lf

from fakes import read_record, use_fakes


@pytest.fixture(autouse=True)
def fakes(isolated, monkeypatch):
    use_fakes(monkeypatch)
    return isolated / "state"


def test_two_starter_projects_run_side_by_side(tmp_path, fakes, monkeypatch):
    ports = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        assert run_lf("config", "init", str(folder / "llamafarm.yaml")).returncode == 0
        text = (folder / "llamafarm.yaml").read_text()
        assert "port:" not in text.split("# no port")[0]  # no fixed port written
        # the starter's entry on the fake runtime (the test's stand-in for llamacpp), named per project
        (folder / "llamafarm.yaml").write_text(
            text.replace("provider: llamacpp", "provider: fake")
            .replace("model: smollm2-135m", "model: fake-model")
            .replace("- name: default", f"- name: {name}")
            .replace("default_model: default", f"default_model: {name}")
        )
        started = run_lf("runtime", "start", "--json", "-c", str(folder / "llamafarm.yaml"))
        assert started.returncode == 0, started.stderr
        ports.append(json.loads(started.stdout)["started"][0]["port"])
    assert ports[0] != ports[1]  # the second counted up from the runtime's base port
    assert run_lf("runtime", "stop", "--all").returncode == 0


def test_a_port_held_by_lfs_own_daemon_is_named_with_the_command_that_stops_it(fakes, free_port):
    assert run_lf("runtime", "start", "fake", "--port", str(free_port)).returncode == 0
    pid = read_record(fakes, "fake")["pid"]
    clash = run_lf("runtime", "start", "fake-brisk", "--port", str(free_port))
    assert clash.returncode == 7
    assert f"port {free_port} on 127.0.0.1 is already in use by lf's instance 'fake' (pid {pid})" in clash.stderr
    assert "lf runtime stop fake" in clash.stderr
    run_lf("runtime", "stop", "--all", check=True)


JSON_ERRORS = {
    "start an unknown runtime": (("runtime", "start", "nosuch", "--json"), 4),
    "stop with nothing named": (("runtime", "stop", "--json"), 2),
    "chat with an unknown model entry": (("chat", "hi", "--model", "nosuch", "--json", "--no-auto-start"), 4),
    "fetch an unknown model": (("models", "fetch", "nosuch", "--json"), 4),
    "status with a broken config": (("runtime", "status", "--json", "-c", "broken.yaml"), 5),
    "config show with a broken config": (("config", "show", "--json", "-c", "broken.yaml"), 5),
    "start a model that is no file and no name": (("runtime", "start", "llamacpp", "--model", "bogus", "--json"), 4),
}


@pytest.mark.parametrize("args, code", JSON_ERRORS.values(), ids=JSON_ERRORS.keys())
def test_every_json_command_prints_one_json_object_on_error_too(args, code):
    Path("broken.yaml").write_text(
        "version: v1\nname: x\nnamespace: y\nruntime: {provider: llamacpp, model: m, llamacpp: {port: eleven}}\n"
    )
    result = run_lf(*args)
    assert result.returncode == code, result.stderr
    error = json.loads(result.stdout)["error"]  # the one object stdout holds
    assert set(error) == {"message", "hint", "exit_code"} and error["exit_code"] == code and error["message"]
    assert result.stderr.startswith("Error: ")  # and humans still read it on stderr


def test_an_unknown_model_is_exit_4_everywhere(tmp_path):
    assert run_lf("runtime", "start", "llamacpp", "--model", "bogus").returncode == 4
    assert run_lf("models", "fetch", "bogus").returncode == 4
    chat = run_lf("chat", "hi", "--model", "bogus", "--no-auto-start")
    assert chat.returncode == 4 and "bogus" in chat.stderr


def test_small_things(tmp_path):
    missing = run_lf("config", "validate", "nope.yaml")
    assert (
        missing.returncode == 5 and "nope.yaml: no such file" in missing.stderr and "permissions" not in missing.stderr
    )
    unknown = run_lf("runtime", "status", "bogus")
    assert unknown.returncode == 4 and unknown.stdout == ""  # no empty table header
    Path("llamafarm.yaml").write_text(
        "version: v1\nname: x\nnamespace: y\nruntime: {provider: ollama, model: llama3.2, base_url: 'http://localhost:11434'}\n"
    )
    shown = run_lf("config", "show", "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["models"][0]["base_url"] == "http://localhost:11434/v1"
    assert "has no API path: lf uses http://localhost:11434/v1" in shown.stderr  # said, not silent
