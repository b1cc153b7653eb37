"""P10: lf's memory estimate (lf.models.memory, shown by `lf models info` and `lf runtime start --dry-run`) against
the resident memory of the real engine: `lf runtime start llamacpp --model M --ctx-size N` for both packaged
models at two context sizes, then the RSS of the daemon's whole process tree (engine and log pump) after a
request of about a thousand tokens (mapped weights count once they are touched; a prompt longer than a
physical batch uses the whole compute buffer). Target: every estimate within ±15% of what was measured.

    .venv/bin/python bench/p10_memory.py          # standalone: prints the table
    .venv/bin/python bench/run.py --only P10      # as a row of RESULTS.md

tests/test_models_info.py asserts the same band with the same `measure_rss`.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

CASES = (("smollm2-135m", 2048), ("smollm2-135m", 8192), ("gemma3-270m", 4096), ("gemma3-270m", 32768))
TOLERANCE = 0.15
# about a thousand tokens: longer than llama.cpp's physical batch (512), well inside every context above
WARM_UP_PROMPT = "Summarize this list. " + " ".join(
    f"Item {i} is the number {i * 7} and it is fine." for i in range(70)
)


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def warm_up(base_url: str, timeout: float = 600) -> None:
    body = json.dumps({"prompt": WARM_UP_PROMPT, "max_tokens": 4, "temperature": 0}).encode()
    request = urllib.request.Request(
        base_url.rstrip("/") + "/completions", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


def measure_rss(record: dict) -> int:
    """The RSS of a running instance (its record, as `lf runtime status --json` shows it) after the warm-up."""
    warm_up(record["base_url"])
    return tree_rss(record["pid"])


def estimate_for(model: str, ctx: int) -> int:
    from lf.models.catalog import resolve_model_path
    from lf.models.memory import estimate_settings

    return estimate_settings(str(resolve_model_path(model)), {"context_size": ctx, "parallel": 4}).total


def table(results: list[tuple[str, int, int, int]]) -> str:
    lines = ["| model | ctx | estimate MiB | measured RSS MiB | estimate / measured |", "|---|---:|---:|---:|---:|"]
    for model, ctx, est, rss in results:
        lines.append(f"| {model} | {ctx} | {est / 2**20:.0f} | {rss / 2**20:.0f} | {est / rss:.2f} |")
    return "\n".join(lines)


def run_cases(lf, cases=CASES) -> list[tuple[str, int, int, int]]:
    """`lf(*args) -> stdout` runs lf in an isolated state dir; each case is started, measured and stopped."""
    results = []
    for model, ctx in cases:
        lf("runtime", "start", "llamacpp", "--model", model, "--ctx-size", str(ctx))
        try:
            (record,) = json.loads(lf("runtime", "status", "llamacpp", "--json"))["instances"]
            results.append((model, ctx, estimate_for(model, ctx), measure_rss(record)))
        finally:
            lf("runtime", "stop", "llamacpp")
    return results


def measure(bench) -> list:
    from harness import Row, Sandbox

    bench.log("P10: memory estimate vs measured RSS of the llamacpp engine, 2 models × 2 context sizes")
    box = Sandbox(bench, "p10")
    results = run_cases(lambda *args: box.lf(*args, check=True).stdout)
    worst = max(results, key=lambda r: abs(r[2] / r[3] - 1))
    note = "; ".join(f"{m}@{c}: {e / 2**20:.0f}/{r / 2**20:.0f} MiB = {e / r:.2f}" for m, c, e, r in results)
    return [
        Row(
            "P10",
            "memory estimate vs measured RSS (worst of 4: 2 models × 2 context sizes)",
            f"{worst[2] / 2**20:.0f} MiB",
            f"{worst[3] / 2**20:.0f} MiB",
            worst[2] / worst[3],
            f"within ±{TOLERANCE:.0%}",
            abs(worst[2] / worst[3] - 1) <= TOLERANCE,
            note,
        )
    ]


def main() -> int:
    import os
    import subprocess
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    with tempfile.TemporaryDirectory(prefix="lf-p10-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LF_", "LLAMACPP_"))}
        env.update(LF_STATE_DIR=f"{tmp}/state", LF_DATA_DIR=f"{tmp}/data")

        def lf(*args: str) -> str:
            proc = subprocess.run(
                [sys.executable, "-m", "lf", *args], capture_output=True, text=True, env=env, cwd=tmp, timeout=600
            )
            if proc.returncode != 0:
                raise SystemExit(f"lf {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
            return proc.stdout

        try:
            results = run_cases(lf)
        finally:
            subprocess.run(
                [sys.executable, "-m", "lf", "runtime", "stop", "--all"], capture_output=True, env=env, cwd=tmp
            )
    print(table(results))
    bad = [r for r in results if abs(r[2] / r[3] - 1) > TOLERANCE]
    print(f"\n{len(results) - len(bad)} of {len(results)} within ±{TOLERANCE:.0%}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
