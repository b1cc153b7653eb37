"""P9: vLLM (CPU build, lf's env) next to the llamacpp engine on the same model (SmolLM2-135M): start until
healthy, streamed tokens/s and the process tree's RSS. Informational, no target: vLLM serves the model converted
to a Hugging Face folder in bf16, llama.cpp the Q4_1 GGUF it came from, and vLLM is built for batches, not one
client on two cores. Skipped, with the reason in its row, when vLLM or the converted model is not installed
(`lf runtime install vllm` and `lf models build-hf`, or a test run, which caches both).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness import CHAT_MESSAGE, Bench, Row, Sandbox, alternate, free_port, median, stream_chat

TOKENS = 128
MODEL = "smollm2-135m-hf"


def measure(bench: Bench) -> list[Row]:
    bench.log("P9: vLLM (CPU) start-to-healthy and tok/s next to the llamacpp engine, same model")
    what = "vLLM (CPU) vs llamacpp, SmolLM2-135M: start until healthy; tok/s (steady)"
    data_dir, source = vllm_data_dir(bench)
    if data_dir is None:
        return [Row("P9", what, "-", "-", None, "informational", None, "skipped: " + source)]

    box = Sandbox(bench, "p9")
    box.env["LF_DATA_DIR"] = str(data_dir)  # vLLM's env and the converted model live there
    port = free_port()
    started = time.perf_counter()
    box.lf(
        "runtime", "start", "vllm", "--model", MODEL, "--port", str(port), "--ctx-size", "2048", timeout=900, check=True
    )
    vllm_start = time.perf_counter() - started
    record = box.record("vllm")
    rss = tree_rss_mib(record["pid"])

    llama = Sandbox(bench, "p9-llamacpp")
    started = time.perf_counter()
    llama.lf("runtime", "start", "llamacpp", "--port", str(free_port()), check=True)
    llama_start = time.perf_counter() - started
    llama_record = llama.record("llamacpp")
    llama_rss = tree_rss_mib(llama_record["pid"])

    ours, theirs = alternate(
        lambda: stream_chat(record["port"], record["model"], CHAT_MESSAGE, TOKENS),
        lambda: stream_chat(llama_record["port"], llama_record["model"], CHAT_MESSAGE, TOKENS),
        max(1, min(bench.heavy_reps, 5)),
        1,
    )
    box.lf("runtime", "stop", "vllm", timeout=120)
    llama.lf("runtime", "stop", "llamacpp", timeout=120)
    v, l_ = median([r["steady"] for r in ours]), median([r["steady"] for r in theirs])
    bench.memory.append(("vLLM process tree (serving SmolLM2)", rss, f"llamacpp's: {llama_rss:.0f} MiB"))
    return [
        Row(
            "P9",
            what,
            f"{vllm_start:.1f} s; {v:.1f} tok/s",
            f"{llama_start:.1f} s; {l_:.1f} tok/s",
            v / l_,
            "informational",
            None,
            f"vLLM from {source}, bf16, --enforce-eager, KV cache 1 GiB; llamacpp Q4_1 GGUF; up to {TOKENS} tokens, temperature 0, "
            f"one client; ratio is of tok/s; process tree RSS {rss:.0f} MiB vs {llama_rss:.0f} MiB",
        )
    ]


def vllm_data_dir(bench: Bench) -> tuple[Path | None, str]:
    """A data dir with vLLM's env and the converted model: the user's lf, else the one the test suite caches."""
    cache = Path(os.environ.get("LF_TEST_CACHE") or Path.home() / ".cache" / "lf-test")
    candidates = [bench.user_data_dir, cache / "data"]
    for data in candidates:
        if (data / "envs" / "vllm" / "lf-installed.json").exists() and (
            data / "models" / MODEL / "config.json"
        ).exists():
            return data, f"lf's env {data / 'envs' / 'vllm'}"
    return None, (
        f"vLLM and {MODEL} are not installed in {' or '.join(map(str, candidates))}: "
        "run `lf runtime install vllm` and `lf models build-hf`"
    )


def tree_rss_mib(pid: int) -> float:
    import psutil

    try:
        leader = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [leader, *leader.children(recursive=True)]) / 2**20
    except psutil.Error:
        return float("nan")
