"""P16: sentence embeddings (all-MiniLM-L6-v2, `lf models fetch all-minilm-l6-v2`) and what serving them costs.

- P16a: one short sentence embedded through `lf serve` (an entry `provider: llamacpp, model:
  all-minilm-l6-v2`) against the same request straight to the engine it forwards to: per-request p50 and p95
  over one keep-alive connection each, as a router calling lf would. Target: ≤ +2 ms at the median.
- P16b: the runtimes that could serve the model, side by side (informational): llama.cpp (xllamacpp, lf's
  engine) on the F16 GGUF lf converts, on F32 and Q8_0 conversions of the same folder, and with 1 and 2
  threads; and, when `--embed-floor-python` names a venv with torch + sentence-transformers (+ onnxruntime),
  sentence-transformers and onnxruntime inside one process (bench/embed_floor.py: no server, no HTTP). For each:
  start until it answers, p50/p95 per embedding, RSS, and the largest difference of its pairwise cosine
  similarities from sentence-transformers' own (tests/data/minilm_reference.json). The llama.cpp variants
  all run at once and are asked in turn, so load on the machine weighs on each alike.
- P16c: what serving embeddings costs a chat model (SmolLM2-135M): the engine argv lf records, started with
  and without `--embeddings --pooling mean`, alternately: start until healthy, and the CPU time the engine spends
  on a ~1000-token prompt and per generated token (1 thread; wall times on a shared machine swing too much to
  decide), RSS after. Target: no measurable cost (each ≤ 1.05×).

    .venv/bin/python bench/run.py --only P16 [--quick] [--embed-floor-python /tmp/minilm-ref/bin/python]
"""

from __future__ import annotations

import http.client
import json
import statistics
import time
import zipfile
from pathlib import Path

from harness import (
    CHAT_MESSAGE,
    REPO,
    Bench,
    BenchError,
    Row,
    Sandbox,
    alternate,
    free_port,
    lf_argv,
    median,
    stop_group,
    wait_http_ok,
)

MODEL = "all-minilm-l6-v2"
SENTENCE = "How do I reverse a list in Python?"
REFERENCE = REPO / "tests" / "data" / "minilm_reference.json"
LONG_PROMPT = "Summarize this list. " + " ".join(f"Item {i} is the number {i * 7} and it is fine." for i in range(70))
GATEWAY_TARGET_MS = 2.0
LONG_TEXT = " ".join([SENTENCE] * 12)  # about 120 tokens: a chat request a router embeds whole


class Client:
    """One keep-alive connection to a server's /v1/embeddings (opened again when the server closed it: llama.cpp's
    server closes a connection idle for 5 s)."""

    def __init__(self, port: int, model: str = MODEL):
        self.port, self.model = port, model
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def _post(self, text) -> bytes:
        self.conn.request(
            "POST",
            "/v1/embeddings",
            body=json.dumps({"model": self.model, "input": text}),
            headers={"Content-Type": "application/json"},
        )
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise BenchError(f"port {self.port}: HTTP {response.status}: {body[:300]!r}")
        return body

    def embed(self, text) -> list[list[float]]:
        self._alive()
        body = self._post(text)
        return [d["embedding"] for d in sorted(json.loads(body)["data"], key=lambda d: d["index"])]

    def _alive(self) -> bool:
        """Replace a connection the server closed (seen without a request); False when it did."""
        import select

        sock = self.conn.sock
        if sock is not None and select.select([sock], [], [], 0)[0]:  # readable while idle: closed by the server
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            self.conn.connect()
            return False
        return True

    def timed(self, text: str = SENTENCE) -> float:
        self._alive()  # a connection the server closed is replaced before the clock starts
        started = time.perf_counter()
        self._post(text)
        return (time.perf_counter() - started) * 1000


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def rounds(clients: dict[str, Client], n: int, warmup: int = 20, text: str = SENTENCE) -> dict[str, list[float]]:
    """n requests to each, in turn (the order rotated every round); ms per request."""
    names = list(clients)
    for _ in range(warmup):
        for name in names:
            clients[name].timed(text)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            times[name].append(clients[name].timed(text))
    return times


def max_cosine_error(client: Client) -> float:
    import numpy as np

    reference = json.loads(REFERENCE.read_text())
    vectors = np.array(client.embed(reference["sentences"]))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return float(np.abs(vectors @ vectors.T - np.array(reference["cosine"])).max())


def tree_rss_mib(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def measure(bench: Bench) -> list[Row]:
    bench.log(
        "P16: sentence embeddings (all-MiniLM-L6-v2): lf serve vs the engine, the runtimes, the cost to a chat model"
    )
    box = Sandbox(bench, "p16")
    box.lf("models", "fetch", MODEL, check=True)
    rows = [*_gateway(bench, box), *_runtimes(bench, box), *_chat_cost(bench)]
    return rows


# -- P16a ---------------------------------------------------------------------------------------------------
def _gateway(bench: Bench, box: Sandbox) -> list[Row]:
    engine_port, port = free_port(), free_port()
    (box.work / "llamafarm.yaml").write_text(
        "version: v1\nname: bench\nnamespace: bench\nruntime:\n  models:\n"
        f"    - {{name: minilm, provider: llamacpp, model: {MODEL}, idle_ttl: 0,\n"
        f"       provider_config: {{port: {engine_port}}}}}\n"
    )
    gateway = bench.spawn([*lf_argv(), "serve", "--port", str(port)], box.env, box.work, box.root / "serve.log")
    try:
        wait_http_ok(port, "/health/liveness", gateway, timeout=60)
        through = Client(port, "minilm")
        through.embed(SENTENCE)  # starts the instance on demand
        direct = Client(engine_port, "minilm")
        times = rounds({"gateway": through, "direct": direct}, bench.reps * 10)
    finally:
        stop_group(gateway)  # its SIGTERM stops the instance it started
    g, d = median(times["gateway"]), median(times["direct"])
    return [
        Row(
            "P16a",
            "one short sentence embedded through `lf serve` vs straight to the engine (p50, added)",
            f"{g:.2f} ms",
            f"{d:.2f} ms",
            g / d,
            f"≤ +{GATEWAY_TARGET_MS:g} ms",
            g - d <= GATEWAY_TARGET_MS,
            f"{len(times['gateway'])} requests each, alternately, one keep-alive connection per side; p95 "
            f"{p95(times['gateway']):.2f} vs {p95(times['direct']):.2f} ms; added at the median {g - d:+.2f} ms",
        )
    ]


# -- P16b ---------------------------------------------------------------------------------------------------
def _runtimes(bench: Bench, gateway_box: Sandbox) -> list[Row]:
    from lf.models.bert_gguf import convert, zip_reader
    from lf.models.catalog import CATALOG

    box = Sandbox(bench, "p16b")  # no llamafarm.yaml: `llamacpp` is the runtime, not an entry

    model = CATALOG[MODEL]
    start_port = free_port()
    box.lf("runtime", "start", "llamacpp", "--model", MODEL, "--port", str(start_port), check=True)
    record = box.record("llamacpp")
    argv = record["command"]
    box.lf("runtime", "stop", "llamacpp", check=True)
    archive = model._folder() / model.conversion.archive  # type: ignore[operator, union-attr]
    files = {"f16": Path(record["model_path"])}  # the GGUF `lf models fetch` wrote into the bench's data dir
    for outtype in ("f32", "q8_0"):
        files[outtype] = bench.root / f"minilm-{outtype}.gguf"
        convert(zip_reader(archive), files[outtype], name="all-MiniLM-L6-v2", outtype=outtype)

    sleep = {"OMP_WAIT_POLICY": "PASSIVE"}  # what lf gives an embedding model's engine (runtimes/llamacpp/hooks.py)
    variants = {
        "llama.cpp F16, 2 threads, idle OpenMP threads sleep (lf's)": ("f16", "2", sleep),
        "llama.cpp F16, 2 threads, idle OpenMP threads spin (OpenMP's default)": ("f16", "2", {}),
        "llama.cpp F16, 1 thread": ("f16", "1", sleep),
        "llama.cpp F32, 2 threads, sleep": ("f32", "2", sleep),
        "llama.cpp Q8_0, 2 threads, sleep": ("q8_0", "2", sleep),
    }
    env = {
        name: {**{k: v for k, v in box.env.items() if k != "OMP_WAIT_POLICY"}, **e}
        for name, (*_, e) in variants.items()
    }

    def engine_argv(outtype: str, threads: str, port: int) -> list[str]:
        out = list(argv)
        out[out.index("--model") + 1] = str(files[outtype])
        out[out.index("--threads") + 1] = threads
        out[out.index("--port") + 1] = str(port)
        return out

    starts: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(bench.heavy_reps):
        for name in list(variants) if i % 2 == 0 else reversed(list(variants)):
            port = free_port()
            began = time.perf_counter()
            proc = bench.spawn(engine_argv(*variants[name][:2], port), env[name], box.root, box.root / "start.log")
            starts[name].append(wait_http_ok(port, "/health", proc, timeout=120) - began)
            stop_group(proc)

    running, clients = {}, {}
    for name, (outtype, threads, _) in variants.items():
        port = free_port()
        running[name] = bench.spawn(engine_argv(outtype, threads, port), env[name], box.root, box.root / "engines.log")
        wait_http_ok(port, "/health", running[name], timeout=120)
        clients[name] = Client(port)
    try:
        errors = {name: max_cosine_error(c) for name, c in clients.items()}
        times = rounds(clients, bench.reps * 10)
        long_times = rounds(clients, bench.reps * 2, warmup=2, text=LONG_TEXT)
        rss = {name: tree_rss_mib(proc.pid) for name, proc in running.items()}
    finally:
        for proc in running.values():
            stop_group(proc)

    rows = []
    base = next(iter(variants))
    for name in variants:
        rows.append(
            Row(
                "P16b",
                f"{name}: start until healthy; one embedding p50 (HTTP)",
                f"{median(starts[name]):.2f} s; {median(times[name]):.2f} ms",
                f"{median(starts[base]):.2f} s; {median(times[base]):.2f} ms",
                median(times[name]) / median(times[base]),
                "informational",
                None,
                f"p95 {p95(times[name]):.2f} ms; a ~120-token text p50 {median(long_times[name]):.1f} ms; "
                f"RSS {rss[name]:.0f} MiB; max pairwise cosine difference from "
                f"sentence-transformers {errors[name]:.4f}; needs: lf (xllamacpp) and `lf models fetch {MODEL}`",
            )
        )
    rows += _in_process(bench, archive, base, median(times[base]), median(starts[base]))
    return rows


def _in_process(bench: Bench, archive: Path, base: str, base_ms: float, base_start: float) -> list[Row]:
    import subprocess

    python = bench.args.embed_floor_python
    if not python:
        return [
            Row(
                "P16b",
                "sentence-transformers / onnxruntime in-process",
                "-",
                "-",
                None,
                "informational",
                None,
                "skipped: give --embed-floor-python PYTHON (a venv with torch, sentence-transformers, onnxruntime, "
                "onnx, onnxscript; see bench/embed_floor.py)",
            )
        ]
    folder = bench.root / "minilm-hf"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    rows = []
    for backend, needs in (
        ("torch", "torch + sentence-transformers (a venv of ~1.5 GB) and an HTTP server of one's own"),
        ("onnx", "onnxruntime + tokenizers, an ONNX export (made with torch), and an HTTP server of one's own"),
    ):
        results = []
        for threads in ("1", "2"):
            argv = [python, str(Path(__file__).with_name("embed_floor.py")), "--model-dir", str(folder)]
            argv += ["--backend", backend, "--threads", threads, "--cache", str(bench.root / "onnx")]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-800:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        for r in results:
            rows.append(
                Row(
                    "P16b",
                    f"{backend} in-process (no HTTP), {r['threads']} thread(s): load; one embedding p50",
                    f"{r['load_s']:.2f} s; {r['p50_ms']:.2f} ms",
                    f"{base_start:.2f} s; {base_ms:.2f} ms",
                    r["p50_ms"] / base_ms,
                    "informational",
                    None,
                    f"p95 {r['p95_ms']:.2f} ms; peak RSS {r['rss_mib']:.0f} MiB; cosine to sentence-transformers "
                    f"{r['cosine_to_reference']:.5f}; measured after the llama.cpp rows, not interleaved; "
                    f"needs: {needs}",
                )
            )
    return rows


# -- P16c ---------------------------------------------------------------------------------------------------
_asked = iter(range(1_000_000))


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _chat(port: int, model: str, message: str, max_tokens: int) -> dict:
    """One non-streamed chat request (ignore_eos: always max_tokens tokens); its tokens and wall time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    payload = {"model": model, "messages": [{"role": "user", "content": message}], "temperature": 0.0}
    payload.update(max_tokens=max_tokens, ignore_eos=True)
    started = time.perf_counter()
    try:
        conn.request(
            "POST", "/v1/chat/completions", body=json.dumps(payload), headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"port {port}: HTTP {response.status}: {body[:300]!r}")
    return {"tokens": json.loads(body)["usage"]["completion_tokens"], "wall": time.perf_counter() - started}


def _chat_cost(bench: Bench) -> list[Row]:
    """The engine argv lf records for SmolLM2, with and without embeddings. On a shared machine wall times swing
    by ±40% from one minute to the next; the CPU time the engine process spends on the same request does not,
    so that is what decides, with 1 thread (no time spent spinning between steps); starts are wall time."""
    box = Sandbox(bench, "p16c")
    _, argv, _, _ = bench.llamacpp_argv_pair(box)
    model = argv[argv.index("--alias") + 1]
    on = ["--embeddings", "--pooling", "mean"]

    def with_port(extra: list[str], port: int, threads: str | None = None) -> list[str]:
        out = list(argv)
        out[out.index("--port") + 1] = str(port)
        if threads:
            out[out.index("--threads") + 1] = threads
        return out + extra

    def start(extra: list[str]) -> float:
        port = free_port()
        began = time.perf_counter()
        proc = bench.spawn(with_port(extra, port), box.env, box.root, box.root / "start.log")
        took = wait_http_ok(port, "/health", proc, timeout=120) - began
        stop_group(proc)
        return took

    start_on, start_off = alternate(lambda: start(on), lambda: start([]), bench.heavy_reps, bench.warmup)

    ports = {"on": free_port(), "off": free_port()}
    procs = {
        key: bench.spawn(
            with_port(on if key == "on" else [], ports[key], "1"), box.env, box.root, box.root / f"{key}.log"
        )
        for key in ports
    }
    samples: dict[str, dict[str, list[float]]] = {key: {"prompt": [], "token": [], "tok_s": []} for key in ports}
    try:
        for key in procs:
            wait_http_ok(ports[key], "/health", procs[key], timeout=120)
        Client(ports["on"], model).embed("check that embeddings answer")
        for i in range(bench.warmup + bench.heavy_reps):
            for key in ("on", "off") if i % 2 == 0 else ("off", "on"):
                pid, port = procs[key].pid, ports[key]
                before = _cpu_seconds(pid)
                _chat(port, model, f"Request {next(_asked)}. {LONG_PROMPT}", 1)  # a new prefix: nothing cached
                prompt = _cpu_seconds(pid) - before
                before = _cpu_seconds(pid)
                answer = _chat(port, model, CHAT_MESSAGE, 128)
                per_token = (_cpu_seconds(pid) - before) / answer["tokens"]
                if i >= bench.warmup:
                    samples[key]["prompt"].append(prompt)
                    samples[key]["token"].append(per_token * 1000)
                    samples[key]["tok_s"].append(answer["tokens"] / answer["wall"])
        rss = {key: tree_rss_mib(proc.pid) for key, proc in procs.items()}
    finally:
        for proc in procs.values():
            stop_group(proc)

    def m(key: str, what: str) -> float:
        return median(samples[key][what])

    s_on, s_off = median(start_on), median(start_off)
    rows = [
        Row(
            "P16c",
            "SmolLM2 engine with `--embeddings --pooling mean` vs without: start until healthy (lf's argv)",
            f"{s_on:.2f} s",
            f"{s_off:.2f} s",
            s_on / s_off,
            "≤ 1.05×",
            s_on / s_off <= 1.05,
            f"{len(start_on)} starts each, alternately; IQR {_iqr(start_on)} vs {_iqr(start_off)} s",
        )
    ]
    for what, label, unit in (
        ("prompt", "… CPU time of a ~1000-token prompt (1 thread)", "s"),
        ("token", "… CPU time per generated token (1 thread, 128 tokens)", "ms"),
    ):
        ratio = m("on", what) / m("off", what)
        pairs = median([a / b for a, b in zip(samples["on"][what], samples["off"][what])])
        rows.append(
            Row(
                "P16c",
                label,
                f"{m('on', what):.3f} {unit}",
                f"{m('off', what):.3f} {unit}",
                ratio,
                "≤ 1.05×",
                ratio <= 1.05,
                f"{len(samples['on'][what])} each, alternately; IQR {_iqr(samples['on'][what])} vs "
                f"{_iqr(samples['off'][what])} {unit}; median of per-round ratios {pairs:.3f}×; wall tok/s "
                f"{m('on', 'tok_s'):.1f} vs {m('off', 'tok_s'):.1f}; RSS after {rss['on']:.0f} vs {rss['off']:.0f} MiB",
            )
        )
    return rows


def _iqr(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    q = statistics.quantiles(values, n=4)
    return f"{q[0]:.2f}–{q[2]:.2f}"


def explain(bench: Bench, row: Row) -> list[str]:
    if row.id == "P16a":
        return ["lf serve adds more than 2 ms to an embedding request: profile `lf serve` with py-spy while P16a runs."]
    return [
        "Serving embeddings costs the chat model something measurable here: leave `embeddings` off by default for "
        "llamacpp entries (runtimes/llamacpp/hooks.py turns it on for embedding models only)."
    ]
