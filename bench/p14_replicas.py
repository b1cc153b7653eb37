"""P14: replicas of one model entry behind `lf serve` and behind Ray Serve, against the same replicas called directly.

A loopback cluster of one node (`lf cluster start`) serves an entry with `replicas: 4` whose engine is a paced fake
upstream (tests/fakes/server.py: an OpenAI-compatible server that streams N tokens, sleeping between them, so the
upstream itself costs almost no CPU and what is measured is the path). Then, in the same run:

- direct: 64 concurrent streaming clients spread evenly over the 4 engines (16 each), straight to their ports:
  the sum of the replicas;
- Ray Serve: the same 64 clients to the entry's Ray Serve URL (its HTTP proxy picks a replica for each);
- time to first token of one client at a time, alternating direct and through Ray Serve: what the path adds.

The `lf serve` half runs first, without a cluster: the same entry (`replicas: 4`, local instances NAME, NAME-r2, …)
behind `lf serve`, the same 64 clients to its one endpoint, each replica's share from the engines' logs, and the
time to first token of one client at a time, alternating direct and through the gateway.

Each replica's share of the Ray Serve run is counted from the engines' own request logs. Printed as a table.

    .venv/bin/python bench/p14_replicas.py [--streams 64] [--replicas 4] [--tokens 128] [--delay 0.02]

The Ray Serve half needs the cluster environment (`lf cluster install`; the test suite's, in $LF_TEST_CACHE/data, is
used when the user has none); without one it says so and measures only the `lf serve` half.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FAKE_SERVER = REPO / "tests" / "fakes" / "server.py"
MANIFEST = """\
# bench only: an OpenAI-compatible upstream that streams `tokens` tokens, `token_delay` s apart
name = "paced"
description = "paced fake upstream (bench)"
managed = true
default_port = 19900
api_base = "/v1"
default_model = "paced-model"
start_timeout = 30

[settings.port]

[settings.host]

[settings.token_delay]
type = "number"
default = 0.02

[settings.tokens]
type = "integer"
default = 128

[health]
path = "/health"
ready = "http-ok"

[[engines]]
name = "fake-server"
executable = "python3"
argv = ["{exe}", "SERVER", "--host", "{host}", "--port", "{port}", "--model", "{model}",
        "--token-delay", "{token_delay}", "--tokens", "{tokens}", "--log-requests"]
"""
PROJECT = """\
version: v1
name: p14
namespace: bench
runtime:
  models:
    - name: paced
      provider: paced
      model: paced-model
      replicas: {replicas}
      provider_config: {{token_delay: {delay}, tokens: {tokens}}}
"""


@dataclass
class Stream:
    tokens: int
    ttft: float  # seconds from sending the request to the first token
    started: float
    ended: float


def stream(url: str, tokens: int, first_only: bool = False) -> Stream:
    """One streamed chat completion to `url` (…/v1/chat/completions), counting SSE content events; with
    `first_only`, hung up after the first token (time to first token is all that is wanted)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    body = json.dumps({"model": "paced", "messages": [{"role": "user", "content": "go"}], "stream": True})
    started = time.perf_counter()
    first = None
    count = 0
    try:
        conn.request("POST", parts.path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}: {response.read()[:200]!r}")
        for raw in response:
            line = raw.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            for choice in json.loads(line[5:]).get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    count += 1
                    if first is None:
                        first = time.perf_counter()
            if first_only and first is not None:
                break
    finally:
        conn.close()
    if first_only:
        return Stream(count, (first or time.perf_counter()) - started, started, time.perf_counter())
    if count != tokens:
        raise RuntimeError(f"{url}: {count} tokens, expected {tokens}")
    ended = time.perf_counter()
    return Stream(count, (first or ended) - started, started, ended)


def concurrent(urls: list[str], tokens: int) -> tuple[float, list[Stream]]:
    """One stream per URL, all at once; (aggregate tokens/s over the wall time, the streams)."""
    results: list[Stream | BaseException] = []
    lock = threading.Lock()
    gate = threading.Barrier(len(urls))

    def client(url: str) -> None:
        gate.wait()
        try:
            got: Stream | BaseException = stream(url, tokens)
        except BaseException as exc:  # noqa: BLE001 - reported below
            got = exc
        with lock:
            results.append(got)

    threads = [threading.Thread(target=client, args=(url,)) for url in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(urls)} streams failed: {failures[0]}")
    done = [r for r in results if isinstance(r, Stream)]
    wall = max(s.ended for s in done) - min(s.started for s in done)
    return sum(s.tokens for s in done) / wall, done


def sandbox(root: Path, base_env: dict, data_dir: Path, replicas: int, tokens: int, delay: float) -> tuple[Path, dict]:
    """The paced runtime and the project in a throw-away folder: (the project's folder, the env lf runs with)."""
    runtimes = root / "runtimes" / "paced"
    runtimes.mkdir(parents=True)
    (runtimes / "manifest.toml").write_text(MANIFEST.replace("SERVER", str(FAKE_SERVER)))
    work = root / "work"
    work.mkdir()
    (work / "llamafarm.yaml").write_text(PROJECT.format(replicas=replicas, delay=delay, tokens=tokens))
    env = {
        **base_env,
        "LF_STATE_DIR": str(root / "state"),
        "LF_DATA_DIR": str(data_dir),
        "LF_RUNTIMES_PATH": str(root / "runtimes"),
    }
    return work, env


class Cluster:
    """A loopback cluster with the entry deployed, in a throw-away state dir; stopped by close()."""

    def __init__(self, root: Path, base_env: dict, data_dir: Path, replicas: int, tokens: int, delay: float):
        self.root = root
        self.work, self.env = sandbox(root, base_env, data_dir, replicas, tokens, delay)
        self.started = False

    def lf(self, *args: str, timeout: float = 600) -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "lf", *args, "--json"],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.work,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"lf {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout)

    def start(self, replicas: int) -> dict:
        from harness import free_port

        self.started = True
        port, serve_port = free_port(), free_port()
        self.lf("cluster", "start", "--port", str(port), "--num-cpus", str(replicas), "--serve-port", str(serve_port))
        return self.lf("cluster", "deploy")["entries"][0]

    def head_pid(self) -> int:
        return json.loads((self.root / "state" / "instances" / "ray-head.json").read_text())["pid"]

    def engines(self) -> list[dict]:
        """The replicas' engines: their records on this node."""
        folder = self.root / "state" / "projects" / "bench" / "p14" / "instances"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("paced-*.json"))]

    def close(self) -> None:
        if self.started:
            subprocess.run(
                [sys.executable, "-m", "lf", "cluster", "stop"],
                capture_output=True,
                env=self.env,
                cwd=self.work,
                timeout=180,
            )


class Gateway:
    """`lf serve` for the entry with `replicas: N` (local instances), in a throw-away state dir; stopped by close()."""

    def __init__(self, root: Path, base_env: dict, replicas: int, tokens: int, delay: float):
        self.root = root
        self.work, self.env = sandbox(root, base_env, root / "data", replicas, tokens, delay)
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> str:
        from harness import free_port, wait_http_ok

        port = free_port()
        log = open(self.root / "serve.log", "wb")  # the gateway's, closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lf", "serve", "--port", str(port), "--idle-ttl", "0"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.work,
            start_new_session=True,
        )
        wait_http_ok(port, "/health/liveness", self.proc, timeout=60)
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return self.url

    def engines(self) -> list[dict]:
        """The replicas' engines: their records."""
        found = sorted((self.root / "state").rglob("instances/paced*.json"))
        return [json.loads(p.read_text()) for p in found]

    def close(self) -> None:
        from harness import stop_group

        if self.proc is not None:
            stop_group(self.proc, timeout=60)


def run_gateway(root: Path, base_env: dict, args, log=print) -> dict:
    """The `lf serve` half: rates, streams, shares and single-client times to first token, direct and through it."""
    gateway = Gateway(root, base_env, args.replicas, args.tokens, args.delay)
    try:
        log(f"P14: lf serve with {args.replicas} local replicas of a paced upstream")
        served = gateway.start()
        for _ in range(args.replicas * 2):  # starts the replicas (each on its first request), warms the paths
            stream(served, args.tokens)
        engines = gateway.engines()
        if len(engines) != args.replicas:
            raise RuntimeError(f"{len(engines)} engines running, expected {args.replicas}")
        direct = [e["base_url"] + "/chat/completions" for e in engines]
        for url in direct:
            stream(url, args.tokens)
        rounds = []
        for i in range(args.rounds):
            log(f"  round {i + 1}/{args.rounds}: {args.streams} streams direct, then through lf serve")
            direct_rate, direct_streams = concurrent(
                [direct[j % len(direct)] for j in range(args.streams)], args.tokens
            )
            before = requests_logged(engines)
            served_rate, served_streams = concurrent([served] * args.streams, args.tokens)
            after = requests_logged(engines)
            rounds.append(
                (direct_rate, served_rate, direct_streams, served_streams, {n: after[n] - before[n] for n in after})
            )
        ttft_direct, ttft_served = [], []
        for i in range(args.ttft_samples):
            ttft_direct.append(stream(direct[i % len(direct)], args.tokens, first_only=True).ttft)
            ttft_served.append(stream(served, args.tokens, first_only=True).ttft)
    finally:
        gateway.close()
    return {"rounds": rounds, "ttft_direct": ttft_direct, "ttft_served": ttft_served}


def cpu_by_role(head_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the node's processes (and the engines, its descendants), by what they are."""
    import psutil

    totals: dict[str, float] = {}
    try:
        procs = [psutil.Process(head_pid), *psutil.Process(head_pid).children(recursive=True)]
    except psutil.Error:
        return totals
    for proc in procs:
        try:
            title = " ".join(proc.cmdline())
            times = proc.cpu_times()
        except psutil.Error:
            continue
        if "ProxyActor" in title:
            role = "Ray Serve proxy"
        elif "ServeReplica" in title:
            role = "replicas (lf's relay)"
        elif "server.py" in title:
            role = "engines (paced fakes)"
        else:
            role = "Ray (raylet, GCS, controller, agents)"
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals


def requests_logged(engines: list[dict]) -> dict[str, int]:
    """POSTs each engine logged so far (the fake server logs a numbered line per request)."""
    out = {}
    for engine in engines:
        try:
            text = Path(engine["log_path"]).read_text(errors="replace")
        except OSError:
            text = ""
        out[engine["name"]] = sum(1 for line in text.splitlines() if "POST /v1/chat/completions" in line)
    return out


def cluster_data_dir() -> Path | None:
    """Where an installed cluster environment is: the user's data dir, else the test suite's cache."""
    candidates = []
    if os.environ.get("LF_DATA_DIR"):
        candidates.append(Path(os.environ["LF_DATA_DIR"]).expanduser())
    else:
        from lf.dirs import data_dir

        candidates.append(data_dir())
    candidates.append(Path(os.environ.get("LF_TEST_CACHE") or "~/.cache/lf-test").expanduser() / "data")
    return next((c for c in candidates if (c / "envs" / "cluster" / "lf-installed.json").is_file()), None)


def run(root: Path, base_env: dict, args, log=print) -> list[list[str]]:
    """Both halves, `lf serve` first; the table of both (the Ray Serve half only where a cluster env is installed)."""
    gateway = run_gateway(root / "gateway", base_env, args, log)
    rows = table(args, "lf serve", gateway)
    data = cluster_data_dir()
    if data is None:
        log("P14: no cluster environment (lf cluster install): the Ray Serve half is not measured")
        return rows
    return rows + table(args, "Ray Serve", run_ray(root / "ray", base_env, args, data, log))[1:]


def run_ray(root: Path, base_env: dict, args, data: Path, log=print) -> dict:
    cluster = Cluster(root, base_env, data, args.replicas, args.tokens, args.delay)
    try:
        log(f"P14: starting a loopback cluster with {args.replicas} replicas of a paced upstream")
        entry = cluster.start(args.replicas)
        served = entry["base_url"] + "/chat/completions"
        engines = cluster.engines()
        if len(engines) != args.replicas:
            raise RuntimeError(f"{len(engines)} engines running, expected {args.replicas}")
        direct = [e["base_url"] + "/chat/completions" for e in engines]
        for url in [*direct, served]:  # warm up every path (connections, Ray Serve's router)
            stream(url, args.tokens)
        head_pid = cluster.head_pid()
        rounds = []
        cpu: dict[str, float] = {}
        for i in range(args.rounds):
            log(f"  round {i + 1}/{args.rounds}: {args.streams} streams direct, then through Ray Serve")
            spread_over = [direct[j % len(direct)] for j in range(args.streams)]
            direct_rate, direct_streams = concurrent(spread_over, args.tokens)
            before = requests_logged(engines)
            cpu_before = cpu_by_role(head_pid)
            served_rate, served_streams = concurrent([served] * args.streams, args.tokens)
            for role, seconds in cpu_by_role(head_pid).items():
                cpu[role] = cpu.get(role, 0.0) + seconds - cpu_before.get(role, 0.0)
            after = requests_logged(engines)
            share = {name: after[name] - before[name] for name in after}
            rounds.append((direct_rate, served_rate, direct_streams, served_streams, share))
        ttft_direct, ttft_served = [], []
        for i in range(args.ttft_samples):  # one client at a time, alternating
            ttft_direct.append(stream(direct[i % len(direct)], args.tokens, first_only=True).ttft)
            ttft_served.append(stream(served, args.tokens, first_only=True).ttft)
    finally:
        cluster.close()
    log("  CPU seconds during the Ray Serve runs: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items())))
    return {"rounds": rounds, "ttft_direct": ttft_direct, "ttft_served": ttft_served}


def table(args, path: str, result: dict) -> list[list[str]]:
    """The header, then three rows for one path: the replicas called directly, through `path`, and the difference."""
    rounds, ttft_direct, ttft_served = result["rounds"], result["ttft_direct"], result["ttft_served"]
    direct_rate = statistics.median(r[0] for r in rounds)
    served_rate = statistics.median(r[1] for r in rounds)
    ideal = args.streams * args.tokens / (args.tokens * args.delay)

    def ttft(values: list[float]) -> str:
        q = statistics.quantiles(values, n=10)
        return f"{statistics.median(values) * 1000:.1f} ms (p90 {q[8] * 1000:.1f})"

    shares: dict[str, int] = {}
    for r in rounds:
        for name, count in r[4].items():
            shares[name] = shares.get(name, 0) + count
    total = sum(shares.values()) or 1
    share_text = " / ".join(f"{100 * c / total:.0f}%" for c in shares.values())
    direct_c_ttft = statistics.median(s.ttft for r in rounds for s in r[2])
    served_c_ttft = statistics.median(s.ttft for r in rounds for s in r[3])
    added_ttft = (statistics.median(ttft_served) - statistics.median(ttft_direct)) * 1000
    header = [
        "path",
        f"aggregate tok/s ({args.streams} streams)",
        "vs direct",
        "TTFT, 1 client",
        f"TTFT, {args.streams} clients",
        "per-replica share",
    ]
    return [
        header,
        [
            f"direct (sum of replicas; the {path} run)",
            f"{direct_rate:.0f}",
            "1.00×",
            ttft(ttft_direct),
            f"{direct_c_ttft * 1000:.0f} ms",
            f"{100 / args.replicas:.0f}% each (by construction)",
        ],
        [
            path,
            f"{served_rate:.0f}",
            f"{served_rate / direct_rate:.2f}×",
            ttft(ttft_served),
            f"{served_c_ttft * 1000:.0f} ms",
            share_text,
        ],
        [
            f"added by {path}",
            "",
            "",
            f"{added_ttft:+.1f} ms",
            f"{(served_c_ttft - direct_c_ttft) * 1000:+.0f} ms",
            f"ideal aggregate: {ideal:.0f} tok/s",
        ],
    ]


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def measure(bench) -> list:
    """For bench/run.py: the same run in the bench's sandbox, one row per path (targets: lf serve ≥ 0.95× the
    replicas' sum, each replica within ±15% of an even share, ≤ 2 ms added to the first token; Ray Serve's
    informational)."""
    from harness import Row

    args = argparse.Namespace(streams=64, replicas=4, tokens=128, delay=0.02, rounds=3, ttft_samples=50)
    rows = run(bench.root / "p14", bench.base_env, args, log=bench.log)
    out = []
    for at in range(1, len(rows), 3):
        direct, served, added = rows[at], rows[at + 1], rows[at + 2]
        ratio = float(served[2].rstrip("×"))
        shares = [float(x.rstrip("%")) for x in served[5].split(" / ")] if served[5] else []
        even = 100 / args.replicas
        added_ms = float(added[3].split()[0])
        gateway = served[0] == "lf serve"
        met = ratio >= 0.95 and all(abs(x - even) <= 0.15 * even for x in shares) and added_ms <= 2
        out.append(
            Row(
                "P14" if gateway else "P14r",
                f"{served[0]}: {args.replicas} paced replicas, {args.streams} concurrent streams, aggregate tok/s",
                served[1],
                direct[1],
                ratio,
                "≥ 0.95×, shares ±15%, ≤ +2 ms TTFT" if gateway else "informational",
                met if gateway else None,
                f"TTFT one client: {served[3]} vs {direct[3]} ({added[3]}); share per replica {served[5]}",
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds between tokens")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttft-samples", type=int, default=50)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from harness import FOREIGN_ENV_PREFIXES

    root = Path(tempfile.mkdtemp(prefix="lf-p14-"))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV_PREFIXES)}
    base_env.update({"NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    try:
        rows = run(root, base_env, args, log=lambda text: print(text, file=sys.stderr, flush=True))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
