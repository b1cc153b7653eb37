"""Adding a runtime is adding a folder: a runtime nobody has seen, with settings of its own, works end to
end (schema, validation with a located error, config show, env var, --set, argv) with no edit
anywhere else. The folder is written here, as a user would write it, and found through LF_RUNTIMES_PATH."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from conftest import run_lf

from fakes import read_record, use_fakes

# Shaped after Hugging Face's text-generation-launcher: flags lf has never heard of.
MANIFEST = """\
name = "tgi-like"
description = "a text-generation-launcher-like server (test fixture)"
managed = true
default_port = 19480
api_base = "/v1"
default_model = "fake-model"
model_env = "TGI_LIKE_MODEL"
start_timeout = 20

[settings.port]
env = "TGI_LIKE_PORT"

[settings.host]

[settings.max_batch_prefill_tokens]
type = "integer"
minimum = 1
maximum = 65536
default = 4096
env = "TGI_LIKE_MAX_BATCH_PREFILL_TOKENS"
description = "tokens prefilled per batch"

[settings.quantize]
type = "string"
enum = ["awq", "gptq", "eetq"]
description = "weight quantization (none unless set)"

[settings.trust_remote_code]
type = "boolean"
default = false
description = "run the model's own code"

[settings.engine_args]
type = "array"
description = "more flags, as they are"

[health]
path = "/health"

[[engines]]
name = "fake-launcher"
python_module = "fakes.server"
argv = [
  "{python}", "-m", "fakes.server", "--host", "{host}", "--port", "{port}", "--model", "{model}",
  "--engine-args", "--max-batch-prefill-tokens", "{max_batch_prefill_tokens}",
  { when = "quantize", args = ["--quantize", "{quantize}"] },
  { when = "trust_remote_code", args = ["--trust-remote-code"] }, { each = "engine_args" },
]
"""


@pytest.fixture
def tgi_like(tmp_path, monkeypatch):
    use_fakes(monkeypatch)  # the engine is the fake server (fakes.server on PYTHONPATH)
    folder = tmp_path / "my-runtimes" / "tgi-like"
    folder.mkdir(parents=True)
    (folder / "manifest.toml").write_text(MANIFEST)
    (folder / "README.md").write_text("# tgi-like\n")
    from lf.runtimes.folders import runtimes_dirs
    from lf.runtimes.registry import all_runtimes

    monkeypatch.setenv("LF_RUNTIMES_PATH", f"{folder.parent}:{runtimes_dirs()[0]}")
    all_runtimes.cache_clear()
    yield folder
    all_runtimes.cache_clear()


def project(tmp_path: Path, provider_config: str) -> Path:
    path = tmp_path / "work" / "llamafarm.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: v1
            name: tgi
            namespace: tests
            runtime:
              models:
                - name: big
                  provider: tgi-like
                  model: fake-model
                  provider_config: {provider_config}
            """
        )
    )
    return path


def engine_args(state: Path, name: str) -> list[str]:
    command = read_record(state, name)["command"]
    return command[command.index("--engine-args") + 1 :]


def test_schema_and_validation_come_from_the_folder(tgi_like, tmp_path):
    from lf.config.schema import schema

    single = schema()["properties"]["runtime"]["oneOf"][0]
    assert "tgi-like" in single["properties"]["provider"]["enum"]
    section = single["properties"]["tgi-like"]["properties"]
    assert section["quantize"]["enum"] == ["awq", "gptq", "eetq"]
    assert section["max_batch_prefill_tokens"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 65536,
        "description": "tokens prefilled per batch",
    }

    path = project(tmp_path, "{quantize: awg, max_batch_prefill_tokens: 0}")
    result = run_lf("config", "validate", str(path))
    assert result.returncode == 5, result.stderr
    assert re.search(
        r"llamafarm\.yaml:9:35: runtime\.models\[0\]\.provider_config\.quantize: 'awg' is not allowed \(did you mean 'awq'\?\) \(allowed: one of: awq, gptq, eetq\)",
        result.stderr,
    ), result.stderr
    assert "provider_config.max_batch_prefill_tokens: 0 is below the minimum (allowed: 1 to 65536)" in result.stderr


def test_config_show_env_set_and_argv(tgi_like, tmp_path, free_port):
    state = tmp_path / "state"
    project(tmp_path, f"{{port: {free_port}, quantize: awq}}")
    shown = run_lf("config", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    (model,) = json.loads(shown.stdout)["models"]
    assert model["port"] == free_port
    assert model["settings"] == {
        "max_batch_prefill_tokens": 4096,
        "quantize": "awq",
        "trust_remote_code": False,
        "engine_args": None,
    }

    started = run_lf("runtime", "start", "big", env={"TGI_LIKE_MAX_BATCH_PREFILL_TOKENS": "512"})
    assert started.returncode == 0, started.stderr
    # the env var beats the default; the config's quantize is there; a false boolean adds nothing
    assert engine_args(state, "big") == ["--max-batch-prefill-tokens", "512", "--quantize", "awq"]
    assert run_lf("runtime", "stop", "big").returncode == 0

    started = run_lf("runtime", "start", "big", "--set", "trust_remote_code=true", "--set", "quantize=gptq")
    assert started.returncode == 0, started.stderr
    assert engine_args(state, "big") == [
        "--max-batch-prefill-tokens",
        "4096",
        "--quantize",
        "gptq",
        "--trust-remote-code",
    ]
    restarted = run_lf("runtime", "restart", "big")  # what --set chose stays in force
    assert restarted.returncode == 0, restarted.stderr
    assert engine_args(state, "big")[-1] == "--trust-remote-code"
    assert run_lf("runtime", "stop", "big").returncode == 0


def test_bad_values_from_env_and_flags_are_refused_before_anything_runs(tgi_like, tmp_path):
    project(tmp_path, "{}")
    bad_env = run_lf("runtime", "start", "big", env={"TGI_LIKE_MAX_BATCH_PREFILL_TOKENS": "lots"})
    assert (
        bad_env.returncode == 5
        and "TGI_LIKE_MAX_BATCH_PREFILL_TOKENS: expected an integer, got a string" in bad_env.stderr
    )
    bad_flag = run_lf("runtime", "start", "big", "--set", "quantize=fp4")
    assert (
        bad_flag.returncode == 1
        and "--set quantize: 'fp4' is not allowed" in bad_flag.stderr
        and "awq, gptq, eetq" in bad_flag.stderr
    )
    unknown = run_lf("runtime", "start", "big", "--set", "quantise=awq")
    assert (
        unknown.returncode == 1
        and "has no setting 'quantise'" in unknown.stderr
        and "did you mean 'quantize'" in unknown.stderr
    )
    assert not (tmp_path / "state" / "instances" / "big.json").exists()


def test_engine_args_pass_through_but_may_not_move_what_lf_records(tgi_like, tmp_path):
    state = tmp_path / "state"
    project(tmp_path, "{engine_args: ['--sharded=false', '--max-total-tokens', '64']}")
    started = run_lf("runtime", "start", "big")
    assert started.returncode == 0, started.stderr
    assert engine_args(state, "big")[-3:] == ["--sharded=false", "--max-total-tokens", "64"]
    assert run_lf("runtime", "stop", "big").returncode == 0

    started = run_lf("runtime", "start", "big", "--engine-arg=--cuda-graphs=0")  # the flag beats the file
    assert started.returncode == 0, started.stderr
    assert engine_args(state, "big")[-1] == "--cuda-graphs=0" and "--sharded=false" not in engine_args(state, "big")
    assert run_lf("runtime", "stop", "big").returncode == 0

    # a port given to the engine behind lf's back would leave the record pointing at the wrong port
    for flag in ("--engine-arg=--port=1234", "--engine-arg=--host"):
        refused = run_lf("runtime", "start", "big", flag)
        assert refused.returncode == 2, refused.stderr
        assert "engine_args may not set --" in refused.stderr and "lf sets it from its own settings" in refused.stderr
    assert not (state / "instances" / "big.json").exists()


def test_a_manifest_that_uses_an_undeclared_setting_is_refused(tgi_like):
    from lf.errors import LfError
    from lf.runtimes.registry import all_runtimes, get_runtime

    (tgi_like / "manifest.toml").write_text(
        MANIFEST.replace('"{max_batch_prefill_tokens}"', '"{max_batch_total_tokens}"')
    )
    all_runtimes.cache_clear()
    from lf.runtimes import registry

    registry._parse_cached.cache_clear()
    with pytest.raises(LfError, match=r"uses \{max_batch_total_tokens\}, which is neither a declared setting"):
        get_runtime("tgi-like")
