"""P11: placing three models that do not fit together, by a count or by memory.

A fixed trace (seeded) of streamed completions over three llamacpp entries of different sizes: `smol` (SmolLM2-135M
at 4096 tokens, lf's estimate about 265 MiB), `gemma` (Gemma 3 270M at 4096, about 431 MiB) and `smol-long`
(SmolLM2-135M again, at 8192, about 358 MiB). Together they need about 1054 MiB; the budget is 720 MiB, which holds
`smol` beside either of the others, never `gemma` beside `smol-long`. The trace is replayed, one request after the
other, through a fresh `lf serve` each time (idle_ttl 0, so only making room unloads a model):

- (a) `--max-loaded N`, N tuned by hand for the budget: the largest count whose N largest models fit it by lf's
  estimates (1 here: any two of the three may meet, and gemma with smol-long does not fit);
- (b) `--memory-budget 720MiB --max-loaded 0`: the gateway places by memory.

For each: cold starts (`lf_gateway_instance_starts_total`), the p95 time to first token of the trace's requests
(measured here, at the client), and the peak resident memory of every engine the gateway started, together
(engine and log pump, not the gateway itself; psutil, sampled every 10 ms). The next count up (N + 1) is replayed
too and shown in the note: what a count that does not respect the budget does to memory.

Targets: (b)'s peak ≤ budget + 5% in every sample (P11b); (b)'s cold starts ≤ (a)'s (P11a).
"""

from __future__ import annotations

import http.client
import json
import math
import random
import threading
import time
from typing import Any

from harness import (
    Bench,
    BenchError,
    Row,
    Sandbox,
    free_port,
    lf_argv,
    median,
    metric_total,
    stop_group,
    wait_http_ok,
)

BUDGET_MIB = 720
SLACK = 0.05  # the peak may pass the budget by this much (an engine's memory is estimated before it runs)
MODELS = (  # entry name, packaged model, context size, share of the trace
    ("smol", "smollm2-135m", 4096, 0.5),
    ("gemma", "gemma3-270m", 4096, 0.25),
    ("smol-long", "smollm2-135m", 8192, 0.25),
)
TRACE_SEED = 11
TRACE_LENGTH = 40
TOKENS = 16
PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village,",
    "The three primary colours are",
    "A recipe for bread needs",
)
SAMPLE_INTERVAL = 0.01
TREE_REFRESH = 0.25  # seconds between walks of the gateway's whole process tree (the records find engines sooner)


def trace() -> list[tuple[str, str]]:
    """The requests, in order: (entry, prompt), the same in every run."""
    rng = random.Random(TRACE_SEED)
    names = [m[0] for m in MODELS]
    weights = [m[3] for m in MODELS]
    return [(rng.choices(names, weights)[0], rng.choice(PROMPTS)) for _ in range(TRACE_LENGTH)]


def estimates() -> dict[str, int]:
    """lf's memory estimate of each entry (bytes), as the gateway computes it (parallel 4, the default)."""
    from lf.models.catalog import resolve_model_path
    from lf.models.memory import estimate_settings

    return {
        name: estimate_settings(str(resolve_model_path(model)), {"context_size": ctx, "parallel": 4}).total
        for name, model, ctx, _ in MODELS
    }


def hand_tuned_count(budget: int, need: dict[str, int]) -> int:
    """What an operator sets max_loaded to for this budget: the largest count whose largest models fit it."""
    sizes = sorted(need.values(), reverse=True)
    count = 0
    while count < len(sizes) and sum(sizes[: count + 1]) <= budget:
        count += 1
    return max(count, 1)


# -- the memory of the engines the gateway started ------------------------------------------------------------
class EngineMemory:
    """The resident memory of every engine a gateway started, with their log pumps, summed, every 10 ms in a thread.
    Engines are found by their records (written before the engine runs) and by a walk of the gateway's process tree
    every quarter second; each is sampled until it is gone."""

    def __init__(self, box: Sandbox, gateway_pid: int, budget: int):
        import psutil

        self.psutil = psutil
        self.box, self.gateway_pid, self.budget = box, gateway_pid, budget
        self.procs: dict[int, Any] = {}  # psutil.Process by pid
        self.engines: set[int] = set()  # the records' pids (the others are log pumps, or what an engine spawned)
        self.read: dict[str, int] = {}  # record path -> its mtime when read
        self.peak = 0
        self.most_engines = 0
        self.samples = 0
        self.above = 0  # samples above the budget
        self.over = 0  # samples above the budget + SLACK (the target)
        self.gaps: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EngineMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self, pid: int | None) -> None:
        # the gateway has a record too (lf-serve): its own memory is not the engines'
        if pid is not None and pid != self.gateway_pid and pid not in self.procs:
            try:
                self.procs[pid] = self.psutil.Process(pid)
            except self.psutil.Error:
                pass

    def _from_records(self) -> None:
        for path in self.box.record_files():
            try:
                mtime = path.stat().st_mtime_ns
                if self.read.get(str(path)) == mtime:
                    continue
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being written or removed: the next sample reads it
            self.read[str(path)] = mtime
            self._watch(data.get("pid"))
            if data.get("pid") != self.gateway_pid:
                self.engines.add(data.get("pid"))
            self._watch(data.get("log_pump_pid"))

    def _from_tree(self) -> None:
        try:
            for child in self.psutil.Process(self.gateway_pid).children(recursive=True):
                self._watch(child.pid)
        except self.psutil.Error:
            pass

    def _run(self) -> None:
        walked = 0.0
        last = None
        while not self._stop.is_set():
            now = time.perf_counter()
            if last is not None:
                self.gaps.append(now - last)
            last = now
            self._from_records()
            if now - walked >= TREE_REFRESH:
                self._from_tree()
                walked = now
            total, engines = 0, 0
            for pid, proc in list(self.procs.items()):
                try:
                    rss = proc.memory_info().rss
                    total += rss
                    engines += pid in self.engines and rss > 0  # a zombie not reaped yet holds nothing
                except self.psutil.Error:
                    del self.procs[pid]
            self.samples += 1
            self.peak = max(self.peak, total)
            self.most_engines = max(self.most_engines, engines)
            self.above += total > self.budget
            self.over += total > self.budget * (1 + SLACK)
            self._stop.wait(max(0.0, SAMPLE_INTERVAL - (time.perf_counter() - now)))


# -- one replay ----------------------------------------------------------------------------------------------------
def complete(port: int, model: str, prompt: str) -> float:
    """One streamed completion; the time to its first piece of text (seconds)."""
    payload = {"model": model, "prompt": prompt, "max_tokens": TOKENS, "temperature": 0.0, "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    first = None
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(payload), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"{model}: HTTP {response.status}: {response.read()[:300]!r}")
        for raw in response:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # a comment while the model loads
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise BenchError(f"{model}: {event['error']}")
            if first is None and any(c.get("text") for c in event.get("choices") or []):
                first = time.perf_counter()
    finally:
        conn.close()
    if first is None:
        raise BenchError(f"{model}: no text in the answer to {prompt!r}")
    return first - started


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def config(ports: dict[str, int]) -> str:
    lines = ["version: v1", "name: bench", "namespace: bench", "runtime:", "  models:"]
    for name, model, ctx, _ in MODELS:
        lines.append(
            f"    - {{name: {name}, provider: llamacpp, model: {model}, context_size: {ctx}, idle_ttl: 0, "
            f"provider_config: {{port: {ports[name]}}}}}"
        )
    return "\n".join(lines) + "\n"


def replay(bench: Bench, label: str, flags: list[str], requests: list[tuple[str, str]]) -> dict:
    """A fresh gateway with `flags`, the trace through it, then stopped (its SIGTERM stops its engines)."""
    box = Sandbox(bench, f"p11-{label}")
    (box.work / "llamafarm.yaml").write_text(config({name: free_port() for name, *_ in MODELS}))
    port = free_port()
    gateway = bench.spawn(
        [*lf_argv(), "serve", "--port", str(port), "--probe-interval", "1", *flags],
        box.env,
        box.work,
        box.root / "serve.log",
    )
    try:
        wait_http_ok(port, "/health/liveness", gateway, timeout=60)
        with EngineMemory(box, gateway.pid, BUDGET_MIB * 2**20) as memory:
            began = time.perf_counter()
            ttfts = [complete(port, model, prompt) for model, prompt in requests]
            took = time.perf_counter() - began
        result: dict[str, Any] = {
            "label": label,
            "cold": int(metric_total(port, "lf_gateway_instance_starts_total")),
            "evicted": int(metric_total(port, "lf_gateway_evictions_total")),
            "ttft_p95": p95(ttfts),
            "ttft_p50": median(ttfts),
            "peak": memory.peak,
            "over": memory.over,
            "above": memory.above,
            "samples": memory.samples,
            "gap": median(memory.gaps),
            "most_engines": memory.most_engines,
            "took": took,
        }
    finally:
        stop_group(gateway, timeout=60)
    bench.log(
        f"  {label}: {result['cold']} cold starts, p95 TTFT {result['ttft_p95'] * 1000:.0f} ms, peak "
        f"{result['peak'] / 2**20:.0f} MiB ({result['samples']} samples, {result['over']} above budget + 5%)"
    )
    return result


def measure(bench: Bench) -> list[Row]:
    from lf.models.catalog import CATALOG, resolve_model_path

    what = f"{TRACE_LENGTH} requests over 3 models that do not fit {BUDGET_MIB} MiB together"
    if CATALOG["gemma3-270m"].path() is None:
        reason = "skipped: Gemma 3 270M is not installed (lf models fetch gemma3-270m; make setup does it)"
        return [Row("P11a", what, "-", "-", None, "≤ 1.00× cold starts", None, reason)]
    bench.log(f"P11: {what}: max_loaded tuned by hand vs memory_budget")
    need = estimates()
    budget = BUDGET_MIB * 2**20
    count = hand_tuned_count(budget, need)
    requests = trace()
    for _name, model, *_ in MODELS:  # the models' files in the page cache before either side starts one
        with open(resolve_model_path(model), "rb") as fh:
            while fh.read(1 << 22):
                pass
    warm = [(name, PROMPTS[0]) for name, *_ in MODELS]  # every engine started once: the first starts are slower
    replay(bench, "warm-up", ["--max-loaded", "1"], warm)
    by_count = replay(bench, f"max-loaded-{count}", ["--max-loaded", str(count)], requests)
    by_memory = replay(bench, "memory-budget", ["--memory-budget", f"{BUDGET_MIB}MiB", "--max-loaded", "0"], requests)
    next_up = replay(bench, f"max-loaded-{count + 1}", ["--max-loaded", str(count + 1)], requests)
    bench.extra["p11"] = {"count": count, "need": need, "a": by_count, "b": by_memory, "next": next_up}

    shares = ", ".join(f"{name} {sum(1 for m, _ in requests if m == name)}" for name, *_ in MODELS)
    sizes = ", ".join(f"{name} {need[name] / 2**20:.0f}" for name, *_ in MODELS)

    def summary(r: dict) -> str:
        return f"{r['cold']} cold; p95 TTFT {r['ttft_p95'] * 1000:.0f} ms; peak {r['peak'] / 2**20:.0f} MiB"

    cold = Row(
        "P11a",
        f"cold starts over {what}: `--memory-budget {BUDGET_MIB}MiB` vs the best `--max-loaded` ({count})",
        summary(by_memory),
        summary(by_count),
        by_memory["cold"] / by_count["cold"],
        "≤ 1.00× cold starts",
        by_memory["cold"] <= by_count["cold"],
        f"trace (seed {TRACE_SEED}): {shares} requests, one at a time, {TOKENS} tokens each, streamed completions; "
        f"lf's estimates (MiB): {sizes}; TTFT p50 {by_memory['ttft_p50'] * 1000:.0f} vs "
        f"{by_count['ttft_p50'] * 1000:.0f} ms; replay {by_memory['took']:.0f} vs {by_count['took']:.0f} s; "
        f"evictions {by_memory['evicted']} vs {by_count['evicted']}; "
        f"the next count up, --max-loaded {count + 1}: {summary(next_up)}, of {next_up['samples']} samples "
        f"{next_up['above']} above the budget and {next_up['over']} above it + 5%",
    )
    limit = budget * (1 + SLACK)
    peak = Row(
        "P11b",
        f"peak RSS of all engines together under `--memory-budget {BUDGET_MIB}MiB` (every 10 ms) vs the budget",
        f"{by_memory['peak'] / 2**20:.0f} MiB",
        f"{BUDGET_MIB} MiB",
        by_memory["peak"] / budget,
        "≤ 1.05× in every sample",
        by_memory["over"] == 0,
        f"{by_memory['samples']} samples (median gap {by_memory['gap'] * 1000:.1f} ms), {by_memory['over']} above "
        f"{limit / 2**20:.0f} MiB ({by_memory['above']} above {BUDGET_MIB}); at most {by_memory['most_engines']} "
        "engines at once; engine and log pump of each instance (not the gateway's own process), found by their "
        f"records and the gateway's process tree; peak with --max-loaded {count}: "
        f"{by_count['peak'] / 2**20:.0f} MiB",
    )
    return [cold, peak]


def explain(bench: Bench, row: Row) -> list[str]:
    found = bench.extra.get("p11")
    if not found:
        return []
    if row.id == "P11a":
        return [
            f"Placing by memory started {found['b']['cold']} engines where --max-loaded {found['count']} started "
            f"{found['a']['cold']}. The pool evicts the least recently used idle model until the new one fits "
            "(lf.gateway.pool.Pool._admit); it never picks the eviction that keeps the most loaded, so a trace can "
            "cost more starts than a count. Compare the `stopped … (evicted)` lines of the two gateways' logs."
        ]
    if row.id == "P11b":
        return [
            f"{found['b']['over']} samples were above the budget + 5%. The pool counts each instance as the larger of "
            "lf's estimate and its last measured RSS (lf.models.budget); an engine that grows after its measure, or "
            "an eviction that has not finished before the next start, shows here. /health's memory_used_bytes beside "
            "the samples tells which."
        ]
    return []
