"""llamacpp: LlamaFarm's GGUF parameters in llama-server's spelling (both engines take the same flags).

The settings keep LlamaFarm's meaning (what `lf config show` and the record show); only the argv differs:
-1 layers (all) is 999 (older servers read -1 as "the default"), a boolean flash_attn is on/off (false
must be said: the engine's default is auto), and mmap false is --no-mmap (true is the default: no flag).
"""

from __future__ import annotations

ALL_LAYERS = 999


def engine_values(settings) -> dict[str, object]:
    values: dict[str, object] = {}
    if settings.get("gpu_layers") == -1:
        values["gpu_layers"] = ALL_LAYERS
    if settings.get("flash_attn") is not None:
        values["flash_attn"] = "on" if settings["flash_attn"] else "off"
    if settings.get("mmap") is not None:
        values["mmap"] = None if settings["mmap"] else "--no-mmap"
    return values


def plan(spec, resolved, port: int):
    from lf.runtimes.launch import argv_values, default_plan, render_argv

    values = {**argv_values(spec, resolved, port), **engine_values(spec.settings)}
    return default_plan(spec, resolved, port, argv=tuple(render_argv(resolved.engine.argv, values, spec.runtime.name)))
