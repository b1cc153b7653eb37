"""Windows, the first step, simulated on Linux: lf in an interpreter without the POSIX facilities Windows lacks
(SIGHUP, fcntl, os.getsid and the rest of what lf.platform.DAEMON_FACILITIES names; O_NOFOLLOW, geteuid), and
lf.hardware reading what Windows' own tools print (tests/data/hardware/README.md)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import default_model_installed

from lf import dirs, files, hardware
from lf.daemon import process
from lf.errors import LfError

DATA = Path(__file__).parent / "data" / "hardware"
TESTS = Path(__file__).parent

# Run `lf ARGS…` in an interpreter that has what Windows has of the POSIX facilities lf uses: none. Taken away
# before lf is imported, as a Windows Python never had them.
WITHOUT_POSIX = textwrap.dedent(
    """
    import os, signal, sys
    sys.modules["fcntl"] = None  # an import of it fails
    for name in ("SIGHUP", "SIGKILL", "SIGCONT", "SIGSTOP", "pthread_sigmask", "sigwait"):
        delattr(signal, name)
    for name in ("getsid", "setsid", "fork", "killpg", "getpgid", "geteuid", "fchmod", "O_NOFOLLOW", "O_NONBLOCK",
                 "sched_getaffinity"):
        delattr(os, name)
    sys.argv = ["lf", *sys.argv[1:]]
    from lf.cli import main
    main()
    """
)


def lf_without_posix(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_POSIX, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr and "AttributeError" not in result.stderr, result.stderr


@pytest.fixture
def openai_server(free_port):
    """A fake OpenAI-compatible server on 127.0.0.1:`free_port` (tests/fakes/server.py), as one a user runs."""
    server = subprocess.Popen(
        [sys.executable, "-m", "fakes.server", "--port", str(free_port)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )
    try:
        assert "listening" in server.stderr.readline() + server.stderr.readline()
        yield f"http://127.0.0.1:{free_port}/v1"
    finally:
        server.kill()
        server.wait()


def test_help_config_doctor_status_and_chat_run_without_posix_facilities(isolated, openai_server):
    work = isolated / "work"
    assert lf_without_posix("--help", cwd=work).returncode == 0

    (work / "llamafarm.yaml").write_text(
        "version: v1\nname: win\nnamespace: tests\nruntime:\n  models:\n"
        f"    - name: remote\n      provider: openai\n      model: fake-model\n      base_url: {openai_server}\n"
    )
    validate = lf_without_posix("config", "validate", cwd=work)
    no_traceback(validate)
    assert validate.returncode == 0 and "valid" in validate.stdout + validate.stderr

    doctor = lf_without_posix("doctor", "--json", cwd=work)
    no_traceback(doctor)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert {"python", "cpu", "memory", "gpus", "npus", "state_dir", "config"} <= checks.keys()
    assert checks["state_dir"]["status"] == "ok" and checks["config"]["status"] == "ok"
    assert doctor.returncode == json.loads(doctor.stdout)["exit_code"]

    status = lf_without_posix("runtime", "status", "--json", cwd=work)
    no_traceback(status)
    assert [(i["name"], i["state"]) for i in json.loads(status.stdout)["instances"]] == [("remote", "external")]

    chat = lf_without_posix("chat", "Say hello", cwd=work)
    no_traceback(chat)
    assert (chat.returncode, chat.stdout.strip()) == (0, "Hello from the fake runtime.")


@pytest.mark.skipif(not default_model_installed(), reason="needs the default model: lf models fetch smollm2-135m")
def test_models_info_runs_without_posix_facilities(isolated):
    from lf.models.catalog import CATALOG

    info = lf_without_posix("models", "info", str(CATALOG["smollm2-135m"].path()), "--json", cwd=isolated / "work")
    no_traceback(info)
    assert info.returncode == 0 and json.loads(info.stdout)["architecture"] == "llama", info.stdout


def test_a_daemon_start_says_it_is_not_supported_on_this_platform(isolated):
    work = isolated / "work"
    for args in (("runtime", "start"), ("chat", "hi"), ("serve", "--detach")):  # chat would start the default
        result = lf_without_posix(*args, cwd=work)
        no_traceback(result)
        assert result.returncode == 7, (args, result.stderr)
        assert "starting runtime daemons is not supported on this platform yet" in result.stderr, result.stderr
        assert "base_url" in result.stderr and "docs/platforms-windows.md" in result.stderr
    assert not list((isolated / "state").glob("**/instances/*.json")), "a record of nothing"


# -- file checks without O_NOFOLLOW, owners, flock --------------------------------------------------------------
def test_files_open_without_o_nofollow_and_still_refuse_a_link(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_NOFOLLOW")
    log = tmp_path / "a.log"
    os.close(files.open_append(log))
    assert log.exists()
    link = tmp_path / "b.log"
    link.symlink_to(log)
    with pytest.raises(LfError, match="is a symbolic link"):
        files.open_append(link)


def test_private_dirs_where_files_have_no_posix_owner(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "geteuid")  # Windows: st_uid is 0 and modes are made up; the profile's ACL keeps it private
    folder = dirs.ensure_private_dir(tmp_path / "state" / "instances")
    assert folder.is_dir()
    files.atomic_write(folder / "x.json", "{}\n")
    assert (folder / "x.json").read_text() == "{}\n"


def test_the_lock_without_fcntl_still_excludes_and_times_out(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fcntl", None)  # Windows has none
    path = tmp_path / "x.lock"
    held, release = threading.Event(), threading.Event()

    def holder():
        with files.exclusive_lock(path):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        with pytest.raises(files.LockBusy):
            with files.exclusive_lock(path, timeout=0.2):
                pass
    finally:
        release.set()
        thread.join()
    with files.exclusive_lock(path, timeout=5):  # free again once its holder let go
        pass


def test_a_busy_port_is_checked_with_exclusive_use_where_windows_offers_it(monkeypatch):
    options = []

    class Socket:
        def __init__(self, *args):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def setsockopt(self, level, option, value):
            options.append(option)

        def bind(self, address):
            pass

    monkeypatch.setattr(socket, "SO_EXCLUSIVEADDRUSE", -5, raising=False)
    monkeypatch.setattr(socket, "socket", Socket)
    assert process.port_is_free("127.0.0.1", 8080)
    # SO_REUSEADDR on Windows lets a bind share a port a server listens on: a busy port would look free
    assert options == [-5]


# -- Windows' GPUs and NPUs, from what PowerShell prints ------------------------------------------------------
def test_windows_devices_of_a_ryzen_ai_laptop():
    found = hardware.parse_windows_devices((DATA / "windows-devices-ryzen-ai.json").read_text())
    assert [(a.kind, a.vendor, a.name, a.memory, a.backend) for a in found] == [
        ("gpu", "amd", "AMD Radeon(TM) 890M Graphics", 512 * 1024**2, "vulkan"),
        ("gpu", "nvidia", "NVIDIA GeForce RTX 4060 Laptop GPU", None, "cuda"),  # 4 GiB or more: AdapterRAM cannot say
        ("npu", "amd", "NPU Compute Accelerator Device", None, None),
    ]  # Microsoft's remote display adapter is no GPU to run on


def test_windows_devices_of_an_intel_core_ultra_laptop():
    found = hardware.parse_windows_devices((DATA / "windows-devices-intel.json").read_text())
    assert [(a.kind, a.vendor, a.name, a.source) for a in found] == [
        ("gpu", "intel", "Intel(R) Arc(TM) Graphics", "cim"),
        ("npu", "intel", "Intel(R) AI Boost", "cim"),
    ]


def test_windows_devices_json_in_every_shape_powershell_writes():
    one = {
        "Name": "Snapdragon(R) X Elite - X1E78100 - Qualcomm(R) Hexagon(TM) NPU",
        "PNPDeviceID": "ACPI\\QCOM0D0A\\2&DABA3FF&0",
        "Status": "OK",
    }
    broken = {"Name": "NPU Compute Accelerator Device", "PNPDeviceID": "PCI\\VEN_1022&DEV_1502", "Status": "Error"}
    gpu = {"Name": "Qualcomm(R) Adreno(TM) X1-85 GPU", "PNPDeviceID": "ACPI\\QCOM0C36\\2&DABA3FF&0", "AdapterRAM": 0}
    text = "WARNING: ignored\n" + json.dumps({"gpus": {"value": [gpu], "Count": 1}, "npus": one})
    found = hardware.parse_windows_devices(text)
    assert [(a.kind, a.vendor, a.memory, a.backend) for a in found] == [
        ("gpu", "qualcomm", None, "opencl"),
        ("npu", "qualcomm", None, None),
    ]
    assert hardware.parse_windows_devices(json.dumps({"npus": [broken]})) == []  # its driver does not work
    assert hardware.parse_windows_devices("") == [] and hardware.parse_windows_devices("{not json") == []


def test_the_windows_query_is_one_encoded_powershell_command():
    import base64

    argv = hardware.windows_devices_query()
    assert argv[:4] == ["powershell", "-NoProfile", "-NonInteractive", "-EncodedCommand"]
    script = base64.b64decode(argv[4]).decode("utf-16-le")
    assert script == hardware.WINDOWS_DEVICES_SCRIPT
    assert "Win32_VideoController" in script and "ComputeAccelerator" in script and "ConvertTo-Json" in script


@pytest.fixture
def windows(tmp_path, monkeypatch):
    """lf.hardware as on Windows: sys.platform win32, and `powershell` / `nvidia-smi` on PATH that print
    recorded outputs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(hardware, "sys", SimpleNamespace(platform="win32"))
    monkeypatch.setattr(hardware, "_nvml_gpus", lambda: None)
    monkeypatch.setattr(hardware, "read_sysfs_gpus", lambda: [])
    monkeypatch.setattr(hardware, "read_xdna_npus", lambda: [])

    def tool(name: str, output: str) -> None:
        (bin_dir / name).write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
        (bin_dir / name).chmod(0o755)

    hardware.accelerators.cache_clear()
    yield tool
    hardware.accelerators.cache_clear()


def test_gpus_and_npus_are_found_on_windows(windows):
    windows("powershell", (DATA / "windows-devices-ryzen-ai.json").read_text())
    windows("nvidia-smi", "NVIDIA GeForce RTX 4060 Laptop GPU, 8188, 566.14\n")
    assert [(a.vendor, a.name, a.source) for a in hardware.gpus()] == [
        ("nvidia", "NVIDIA GeForce RTX 4060 Laptop GPU", "nvidia-smi"),  # with its memory; Windows' entry dropped
        ("amd", "AMD Radeon(TM) 890M Graphics", "cim"),
    ]
    assert [(a.vendor, a.name) for a in hardware.npus()] == [("amd", "NPU Compute Accelerator Device")]
    from lf.core.doctor import check_accelerators

    gpus, npus = check_accelerators()
    assert "NPU Compute Accelerator Device" in npus.detail and "AMD" in npus.detail


def test_doctor_says_where_it_looked_on_windows(windows):
    windows("powershell", '{"gpus": [], "npus": []}\n')
    from lf.core.doctor import check_accelerators

    gpus, npus = check_accelerators()
    assert gpus.detail == "none found (NVML/nvidia-smi, Windows' display adapters): engines run on the CPU"
    assert npus.detail == "none found (Windows' Neural processors)"


def test_the_cpu_as_windows_describes_it():
    cpu = hardware.cpu_from_windows(
        "AMD Ryzen AI 9 HX 370 w/ Radeon 890M        ", 24, 12, {10, 38, 39, 40}.__contains__
    )
    assert (cpu.model, cpu.logical, cpu.physical) == ("AMD Ryzen AI 9 HX 370 w/ Radeon 890M", 24, 12)
    assert cpu.avx2 and not cpu.avx512 and "sse4_2" in cpu.flags  # doctor's x86 check reads these
    assert hardware.cpu_from_windows(None, 4, 4, lambda n: False).model == "unknown"
