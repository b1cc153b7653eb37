"""What this machine has: CPU (model, cores, vector extensions), memory, GPUs and NPUs.

One home for facts about the hardware: defaults (threads, GPU offload), memory checks (will a model fit)
and `lf doctor` all ask here. Reads /proc and sysfs, or asks the vendors' own tools (nvidia-smi,
rocm-smi) with a short timeout; never the network. Each tool's output is read by a pure function
(`parse_*`) so the reading is tested on recorded outputs; the functions that look at the machine only
gather text and hand it over. Nothing here is imported by `lf runtime status` or `lf --help`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TOOL_TIMEOUT = 3.0  # seconds a vendor tool may take before it counts as absent (a hung driver must not hang lf)
AMD_VENDOR = "0x1002"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores this process may use: hyperthread siblings share one core's compute units, so an
    engine with one thread per physical core is as fast as one per logical CPU, and leaves the rest free."""
    import psutil

    logical = usable_cpus()
    physical, total = psutil.cpu_count(logical=False), psutil.cpu_count(logical=True)
    if not physical or not total:
        return logical
    return max(1, min(logical, round(logical * physical / total)))  # the share of them this process may use


@dataclass(frozen=True)
class Memory:
    total: int  # bytes
    available: int  # bytes a new process can take without swapping (MemAvailable)


def memory() -> Memory:
    import psutil

    vm = psutil.virtual_memory()
    return Memory(total=vm.total, available=vm.available)


# -- CPU -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CpuInfo:
    model: str
    logical: int  # processors listed
    physical: int  # distinct cores (hyperthread siblings counted once)
    flags: frozenset[str]

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags  # the foundation every other AVX-512 extension needs


def parse_cpuinfo(text: str) -> CpuInfo:
    """/proc/cpuinfo → CpuInfo. x86 lists `model name`, `physical id`, `core id` and `flags` per processor;
    ARM lists `Features` and no core ids (every processor is then a core of its own)."""
    processors: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                processors.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip().lower()] = value.strip()
    if current:
        processors.append(current)
    listed = [p for p in processors if "processor" in p]
    model = next(
        (
            p[k]
            for p in processors
            for k in ("model name", "cpu model", "hardware", "model")
            if p.get(k) and not p[k].isdigit()
        ),
        "unknown",
    )
    flags = next((p.get("flags") or p.get("features") for p in listed if p.get("flags") or p.get("features")), "")
    cores = {(p.get("physical id", "0"), p["core id"]) for p in listed if "core id" in p}
    logical = len(listed) or 1
    return CpuInfo(model=model, logical=logical, physical=len(cores) or logical, flags=frozenset(flags.split()))


def cpu_info() -> CpuInfo:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        import platform

        return CpuInfo(
            model=platform.processor() or platform.machine() or "unknown",
            logical=os.cpu_count() or 1,
            physical=os.cpu_count() or 1,
            flags=frozenset(),
        )


# -- GPUs and NPUs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Accelerator:
    kind: str  # gpu | npu
    vendor: str  # nvidia | amd | apple
    name: str
    memory: int | None  # bytes of its own memory (None: unknown, or shared with the system)
    source: str  # how it was found: nvml, nvidia-smi, rocm-smi, sysfs, platform, /dev/accel
    driver: str | None = None
    backend: str | None = None  # what llama.cpp runs on it: cuda | rocm | vulkan | metal | None (NPU)


NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]
ROCM_SMI_QUERY = ["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json"]


def parse_nvidia_smi(text: str) -> list[Accelerator]:
    """`nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits`: one line per GPU,
    memory in MiB (`[N/A]` when the driver cannot say)."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not parts[0]:
            continue
        try:
            mem = int(float(parts[1])) * 1024 * 1024
        except ValueError:
            mem = None
        driver = parts[2] if len(parts) > 2 and parts[2] and not parts[2].startswith("[") else None
        gpus.append(Accelerator("gpu", "nvidia", parts[0], mem, "nvidia-smi", driver, "cuda"))
    return gpus


def parse_rocm_smi(text: str) -> list[Accelerator]:
    """`rocm-smi --showproductname --showmeminfo vram --json`: {"card0": {"Card series": …, "VRAM Total Memory (B)":
    "…"}, …}; ROCm 6 spells some keys differently ("Card Series"), and warnings may come before the JSON."""
    start = text.find("{")
    if start < 0:
        return []
    try:
        data = json.loads(text[start:])
    except ValueError:
        return []
    gpus = []
    for card, info in sorted(data.items()):
        if not card.startswith("card") or not isinstance(info, dict):
            continue
        fields = {k.lower(): v for k, v in info.items()}
        name = next(
            (
                str(fields[k]).strip()
                for k in ("card series", "card model", "card sku")
                if str(fields.get(k, "")).strip() not in ("", "N/A")
            ),
            "AMD GPU",
        )
        try:
            mem = int(fields.get("vram total memory (b)"))
        except (TypeError, ValueError):
            mem = None
        gpus.append(Accelerator("gpu", "amd", name, mem, "rocm-smi", fields.get("driver version"), "rocm"))
    return gpus


def read_sysfs_gpus(drm: Path = Path("/sys/class/drm")) -> list[Accelerator]:
    """AMD GPUs from sysfs: /sys/class/drm/cardN/device/{vendor,mem_info_vram_total,product_name}."""
    gpus = []
    if not drm.is_dir():
        return gpus
    for card in sorted(drm.glob("card*")):
        if "-" in card.name:  # card0-DP-1 and the like: connectors, not devices
            continue
        device = card / "device"
        vendor = _read(device / "vendor")
        if vendor != AMD_VENDOR:
            continue
        total = _read(device / "mem_info_vram_total")
        name = _read(device / "product_name") or f"AMD GPU {_read(device / 'device') or card.name}"
        gpus.append(
            Accelerator(
                "gpu", "amd", name, int(total) if total and total.isdigit() else None, "sysfs", "amdgpu", "rocm"
            )
        )
    return gpus


def read_xdna_npus(dev: Path = Path("/dev/accel"), sys_accel: Path = Path("/sys/class/accel")) -> list[Accelerator]:
    """AMD XDNA (Ryzen AI) NPUs: an /dev/accel/accelN whose /sys/class/accel/accelN/device/driver is amdxdna."""
    npus = []
    if not dev.is_dir():
        return npus
    for node in sorted(dev.glob("accel*")):
        driver = sys_accel / node.name / "device" / "driver"
        try:
            name = Path(os.readlink(driver)).name
        except OSError:
            continue
        if name == "amdxdna":
            npus.append(Accelerator("npu", "amd", "AMD XDNA NPU", None, "/dev/accel", name))
    return npus


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def run_tool(argv: list[str], timeout: float = TOOL_TIMEOUT) -> str | None:
    """A vendor tool's stdout, or None when it is absent, fails or hangs."""
    import shutil
    import subprocess

    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _nvml_gpus() -> list[Accelerator] | None:
    """NVIDIA GPUs through NVML, when pynvml is importable (no subprocess); None when it is not."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver: no NVIDIA GPU to use
        return []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(
                Accelerator(
                    "gpu",
                    "nvidia",
                    name.decode() if isinstance(name, bytes) else name,
                    mem,
                    "nvml",
                    driver.decode() if isinstance(driver, bytes) else driver,
                    "cuda",
                )
            )
        return gpus
    except Exception:  # noqa: BLE001
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def apple_metal(platform_name: str = sys.platform, machine: str | None = None) -> list[Accelerator]:
    """Apple silicon: one Metal GPU sharing the system's memory."""
    import platform

    if platform_name == "darwin" and (machine or platform.machine()) == "arm64":
        return [Accelerator("gpu", "apple", "Apple silicon GPU (Metal)", None, "platform", None, "metal")]
    return []


@lru_cache(maxsize=1)
def accelerators() -> tuple[Accelerator, ...]:
    """Every GPU and NPU found, once per process (the tools take a while; the machine does not change)."""
    found: list[Accelerator] = []
    nvidia = _nvml_gpus()
    if nvidia is None:
        text = run_tool(NVIDIA_SMI_QUERY)
        nvidia = parse_nvidia_smi(text) if text else []
    found += nvidia
    text = run_tool(ROCM_SMI_QUERY)
    amd = parse_rocm_smi(text) if text else []
    found += amd or read_sysfs_gpus()
    found += apple_metal()
    found += read_xdna_npus()
    return tuple(found)


def gpus() -> list[Accelerator]:
    return [a for a in accelerators() if a.kind == "gpu"]


def npus() -> list[Accelerator]:
    return [a for a in accelerators() if a.kind == "npu"]
