"""What every measurement shares: running and timing one process, small network helpers, sandboxes (a state dir,
a working dir and a llamafarm.yaml each), the rows of the table and the Bench context that isolates the run and
stops everything it started on exit, on failure, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import http.client
import json
import os
import re
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
# variables that would make lf pick up the user's settings instead of the bench's
FOREIGN_ENV_PREFIXES = (
    "LF_",
    "LLAMACPP_",
    "LEMONADE_",
    "OLLAMA_",
    "VLLM_",
    "LLAMA_CPP_PYTHON_",
    "TYPER_",
    "PYTHONPROFILEIMPORTTIME",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONPYCACHEPREFIX",
)


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
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if stream else out, stderr=err, env=env, cwd=cwd
        )
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
        stdout = (
            b"".join(c for _, c in chunks).decode("utf-8", "replace")
            if stream
            else out.read().decode("utf-8", "replace")
        )
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


def stop_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
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


def parse_json(result: Run, what: str) -> dict:
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise BenchError(
            f"{what} did not print JSON (exit {result.rc}): {result.stdout[:200]!r} {result.stderr[:500]}"
        ) from None


def checked(result: Run, what: str) -> Run:
    if result.rc != 0:
        raise BenchError(f"{what} exited {result.rc}: {result.stderr[-500:]}")
    return result


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
    payload = {
        "model": model,
        "temperature": 0.0,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": message}],
        "stream": True,
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps(payload),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        )
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


def metric_total(port: int, name: str, labels: str = "") -> float:
    """The sum of a metric's samples in `lf serve`'s /metrics (those whose labels contain `labels`, e.g.
    'reason="deadline"')."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    found = re.findall(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M)
    return sum(float(value) for tags, value in found if labels in tags)


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
    def __init__(self, bench: Bench, name: str, models: list[dict] | None = None, borrowed: bool = False):
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

    def record_files(self) -> list[Path]:
        """Every record in the sandbox's state dir: of no project (instances/), of a project (projects/NS/NAME/instances/)."""
        return [*self.state.glob("instances/*.json"), *self.state.glob("projects/*/*/instances/*.json")]

    def record_path(self, name: str) -> Path:
        found = [path for path in self.record_files() if path.name == f"{name}.json"]
        if len(found) != 1:
            raise BenchError(f"{len(found)} records named {name} in {self.state}")
        return found[0]

    def record(self, name: str) -> dict:
        return json.loads(self.record_path(name).read_text())

    def borrow(self, other: Sandbox, name: str) -> None:
        """A copy of `other`'s record of `name`, where the same project's record lies here (the sandboxes'
        llamafarm.yaml all name one project)."""
        source = other.record_path(name)
        target = self.state / source.relative_to(other.state)
        for folder in [
            p for p in reversed(target.parents) if p == self.state or self.state in p.parents
        ]:  # outermost first
            folder.mkdir(exist_ok=True)
            os.chmod(folder, 0o700)
        shutil.copy(source, target)

    def cleanup(self) -> None:
        if self.borrowed:
            for path in self.record_files():
                path.unlink(missing_ok=True)
            return
        if self.record_files():
            try:
                run(
                    [*lf_argv(), "runtime", "stop", "--all-projects", "--timeout", "5"],
                    self.env,
                    self.work,
                    timeout=120,
                )
            except Exception as exc:  # the safety net below still runs
                print(f"warning: lf runtime stop --all-projects in {self.name} failed: {exc}", file=sys.stderr)
        for path in self.record_files():
            try:
                pid = json.loads(path.read_text())["pid"]
                os.killpg(pid, signal.SIGKILL)  # lf starts each daemon as its own group leader
            except (ValueError, KeyError, TypeError, OSError):
                pass


def floor_run(box: Sandbox) -> Run:
    """The floor of the cheap commands (P1, P2): `python -c "import typer"` in the same sandbox."""
    return run(FLOOR_IMPORT, box.env, box.work)


# -- rows of the table ------------------------------------------------------------------------------
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


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def spread(a: list[Run], b: list[Run]) -> str:
    def iqr(runs: list[Run]) -> str:
        q = statistics.quantiles([r.wall * 1000 for r in runs], n=4) if len(runs) > 1 else [runs[0].wall * 1000] * 3
        return f"{q[0]:.0f}–{q[2]:.0f}"

    pairs = median([x.wall / y.wall for x, y in zip(a, b)])
    return f"IQR {iqr(a)} vs {iqr(b)} ms; median of per-round ratios {pairs:.2f}×"


def ratio_row(id_: str, what: str, subject: list[Run], floor: list[Run], limit: float) -> Row:
    """A wall-time row: median ÷ median against `≤ limit×`."""
    s, f = median([r.wall for r in subject]), median([r.wall for r in floor])
    ratio = s / f
    return Row(id_, what, ms(s), ms(f), ratio, f"≤ {limit}×", ratio <= limit, spread(subject, floor))


def median_floor(row: Row) -> float:
    return float(row.floor.split()[0]) / 1000


def interpreter_note(bench: Bench, row: Row) -> list[str]:
    """For a cheap command's target not met: how much of the floor is the interpreter (measured by P1)."""
    if "interpreter" not in bench.extra:
        return []
    return [
        f"- For scale: the interpreter alone (`python -c pass`) takes {bench.extra['interpreter'] * 1000:.0f} ms, so the floor "
        f"spends {(median_floor(row) - bench.extra['interpreter']) * 1000:.0f} ms importing typer."
    ]


# -- the bench: one isolated run ----------------------------------------------------------------------
class Bench:
    """The run's shared context: repetitions, a throw-away root (state, data, working dirs, bytecode cache), the
    environment without the user's settings, what was started, and what was found. Use it as a context manager:
    leaving it stops everything started and removes the root, also on failure, Ctrl-C or SIGTERM/SIGHUP (which
    raise KeyboardInterrupt inside it)."""

    def __init__(self, args) -> None:
        self.args = args
        self.reps = args.reps or (5 if args.quick else 21)
        self.heavy_reps = args.heavy_reps or (3 if args.quick else 9)
        self.chat_reps = max(
            self.heavy_reps, 5 if args.quick else 15
        )  # a chat is ~1 s and generation speed is the noisiest part
        self.warmup = 1 if args.quick else 2
        self.root = Path(tempfile.mkdtemp(prefix="lf-bench-"))
        self.data_dir = self.root / "data"
        self.data_dir.mkdir()
        base = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV_PREFIXES)}
        # Bytecode goes to a cache of the bench's own, written by the warm-up runs: a user's lf has its .pyc files,
        # and PYTHONDONTWRITEBYTECODE (set on some of these machines) would make lf, whose sources change often,
        # recompile on every run while site-packages did not.
        self.base_env = {
            **base,
            "NO_COLOR": "1",
            "COLUMNS": "120",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPYCACHEPREFIX": str(self.root / "pycache"),
        }
        self.user_data_dir = self._user_data_dir()
        self.sandboxes: list[Sandbox] = []
        self.procs: list[subprocess.Popen] = []
        self.hung: HungServer | None = None
        self.rows: list[Row] = []
        self.reasons: list[str] = []
        self.profiles: dict[str, list] = {}  # -X importtime entries per command (see importtime.py)
        self.floor_imports: list = []  # the same for `python -c "import typer"`
        self.import_sites: dict[int, dict[str, str]] = {}
        self.memory: list[tuple[str, float, str]] = []  # (process, peak RSS MiB, note)
        self.extra: dict = {}  # what one measurement leaves for its own or another's explanation
        self.started = self.elapsed = 0.0  # set by run.py, like the load averages before and after
        self.load_before = self.load_after = (0.0, 0.0, 0.0)

    @staticmethod
    def _user_data_dir() -> Path:
        """Where the user's lf keeps its runtime envs (read only: P6 looks for llama-cpp-python there)."""
        if os.environ.get("LF_DATA_DIR"):
            return Path(os.environ["LF_DATA_DIR"]).expanduser()
        from lf.dirs import data_dir

        return data_dir()

    def __enter__(self) -> Bench:
        def on_term(signum, frame):
            raise KeyboardInterrupt

        self._previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGHUP)}
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.cleanup()
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

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

    def cleanup(self) -> None:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        try:
            interrupt_live()
            for proc in self.procs:
                if proc.returncode is None and proc.poll() is None:
                    stop_group(proc)
            for box in reversed(self.sandboxes):  # borrowers first
                box.cleanup()
            if self.hung:
                self.hung.close()
            shutil.rmtree(self.root, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)

    def spawn(self, argv: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
        """Start a process of the bench's own (a direct engine) in its own group; stopped by cleanup()."""
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def llamacpp_argv_pair(self, box: Sandbox) -> tuple[int, list[str], int, list[str]]:
        """The llamacpp engine argv lf records, for a port of lf's and for another one the bench starts directly:
        (lf's port, lf's argv, the direct port, the direct argv). Found by one start and stop through lf."""
        lf_port, direct_port = free_port(), free_port()
        box.lf("runtime", "start", "llamacpp", "--port", str(lf_port), check=True)
        argv = box.record("llamacpp")["command"]
        box.lf("runtime", "stop", "llamacpp", check=True)
        direct_argv = list(argv)
        direct_argv[direct_argv.index("--port") + 1] = str(direct_port)
        return lf_port, argv, direct_port, direct_argv

    def running_llamacpp(self) -> tuple[Sandbox, dict]:
        """One llamacpp instance kept running for P4 and P6: its sandbox and its record."""
        if "chat_box" not in self.extra:
            box = Sandbox(self, "p4")
            box.lf("runtime", "start", "llamacpp", "--port", str(free_port()), check=True)
            self.extra["chat_box"] = (box, box.record("llamacpp"))
        return self.extra["chat_box"]
