"""P7: `lf serve` against the engine it forwards to, called directly, in the same run.

One gateway (`lf serve`, as users run it) serves a project of five: `smol` (SmolLM2-135M on llama.cpp, never
unloaded), `cold` (the same model, unloaded 0.5 s after each answer), two external entries pointing at smol's
engine, and one pointing at a socket that accepts and never answers.

- P7a time to first token through the gateway vs straight to smol's engine (median added, target ≤ 2 ms)
- P7b streamed tokens/s (steady) through the gateway vs direct (≥ 0.98×)
- P7c 16 concurrent streaming clients: aggregate tokens/s through the gateway vs direct (≥ 0.95×)
- P7d a request for an unloaded model to its first token vs starting the same engine argv directly, polling its
  /health every 10 ms, then asking it (≤ 1.10×)
- P7e `GET /health` with those five, one hung (median ≤ 10 ms)
- P7f 1/4/8/16 concurrent streaming clients through the gateway to lf's instance (the `parallel` setting's
  default) vs the engine started directly with llama-server's defaults (4 slots, one unified KV cache); the
  engine with a single slot (what lf started before the setting) is measured alongside for reference.
- P7g time to first token through the gateway while its dashboard is open in a headless Chromium (live updates
  on every request) vs with no page open (target: nothing measurable, ≤ +1 ms)
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time

from harness import (
    CHAT_MESSAGE,
    Bench,
    BenchError,
    HungServer,
    Row,
    Sandbox,
    alternate,
    free_port,
    lf_argv,
    median,
    rates,
    stop_group,
    wait_http_ok,
)

STREAM_TOKENS = 128
CONCURRENT_TOKENS = 64


def measure(bench: Bench) -> list[Row]:
    bench.log("P7: lf serve vs the engine it forwards to, called directly")
    setup = _Setup(bench)
    try:
        rows = [
            *_overhead(bench, setup),
            _with_page(bench, setup),
            _cold(bench, setup),
            _health(bench, setup),
            *_concurrency(bench, setup),
        ]
    finally:
        setup.close()
    return rows


class _Setup:
    def __init__(self, bench: Bench):
        self.bench = bench
        self.smol_port, self.cold_port, self.port = free_port(), free_port(), free_port()
        bench.hung = bench.hung or HungServer()
        direct = f"http://127.0.0.1:{self.smol_port}/v1"
        self.box = Sandbox(bench, "p7")
        (self.box.work / "llamafarm.yaml").write_text(
            "version: v1\nname: bench\nnamespace: bench\nruntime:\n  models:\n"
            f"    - {{name: smol, provider: llamacpp, model: smollm2-135m, idle_ttl: 0, provider_config: {{port: {self.smol_port}}}}}\n"
            f"    - {{name: cold, provider: llamacpp, model: smollm2-135m, idle_ttl: 0.5, provider_config: {{port: {self.cold_port}}}}}\n"
            f"    - {{name: e1, provider: openai, model: smollm2-135m, base_url: '{direct}'}}\n"
            f"    - {{name: e2, provider: openai, model: smollm2-135m, base_url: '{direct}'}}\n"
            f"    - {{name: hung, provider: openai, model: x, base_url: 'http://127.0.0.1:{bench.hung.port}/v1'}}\n"
        )
        self.gateway = bench.spawn(
            [*lf_argv(), "serve", "--port", str(self.port), "--max-loaded", "0", "--probe-interval", "1"],
            self.box.env,
            self.box.work,
            self.box.root / "serve.log",
        )
        wait_http_ok(self.port, "/health/liveness", self.gateway, timeout=60)
        ask(self.port, "smol", 4)  # starts smol through the gateway
        self.record = self.box.record("smol")

    def close(self) -> None:
        stop_group(self.gateway)  # its SIGTERM stops the instances it started


# -- a streaming client that also times the first token -------------------------------------------------
def ask(port: int, model: str, max_tokens: int, message: str = CHAT_MESSAGE) -> dict:
    payload = {
        "model": model,
        "temperature": 0.0,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": message}],
        "stream": True,
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    try:
        conn.request(
            "POST", "/v1/chat/completions", body=json.dumps(payload), headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"port {port} model {model}: HTTP {response.status}: {response.read()[:300]!r}")
        times: list[float] = []
        for raw in response:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise BenchError(f"port {port} model {model}: {event['error']}")
            if any((c.get("delta") or {}).get("content") for c in event.get("choices") or []):
                times.append(time.perf_counter())
    finally:
        conn.close()
    if not times:
        raise BenchError(f"port {port} model {model}: no token in the answer")
    return {"started": started, "times": times, "ttft": times[0] - started, **rates(times, len(times))}


def clients(port: int, model: str, k: int) -> dict:
    """k streaming clients at once: each one's time to first token, and the aggregate token rate."""
    results: list[dict] = []
    errors: list[Exception] = []

    def one(i: int) -> None:
        try:
            results.append(ask(port, model, CONCURRENT_TOKENS, f"{CHAT_MESSAGE} ({i})"))
        except Exception as exc:  # reported below, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
    begun = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(f"{k} clients on port {port}: {errors[0]}")
    ended = max(r["times"][-1] for r in results)
    ttfts = sorted(r["ttft"] for r in results)
    return {
        "ttft_p50": statistics.median(ttfts),
        "ttft_max": ttfts[-1],
        "aggregate": sum(len(r["times"]) for r in results) / (ended - begun),
    }


# -- P7g: with the dashboard open ------------------------------------------------------------------------
def _with_page(bench: Bench, s: _Setup) -> Row:
    import shutil

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if webdriver is None or not (chromium and driver):
        return Row(
            "P7g",
            "time to first token with the dashboard open vs without",
            "-",
            "-",
            None,
            "≤ +1 ms",
            None,
            "not measured: needs chromium, chromedriver and selenium (make test installs them)",
        )
    reps = max(bench.chat_reps, 21)
    ttft = lambda: ask(s.port, "smol", 8)["ttft"]  # noqa: E731
    for _ in range(bench.warmup):
        ttft()
    before = [ttft() for _ in range(reps)]
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        browser.get(f"http://127.0.0.1:{s.port}/")
        deadline = time.monotonic() + 10
        while browser.find_elements("css selector", "#conn.live") == [] and time.monotonic() < deadline:
            time.sleep(0.05)
        opened = [ttft() for _ in range(reps)]
        rows_seen = len(browser.find_elements("css selector", "#requests tbody tr"))
    finally:
        browser.quit()
    after = [ttft() for _ in range(reps)]
    without = (median(before) + median(after)) / 2
    with_page = median(opened)
    added = (with_page - without) * 1000
    return Row(
        "P7g",
        "time to first token with the dashboard open in Chromium vs without (added, median)",
        f"{with_page * 1000:.1f} ms",
        f"{without * 1000:.1f} ms",
        with_page / without,
        "≤ +1 ms",
        added <= 1.0,
        f"added {added:+.2f} ms; {reps} streamed requests of 8 tokens without the page, {reps} with it, {reps} without again "
        f"(floor: the mean of the two medians without); the page showed {rows_seen} requests",
    )


# -- P7a, P7b, P7c --------------------------------------------------------------------------------------
def _overhead(bench: Bench, s: _Setup) -> list[Row]:
    gateway, direct = alternate(
        lambda: ask(s.port, "smol", 8), lambda: ask(s.smol_port, "x", 8), max(bench.chat_reps, 21), bench.warmup
    )
    g, d = median([r["ttft"] for r in gateway]), median([r["ttft"] for r in direct])
    added = (g - d) * 1000
    ttft = Row(
        "P7a",
        "time to first token through `lf serve` vs the engine directly (added, median)",
        f"{g * 1000:.1f} ms",
        f"{d * 1000:.1f} ms",
        g / d,
        "≤ +2 ms",
        added <= 2.0,
        f"added {added:+.2f} ms; {len(gateway)} alternating streamed requests of 8 tokens each side; median of per-round differences "
        f"{median([(a['ttft'] - b['ttft']) * 1000 for a, b in zip(gateway, direct)]):+.2f} ms",
    )

    gateway, direct = alternate(
        lambda: ask(s.port, "smol", STREAM_TOKENS),
        lambda: ask(s.smol_port, "x", STREAM_TOKENS),
        bench.heavy_reps,
        bench.warmup,
    )
    rg, rd = median([r["steady"] for r in gateway]), median([r["steady"] for r in direct])
    speed = Row(
        "P7b",
        "streamed tokens/s (steady) through `lf serve` vs direct",
        f"{rg:.1f} tok/s",
        f"{rd:.1f} tok/s",
        rg / rd,
        "≥ 0.98×",
        rg / rd >= 0.98,
        f"up to {STREAM_TOKENS} tokens, temperature 0; first-to-last rate {median([r['overall'] for r in gateway]):.1f} vs {median([r['overall'] for r in direct]):.1f} tok/s",
    )

    gateway, direct = alternate(lambda: clients(s.port, "smol", 16), lambda: clients(s.smol_port, "x", 16), 3, 1)
    ag, ad = median([r["aggregate"] for r in gateway]), median([r["aggregate"] for r in direct])
    many = Row(
        "P7c",
        "16 concurrent streaming clients: aggregate tokens/s through `lf serve` vs direct",
        f"{ag:.1f} tok/s",
        f"{ad:.1f} tok/s",
        ag / ad,
        "≥ 0.95×",
        ag / ad >= 0.95,
        f"{CONCURRENT_TOKENS} tokens per client, 3 rounds each side; time to first token p50 {median([r['ttft_p50'] for r in gateway]) * 1000:.0f} vs "
        f"{median([r['ttft_p50'] for r in direct]) * 1000:.0f} ms",
    )
    return [ttft, speed, many]


# -- P7d ------------------------------------------------------------------------------------------------------
def _cold(bench: Bench, s: _Setup) -> Row:
    argv = None

    def through_gateway() -> float:
        nonlocal argv
        _wait_state(s.port, "cold", "idle-unloaded")
        result = ask(s.port, "cold", 4, "Say hi")
        argv = argv or s.box.record("cold")["command"]
        return result["ttft"]

    def directly() -> float:
        port = free_port()
        command = list(argv)
        command[command.index("--port") + 1] = str(port)
        started = time.perf_counter()
        engine = s.bench.spawn(command, s.box.env, s.box.root, s.box.root / "cold-direct.log")
        try:
            wait_http_ok(port, "/health", engine, timeout=120)
            result = ask(port, "x", 4, "Say hi")
            return result["times"][0] - started
        finally:
            stop_group(engine)

    through_gateway()  # the first cold start records the engine's argv, used by the direct starts
    gateway, direct = alternate(through_gateway, directly, bench.heavy_reps, 0)
    g, d = median(gateway), median(direct)
    return Row(
        "P7d",
        "request for an unloaded model to its first token vs the engine started directly, then asked",
        f"{g * 1000:.0f} ms",
        f"{d * 1000:.0f} ms",
        g / d,
        "≤ 1.10×",
        g / d <= 1.10,
        f"{len(gateway)} cold starts each side; the direct side spawns the argv lf recorded, polls /health every 10 ms, then sends "
        "the same streamed request; the gateway side includes lf's own start (spec, plan, record, health wait) and the forward",
    )


def _wait_state(port: int, name: str, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/health")
            doc = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        if next(c for c in doc["components"] if c["name"] == name)["state"] == state:
            return
        time.sleep(0.05)
    raise BenchError(f"{name} did not become {state} within {timeout:g}s")


# -- P7e ------------------------------------------------------------------------------------------------------
def _health(bench: Bench, s: _Setup) -> Row:
    time.sleep(2.5)  # a couple of probe rounds, each waiting on the hung endpoint
    times = []
    for _ in range(max(bench.reps, 50)):
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        started = time.perf_counter()
        conn.request("GET", "/health")
        doc = json.loads(conn.getresponse().read())
        times.append(time.perf_counter() - started)
        conn.close()
    hung = next(c for c in doc["components"] if c["name"] == "hung")
    m = median(times) * 1000
    return Row(
        "P7e",
        "`GET /health` with 5 models, one of them hung",
        f"{m:.1f} ms",
        "-",
        None,
        "≤ 10 ms",
        m <= 10.0,
        f"{len(times)} requests, max {max(times) * 1000:.1f} ms; the hung one reported as {hung['status']!r} ({hung['message']}); "
        "answered from the monitor's last probes, which run every second in the background",
    )


# -- P7f ------------------------------------------------------------------------------------------------------
def _concurrency(bench: Bench, s: _Setup) -> list[Row]:
    command = list(s.record["command"])
    engines = {}
    for name, slots in (("defaults", "4"), ("one-slot", "1")):
        port = free_port()
        argv = [*command]
        argv[argv.index("--port") + 1] = str(port)
        argv[argv.index("--parallel") + 1] = slots
        engines[name] = (port, s.bench.spawn(argv, s.box.env, s.box.root, s.box.root / f"engine-{name}.log"))
    try:
        for port, proc in engines.values():
            wait_http_ok(port, "/health", proc, timeout=120)
            ask(port, "x", 4)
        rows = []
        parallel = command[command.index("--parallel") + 1]
        for k in (1, 4, 8, 16):
            ours = clients(s.port, "smol", k)
            theirs = clients(engines["defaults"][0], "x", k)
            single = clients(engines["one-slot"][0], "x", k)
            ratio = ours["aggregate"] / theirs["aggregate"]
            rows.append(
                Row(
                    f"P7f-{k}",
                    f"{k} concurrent clients through `lf serve` to lf's instance vs the engine with llama-server's defaults",
                    f"{ours['aggregate']:.1f} tok/s",
                    f"{theirs['aggregate']:.1f} tok/s",
                    ratio,
                    "≥ 0.95×",
                    ratio >= 0.95,
                    f"time to first token p50/max: lf {ours['ttft_p50']:.2f}/{ours['ttft_max']:.2f} s, llama-server defaults {theirs['ttft_p50']:.2f}/{theirs['ttft_max']:.2f} s, "
                    f"one slot (lf before `parallel`) {single['ttft_p50']:.2f}/{single['ttft_max']:.2f} s at {single['aggregate']:.1f} tok/s; lf's instance has "
                    f"parallel={parallel}; {CONCURRENT_TOKENS} tokens per client",
                )
            )
        return rows
    finally:
        for _port, proc in engines.values():
            stop_group(proc)


def explain(bench: Bench, row: Row) -> list[str]:
    if row.id == "P7a":
        return [
            "The gateway's added latency is its request parsing, the model lookup, one httpx request upstream and the first "
            "chunk's way back through uvicorn. Profile `lf serve` with py-spy while P7a runs to see which dominates."
        ]
    if row.id in ("P7b", "P7c") or row.id.startswith("P7f"):
        return [
            "On 2 cores the gateway's own CPU time per chunk competes with the engine's; compare `top` for both while it runs."
        ]
    if row.id == "P7d":
        return [
            "A cold request pays lf's start path (config, spec, plan, record with fsync) before the engine's spawn; see P3's "
            "reasons for where that time goes."
        ]
    return []
