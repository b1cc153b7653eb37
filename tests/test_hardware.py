"""lf.hardware: every parser on recorded outputs of the real tools (tests/data/hardware), and the machine's own facts."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from fakes.platforms import linux_only
from lf import hardware

DATA = Path(__file__).parent / "data" / "hardware"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_cpuinfo_counts_hyperthread_siblings_once_and_reads_the_vector_extensions():
    cpu = hardware.parse_cpuinfo(read("cpuinfo-intel-xeon-ht.txt"))
    assert cpu.model == "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz"
    assert (cpu.logical, cpu.physical) == (4, 2)
    assert cpu.avx2 and cpu.avx512


def test_cpuinfo_without_avx512():
    cpu = hardware.parse_cpuinfo(read("cpuinfo-amd-ryzen.txt"))
    assert cpu.model == "AMD Ryzen 7 5800X 8-Core Processor"
    assert (cpu.logical, cpu.physical) == (8, 8)
    assert cpu.avx2 and not cpu.avx512


def test_cpuinfo_of_arm_has_no_core_ids_nor_x86_extensions():
    cpu = hardware.parse_cpuinfo(read("cpuinfo-arm64.txt"))
    assert (cpu.logical, cpu.physical) == (2, 2)
    assert "asimd" in cpu.flags and not cpu.avx2 and not cpu.avx512


@linux_only("the threads default is checked against the affinity mask (os.sched_getaffinity)")
def test_this_machine_cpu_matches_psutil():
    cpu = hardware.cpu_info()
    assert cpu.logical == psutil.cpu_count(logical=True)
    assert cpu.physical == psutil.cpu_count(logical=False)
    # the threads default: one per physical core this process may use
    assert 1 <= hardware.physical_cores() <= len(os.sched_getaffinity(0))
    assert hardware.physical_cores() == min(len(os.sched_getaffinity(0)), psutil.cpu_count(logical=False))


def test_nvidia_smi_csv():
    gpus = hardware.parse_nvidia_smi(read("nvidia-smi-two-gpus.csv"))
    assert [(g.vendor, g.name, g.memory, g.driver, g.backend) for g in gpus] == [
        ("nvidia", "NVIDIA GeForce RTX 4090", 24564 * 1024**2, "550.54.14", "cuda"),
        ("nvidia", "NVIDIA RTX A6000", 49140 * 1024**2, "550.54.14", "cuda"),
    ]
    (odd,) = hardware.parse_nvidia_smi(read("nvidia-smi-not-available.csv"))
    assert odd.name == "NVIDIA GeForce GTX 1650" and odd.memory is None and odd.driver is None
    assert hardware.parse_nvidia_smi("") == []


def test_nvidia_smi_query_is_an_argv_with_the_format_the_parser_reads():
    assert hardware.NVIDIA_SMI_QUERY == [
        "nvidia-smi",
        "--query-gpu=name,memory.total,driver_version",
        "--format=csv,noheader,nounits",
    ]


def test_rocm_smi_json_both_spellings_and_a_warning_before_it():
    (rx,) = hardware.parse_rocm_smi(read("rocm-smi-5.json"))
    assert (rx.vendor, rx.name, rx.memory, rx.backend) == (
        "amd",
        "Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]",
        17163091968,
        "rocm",
    )
    mi = hardware.parse_rocm_smi(read("rocm-smi-6.json"))
    assert [(g.name, g.memory) for g in mi] == [("AMD Instinct MI210", 68702699520)] * 2
    assert hardware.parse_rocm_smi("ERROR: no GPU found\n") == []
    assert hardware.parse_rocm_smi("{not json") == []


def test_sysfs_finds_amd_cards_only_and_skips_connectors():
    (gpu,) = hardware.read_sysfs_gpus(DATA / "sysfs-drm")
    assert (gpu.vendor, gpu.memory, gpu.source) == ("amd", 25753026560, "sysfs")
    assert "0x744c" in gpu.name
    assert hardware.read_sysfs_gpus(DATA / "nowhere") == []


def test_xdna_npu_by_its_driver():
    (npu,) = hardware.read_xdna_npus(DATA / "xdna" / "dev" / "accel", DATA / "xdna" / "sys" / "class" / "accel")
    assert (npu.kind, npu.vendor, npu.driver) == ("npu", "amd", "amdxdna")
    assert hardware.read_xdna_npus(DATA / "nowhere", DATA / "nowhere") == []


def test_apple_metal_only_on_apple_silicon():
    (metal,) = hardware.apple_metal("darwin", "arm64")
    assert metal.backend == "metal"
    assert hardware.apple_metal("darwin", "x86_64") == [] and hardware.apple_metal("linux", "arm64") == []


def test_a_missing_or_hung_tool_counts_as_absent(tmp_path, monkeypatch):
    assert hardware.run_tool(["lf-no-such-tool-here"]) is None
    hung = tmp_path / "nvidia-smi"
    hung.write_text("#!/bin/sh\nsleep 30\n")
    hung.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert hardware.run_tool(hardware.NVIDIA_SMI_QUERY, timeout=0.5) is None


def test_a_recorded_nvidia_smi_on_path_is_found(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\ncat {DATA / 'nvidia-smi-two-gpus.csv'}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(hardware, "_nvml_gpus", lambda: None)
    hardware.accelerators.cache_clear()
    try:
        assert [g.name for g in hardware.gpus()][:2] == ["NVIDIA GeForce RTX 4090", "NVIDIA RTX A6000"]
    finally:
        hardware.accelerators.cache_clear()
