"""llamacpp: LlamaFarm's GGUF parameters in llama-server's spelling (both engines take the same flags), and
/v1/embeddings without being asked.

The settings keep LlamaFarm's meaning (what `lf config show` and the record show); only the argv differs:
-1 layers (all) is 999 (older servers read -1 as "the default"), a boolean flash_attn is on/off (false
must be said: the engine's default is auto), and mmap false is --no-mmap (true is the default: no flag).

Unless `embeddings` says otherwise, --embeddings is on for an embedding model (its GGUF declares a pooling
type, as a converted sentence-transformers model does), and for any model on the embedded engine (xllamacpp):
its llama.cpp serves chat and embeddings side by side, at no cost measured in start time, RSS, or CPU time per
prompt and per generated token (bench/p16_embeddings.py, P16c). A llama-server found on PATH may be older:
builds of mid-2024 answer every completion with 501 once --embeddings is given, so there a chat model gets it
only when asked. A model without a pooling of its own (a chat model) pools by the mean of its token vectors
unless `pooling` says otherwise: llama.cpp refuses /v1/embeddings with no pooling at all.

An embedding model's engine runs with OMP_WAIT_POLICY=PASSIVE (unless the environment sets it): llama.cpp's
CPU threads are OpenMP threads, which by default spin for a while after each computation. An embedding is a
few milliseconds of work between idle gaps; on a busy machine (a chat model on the same cores) the spinning
threads take the CPU from the thread that has work, and one short sentence took 60 ms (p50) instead of 17 with
2 threads (bench/p16_embeddings.py, P16b).
"""

from __future__ import annotations

import os
from types import MappingProxyType

ALL_LAYERS = 999
DEFAULT_POOLING = "mean"  # for a model that declares none
WAIT_POLICY = "OMP_WAIT_POLICY"
BOTH_AT_ONCE = frozenset({"xllamacpp"})  # engines whose llama.cpp is known to serve chat with --embeddings on


def model_pooling(model_path: str | None) -> str | None:
    """The pooling type the GGUF at `model_path` declares (None: none, or a file lf cannot read, which the
    engine will report itself). From lf's cached header read: a start reads the header anyway."""
    if not model_path:
        return None
    from lf.models.gguf_meta import read

    try:
        return read(model_path).pooling
    except (OSError, ValueError, KeyError):
        return None


def engine_values(settings, pooling: str | None = None, engine: str = "") -> dict[str, object]:
    """What the argv template receives instead of a setting's own value. `pooling`: the model's own;
    `engine`: the engine's name (llama-server, xllamacpp)."""
    values: dict[str, object] = {}
    if settings.get("gpu_layers") == -1:
        values["gpu_layers"] = ALL_LAYERS
    if settings.get("flash_attn") is not None:
        values["flash_attn"] = "on" if settings["flash_attn"] else "off"
    if settings.get("mmap") is not None:
        values["mmap"] = None if settings["mmap"] else "--no-mmap"
    embeddings = settings.get("embeddings")
    if embeddings is None:
        if pooling is not None:
            embeddings = pooling != "rank"  # a reranker is served by --reranking, not this
        else:
            embeddings = engine in BOTH_AT_ONCE
        values["embeddings"] = embeddings
    if embeddings and settings.get("pooling") is None and pooling is None:
        values["pooling"] = DEFAULT_POOLING
    return values


def engine_env(pooling: str | None) -> dict[str, str]:
    """What the engine's environment gets: OpenMP threads that sleep when idle, for an embedding model."""
    return {WAIT_POLICY: "PASSIVE"} if pooling is not None and WAIT_POLICY not in os.environ else {}


def plan(spec, resolved, port: int):
    from lf.runtimes.launch import argv_values, default_plan, render_argv

    pooling = model_pooling(spec.model_path)
    values = {**argv_values(spec, resolved, port), **engine_values(spec.settings, pooling, resolved.engine.name)}
    return default_plan(
        spec,
        resolved,
        port,
        argv=tuple(render_argv(resolved.engine.argv, values, spec.runtime.name)),
        env=MappingProxyType(engine_env(pooling)),
    )
