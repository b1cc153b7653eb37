"""lf's start-up and overhead benchmark: every claim is a ratio against a floor measured in the same run.

    make bench                       # = .venv/bin/python bench/run.py  (writes bench/RESULTS.md)
    .venv/bin/python bench/run.py --quick            # fewer repetitions, prints only
    .venv/bin/python bench/run.py --only P1,P2       # a subset
    .venv/bin/python bench/run.py --llama-cpp-python /path/to/python   # P6 with another llama-cpp-python

Each measurement runs the subject and its floor alternately (ABAB…, the order flipped every round),
after warm-up runs, and reports medians. Everything runs under throw-away LF_STATE_DIR/LF_DATA_DIR and a
throw-away working dir, on free ports of its own, and everything started is stopped again on exit,
failure or Ctrl-C. See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
FLOOR_IMPORT = [PY, "-c", "import typer"]
CHAT_MESSAGE = "Write a short story about a robot who learns to paint."
CHAT_TOKENS = 64
ENGINE_TOKENS = 128
PROBE_TIMEOUT = 1.0  # `lf runtime status`'s default --probe-timeout
HEAVY = ("httpx", "pydantic", "rich", "psutil")
# variables that would make lf pick up the user's settings instead of the bench's
FOREIGN_ENV_PREFIXES = ("LF_", "LLAMACPP_", "LEMONADE_", "OLLAMA_", "VLLM_", "LLAMA_CPP_PYTHON_", "TYPER_", "PYTHONPROFILEIMPORTTIME", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")


class BenchError(Exception):
    pass


def lf_argv() -> list[str]:
    """`lf` as users run it: the console script beside this interpreter (else `python -m lf`)."""
    script = Path(PY).parent / "lf"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [PY, "-m", "lf"]


# -- running and timing one process ----------------------------------------------------------------
@dataclass
class Run:
    wall: float  # seconds from fork to reaped
    rss_kb: int  # peak resident set of the child (ru_maxrss from wait4 on that very child)
    rc: int
    stdout: str
    stderr: str
    chunks: list[tuple[float, bytes]] = field(default_factory=list)  # streamed stdout, with arrival times


def _wait4(proc: subprocess.Popen, timeout: float) -> tuple[int, object]:
    """Reap `proc` with wait4 (its own rusage, unlike RUSAGE_CHILDREN's high-water mark)."""
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        try:
            proc.kill()
        except OSError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    try:
        while True:
            try:
                _, status, usage = os.wait4(proc.pid, 0)
                break
            except InterruptedError:
                continue
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if timed_out.is_set():
        raise BenchError(f"{' '.join(map(str, proc.args))} did not finish within {timeout:g}s")
    return proc.returncode, usage


_live: set[subprocess.Popen] = set()  # children of run() not reaped yet: interrupted with the bench


def interrupt_live(timeout: float = 20.0) -> None:
    """SIGINT to every child run() is waiting for (lf stops what it launched on Ctrl-C), SIGKILL if it lingers."""
    for proc in list(_live):
        try:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        except (OSError, ChildProcessError):
            pass
        _live.discard(proc)


def run(argv: list[str], env: dict, cwd: Path, timeout: float = 300, stream: bool = False) -> Run:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        chunks: list[tuple[float, bytes]] = []
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if stream else out, stderr=err, env=env, cwd=cwd)
        _live.add(proc)
        if stream:
            fd = proc.stdout.fileno()
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                chunks.append((time.perf_counter(), data))
            proc.stdout.close()
        rc, usage = _wait4(proc, timeout)
        wall = time.perf_counter() - started
        _live.discard(proc)
        out.seek(0)
        err.seek(0)
        stdout = b"".join(c for _, c in chunks).decode("utf-8", "replace") if stream else out.read().decode("utf-8", "replace")
        return Run(wall, usage.ru_maxrss, rc, stdout, err.read().decode("utf-8", "replace"), chunks)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def alternate(subject, floor, reps: int, warmup: int) -> tuple[list, list]:
    """Warm up both, then run them alternately, flipping the order every round."""
    for _ in range(warmup):
        subject()
        floor()
    a, b = [], []
    for i in range(reps):
        if i % 2 == 0:
            a.append(subject())
            b.append(floor())
        else:
            b.append(floor())
            a.append(subject())
    return a, b


# -- small network helpers -------------------------------------------------------------------------
_ports_given: set[int] = set()


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def http_status(port: int, path: str, timeout: float = 0.5) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64)
        return int(head.split()[1])
    except (OSError, ValueError, IndexError):
        return None


def wait_http_ok(port: int, path: str, proc: subprocess.Popen | None, timeout: float, interval: float = 0.01) -> float:
    """Poll GET path every `interval` until 200; the moment it answered (perf_counter)."""
    deadline = time.monotonic() + timeout
    while True:
        if http_status(port, path) == 200:
            return time.perf_counter()
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode} before it answered {path}")
        if time.monotonic() > deadline:
            raise BenchError(f"nothing answered 200 on 127.0.0.1:{port}{path} within {timeout:g}s")
        time.sleep(interval)


def stream_chat(port: int, model: str, message: str, max_tokens: int) -> dict:
    """One streamed chat request from this process; token arrival times, counted per SSE content event."""
    payload = {"model": model, "temperature": 0.0, "max_tokens": max_tokens, "messages": [{"role": "user", "content": message}], "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(payload), headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"port {port}: HTTP {response.status}: {response.read()[:300]!r}")
        times: list[float] = []
        text = []
        for raw in response:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            for choice in json.loads(data).get("choices") or []:
                token = (choice.get("delta") or {}).get("content")
                if token:
                    times.append(time.perf_counter())
                    text.append(token)
    finally:
        conn.close()
    return {"tokens": len(times), **rates(times, len(times)), "text": "".join(text)}


def rates(times: list[float], tokens: int) -> dict:
    """Two token rates from arrival times: `steady` = 1 ÷ the median gap between tokens (what the target uses:
    a burst of other work on the machine stalls a few tokens but does not move the median), and `overall` =
    (tokens − 1) ÷ (last − first), which such a stall does move."""
    if len(times) < 2 or times[-1] <= times[0]:
        return {"steady": float("nan"), "overall": float("nan")}
    gap = statistics.median(b - a for a, b in zip(times, times[1:]))
    return {"steady": 1 / gap if gap > 0 else float("nan"), "overall": (tokens - 1) / (times[-1] - times[0])}


class HungServer:
    """Accepts connections and never answers: a hung runtime, as far as a probe can tell."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if len(self.conns) > 256:  # keep the fd count bounded over many runs
                self.conns.pop(0).close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        for conn in self.conns:
            conn.close()


# -- sandboxes: one state dir + working dir (+ llamafarm.yaml) per scenario ------------------------
def yaml_config(models: list[dict]) -> str:
    lines = ["version: v1", "name: bench", "namespace: bench", "runtime:", "  models:"]
    for m in models:
        lines.append(f"    - name: {m['name']}")
        for key in ("provider", "model", "base_url", "api_key"):
            if key in m:
                lines.append(f"      {key}: {json.dumps(m[key])}")
        if m.get("provider_config"):
            lines.append("      provider_config:")
            lines += [f"        {k}: {json.dumps(v)}" for k, v in m["provider_config"].items()]
    return "\n".join(lines) + "\n"


class Sandbox:
    def __init__(self, bench: "Bench", name: str, models: list[dict] | None = None, borrowed: bool = False):
        self.bench = bench
        self.name = name
        self.root = bench.root / name
        self.state = self.root / "state"
        self.work = self.root / "work"
        self.work.mkdir(parents=True)
        self.borrowed = borrowed  # records copied from another sandbox: never stop those processes from here
        self.env = {**bench.base_env, "LF_STATE_DIR": str(self.state), "LF_DATA_DIR": str(bench.data_dir)}
        if models is not None:
            (self.work / "llamafarm.yaml").write_text(yaml_config(models))
        bench.sandboxes.append(self)

    def lf(self, *args: str, timeout: float = 300, stream: bool = False, check: bool = False) -> Run:
        result = run([*lf_argv(), *args], self.env, self.work, timeout=timeout, stream=stream)
        if check and result.rc != 0:
            raise BenchError(f"lf {' '.join(args)} exited {result.rc}\n{result.stderr.strip()}")
        return result

    def record(self, name: str) -> dict:
        return json.loads((self.state / "instances" / f"{name}.json").read_text())

    def borrow(self, other: "Sandbox", name: str) -> None:
        folder = self.state / "instances"
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state, 0o700)
        shutil.copy(other.state / "instances" / f"{name}.json", folder / f"{name}.json")

    def cleanup(self) -> None:
        folder = self.state / "instances"
        if self.borrowed:
            shutil.rmtree(folder, ignore_errors=True)
            return
        if folder.is_dir() and any(folder.glob("*.json")):
            try:
                run([*lf_argv(), "runtime", "stop", "--all", "--timeout", "5"], self.env, self.work, timeout=120)
            except Exception as exc:  # the safety net below still runs
                print(f"warning: lf runtime stop --all in {self.name} failed: {exc}", file=sys.stderr)
        for path in folder.glob("*.json") if folder.is_dir() else ():
            try:
                pid = json.loads(path.read_text())["pid"]
                os.killpg(pid, signal.SIGKILL)  # lf starts each daemon as its own group leader
            except (ValueError, KeyError, TypeError, OSError):
                pass


# -- the bench ----------------------------------------------------------------------------------------
@dataclass
class Row:
    id: str
    what: str
    subject: str  # formatted median of the subject
    floor: str  # formatted median of the floor
    ratio: float | None
    target: str
    met: bool | None  # None: not measured
    note: str = ""


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.reps = args.reps or (5 if args.quick else 21)
        self.heavy_reps = args.heavy_reps or (3 if args.quick else 9)
        self.chat_reps = max(self.heavy_reps, 5 if args.quick else 15)  # a chat is ~1 s and generation speed is the noisiest part
        self.warmup = 1 if args.quick else 2
        self.root = Path(tempfile.mkdtemp(prefix="lf-bench-"))
        self.data_dir = self.root / "data"
        self.data_dir.mkdir()
        base = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV_PREFIXES)}
        # Bytecode goes to a cache of the bench's own, written by the warm-up runs: a user's lf has its .pyc files,
        # and PYTHONDONTWRITEBYTECODE (set on some of these machines) would make lf, whose sources change often,
        # recompile on every run while site-packages did not.
        self.base_env = {**base, "NO_COLOR": "1", "COLUMNS": "120", "PYTHONUNBUFFERED": "1", "PYTHONPYCACHEPREFIX": str(self.root / "pycache")}
        self.user_data_dir = self._user_data_dir()
        self.sandboxes: list[Sandbox] = []
        self.procs: list[subprocess.Popen] = []
        self.hung: HungServer | None = None
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.reasons: list[str] = []
        self.profiles: dict[str, list] = {}
        self.memory: list[tuple[str, float, str]] = []
        self.extra: dict = {}
        self.import_sites: dict[int, dict[str, str]] = {}

    @staticmethod
    def _user_data_dir() -> Path:
        """Where the user's lf keeps its runtime envs (read only: P6 looks for llama-cpp-python there)."""
        if os.environ.get("LF_DATA_DIR"):
            return Path(os.environ["LF_DATA_DIR"]).expanduser()
        from lf.paths import data_dir

        return data_dir()

    def wanted(self, key: str) -> bool:
        return not self.args.only or key in self.args.only

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        mark = {True: "met", False: "NOT MET", None: "not measured"}[row.met]
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        self.log(f"  {row.id} {row.what}: {row.subject} vs {row.floor} = {ratio} (target {row.target}: {mark})")
        if row.met is None:
            self.log(f"     {row.note}")

    # -- lifecycle ------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        try:
            interrupt_live()
            for proc in self.procs:
                if proc.returncode is None and proc.poll() is None:
                    _stop_group(proc)
            for box in reversed(self.sandboxes):  # borrowers first
                box.cleanup()
            if self.hung:
                self.hung.close()
            shutil.rmtree(self.root, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)

    def spawn(self, argv: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
        with open(log, "ab") as fh:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        self.procs.append(proc)
        return proc

    # -- P1, P2: the cheap commands ------------------------------------------------------------------
    def floor_run(self, box: Sandbox) -> Run:
        return run(FLOOR_IMPORT, box.env, box.work)

    def p1_status(self) -> None:
        self.log("P1: lf runtime status --json (1 running llamacpp instance, 2 stopped) vs python -c 'import typer'")
        ports = [free_port() for _ in range(3)]
        box = Sandbox(self, "p1", [{"name": f"m{i + 1}", "provider": "llamacpp", "model": "smollm2-135m", "provider_config": {"port": p}} for i, p in enumerate(ports)])
        box.lf("runtime", "start", "m1", check=True)
        first = box.lf("runtime", "status", "--json")
        data = _json(first, "lf runtime status --json")
        states = {i["name"]: i["state"] for i in data["instances"]}
        if states != {"m1": "running", "m2": "stopped", "m3": "stopped"}:
            raise BenchError(f"P1 set-up: unexpected states {states}")
        lf_runs, floor_runs = alternate(lambda: box.lf("runtime", "status", "--json"), lambda: self.floor_run(box), self.reps, self.warmup)
        self._ratio_row("P1", "`lf runtime status --json` (1 running, 2 stopped) vs `import typer`", lf_runs, floor_runs, 1.3)
        self.memory.append(("`lf runtime status --json`", median([r.rss_kb for r in lf_runs]) / 1024, "1 running, 2 stopped"))
        self.memory.append(("`python -c 'import typer'` (floor)", median([r.rss_kb for r in floor_runs]) / 1024, ""))
        self.profiles["status"] = self.profile(box, ["runtime", "status", "--json"])
        self.extra["status_box"] = box
        self.extra["interpreter"] = median([run([PY, "-c", "pass"], box.env, box.work).wall for _ in range(self.reps)])
        phases = []
        for _ in range(5):
            r = run([PY, "-c", STATUS_PHASES], box.env, box.work)
            try:
                phases.append(json.loads(r.stdout.strip().splitlines()[-1]))
            except (ValueError, IndexError):
                break
        if phases:
            self.extra["status_phases"] = {k: median([p[k] for p in phases]) for k in phases[0]}

    def p2_help(self) -> None:
        self.log("P2: lf --help vs python -c 'import typer'")
        box = Sandbox(self, "p2")
        box.lf("--help", check=True)
        lf_runs, floor_runs = alternate(lambda: box.lf("--help"), lambda: self.floor_run(box), self.reps, self.warmup)
        self._ratio_row("P2", "`lf --help` vs `import typer`", lf_runs, floor_runs, 1.6)
        self.memory.append(("`lf --help`", median([r.rss_kb for r in lf_runs]) / 1024, ""))
        self.profiles["help"] = self.profile(box, ["--help"])

    def _ratio_row(self, id_: str, what: str, subject: list[Run], floor: list[Run], limit: float) -> None:
        s, f = median([r.wall for r in subject]), median([r.wall for r in floor])
        ratio = s / f
        self.add(Row(id_, what, _ms(s), _ms(f), ratio, f"≤ {limit}×", ratio <= limit, _spread(subject, floor)))

    # -- P3: start until healthy ---------------------------------------------------------------------
    def p3_start(self) -> None:
        self.log("P3: lf runtime start llamacpp (until healthy) vs the same engine started directly, /health polled every 10 ms")
        box = Sandbox(self, "p3")
        lf_port, direct_port = free_port(), free_port()
        box.lf("runtime", "start", "llamacpp", "--port", str(lf_port), check=True)
        argv = box.record("llamacpp")["command"]
        box.lf("runtime", "stop", "llamacpp", check=True)
        direct_argv = list(argv)
        direct_argv[direct_argv.index("--port") + 1] = str(direct_port)
        launch_delays: list[float] = []

        def via_lf() -> float:
            wall_start = time.time()
            result = box.lf("runtime", "start", "llamacpp", "--port", str(lf_port), check=True)
            launch_delays.append(box.record("llamacpp")["started_at"] - wall_start)
            box.lf("runtime", "stop", "llamacpp", check=True)
            return result.wall

        def direct() -> float:
            started = time.perf_counter()
            proc = self.spawn(direct_argv, box.env, box.state, box.root / "direct.log")
            try:
                ready = wait_http_ok(direct_port, "/health", proc, timeout=120)
            finally:
                _stop_group(proc)
            return ready - started

        lf_times, direct_times = alternate(via_lf, direct, self.heavy_reps, 1)
        s, f = median(lf_times), median(direct_times)
        launch_delays = launch_delays[1:]  # drop the warm-up's
        phases = [self._start_phases(box, lf_port) for _ in range(3)]  # untimed diagnosis: where lf's time goes
        launch, load, tail = (median([p[i] for p in phases]) for i in range(3))
        self.extra["p3"] = {"lf": s, "direct": f, "launch": launch, "load": load, "tail": tail}
        self.add(Row("P3", "`lf runtime start llamacpp` until healthy vs engine started directly + `/health` polled every 10 ms", _ms(s), _ms(f), s / f, "≤ 1.15×", s / f <= 1.15,
                     f"lf spawned the engine {median(launch_delays) * 1000:.0f} ms after its own start (median of the timed runs); "
                     f"diagnostic runs: spawn after {launch * 1000:.0f} ms, engine healthy {load * 1000:.0f} ms later, lf exited {tail * 1000:.0f} ms after that"))
        self.profiles["start"] = self.profile(box, ["runtime", "start", "llamacpp", "--port", str(lf_port)], after=lambda: box.lf("runtime", "stop", "llamacpp"))

    def _start_phases(self, box: Sandbox, port: int) -> tuple[float, float, float]:
        """One `lf runtime start`, watched from outside: (until lf spawned the engine, engine load until /health
        answers 200 (polled here every 5 ms), from then until lf exited)."""
        wall_start, started = time.time(), time.perf_counter()
        proc = subprocess.Popen([*lf_argv(), "runtime", "start", "llamacpp", "--port", str(port)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=box.env, cwd=box.work)
        self.procs.append(proc)
        ready = None
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if ready is None and http_status(port, "/health", timeout=0.2) == 200:
                ready = time.perf_counter()
            time.sleep(0.005)
        exited = time.perf_counter()
        if proc.returncode != 0:
            raise BenchError(f"lf runtime start llamacpp exited {proc.returncode} in a diagnostic run")
        launch = box.record("llamacpp")["started_at"] - wall_start
        box.lf("runtime", "stop", "llamacpp", check=True)
        ready = ready if ready is not None else exited
        return launch, ready - started - launch, exited - ready

    # -- P4: chat --------------------------------------------------------------------------------
    def running_llamacpp(self) -> tuple[Sandbox, dict]:
        """One llamacpp instance kept running for P4 and P6."""
        if "chat_box" not in self.extra:
            box = Sandbox(self, "p4")
            box.lf("runtime", "start", "llamacpp", "--port", str(free_port()), check=True)
            self.extra["chat_box"] = (box, box.record("llamacpp"))
        return self.extra["chat_box"]

    def p4_chat(self) -> None:
        self.log(f"P4: lf chat '…' --max-tokens {CHAT_TOKENS} vs a minimal httpx script (bench/direct_chat.py)")
        box, record = self.running_llamacpp()
        lf_cmd = ["chat", CHAT_MESSAGE, "--max-tokens", str(CHAT_TOKENS), "--temperature", "0"]
        direct_cmd = [PY, str(HERE / "direct_chat.py"), record["base_url"], record["model"], CHAT_MESSAGE, str(CHAT_TOKENS)]

        lf_runs, direct_runs = alternate(
            lambda: box.lf(*lf_cmd, stream=True, check=True),
            lambda: _checked(run(direct_cmd, box.env, box.work, stream=True), "bench/direct_chat.py"),
            self.chat_reps,
            self.warmup,
        )
        tokens = _token_count(direct_runs[-1])
        reference = direct_runs[-1].stdout
        lf_rates, direct_rates, approximate = [], [], 0
        for r in direct_runs:
            direct_rates.append(_stream_rates(r, _token_count(r)))
        for r in lf_runs:
            n = tokens
            if r.stdout != reference:  # a different answer: scale the count by its length
                n = max(2, round(tokens * len(r.stdout) / max(1, len(reference))))
                approximate += 1
            lf_rates.append(_stream_rates(r, n))
        s, f = median([r.wall for r in lf_runs]), median([r.wall for r in direct_runs])
        self.add(Row("P4a", f"`lf chat \"…\" --max-tokens {CHAT_TOKENS}` wall time vs minimal httpx script", _ms(s), _ms(f), s / f, "≤ 1.15×", s / f <= 1.15,
                     f"{tokens} tokens per answer; " + _spread(lf_runs, direct_runs)))
        rs, rf = median([r["steady"] for r in lf_rates]), median([r["steady"] for r in direct_rates])
        os_, of = median([r["overall"] for r in lf_rates]), median([r["overall"] for r in direct_rates])
        note = ("steady rate = 1 ÷ median gap between tokens arriving on the reader's end of stdout; "
                f"first-to-last rate {os_:.1f} vs {of:.1f} tok/s = {os_ / of:.2f}× (stalls from other work on the machine move this one)")
        per_round = [x["steady"] / y["steady"] for x, y in zip(lf_rates, direct_rates)]
        self.extra["p4"] = {"pairs": per_round}
        note += f"; median of per-round steady ratios {median(per_round):.2f}×"
        if approximate:
            note += f"; {approximate} lf answers differed from the direct one, their first-to-last count scaled by length"
        self.add(Row("P4b", "streamed tokens/s (steady) through `lf chat` vs direct", f"{rs:.1f} tok/s", f"{rf:.1f} tok/s", rs / rf, "≥ 0.97×", rs / rf >= 0.97, note))
        self.memory.append(("`lf chat … --max-tokens 64`", median([r.rss_kb for r in lf_runs]) / 1024, "runtime already running"))
        self.memory.append(("minimal httpx chat script (floor)", median([r.rss_kb for r in direct_runs]) / 1024, ""))
        self.profiles["chat"] = self.profile(box, lf_cmd)

    # -- P5: status under load and with a hung endpoint -----------------------------------------------
    def p5_scale(self) -> None:
        self.log("P5: lf runtime status --json with 8 running instances vs 1; with one hung endpoint vs the probe timeout")
        ports = [free_port() for _ in range(8)]
        models = [{"name": f"n{i + 1}", "provider": "llamacpp", "model": "smollm2-135m", "provider_config": {"port": p}} for i, p in enumerate(ports)]
        eight = Sandbox(self, "p5-eight", models)
        eight.lf("runtime", "start", "llamacpp", timeout=600, check=True)
        one = Sandbox(self, "p5-one", models[:1], borrowed=True)
        one.borrow(eight, "n1")
        self.hung = HungServer()
        hung_entry = {"name": "hung", "provider": "openai", "model": "any", "base_url": f"http://127.0.0.1:{self.hung.port}/v1"}
        hung = Sandbox(self, "p5-hung", [models[0], hung_entry], borrowed=True)
        hung.borrow(eight, "n1")

        for box, expect in ((eight, {f"n{i + 1}": "running" for i in range(8)}), (one, {"n1": "running"}), (hung, {"n1": "running", "hung": "external"})):
            data = _json(box.lf("runtime", "status", "--json"), "lf runtime status --json")
            states = {i["name"]: i["state"] for i in data["instances"]}
            if states != expect:
                raise BenchError(f"P5 set-up ({box.name}): unexpected states {states}")
            if box is hung:
                health = next(i for i in data["instances"] if i["name"] == "hung")["health"]
                if not health or health.get("reachable"):
                    raise BenchError(f"P5 set-up: the hung endpoint was not reported as unanswered: {health}")

        status = ("runtime", "status", "--json")
        many, single = alternate(lambda: eight.lf(*status), lambda: one.lf(*status), self.reps, self.warmup)
        s, f = median([r.wall for r in many]), median([r.wall for r in single])
        self.add(Row("P5a", "`lf runtime status --json`: 8 running instances vs 1", _ms(s), _ms(f), s / f, "≤ 1.3×", s / f <= 1.3,
                     "8 real llamacpp (xllamacpp) instances with SmolLM2-135M; " + _spread(many, single)))
        hung_runs, _ = alternate(lambda: hung.lf(*status), lambda: one.lf(*status), max(7, self.reps // 2), 1)
        h = median([r.wall for r in hung_runs])
        limit = PROBE_TIMEOUT + 0.2
        self.extra["p5"] = {"one": f, "hung": h}
        self.add(Row("P5b", f"status with one hung endpoint vs the probe timeout ({PROBE_TIMEOUT:g} s)", _ms(h), _ms(PROBE_TIMEOUT), h / PROBE_TIMEOUT, f"≤ {limit:g} s", h <= limit,
                     "hung = a socket that accepts and never answers, a `provider: openai` entry + 1 running llamacpp; "
                     f"max {max(r.wall for r in hung_runs) * 1000:.0f} ms"))

    # -- P6: default engine vs llama-cpp-python --------------------------------------------------------
    def lcp_python(self) -> tuple[Path | None, str]:
        """llama-cpp-python as lf installs it: the user's lf env, else the one the test suite caches."""
        if self.args.llama_cpp_python:
            return Path(self.args.llama_cpp_python), f"given with --llama-cpp-python {self.args.llama_cpp_python}"
        cache = Path(os.environ.get("LF_TEST_CACHE") or Path.home() / ".cache" / "lf-test")
        candidates = [self.user_data_dir / "envs" / "llama-cpp-python", cache / "data" / "envs" / "llama-cpp-python"]
        for env_dir in candidates:
            if (env_dir / "bin" / "python").exists() and (env_dir / "lf-installed.json").exists():
                return env_dir / "bin" / "python", f"lf's env {env_dir}"
        return None, (f"llama-cpp-python is not installed in lf's env ({' or '.join(map(str, candidates))}): "
                      "run `lf runtime install llama-cpp-python`, or pass --llama-cpp-python PYTHON")

    def p6_engines(self) -> None:
        self.log("P6: default engine (xllamacpp) tokens/s vs llama-cpp-python's server, same model and threads")
        what = "default engine (xllamacpp) tok/s (steady) vs llama-cpp-python server, same model"
        python, source = self.lcp_python()
        if python is None:
            self.add(Row("P6", what, "-", "-", None, "≥ 1.1×", None, "skipped: " + source))
            return
        check = subprocess.run([str(python), "-c", "import llama_cpp.server, llama_cpp; print(llama_cpp.__version__)"], capture_output=True, text=True, timeout=120)
        if check.returncode != 0:
            self.add(Row("P6", what, "-", "-", None, "≥ 1.1×", None, f"skipped: {python} cannot import llama_cpp.server ({source})"))
            return
        box, record = self.running_llamacpp()
        cmd = record["command"]
        threads = cmd[cmd.index("--threads") + 1]
        ctx = cmd[cmd.index("--ctx-size") + 1]
        port = free_port()
        lcp = self.spawn(
            [str(python), "-m", "llama_cpp.server", "--model", record["model_path"], "--host", "127.0.0.1", "--port", str(port), "--n_ctx", ctx,
             "--n_threads", threads, "--n_threads_batch", threads, "--model_alias", record["model"], "--verbose", "False"],
            box.env, box.root, box.root / "llama-cpp-python.log",
        )
        wait_http_ok(port, "/v1/models", lcp, timeout=180, interval=0.05)  # it has no /health
        ours = record["port"]
        default, other = alternate(
            lambda: stream_chat(ours, record["model"], CHAT_MESSAGE, ENGINE_TOKENS),
            lambda: stream_chat(port, record["model"], CHAT_MESSAGE, ENGINE_TOKENS),
            self.heavy_reps,
            self.warmup,
        )
        _stop_group(lcp)
        s, f = median([r["steady"] for r in default]), median([r["steady"] for r in other])
        os_, of = median([r["overall"] for r in default]), median([r["overall"] for r in other])
        pairs = median([x["steady"] / y["steady"] for x, y in zip(default, other)])
        self.add(Row("P6", what, f"{s:.1f} tok/s", f"{f:.1f} tok/s", s / f, "≥ 1.1×", s / f >= 1.1,
                     f"llama-cpp-python {check.stdout.strip()} from {source}; {threads} threads, n_ctx {ctx}, up to {ENGINE_TOKENS} tokens "
                     f"(median {median([r['tokens'] for r in default]):.0f} vs {median([r['tokens'] for r in other]):.0f}), temperature 0, one client; "
                     f"steady rate (1 ÷ median token gap); median of per-round ratios {pairs:.2f}×; first-to-last rate {os_:.1f} vs {of:.1f} tok/s = {os_ / of:.2f}×"))

    # -- import profiles ------------------------------------------------------------------------------
    def profile(self, box: Sandbox, args: list[str], after=None) -> list:
        """-X importtime of the command, three times (the run with the median total is kept), then once more
        under an import hook that records where each top-level package was first imported from."""
        runs = []
        for _ in range(3):
            r = run([PY, "-X", "importtime", "-m", "lf", *args], box.env, box.work)
            runs.append(parse_importtime(r.stderr))
            if after is not None:
                after()
        runs.sort(key=lambda entries: sum(e[0] for e in entries))
        report = box.root / "first-imports.json"
        run([PY, "-c", IMPORT_SITES, str(report), *args], box.env, box.work)
        if after is not None:
            after()
        try:
            self.import_sites[id(runs[1])] = json.loads(report.read_text())
        except (OSError, ValueError):
            pass
        return runs[1]

    def floor_profile(self) -> list:
        runs = [parse_importtime(run([PY, "-X", "importtime", "-c", "import typer"], self.base_env, self.root).stderr) for _ in range(3)]
        runs.sort(key=lambda entries: sum(e[0] for e in entries))
        return runs[1]

    # -- the whole thing ------------------------------------------------------------------------------
    def run_all(self) -> None:
        if not (REPO / "lf").is_dir():
            raise BenchError(f"run this from the lf repository ({REPO})")
        try:
            from lf.models import CATALOG

            if CATALOG["smollm2-135m"].path() is None:
                raise BenchError("the default model is not installed: lf models fetch smollm2-135m (make setup does it)")
        except ImportError as exc:
            raise BenchError(f"{PY} cannot import lf ({exc}): run it with the project's venv (make bench)") from None
        self.started = time.time()
        self.load_before = os.getloadavg()
        if self.load_before[0] > 0.5 * len(os.sched_getaffinity(0)):
            self.log(f"warning: load average {self.load_before[0]:.2f} before the bench: other work is running; ratios stay "
                     "comparable, absolute times and tokens/s will be low")
        steps = [("P1", self.p1_status), ("P2", self.p2_help), ("P3", self.p3_start), ("P4", self.p4_chat), ("P5", self.p5_scale), ("P6", self.p6_engines)]
        for key, step in steps:
            if self.wanted(key):
                step()
        self.floor_imports = self.floor_profile()
        self.load_after = os.getloadavg()
        self.elapsed = time.time() - self.started
        self.explain()


def _stop_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except OSError:
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait(5)


def _json(result: Run, what: str) -> dict:
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise BenchError(f"{what} did not print JSON (exit {result.rc}): {result.stdout[:200]!r} {result.stderr[:500]}") from None


def _checked(result: Run, what: str) -> Run:
    if result.rc != 0:
        raise BenchError(f"{what} exited {result.rc}: {result.stderr[-500:]}")
    return result


def _token_count(result: Run) -> int:
    for line in result.stderr.splitlines():
        if line.startswith("tokens "):
            return int(line.split()[1])
    raise BenchError("bench/direct_chat.py did not report its token count")


def _stream_rates(result: Run, tokens: int) -> dict:
    return rates([t for t, data in result.chunks if data.strip()], tokens)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _spread(a: list[Run], b: list[Run]) -> str:
    def iqr(runs: list[Run]) -> str:
        q = statistics.quantiles([r.wall * 1000 for r in runs], n=4) if len(runs) > 1 else [runs[0].wall * 1000] * 3
        return f"{q[0]:.0f}–{q[2]:.0f}"

    pairs = median([x.wall / y.wall for x, y in zip(a, b)])
    return f"IQR {iqr(a)} vs {iqr(b)} ms; median of per-round ratios {pairs:.2f}×"


# -- -X importtime --------------------------------------------------------------------------------
def parse_importtime(stderr: str) -> list[tuple[int, int, int, str]]:
    """(self µs, cumulative µs, depth, module) per line of -X importtime output, in output order."""
    entries = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        try:
            self_us, cum_us, name = line[len("import time:") :].split("|")
        except ValueError:
            continue
        stripped = name.lstrip(" ")
        depth = (len(name) - len(stripped) - 1) // 2
        entries.append((int(self_us), int(cum_us), depth, stripped.strip()))
    return entries


def by_package(entries) -> dict[str, dict]:
    """Import cost per top-level package: summed self time and module count."""
    packages: dict[str, dict] = {}
    for self_us, _, _, name in entries:
        info = packages.setdefault(name.split(".")[0], {"self_us": 0, "modules": 0})
        info["self_us"] += self_us
        info["modules"] += 1
    return packages


def imported_via(entries, top: str) -> str | None:
    """The first module outside `top` that imported it (-X importtime prints children before parents)."""
    for i, (_, _, depth, name) in enumerate(entries):
        if name.split(".")[0] != top:
            continue
        for _, _, d, parent in entries[i + 1 :]:
            if d < depth:
                if parent.split(".")[0] != top:
                    return parent
                depth = d
        return "(a run-time import)" if depth == 0 else "(the command itself)"
    return None


# Runs `lf ARGS…` like `python -m lf` under an import hook: for each top-level package, the module, line and
# function that imported it first (a lazy import inside a function shows up as a top-level line in -X importtime).
IMPORT_SITES = """
import builtins, json, runpy, sys
report = sys.argv[1]
sys.argv = ["lf", *sys.argv[2:]]
first = {}
original = builtins.__import__
def hook(name, globals=None, locals=None, fromlist=(), level=0):
    top = name.partition(".")[0]
    if level == 0 and top not in first and top not in sys.modules:
        frame = sys._getframe(1)
        first[top] = f"{frame.f_globals.get('__name__')}:{frame.f_lineno} {frame.f_code.co_name}()"
    return original(name, globals, locals, fromlist, level)
builtins.__import__ = hook
try:
    runpy.run_module("lf", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
with open(report, "w") as fh:
    json.dump(first, fh)
"""


# Where a `lf runtime status --json` process spends its time after the interpreter is up, in one fresh process.
STATUS_PHASES = """
import contextlib, io, json, sys, time
t0 = time.perf_counter()
import typer, typer.main
t1 = time.perf_counter()
import lf.cli
t2 = time.perf_counter()
# what main() builds for this invocation: the runtime group holding just `status`
typer.main.get_command(lf.cli.build_app("runtime", "status"))
t3 = time.perf_counter()
def status():
    sys.argv = ["lf", "runtime", "status", "--json"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            lf.cli.main()
        except SystemExit:
            pass
status()
t4 = time.perf_counter()
status()
t5 = time.perf_counter()
print(json.dumps({"typer": t1 - t0, "lf_cli": t2 - t1, "tree": t3 - t2, "first": t4 - t3, "again": t5 - t4}))
"""


def import_site(bench, entries, top: str) -> str:
    return bench.import_sites.get(id(entries), {}).get(top) or imported_via(entries, top) or "-"


REMEDIES = {
    "pydantic": "typer ≥ 0.29 validates every non-bool parameter through a pydantic TypeAdapter, built when the command's "
    "arguments are parsed (typer/_coercion.py `build_runtime_param` → typer/_adapters.py), and pydantic's plugin loader "
    "scans entry points via importlib.metadata. typer 0.28 vendors click the same way but has no pydantic. Needed: pin "
    "`typer>=0.26,<0.29`, or parse this command without typer (a hand-written argv fast path in `lf.cli.main` that hands "
    "everything else, --help and errors to typer).",
    "pydantic_core": "comes with pydantic (see pydantic).",
    "rich": "typer renders help and usage errors with rich when `rich_markup_mode` is 'rich' (its default when rich is "
    "installed): typer/rich_utils.py imports rich.console, rich.markdown (markdown_it), rich.syntax, rich.traceback. "
    "Needed: `typer.Typer(rich_markup_mode=None)` on `lf` and on every sub-app (plain click help), or keep rich for a TTY only.",
    "markdown_it": "pulled in by rich.markdown from typer's rich help (see rich).",
    "httpx": "lf.client imports httpx (plus httpcore, h11, anyio, ssl, certifi) for one streamed POST. Needed: speak "
    "HTTP/1.1 to the local runtime with http.client (stdlib, already loaded by other paths) as lf.health does, keeping httpx "
    "only for https/remote endpoints if at all.",
    "yaml": "llamafarm.yaml is read with PyYAML (and validated by lf.config_schema). Needed: only if it dominates — "
    "use yaml.CSafeLoader, and skip schema validation on read-only paths such as status (validate in `lf config check`).",
    "psutil": "psutil is imported on this path. Needed: read /proc as lf.process does, or import it only when stopping.",
    "importlib": "importlib.metadata is imported (pydantic's plugin loader scans entry points). Goes away with pydantic.",
    "h11": "comes with httpx (see httpx).",
    "httpcore": "comes with httpx (see httpx).",
    "anyio": "comes with httpx (see httpx).",
    "attr": "comes with rich's pretty-printer, imported by typer's rich help (see rich).",
    "pygments": "comes with rich.syntax, imported by typer's rich help (see rich).",
    "tomllib": "every runtime manifest is parsed (lf.registry.all_runtimes) to resolve the providers named in llamafarm.yaml. "
    "Small; needed only if it shows: parse just the manifests the config names.",
    "typer": "typer itself: its import is the floor, but building the click command tree for every sub-app and command "
    "(`typer.main.get_command`) happens on every invocation.",
    "lf": "lf's own modules.",
}


class Report:
    def __init__(self, bench: Bench) -> None:
        self.b = bench

    def machine(self) -> list[str]:
        cpu = "?"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        mem = "?"
        try:
            kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
            mem = f"{kb / 1024 / 1024:.1f} GiB"
        except (OSError, StopIteration, ValueError):
            pass
        versions = []
        for dist in ("typer", "pydantic", "rich", "httpx", "psutil", "PyYAML", "xllamacpp"):
            try:
                versions.append(f"{dist} {importlib.metadata.version(dist)}")
            except importlib.metadata.PackageNotFoundError:
                versions.append(f"{dist} (absent)")
        try:
            commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            commit = "?"
        b = self.b
        return [
            f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(b.started))}; whole run {b.elapsed:.0f} s",
            f"- machine: {platform.system()} {platform.release()} {platform.machine()}; CPU {cpu}; {os.cpu_count()} cores "
            f"({len(os.sched_getaffinity(0))} usable); {mem} RAM",
            f"- load average before / after: {' '.join(f'{x:.2f}' for x in b.load_before)} / {' '.join(f'{x:.2f}' for x in b.load_after)}",
            f"- Python {platform.python_version()} ({PY}); lf at {commit}, run as `{' '.join(lf_argv())}`",
            f"- {', '.join(versions)}",
            f"- repetitions: {b.reps} per cheap command pair (P1, P2, P5), {b.heavy_reps} per start/engine pair (P3, P6), {b.chat_reps} per chat pair (P4), "
            f"after {b.warmup} warm-up run(s) each{' — QUICK RUN, fewer than the 7 the issue asks for' if b.args.quick else ''}",
        ]

    def table(self) -> list[str]:
        lines = ["| # | measurement | lf / subject (median) | floor (median) | ratio | target | met |", "|---|---|---|---|---|---|---|"]
        for r in self.b.rows:
            ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "-"
            met = {True: "yes", False: "**NO**", None: "not measured"}[r.met]
            lines.append(f"| {r.id} | {r.what} | {r.subject} | {r.floor} | {ratio} | {r.target} | {met} |")
        return lines

    def memory(self) -> list[str]:
        if not self.b.memory:
            return []
        lines = ["| process | peak RSS (median) | note |", "|---|---|---|"]
        lines += [f"| {what} | {mb:.1f} MiB | {note} |" for what, mb, note in self.b.memory]
        return lines

    def notes(self) -> list[str]:
        return [
            "- Wall time: `time.perf_counter()` from just before `fork` to the child being reaped, stdout/stderr to temp files "
            "(P4: stdout read from a pipe as it streams). Every subject/floor pair alternates, the order flipped each round; "
            "medians; the ratio is median ÷ median. IQR = interquartile range of the run times.",
            "- Peak RSS: `ru_maxrss` of `os.wait4()` on that very child (not the RUSAGE_CHILDREN high-water mark).",
            "- Floors: `python -c 'import typer'` with the same interpreter; P3 runs the exact argv lf recorded for the daemon "
            "(other port) and polls `GET /health` every 10 ms; P4 is bench/direct_chat.py (httpx, same payload, temperature 0).",
            "- Tokens/s (P4, P6): the steady rate, 1 ÷ the median gap between consecutive tokens' arrival (P4: stdout data at "
            "the bench's end of the pipe, one flushed write per token on both sides; P6: SSE content events), so that a burst "
            "of unrelated work on the machine, which stalls a few tokens, does not decide the row; the first-to-last rate "
            "((tokens − 1) ÷ span) is in the row's note.",
            "- P5: 8 real llamacpp instances (xllamacpp + SmolLM2-135M, ~200 MB each), not fake servers. The 1-instance case "
            "uses a state dir holding just one of those 8 records and a llamafarm.yaml with that one entry.",
            "- P6: the bench's own stdlib client streams the same request to both servers in turn; tokens/s counts SSE content "
            "events (one token each) between the first and the last.",
            "- All state in a temporary LF_STATE_DIR/LF_DATA_DIR and working dir, ports from the kernel; "
            "everything started is stopped at the end (also on failure or Ctrl-C).",
            "- Bytecode: PYTHONPYCACHEPREFIX points at a cache of the bench's own (written by the warm-up runs) and "
            "PYTHONDONTWRITEBYTECODE is removed, so neither side recompiles its sources on every run.",
        ]

    def profiles(self) -> list[str]:
        b = self.b
        if not b.profiles:
            return []
        floor = by_package(b.floor_imports)
        floor_total = sum(e[0] for e in b.floor_imports) / 1000
        lines = [f"`python -X importtime` (median of 3 runs), self time summed per top-level package; `python -c 'import typer'` "
                 f"imports {len(b.floor_imports)} modules in {floor_total:.0f} ms under importtime.", ""]
        for key, entries in b.profiles.items():
            command = {"status": "lf runtime status --json", "help": "lf --help", "chat": "lf chat … --max-tokens 64", "start": "lf runtime start llamacpp"}[key]
            packages = by_package(entries)
            total = sum(e[0] for e in entries) / 1000
            heavy = [h for h in HEAVY if h in packages]
            lines.append(f"**`{command}`**: {len(entries)} modules, {total:.0f} ms of imports "
                         f"({total - floor_total:+.0f} ms over the floor); of httpx/pydantic/rich/psutil it imports: {', '.join(heavy) or 'none'}")
            lines.append("")
            lines.append("| package | self ms (sum) | modules | imported via | in floor |")
            lines.append("|---|---|---|---|---|")
            ranked = sorted(packages.items(), key=lambda kv: -kv[1]["self_us"])[:14]
            for top, info in ranked:
                via = import_site(b, entries, top)
                lines.append(f"| {top} | {info['self_us'] / 1000:.1f} | {info['modules']} | {via} | {'yes' if top in floor else 'no'} |")
            lines.append("")
            slowest = sorted(entries, key=lambda e: -e[0])[:10]
            lines.append("Slowest modules (self ms): " + ", ".join(f"{name} {self_us / 1000:.1f}" for self_us, _, _, name in slowest))
            lines.append("")
        return lines

    def reasons(self) -> list[str]:
        return self.b.reasons

    def render(self) -> str:
        parts = ["# lf benchmark results", "", "Generated by `make bench` (`bench/run.py`); see bench/README.md. Ratios are lf ÷ floor measured side by side in this run.", ""]
        parts += self.table() + [""]
        parts += [f"- {r.id}: {r.note}" for r in self.b.rows if r.note] + [""]
        if self.b.memory:
            parts += ["## Memory", ""] + self.memory() + [""]
        parts += ["## Targets not met: measured reasons", ""] + (self.reasons() or ["All measured targets are met."]) + [""]
        parts += ["## Machine", ""] + self.machine() + [""]
        parts += ["## Method", ""] + self.notes() + [""]
        if self.b.profiles:
            parts += ["## Import profiles", ""] + self.profiles()
        return "\n".join(parts).rstrip() + "\n"


def _explain(bench: Bench) -> None:
    """For every target not met, the measured reason and what would be needed."""
    floor = by_package(bench.floor_imports) if getattr(bench, "floor_imports", None) else {}
    path_of = {"P1": "status", "P2": "help", "P4a": "chat"}
    for row in bench.rows:
        if row.met is not False:
            continue
        lines = [f"**{row.id}** ({row.what}): {row.subject} vs {row.floor}, {row.ratio:.2f}× against {row.target}."]
        key = path_of.get(row.id)
        if key and key in bench.profiles:
            entries = bench.profiles[key]
            packages = by_package(entries)
            extra = sorted(((t, i) for t, i in packages.items() if t not in floor), key=lambda kv: -kv[1]["self_us"])
            extra_ms = sum(i["self_us"] for _, i in extra) / 1000
            lines.append(f"Imports beyond the floor's packages: {extra_ms:.0f} ms of import self time (under -X importtime), led by "
                         + ", ".join(f"{t} {i['self_us'] / 1000:.0f} ms (via {import_site(bench, entries, t)})" for t, i in extra[:6]) + ".")
            seen = set()
            for top, _ in extra[:8]:
                remedy = REMEDIES.get(top)
                if remedy and remedy not in seen and top not in ("lf",):
                    seen.add(remedy)
                    lines.append(f"- {top}: {remedy}")
            lf_modules = sorted((e for e in entries if e[3].startswith("lf.") or e[3] == "lf"), key=lambda e: -e[0])[:5]
            if lf_modules:
                lines.append("- lf's own modules, slowest first (self ms): " + ", ".join(f"{n} {u / 1000:.1f}" for u, _, _, n in lf_modules)
                             + " — module bodies that build dataclasses, compile regexes or parse files at import time.")
        if row.id in ("P1", "P2") and "interpreter" in bench.extra:
            lines.append(f"- For scale: the interpreter alone (`python -c pass`) takes {bench.extra['interpreter'] * 1000:.0f} ms, so the floor "
                         f"spends {(median_floor(row) - bench.extra['interpreter']) * 1000:.0f} ms importing typer.")
        if row.id == "P1" and "status_phases" in bench.extra:
            ph = bench.extra["status_phases"]
            lines.append(f"- Phases in one fresh process (median of 5, no -X importtime): `import typer` {ph['typer'] * 1000:.0f} ms, "
                         f"`import lf.cli` {ph['lf_cli'] * 1000:.1f} ms, building the click command for `lf runtime status` "
                         f"(`typer.main.get_command`, the one command main() registers) {ph['tree'] * 1000:.1f} ms, "
                         f"the first status call {ph['first'] * 1000:.1f} ms (its lazy imports, the command again, config from its "
                         f"cached form, records, probe, JSON), the same call again with everything imported {ph['again'] * 1000:.1f} ms. "
                         "What is left is Typer converting the command on every call plus the status modules' own import (about ten "
                         "dataclasses, socket, json); closing the gap would need status to answer without building a Typer command "
                         "or without dataclasses on its path.")
        elif row.id == "P3" and "p3" in bench.extra:
            p3 = bench.extra["p3"]
            gap = p3["lf"] - p3["direct"]
            lines.append(f"lf took {gap * 1000:.0f} ms more than the direct start. Watched from outside (3 untimed runs, /health polled "
                         f"every 5 ms): lf spawned the engine {p3['launch'] * 1000:.0f} ms after it was started (interpreter, typer, "
                         f"lf imports, config, engine lookup, port check, record written with fsync), the engine then needed "
                         f"{p3['load'] * 1000:.0f} ms to answer /health with 200 (direct start, incl. its own spawn: {p3['direct'] * 1000:.0f} ms), "
                         f"and lf exited {p3['tail'] * 1000:.0f} ms after that: readiness detection (lf polls every 10 ms for "
                         "the first 3 s, then backs off to 100 ms) plus printing and interpreter exit.")
            budget = 0.15 * p3["direct"]
            typer_floor = next((median_floor(r) for r in bench.rows if r.id in ("P1", "P2")), None)
            parts = [("the spawn delay", p3["launch"], "fewer imports and less work before the spawn (see the `lf runtime start` "
                      "profile below: registry, supervisor, instances, models, config are all imported first)"),
                     ("the tail after healthy", p3["tail"], "interpreter exit; the readiness poll is already 10 ms")]
            parts.sort(key=lambda part: -part[1])
            lines.append("- Needed, largest first: " + "; ".join(f"{what} ({ms * 1000:.0f} ms): {fix}" for what, ms, fix in parts) + ".")
            if typer_floor is not None:
                lines.append(f"- The target allows {budget * 1000:.0f} ms over this engine start; `python -c 'import typer'` alone takes "
                             f"{typer_floor * 1000:.0f} ms here, so with a ~{p3['direct']:.1f} s engine start the target is reachable only if lf "
                             "launches the engine before importing typer (an argv fast path for `runtime start`), or with a slower-loading model.")
        elif row.id == "P5b" and "p5" in bench.extra:
            p5 = bench.extra["p5"]
            lines.append(f"status alone takes {p5['one'] * 1000:.0f} ms (1 instance); with a hung endpoint {p5['hung'] * 1000:.0f} ms = "
                         f"start-up + probe timeout ({PROBE_TIMEOUT:g} s) + join slack. Its overshoot over the timeout "
                         f"({(p5['hung'] - PROBE_TIMEOUT) * 1000:.0f} ms) is the start-up cost P1 measures: the fix is P1's, plus starting "
                         "the probes before the JSON is assembled (they already run in parallel).")
        elif row.id == "P5a":
            lines.append("Per-instance cost grows faster than the probes' parallelism hides: look at records read and probe threads.")
        elif row.id == "P4b" and "p4" in bench.extra:
            pairs = sorted(bench.extra["p4"]["pairs"])
            lines.append(f"Per-round ratios (each lf answer against the direct answer next to it): median {median(pairs):.2f}×, "
                         f"range {pairs[0]:.2f}–{pairs[-1]:.2f}×. lf's per-token work is the direct script's (httpx `iter_lines`, "
                         "`json.loads`, one write+flush per token); when the per-round median is near 1 the shortfall of the "
                         "ratio of medians is other work on the machine landing on different runs. Rerun on a quiet machine; if "
                         "it persists, profile `lf.client.chat` per token.")
        elif row.id == "P6":
            lines.append("The default engine is not 10% faster than llama-cpp-python here: compare their thread and batch settings.")
        bench.reasons.extend(lines + [""])


Bench.explain = _explain  # type: ignore[attr-defined]


def median_floor(row: Row) -> float:
    return float(row.floor.split()[0]) / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py", description="lf start-up and overhead benchmark (ratios against floors, one run).")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (5 cheap / 3 heavy); prints only unless --out is given")
    parser.add_argument("--reps", type=int, help="repetitions per cheap command pair (default 21)")
    parser.add_argument("--heavy-reps", type=int, help="repetitions per start/chat/engine pair (default 9)")
    parser.add_argument("--only", type=lambda s: {x.strip().upper() for x in s.split(",")}, help="comma-separated subset, e.g. P1,P4")
    parser.add_argument("--out", type=Path, help="where to write the results (default bench/RESULTS.md; a quick run writes nothing)")
    parser.add_argument("--llama-cpp-python", help="python of a llama-cpp-python[server] install for P6 (default: lf's env, if installed)")
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1 or args.heavy_reps is not None and args.heavy_reps < 1:
        parser.error("repetitions must be at least 1")
    out = args.out or (None if args.quick else HERE / "RESULTS.md")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    bench = Bench(args)
    try:
        bench.run_all()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything the bench started", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.cleanup()
    text = Report(bench).render()
    print(text)
    if out:
        out.write_text(text)
        print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
