"""LlamaFarm's own files must just work: files shaped like LlamaFarm's templates and examples, holding every
field its schema documents, validate (unknown keys are warnings, never errors), resolve, and start (what lf
runs) or show as external (what it does not)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_lf

from lf.config.names import Names

FIXTURES = Path(__file__).parent / "fixtures" / "llamafarm"
FILES = sorted(p.name for p in FIXTURES.glob("*.yaml"))


@pytest.mark.parametrize("name", FILES)
def test_each_file_validates_and_resolves(cli, name):
    shutil.copy(FIXTURES / name, "llamafarm.yaml")
    valid = cli("config", "validate")
    assert valid.exit_code == 0, valid.stderr
    assert "Traceback" not in valid.stderr
    shown = cli("config", "show", "--json")
    assert shown.exit_code == 0, shown.stderr
    status = cli("runtime", "status", "--json", "--probe-timeout", "0.2")
    assert status.exit_code in (3, 6), status.stderr  # nothing runs here: stopped, or external and unreachable
    states = {i["name"]: i["state"] for i in json.loads(status.stdout)["instances"]}
    models = {m["name"]: m for m in json.loads(shown.stdout)["models"]}
    for model in models.values():
        assert states[model["name"]] == ("stopped" if model["managed"] else "external")


def test_generation_parameters_where_llamafarm_puts_them_become_request_defaults(cli):
    from lf.config.project import load_project

    single = Names(load_project(FIXTURES / "single_ollama_template.yaml")).entry(None)
    assert single.request_defaults == {"temperature": 0.7}  # runtime.temperature
    assert single.api_key is None and single.model_api_parameters == {}  # null: not set

    blocks = load_project(FIXTURES / "list_provider_blocks.yaml")
    local = Names(blocks).entry("local")
    # runtime-wide, then provider_config's, then model_api_parameters: the nearer wins
    assert local.request_defaults == {"temperature": 0.1, "top_p": 0.8}
    assert local.provider_config["context_size"] == 2048  # the `llamacpp:` block inside the entry, honoured
    onnx = Names(blocks).entry("onnx")
    assert (onnx.provider_config["backend"], onnx.provider_config["recipe"]) == ("onnx", "oga-cpu")
    assert onnx.request_defaults == {"temperature": 0.3}

    every = Names(load_project(FIXTURES / "list_every_field.yaml")).entry("local")
    assert every.request_defaults == {"temperature": 0.2, "top_p": 0.9, "max_tokens": 64}
    assert every.keep_loaded is True


def test_unknown_keys_are_warnings_with_their_place(cli):
    shutil.copy(FIXTURES / "list_provider_blocks.yaml", "llamafarm.yaml")
    result = cli("config", "validate")
    assert result.exit_code == 0
    assert (
        "llamafarm.yaml:17:9: runtime.models[0].provider_config.flavour: llamacpp does not use the setting 'flavour'"
        in result.stderr
    )
    strict = cli("config", "validate", "--strict")
    assert strict.exit_code == 5 and "flavour" in strict.stderr
    shown = cli("config", "show")
    assert shown.exit_code == 0 and "flavour" in shown.stderr  # said where the file is used, too


def test_what_lf_cannot_run_is_still_an_error(cli, tmp_path):
    cases = {
        "unknown provider": ("provider: lemonaid", "'lemonaid' is not allowed (did you mean 'lemonade'?)"),
        "a port lf needs that is not a number": (
            "provider: llamacpp\n  llamacpp: {port: eleven}",
            "expected an integer, got a string",
        ),
        "no model at all": ("provider: llamacpp\n  model: null", "missing required field 'model'"),
    }
    for what, (runtime, message) in cases.items():
        path = tmp_path / f"{what}.yaml"
        body = runtime if "model:" in runtime else runtime + "\n  model: m"
        path.write_text(f"version: v1\nname: x\nnamespace: y\nruntime:\n  {body}\n")
        result = cli("config", "validate", str(path))
        assert result.exit_code == 5, what
        assert message in result.stderr, (what, result.stderr)


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["list_every_field.yaml", "list_provider_blocks.yaml"])
def test_the_models_lf_runs_start_from_each_file(isolated, name, free_port):
    shutil.copy(FIXTURES / name, "llamafarm.yaml")
    env = {"LLAMACPP_PORT": str(free_port)}
    started = run_lf("runtime", "start", "local", "--json", env=env, timeout=120)
    assert started.returncode == 0, started.stderr
    (record,) = json.loads(started.stdout)["started"]
    assert record["health"]["healthy"]
    chat = run_lf("chat", "--model", "local", "--max-tokens", "8", "Say hi", env=env)
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
    assert run_lf("runtime", "stop", "local").returncode == 0
