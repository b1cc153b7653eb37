"""P6: tokens/s of the default engine (xllamacpp, the running llamacpp instance) against llama-cpp-python's server
with the same model, threads and context, both streamed by the bench's own stdlib client, alternately.
Target ≥ 1.1×. Skipped, with the reason in its row, when no llama-cpp-python is installed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness import CHAT_MESSAGE, Bench, Row, alternate, free_port, median, stop_group, stream_chat, wait_http_ok

ENGINE_TOKENS = 128


def measure(bench: Bench) -> list[Row]:
    bench.log("P6: default engine (xllamacpp) tokens/s vs llama-cpp-python's server, same model and threads")
    what = "default engine (xllamacpp) tok/s (steady) vs llama-cpp-python server, same model"
    python, source = lcp_python(bench)
    if python is None:
        return [Row("P6", what, "-", "-", None, "≥ 1.1×", None, "skipped: " + source)]
    check = subprocess.run(
        [str(python), "-c", "import llama_cpp.server, llama_cpp; print(llama_cpp.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check.returncode != 0:
        return [
            Row(
                "P6",
                what,
                "-",
                "-",
                None,
                "≥ 1.1×",
                None,
                f"skipped: {python} cannot import llama_cpp.server ({source})",
            )
        ]

    box, record = bench.running_llamacpp()
    cmd = record["command"]
    threads = cmd[cmd.index("--threads") + 1]
    ctx = cmd[cmd.index("--ctx-size") + 1]
    port = free_port()
    lcp = bench.spawn(
        [
            str(python),
            "-m",
            "llama_cpp.server",
            "--model",
            record["model_path"],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            ctx,
            "--n_threads",
            threads,
            "--n_threads_batch",
            threads,
            "--model_alias",
            record["model"],
            "--verbose",
            "False",
        ],
        box.env,
        box.root,
        box.root / "llama-cpp-python.log",
    )
    wait_http_ok(port, "/v1/models", lcp, timeout=180, interval=0.05)  # it has no /health
    ours = record["port"]
    default, other = alternate(
        lambda: stream_chat(ours, record["model"], CHAT_MESSAGE, ENGINE_TOKENS),
        lambda: stream_chat(port, record["model"], CHAT_MESSAGE, ENGINE_TOKENS),
        bench.heavy_reps,
        bench.warmup,
    )
    stop_group(lcp)

    s, f = median([r["steady"] for r in default]), median([r["steady"] for r in other])
    os_, of = median([r["overall"] for r in default]), median([r["overall"] for r in other])
    pairs = median([x["steady"] / y["steady"] for x, y in zip(default, other)])
    return [
        Row(
            "P6",
            what,
            f"{s:.1f} tok/s",
            f"{f:.1f} tok/s",
            s / f,
            "≥ 1.1×",
            s / f >= 1.1,
            f"llama-cpp-python {check.stdout.strip()} from {source}; {threads} threads, n_ctx {ctx}, up to {ENGINE_TOKENS} tokens "
            f"(median {median([r['tokens'] for r in default]):.0f} vs {median([r['tokens'] for r in other]):.0f}), temperature 0, one client; "
            f"steady rate (1 ÷ median token gap); median of per-round ratios {pairs:.2f}×; first-to-last rate {os_:.1f} vs {of:.1f} tok/s = {os_ / of:.2f}×",
        )
    ]


def lcp_python(bench: Bench) -> tuple[Path | None, str]:
    """llama-cpp-python as lf installs it: the user's lf env, else the one the test suite caches."""
    if bench.args.llama_cpp_python:
        return Path(bench.args.llama_cpp_python), f"given with --llama-cpp-python {bench.args.llama_cpp_python}"
    cache = Path(os.environ.get("LF_TEST_CACHE") or Path.home() / ".cache" / "lf-test")
    candidates = [bench.user_data_dir / "envs" / "llama-cpp-python", cache / "data" / "envs" / "llama-cpp-python"]
    for env_dir in candidates:
        if (env_dir / "bin" / "python").exists() and (env_dir / "lf-installed.json").exists():
            return env_dir / "bin" / "python", f"lf's env {env_dir}"
    return None, (
        f"llama-cpp-python is not installed in lf's env ({' or '.join(map(str, candidates))}): "
        "run `lf runtime install llama-cpp-python`, or pass --llama-cpp-python PYTHON"
    )


def explain(bench: Bench, row: Row) -> list[str]:
    return ["The default engine is not 10% faster than llama-cpp-python here: compare their thread and batch settings."]
