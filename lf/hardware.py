"""What this machine has: CPU (model, cores, vector extensions), memory, GPUs and NPUs.

One home for facts about the hardware: defaults (threads, GPU offload), memory checks (will a model fit)
and `lf doctor` all ask here. On Linux it reads /proc and sysfs; on macOS `sysctl`; on Windows the registry
and PowerShell's CIM queries; and the vendors' own tools (nvidia-smi, rocm-smi) everywhere, each with a
short timeout; never the network. Each tool's output is read by a pure function (`parse_*`) so the reading
is tested on recorded outputs; the functions that look at the machine only gather text and hand it over.
Nothing here is imported by `lf runtime status` or `lf --help`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TOOL_TIMEOUT = 3.0  # seconds a vendor tool may take before it counts as absent (a hung driver must not hang lf)
POWERSHELL_TIMEOUT = 15.0  # PowerShell itself takes a second or two to start, CIM queries more on a cold machine
AMD_VENDOR = "0x1002"
GiB = 1024**3


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores this process may use: hyperthread siblings share one core's compute units, so an
    engine with one thread per physical core is as fast as one per logical CPU, and leaves the rest free.
    Where the CPU has cores of two kinds (Apple silicon's performance and efficiency cores), its performance
    cores: a thread on an efficiency core holds the others back at every step (llama.cpp counts the same)."""
    logical = usable_cpus()
    info = cpu_info()  # /proc/cpuinfo on Linux: no psutil on a start's path (it costs ~20 ms to import)
    if info.performance:
        return max(1, min(logical, info.performance))
    physical, total = info.physical, info.logical
    if not physical or not total:
        return logical
    return max(1, min(logical, round(logical * physical / total)))  # the share of them this process may use


@dataclass(frozen=True)
class Memory:
    total: int  # bytes
    available: int  # bytes a new process can take without swapping (MemAvailable)


def memory() -> Memory:
    found = _meminfo()
    if found is not None:
        return found
    import psutil

    vm = psutil.virtual_memory()
    return Memory(total=vm.total, available=vm.available)


def _meminfo(path: Path = Path("/proc/meminfo")) -> Memory | None:
    """MemTotal and MemAvailable as Linux counts them (what psutil reads too, without importing it)."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    found = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            found[key] = int(rest.split()[0]) * 1024  # kB
    if len(found) < 2:
        return None
    return Memory(total=found["MemTotal"], available=found["MemAvailable"])


# -- CPU -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CpuInfo:
    model: str
    logical: int  # processors listed
    physical: int  # distinct cores (hyperthread siblings counted once)
    flags: frozenset[str]
    performance: int | None = None  # cores of the fast kind, where there are two kinds (Apple silicon); else None

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
    flags = next((p.get("flags") or p.get("features") or "" for p in listed if p.get("flags") or p.get("features")), "")
    cores = {(p.get("physical id", "0"), p["core id"]) for p in listed if "core id" in p}
    logical = len(listed) or 1
    return CpuInfo(model=model, logical=logical, physical=len(cores) or logical, flags=frozenset(flags.split()))


SYSCTL_QUERY = ["sysctl", "hw", "machdep.cpu"]  # macOS: every hw.* and machdep.cpu.* value, one per line
WIRED_LIMIT_QUERY = ["sysctl", "-n", "iogpu.wired_limit_mb"]  # macOS 14+ on Apple silicon; 0: the default limit


def parse_sysctl(text: str) -> dict[str, str]:
    """`sysctl NAME…` output, `name: value` per line, as a dict."""
    facts = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            facts[key.strip()] = value.strip()
    return facts


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _sysctl_flags(facts: dict[str, str]) -> frozenset[str]:
    """Vector extensions in /proc/cpuinfo's spelling: an Intel Mac lists CPUID features (`AVX2`, `AVX512F`,
    `SSE4.2`), and `hw.optional.*` says 1 for what the CPU has (`avx2_0`, `neon`, `arm.FEAT_DotProd`)."""
    flags: set[str] = set()
    for key in ("machdep.cpu.features", "machdep.cpu.leaf7_features"):
        flags.update(f.lower().replace(".", "_") for f in facts.get(key, "").split())
    for key, value in facts.items():
        if key.startswith("hw.optional.") and value == "1":
            flags.add(key.removeprefix("hw.optional.").removeprefix("arm.").lower())
    return frozenset(f.removesuffix("_0").replace("avx1", "avx") for f in flags)


def cpu_from_sysctl(facts: dict[str, str]) -> CpuInfo:
    """macOS: `sysctl hw machdep.cpu` → CpuInfo. Apple silicon has two kinds of cores (hw.nperflevels 2):
    perflevel0 are the performance cores, perflevel1 the efficiency cores."""
    logical = _int(facts.get("hw.logicalcpu")) or _int(facts.get("hw.ncpu")) or os.cpu_count() or 1
    physical = _int(facts.get("hw.physicalcpu")) or logical
    levels = _int(facts.get("hw.nperflevels")) or 1
    performance = _int(facts.get("hw.perflevel0.physicalcpu")) if levels > 1 else None
    return CpuInfo(
        model=facts.get("machdep.cpu.brand_string") or "unknown",
        logical=logical,
        physical=physical,
        flags=_sysctl_flags(facts),
        performance=performance,
    )


def _sysctl(query: list[str]) -> list[str]:
    """`query` with sysctl found on PATH, else where macOS keeps it (a PATH without /usr/sbin is common)."""
    import shutil

    if shutil.which(query[0]) is None and os.path.exists("/usr/sbin/sysctl"):
        return ["/usr/sbin/sysctl", *query[1:]]
    return query


@lru_cache(maxsize=1)
def sysctl_facts() -> dict[str, str]:
    """This Mac's `sysctl hw machdep.cpu`, once per process; {} elsewhere or when sysctl fails."""
    if sys.platform != "darwin":
        return {}
    text = run_tool(_sysctl(SYSCTL_QUERY))
    return parse_sysctl(text) if text else {}


# Windows: IsProcessorFeaturePresent's numbers (winnt.h) for the extensions lf reports
WINDOWS_CPU_FEATURES = {10: "sse2", 38: "sse4_2", 39: "avx", 40: "avx2", 41: "avx512f"}
WINDOWS_CPU_KEY = r"HARDWARE\DESCRIPTION\System\CentralProcessor\0"


def cpu_from_windows(name: str | None, logical: int, physical: int, feature_present) -> CpuInfo:
    """Windows: the processor's name (registry), counts (psutil) and `feature_present(n)` (kernel32's
    IsProcessorFeaturePresent) → CpuInfo."""
    flags = frozenset(flag for number, flag in WINDOWS_CPU_FEATURES.items() if feature_present(number))
    return CpuInfo(model=(name or "unknown").strip(), logical=logical, physical=physical, flags=flags)


def _windows_cpu() -> CpuInfo:
    if sys.platform != "win32":  # (and type checkers read the Windows-only modules below for Windows only)
        raise OSError("not Windows")
    import ctypes
    import winreg

    import psutil

    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, WINDOWS_CPU_KEY) as key:
            name = str(winreg.QueryValueEx(key, "ProcessorNameString")[0])
    except OSError:
        name = None
    kernel32 = ctypes.windll.kernel32
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    return cpu_from_windows(name, logical, physical, lambda n: bool(kernel32.IsProcessorFeaturePresent(n)))


def threads_rule() -> str:
    """How physical_cores() counts, in words for `lf doctor`."""
    if sys.platform == "darwin" and cpu_info().performance:
        return "one per performance core"
    return "one per physical core"


def cpu_info() -> CpuInfo:
    if sys.platform == "darwin" and sysctl_facts():
        return cpu_from_sysctl(sysctl_facts())
    if sys.platform == "win32":
        try:
            return _windows_cpu()
        except Exception:  # noqa: BLE001 - the generic answer below is still an answer
            pass
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


# -- Apple silicon: what Metal may hold ------------------------------------------------------------------
@dataclass(frozen=True)
class GpuMemoryLimit:
    """How much of the system's memory a GPU that shares it may take: Metal's working set on Apple silicon."""

    bytes: int
    source: str  # in words, for messages: where the figure comes from


def metal_working_set(memsize: int, wired_limit_mb: int | None) -> GpuMemoryLimit:
    """Metal's recommendedMaxWorkingSetSize, which llama.cpp's Metal backend allocates against: what
    iogpu.wired_limit_mb sets when it is set (Metal then reports exactly that), else macOS's own default,
    about two thirds of the memory up to 36 GiB and three quarters above (measured values on various Macs lie
    at or above these, so the figure errs on the side of refusing too early, which --force overrides)."""
    if wired_limit_mb:
        return GpuMemoryLimit(wired_limit_mb * 1024 * 1024, f"iogpu.wired_limit_mb = {wired_limit_mb}")
    share, words = (3 / 4, "3/4") if memsize >= 36 * GiB else (2 / 3, "2/3")
    return GpuMemoryLimit(
        int(memsize * share), f"macOS's default, about {words} of {memsize / GiB:.0f} GiB of unified memory"
    )


def gpu_memory_limit(gpu_layers: object = None) -> GpuMemoryLimit | None:
    """The limit an instance must also fit under when it runs `gpu_layers` layers on a GPU that shares the
    system's memory: Metal's working set on Apple silicon (unless no layer is offloaded: gpu_layers 0); None
    elsewhere (a discrete GPU's own memory is not estimated by lf)."""
    if gpu_layers == 0 or not apple_metal():
        return None
    facts = sysctl_facts()
    memsize = _int(facts.get("hw.memsize")) or memory().total
    wired = run_tool(_sysctl(WIRED_LIMIT_QUERY))
    return metal_working_set(memsize, _int(wired.strip()) if wired else None)


# -- GPUs and NPUs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Accelerator:
    kind: str  # gpu | npu
    vendor: str  # nvidia | amd | apple | intel | qualcomm
    name: str
    memory: int | None  # bytes of its own memory (None: unknown, or shared with the system)
    source: str  # how it was found: nvml, nvidia-smi, rocm-smi, sysfs, platform, /dev/accel, cim
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
            mem = int(fields.get("vram total memory (b)"))  # type: ignore[arg-type]  # None: TypeError below
        except (TypeError, ValueError):
            mem = None
        gpus.append(Accelerator("gpu", "amd", name, mem, "rocm-smi", fields.get("driver version"), "rocm"))
    return gpus


def read_sysfs_gpus(drm: Path = Path("/sys/class/drm")) -> list[Accelerator]:
    """AMD GPUs from sysfs: /sys/class/drm/cardN/device/{vendor,mem_info_vram_total,product_name}."""
    gpus: list[Accelerator] = []
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
    npus: list[Accelerator] = []
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
        import pynvml
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


def apple_metal(platform_name: str | None = None, machine: str | None = None) -> list[Accelerator]:
    """Apple silicon: one Metal GPU sharing the system's memory (named after the chip, as sysctl gives it)."""
    import platform

    if (platform_name or sys.platform) == "darwin" and (machine or platform.machine()) == "arm64":
        chip = sysctl_facts().get("machdep.cpu.brand_string") or "Apple silicon"
        return [Accelerator("gpu", "apple", f"{chip} GPU (Metal)", None, "platform", None, "metal")]
    return []


# -- Windows: GPUs and NPUs as Windows lists them ------------------------------------------------------------
# One PowerShell call: the display adapters, and the devices of the ComputeAccelerator class (Windows 11's
# "Neural processors": AMD's "NPU Compute Accelerator Device", Intel's "AI Boost", Qualcomm's Hexagon NPU), plus
# the name early Ryzen AI drivers used. @() keeps a single device a list in the JSON.
WINDOWS_DEVICES_SCRIPT = (
    "$ErrorActionPreference = 'SilentlyContinue'; "
    "@{gpus = @(Get-CimInstance Win32_VideoController | "
    "Select-Object Name, AdapterCompatibility, AdapterRAM, DriverVersion, PNPDeviceID); "
    "npus = @(Get-CimInstance Win32_PnPEntity -Filter \"PNPClass = 'ComputeAccelerator' OR Name = 'AMD IPU Device'\" | "
    "Select-Object Name, Manufacturer, PNPDeviceID, Status)} | ConvertTo-Json -Depth 3"
)
# PCI vendor ids in a PNPDeviceID (PCI\VEN_1002&DEV_…) → lf's vendor names; 1022 is AMD's CPU side (its NPUs);
# Qualcomm's parts are ACPI devices (ACPI\QCOM…)
PCI_VENDORS = {"1002": "amd", "1022": "amd", "10de": "nvidia", "8086": "intel", "qcom": "qualcomm"}
# what llama.cpp's Windows builds run on each vendor's GPU (xllamacpp's Windows wheel runs on the CPU only)
WINDOWS_GPU_BACKENDS = {"nvidia": "cuda", "amd": "vulkan", "intel": "vulkan", "qualcomm": "opencl"}
ADAPTER_RAM_CAP = 0xFFF00000  # Win32_VideoController.AdapterRAM is 32-bit: 4 GiB and more read as this


def windows_devices_query() -> list[str]:
    import base64

    encoded = base64.b64encode(WINDOWS_DEVICES_SCRIPT.encode("utf-16-le")).decode("ascii")
    return ["powershell", "-NoProfile", "-NonInteractive", "-EncodedCommand", encoded]  # no quoting to get wrong


def _pci_vendor(device_id: str | None) -> str | None:
    import re

    found = re.search(r"VEN_([0-9A-Za-z]{4})|\\(QCOM)", device_id or "", re.IGNORECASE)
    return PCI_VENDORS.get((found.group(1) or found.group(2)).lower()) if found else None


def _as_list(value) -> list:
    """PowerShell 5.1's ConvertTo-Json writes one object where a list has one item, and sometimes wraps a
    list as {"value": […], "Count": n}."""
    if isinstance(value, dict):
        return value["value"] if isinstance(value.get("value"), list) else [value]
    return value if isinstance(value, list) else []


def parse_windows_devices(text: str) -> list[Accelerator]:
    """The JSON WINDOWS_DEVICES_SCRIPT prints → GPUs of known vendors (not Microsoft's basic or remote display
    adapters), then NPUs whose driver works (Status OK)."""
    import json

    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    found = []
    for gpu in _as_list(data.get("gpus")):
        if not isinstance(gpu, dict):
            continue
        vendor = _pci_vendor(gpu.get("PNPDeviceID"))
        name = str(gpu.get("Name") or "").strip()
        if vendor is None or not name:
            continue
        ram = gpu.get("AdapterRAM")
        memory = ram if isinstance(ram, int) and 0 < ram < ADAPTER_RAM_CAP else None
        found.append(
            Accelerator("gpu", vendor, name, memory, "cim", gpu.get("DriverVersion"), WINDOWS_GPU_BACKENDS.get(vendor))
        )
    for npu in _as_list(data.get("npus")):
        if not isinstance(npu, dict) or npu.get("Status") not in (None, "OK"):
            continue
        vendor = _pci_vendor(npu.get("PNPDeviceID"))
        name = str(npu.get("Name") or "").strip()
        if vendor is None or not name:
            continue
        found.append(Accelerator("npu", vendor, name, None, "cim"))
    return found


def windows_devices() -> list[Accelerator]:
    if sys.platform != "win32":
        return []
    text = run_tool(windows_devices_query(), timeout=POWERSHELL_TIMEOUT)
    return parse_windows_devices(text) if text else []


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
    # Windows lists NVIDIA's GPUs too: nvidia-smi's answer (with memory) is kept where it gave one
    found += [a for a in windows_devices() if not (a.vendor == "nvidia" and a.kind == "gpu" and nvidia)]
    return tuple(found)


def searched(kind: str) -> str:
    """Where lf looked for GPUs (`gpu`) or NPUs (`npu`) on this platform, for `lf doctor` to say."""
    if sys.platform == "win32":
        return "NVML/nvidia-smi, Windows' display adapters" if kind == "gpu" else "Windows' Neural processors"
    if sys.platform == "darwin":
        return "Metal on Apple silicon, NVML/nvidia-smi" if kind == "gpu" else "none on macOS that lf can use"
    if kind == "gpu":
        return "NVML/nvidia-smi, rocm-smi, sysfs"
    return "AMD XDNA: /dev/accel with the amdxdna driver"


def gpus() -> list[Accelerator]:
    return [a for a in accelerators() if a.kind == "gpu"]


def npus() -> list[Accelerator]:
    return [a for a in accelerators() if a.kind == "npu"]
