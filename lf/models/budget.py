"""What the gateway may load: a memory budget (RAM, and GPU memory where a GPU is found), what each instance needs
of it, and whether one more fits. Pure arithmetic: the gateway's pool decides with it, `lf doctor` shows it.

An instance's need is lf's estimate until it runs (lf.models.memory: within a few percent of what the engine
takes), then the larger of the estimate and its process tree's measured resident memory, so neither a model
whose pages are not all touched yet nor one that grew past its estimate is under-counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from lf.models.gguf_meta import human_bytes

HEADROOM_FRACTION = 0.10  # of the machine's memory left to everything else
MIN_HEADROOM = 1 << 30  # at least this much, on a small machine
VRAM_FRACTION = 0.90  # of a GPU's memory: drivers and the display keep the rest


@dataclass(frozen=True)
class Need:
    ram: int  # bytes
    vram: int = 0  # bytes of GPU memory (layers offloaded)

    def __add__(self, other: Need) -> Need:
        return Need(self.ram + other.ram, self.vram + other.vram)

    def describe(self) -> str:
        return human_bytes(self.ram) + (f" and {human_bytes(self.vram)} of GPU memory" if self.vram else "")


NOTHING = Need(0, 0)


@dataclass(frozen=True)
class Budget:
    ram: int  # bytes
    vram: int | None = None  # None: no GPU (offloaded layers then count as RAM)

    def fits(self, need: Need, used: Need = NOTHING) -> bool:
        total = used + need
        if self.vram is None:
            return total.ram + total.vram <= self.ram
        return total.ram <= self.ram and total.vram <= self.vram

    def room(self, used: Need) -> int:
        """RAM left next to what is used (what `context_size: auto` may take)."""
        return max(0, self.ram - used.ram - (used.vram if self.vram is None else 0))

    def describe(self) -> str:
        return human_bytes(self.ram) + (f" (and {human_bytes(self.vram)} of GPU memory)" if self.vram else "")


def headroom(total_ram: int) -> int:
    """Memory lf leaves to everything else on the machine."""
    return max(MIN_HEADROOM, int(total_ram * HEADROOM_FRACTION))


def default_budget(total_ram: int, gpu_memory: list[int | None]) -> Budget:
    """The machine's memory minus a headroom; each GPU's memory (that lf can tell) minus its share for drivers."""
    known = [m for m in gpu_memory if m]
    return Budget(max(0, total_ram - headroom(total_ram)), int(sum(known) * VRAM_FRACTION) if known else None)


def configured_budget(memory_budget: int | str | None) -> Budget:
    """The budget a `memory_budget` setting gives (a size, or bytes), or the machine's default when it is unset."""
    from lf import hardware
    from lf.runtimes.settings import parse_size

    machine = default_budget(hardware.memory().total, [gpu.memory for gpu in hardware.gpus()])
    return machine if memory_budget is None else Budget(parse_size(memory_budget), machine.vram)
