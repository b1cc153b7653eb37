"""llama-cpp-python: LlamaFarm's GGUF parameters in llama_cpp.server's spelling.

Its flags take booleans as values (`--use_mmap false`), so a boolean setting is always written out, false
included (a manifest's optional group leaves a false one out); KV cache types are ggml type numbers.
"""

from __future__ import annotations

# ggml_type values (ggml.h; llama_cpp.GGML_TYPE_*) of the KV cache types llama.cpp accepts
GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20, "bf16": 30}
BOOLEANS = ("flash_attn", "mmap", "mlock")


def engine_values(settings) -> dict[str, object]:
    values: dict[str, object] = {}
    for name in BOOLEANS:
        if settings.get(name) is not None:
            values[name] = "true" if settings[name] else "false"
    for name in ("cache_type_k", "cache_type_v"):
        if settings.get(name) is not None:
            values[name] = GGML_TYPES[settings[name]]
    return values


def plan(spec, resolved, port: int):
    from lf.runtimes.launch import argv_values, default_plan, render_argv

    values = {**argv_values(spec, resolved, port), **engine_values(spec.settings)}
    return default_plan(spec, resolved, port, argv=tuple(render_argv(resolved.engine.argv, values, spec.runtime.name)))
