"""What a start costs before the engine runs: `lf runtime start` is measured against the engine started by hand (bench
P3), and every import on its path counts. These keep the heavy ones off it, and check that what lf reads itself
instead (memory and cores from /proc, the XDG dirs, manifests from a cached copy) says what the libraries say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
OFF_THE_PATH = ("psutil", "tomllib", "tempfile", "random", "gguf", "numpy", "yaml", "pydantic", "platformdirs", "httpx")


@linux_only
@pytest.mark.e2e
def test_a_start_imports_nothing_heavy_once_its_caches_are_warm(isolated, monkeypatch, free_port):
    from conftest import default_model_installed

    if not default_model_installed():
        pytest.skip("needs the default model: lf models fetch smollm2-135m")
    monkeypatch.delenv("LF_STATE_DIR")  # the XDG default, as a user has it
    monkeypatch.setenv("XDG_STATE_HOME", str(isolated / "xdg-state"))
    (isolated / "work" / "llamafarm.yaml").write_text(
        "version: v1\nname: path\nnamespace: tests\nruntime:\n  models:\n"
        f"    - {{name: one, provider: llamacpp, model: smollm2-135m, provider_config: {{port: {free_port}}}}}\n"
    )
    probe = (
        "import json, runpy, sys\n"
        "sys.argv = ['lf', 'runtime', 'start', 'one']\n"
        "try:\n    runpy.run_module('lf', run_name='__main__')\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print(json.dumps([code, sorted({m.split('.')[0] for m in sys.modules})]), file=sys.stderr)\n"
    )
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        stop = subprocess.run([sys.executable, "-m", "lf", "runtime", "stop", "one"], capture_output=True, text=True)
        assert stop.returncode == 0, stop.stderr
        code, modules = json.loads(proc.stderr.strip().splitlines()[-1])
        assert code in (0, None), proc.stderr
        runs.append(set(modules))
    heavy = sorted(runs[1] & set(OFF_THE_PATH))
    assert heavy == [], f"a start imported {heavy}: read them in the function that needs them, or cache what they give"


@linux_only
def test_memory_and_cores_read_from_proc_agree_with_psutil():
    import psutil

    from lf import hardware

    found = hardware._meminfo()
    vm = psutil.virtual_memory()
    assert found is not None and found.total == vm.total
    assert abs(found.available - vm.available) < 256 * 2**20  # read a moment apart
    physical, logical = psutil.cpu_count(logical=False), psutil.cpu_count(logical=True)
    expected = max(1, min(hardware.usable_cpus(), round(hardware.usable_cpus() * physical / logical)))
    assert hardware.physical_cores() == expected


@linux_only
def test_the_default_dirs_are_platformdirs_ones(monkeypatch):
    import platformdirs

    from lf import dirs

    for env in ({}, {"XDG_STATE_HOME": "/x/state", "XDG_DATA_HOME": "/x/data"}, {"XDG_STATE_HOME": "  "}):
        for name in ("XDG_STATE_HOME", "XDG_DATA_HOME", "LF_STATE_DIR", "LF_DATA_DIR"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert dirs.state_dir() == Path(platformdirs.user_state_dir("lf", appauthor=False))
        assert dirs.data_dir() == Path(platformdirs.user_data_dir("lf", appauthor=False))


def test_a_manifest_is_read_back_from_its_cached_copy_until_the_file_changes(isolated, tmp_path):
    from lf.runtimes.registry import _parse_toml, read_manifest

    folder = tmp_path / "rt"
    folder.mkdir()
    manifest = folder / "manifest.toml"
    manifest.write_text('name = "rt"\ndefault_port = 1\n[settings.port]\n')
    assert read_manifest(manifest) == _parse_toml(manifest)
    cached = next((isolated / "state" / "cache").glob("manifest-*.json"))
    data = json.loads(cached.read_text())
    data["manifest"]["default_port"] = 2  # as the copy says: the file was not read again
    cached.write_text(json.dumps(data))
    assert read_manifest(manifest)["default_port"] == 2
    manifest.write_text('name = "rt"\ndefault_port = 3\n[settings.port]\n')
    os.utime(manifest, ns=(1, 1))  # changed: size and time differ from the copy's
    assert read_manifest(manifest)["default_port"] == 3
