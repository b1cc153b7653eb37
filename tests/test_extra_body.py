"""LlamaFarm's GGUF parameters in a model entry's extra_body reach the engines' command lines, and the
hardware-aware defaults (threads per physical core, layers on a GPU when there is one)."""

from __future__ import annotations

import json

import pytest
from conftest import default_model_installed, run_lf

from lf import hardware
from lf.config.project import load_project
from lf.core.targets import Overrides, build_spec
from lf.runtimes.launch import hooks_of
from lf.runtimes.registry import ResolvedEngine

GGUF = {
    "n_ctx": 2048,
    "n_batch": 256,
    "n_gpu_layers": -1,
    "n_threads": 3,
    "flash_attn": False,
    "use_mmap": False,
    "use_mlock": True,
    "cache_type_k": "q8_0",
    "cache_type_v": "q4_0",
}
# what each engine's command line must then hold (flag, value), in the engine's own spelling
LLAMA_SERVER = [
    ("-c", "2048"),
    ("-t", "3"),
    ("--batch-size", "256"),
    ("--n-gpu-layers", "999"),
    ("--flash-attn", "off"),
    ("--cache-type-k", "q8_0"),
    ("--cache-type-v", "q4_0"),
]
XLLAMACPP = [("--ctx-size", "2048"), ("--threads", "3"), *LLAMA_SERVER[2:]]
LLAMA_CPP_PYTHON = [
    ("--n_ctx", "2048"),
    ("--n_threads", "3"),
    ("--n_batch", "256"),
    ("--n_gpu_layers", "-1"),
    ("--flash_attn", "false"),
    ("--use_mmap", "false"),
    ("--use_mlock", "true"),
    ("--type_k", "8"),
    ("--type_v", "2"),
]


def project_with(tmp_path, provider: str, extra_body: dict, provider_config: dict | None = None):
    entry = {"name": "m", "provider": provider, "model": "m.gguf", "extra_body": extra_body}
    if provider_config:
        entry["provider_config"] = provider_config
    path = tmp_path / "llamafarm.yaml"
    path.write_text(json.dumps({"version": "v1", "name": "p", "namespace": "d", "runtime": {"models": [entry]}}))
    return load_project(path)


def argv_of(project, engine_index: int, overrides: Overrides | None = None) -> list[str]:
    spec = build_spec(project.models[0], project, overrides or Overrides(), single=True, resolve_model=False)
    runtime = spec.runtime
    engine = ResolvedEngine(runtime.engines[engine_index], "/opt/llama-server", "/env/bin/python", "test")
    return list(hooks_of(runtime).plan(spec, engine, 1234).argv)


def pairs(argv: list[str]) -> set[tuple[str, str]]:
    return set(zip(argv, argv[1:]))


@pytest.mark.parametrize(
    ("provider", "engine", "expected", "flags"),
    [
        ("llamacpp", 0, LLAMA_SERVER, ["--no-mmap", "--mlock"]),
        ("llamacpp", 1, XLLAMACPP, ["--no-mmap", "--mlock"]),
        ("llama-cpp-python", 0, LLAMA_CPP_PYTHON, []),
    ],
)
def test_every_gguf_parameter_reaches_the_engine(tmp_path, provider, engine, expected, flags):
    argv = argv_of(project_with(tmp_path, provider, GGUF), engine)
    for flag, value in expected:
        assert (flag, value) in pairs(argv), (flag, value, argv)
    for flag in flags:
        assert flag in argv


@pytest.mark.parametrize("provider", ["llamacpp", "llama-cpp-python"])
def test_each_parameter_alone_and_the_other_boolean_value(tmp_path, provider):
    for key, value in GGUF.items():
        argv = argv_of(project_with(tmp_path, provider, {key: value}), 0)
        base = argv_of(project_with(tmp_path, provider, {}), 0)
        assert argv != base, f"{key}: {value} changed nothing"
    mmap_on = argv_of(project_with(tmp_path, provider, {"use_mmap": True, "flash_attn": True, "use_mlock": False}), 0)
    if provider == "llamacpp":
        assert "--no-mmap" not in mmap_on and ("--flash-attn", "on") in pairs(mmap_on) and "--mlock" not in mmap_on
    else:
        assert {("--use_mmap", "true"), ("--flash_attn", "true"), ("--use_mlock", "false")} <= pairs(mmap_on)


def test_precedence_flag_then_env_then_provider_config_then_extra_body(tmp_path, monkeypatch):
    project = project_with(tmp_path, "llamacpp", {"n_ctx": 2048, "n_threads": 3}, {"context_size": 1024})
    spec = build_spec(project.models[0], project, Overrides(), single=True, resolve_model=False)
    assert (spec.context_size, spec.threads) == (
        1024,
        3,
    )  # provider_config beats extra_body; extra_body beats the hardware
    monkeypatch.setenv("LLAMACPP_CONTEXT_SIZE", "512")
    assert build_spec(project.models[0], project, Overrides(), single=True, resolve_model=False).context_size == 512
    assert (
        build_spec(
            project.models[0], project, Overrides(context_size=256, threads=1), single=True, resolve_model=False
        ).settings["threads"]
        == 1
    )


def test_a_wrong_type_in_extra_body_is_a_located_config_error(tmp_path):
    from lf.errors import ConfigError

    with pytest.raises(ConfigError, match=r"extra_body.n_gpu_layers: expected an integer.*gpu_layers"):
        project_with(tmp_path, "llamacpp", {"n_gpu_layers": "all"})
    project_with(tmp_path, "llamacpp", {"some_llamafarm_key": "kept"})  # other keys are LlamaFarm's: left alone


def test_threads_default_to_physical_cores_and_layers_go_to_a_gpu_when_there_is_one(tmp_path, monkeypatch):
    project = project_with(tmp_path, "llamacpp", {})
    monkeypatch.setattr(hardware, "physical_cores", lambda: 7)
    monkeypatch.setattr(hardware, "gpus", lambda: [])
    spec = build_spec(project.models[0], project, Overrides(), single=True, resolve_model=False)
    assert spec.threads == 7 and spec.settings["gpu_layers"] is None
    assert "--n-gpu-layers" not in argv_of(project, 0)
    gpu = hardware.Accelerator("gpu", "nvidia", "NVIDIA RTX A6000", 49140 * 1024**2, "nvidia-smi", "550.54.14", "cuda")
    monkeypatch.setattr(hardware, "gpus", lambda: [gpu])
    assert (
        build_spec(project.models[0], project, Overrides(), single=True, resolve_model=False).settings["gpu_layers"]
        == -1
    )
    assert ("--n-gpu-layers", "999") in pairs(argv_of(project, 0))
    assert ("--n_gpu_layers", "-1") in pairs(argv_of(project_with(tmp_path, "llama-cpp-python", {}), 0))
    # what the file says wins over the machine
    assert ("--n-gpu-layers", "0") in pairs(argv_of(project_with(tmp_path, "llamacpp", {"n_gpu_layers": 0}), 0))


def test_config_show_has_the_mapped_settings(tmp_path):
    (tmp_path / "work" / "llamafarm.yaml").write_text(
        json.dumps(
            {
                "version": "v1",
                "name": "p",
                "namespace": "d",
                "runtime": {
                    "models": [{"name": "m", "provider": "llamacpp", "model": "smollm2-135m", "extra_body": GGUF}]
                },
            }
        )
    )
    shown = json.loads(run_lf("config", "show", "--json", check=True).stdout)["models"][0]
    assert shown["context_size"] == 2048
    assert {
        k: shown["settings"][k]
        for k in ("threads", "batch_size", "gpu_layers", "flash_attn", "mmap", "mlock", "cache_type_k", "cache_type_v")
    } == {
        "threads": 3,
        "batch_size": 256,
        "gpu_layers": -1,
        "flash_attn": False,
        "mmap": False,
        "mlock": True,
        "cache_type_k": "q8_0",
        "cache_type_v": "q4_0",
    }


@pytest.mark.e2e
@pytest.mark.skipif(not default_model_installed(), reason="needs the default model: lf models fetch smollm2-135m")
def test_a_real_llamacpp_start_takes_extra_body_and_answers(isolated, free_port):
    body = {
        "n_ctx": 1024,
        "n_batch": 64,
        "n_threads": 1,
        "n_gpu_layers": 0,
        "flash_attn": False,
        "use_mmap": False,
        "use_mlock": False,
        "cache_type_k": "q8_0",
        "cache_type_v": "f16",
    }
    (isolated / "work" / "llamafarm.yaml").write_text(
        json.dumps(
            {
                "version": "v1",
                "name": "eb",
                "namespace": "t",
                "runtime": {
                    "models": [
                        {
                            "name": "chat",
                            "provider": "llamacpp",
                            "model": "smollm2-135m",
                            "provider_config": {"port": free_port},
                            "extra_body": body,
                        }
                    ]
                },
            }
        )
    )
    run_lf("runtime", "start", "chat", check=True)
    try:
        record = json.loads(next((isolated / "state").rglob("instances/chat.json")).read_text())
        command = record["command"]
        for flag, value in [
            ("--ctx-size", "1024"),
            ("--batch-size", "64"),
            ("--threads", "1"),
            ("--n-gpu-layers", "0"),
            ("--flash-attn", "off"),
            ("--cache-type-k", "q8_0"),
            ("--cache-type-v", "f16"),
        ]:
            assert (flag, value) in pairs(command), (flag, command)
        assert "--no-mmap" in command and "--mlock" not in command
        status = json.loads(run_lf("runtime", "status", "--json").stdout)
        assert status["instances"][0]["state"] == "running"
        log = open(record["log_path"], encoding="utf-8", errors="replace").read()
        assert "n_ctx" in log and "1024" in log  # the engine itself reports the context it was given
        answer = run_lf(
            "chat", "What is the capital of France? Answer in one sentence.", "--temperature", "0", "--max-tokens", "48"
        )
        assert answer.returncode == 0, answer.stderr
        assert "Paris" in answer.stdout
    finally:
        run_lf("runtime", "stop", "--all")


def test_the_embedded_engine_sets_what_the_flags_say():
    xllamacpp = pytest.importorskip("xllamacpp")
    from lf.runtimes.engines.xllamacpp_server import _parser, configure

    args = _parser().parse_args(
        [
            "-m",
            "m.gguf",
            "--port",
            "1",
            "--batch-size",
            "64",
            "--n-gpu-layers",
            "999",
            "--flash-attn",
            "off",
            "--no-mmap",
            "--mlock",
            "--cache-type-k",
            "q8_0",
            "--cache-type-v",
            "q4_0",
        ]
    )
    params = xllamacpp.CommonParams()
    configure(params, args)
    assert (params.n_batch, params.n_gpu_layers) == (64, 999)
    assert params.flash_attn_type == xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
    assert (params.cache_type_k, params.cache_type_v) == (
        xllamacpp.ggml_type.GGML_TYPE_Q8_0,
        xllamacpp.ggml_type.GGML_TYPE_Q4_0,
    )
    assert params.load_mode == xllamacpp.llama_load_mode.LLAMA_LOAD_MODE_MLOCK  # no mmap, locked
