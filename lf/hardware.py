"""What this machine has: CPU cores, memory (and, as `lf doctor` grows, CPU features, GPUs and NPUs).

One home for facts about the hardware: defaults (threads), memory checks (will a model fit) and
`lf doctor` all ask here. Reads /proc and sysfs through psutil; never the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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
