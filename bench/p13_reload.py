"""P13: llamafarm.yaml edited ten times under 50 concurrent streams through `lf serve`.

The upstreams are paced fake engines (tests/fakes: `fake-steady` streams 60 tokens 0.1 s apart, a six-second
answer; `fake-brisk` six tokens in 0.2 s), made visible to lf as the test suite does (LF_RUNTIMES_PATH and
PYTHONPATH), so the row measures the gateway and its reload, not an engine's speed on a loaded machine.

50 clients stream at once, each one request after the other: 20 to `a`, 20 to `b`, 10 to `c`. While they run,
llamafarm.yaml is saved ten times, 2 s apart (the gateway looks at it every second), as an editor saves (a new file
renamed over the old one): three models added, two removed (`c` among them: its clients go on with `a` once `c` is
refused), four changed (a change of model restarts the instance once its streams end: `a` twice, `b`, `e`) and one
invalid edit (the running models must stay). Each added model is asked once as soon as it is listed.

A stream is *cut* when it was answered (200) but did not end as the engine ends it (all its tokens, finish_reason
stop, [DONE]); it *failed* when it got anything but a 200, except a 404 for a model that the file no longer had
when the request was sent. Target: 0 cut and 0 failed. Floor: the same 50 clients for the same time with no
edit (the streams they complete, and the slowest stream).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from typing import Any

from harness import REPO, Bench, BenchError, Row, Sandbox, free_port, lf_argv, stop_group, wait_http_ok

CLIENTS = {"a": 20, "b": 20, "c": 10}
TOKENS = {"fake-steady": 60, "fake-brisk": 6}  # what each fake runtime streams per answer
EDIT_EVERY = 2.0  # seconds between saves: more than the gateway's look every second plus its settle time
SETTLE_AFTER = 8.0  # seconds the clients go on after the last edit (a changed model restarts once its streams end)


def entry(name: str, runtime: str, model: str, port: int) -> str:
    return f"    - {{name: {name}, provider: {runtime}, model: {model}, provider_config: {{port: {port}}}}}"


def document(models: dict[str, tuple[str, str]], ports: dict[str, int]) -> str:
    lines = ["version: v1", "name: bench", "namespace: bench", "runtime:", "  models:"]
    return "\n".join([*lines, *(entry(n, r, m, ports[n]) for n, (r, m) in models.items())]) + "\n"


def edits() -> list[tuple[str, dict[str, tuple[str, str]] | None]]:
    """The ten saves, each (what it does, the models it leaves; None: an invalid file)."""
    models = {"a": ("fake-steady", "m"), "b": ("fake-steady", "m"), "c": ("fake-steady", "m")}
    steps: list[tuple[str, dict[str, tuple[str, str]] | None]] = [("initial", dict(models))]

    def step(what: str, **change: tuple[str, str] | None) -> None:
        for name, value in change.items():
            if value is None:
                models.pop(name)
            else:
                models[name] = value
        steps.append((what, dict(models)))

    step("add d", d=("fake-brisk", "m"))
    step("change a", a=("fake-steady", "m2"))
    step("add e", e=("fake-brisk", "m"))
    step("remove c", c=None)
    step("change b", b=("fake-steady", "m2"))
    steps.append(("invalid", None))
    step("remove d", d=None)  # the first valid save after the invalid one
    step("change e", e=("fake-brisk", "m2"))
    step("add f", f=("fake-steady", "m"))
    step("change a", a=("fake-steady", "m3"))
    return steps


def write(path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # as an editor saves: whole, at once


class Outcomes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: list[dict] = []
        self.cut: list[dict] = []
        self.failed: list[dict] = []
        self.refused: list[dict] = []  # 404 for a model the file no longer had: as it should be
        self.removed_at: dict[str, float] = {}  # model -> when the save that removed it was written

    def add(self, result: dict) -> str:
        with self.lock:
            if result["status"] == 200:
                complete = result["finish"] == ["stop"] and result["done"] and result["tokens"] == result["expected"]
                (self.ok if complete else self.cut).append(result)
                return "ok" if complete else "cut"
            gone = self.removed_at.get(result["model"])
            if result["status"] == 404 and gone is not None and gone <= result["sent"]:
                self.refused.append(result)
                return "refused"
            self.failed.append(result)
            return "failed"


def stream(port: int, model: str, expected: int) -> dict:
    """One streamed chat through the gateway, read to its end, and how it ended."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    result: dict[str, Any] = {"model": model, "sent": time.monotonic(), "expected": expected, "status": None}
    result.update(tokens=0, finish=[], done=False, fingerprint=None, error=None)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(
            "POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        result["status"] = response.status
        if response.status != 200:
            result["error"] = response.read()[:300].decode("utf-8", "replace")
            return result
        for raw in response:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                result["done"] = True
                break
            event = json.loads(data)
            if "error" in event:
                result["error"] = str(event["error"])[:300]
                continue
            result["fingerprint"] = event.get("system_fingerprint") or result["fingerprint"]
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    result["tokens"] += 1
                if choice.get("finish_reason"):
                    result["finish"].append(choice["finish_reason"])
    except (OSError, http.client.HTTPException, ValueError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        result["ended"] = time.monotonic()
        conn.close()
    return result


def listed(port: int) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/v1/models")
        return [m["id"] for m in json.loads(conn.getresponse().read())["data"]]
    finally:
        conn.close()


def run_load(bench: Bench, label: str, with_edits: bool, duration: float | None = None) -> dict:
    """A fresh gateway over the initial file, 50 clients, the edits (or none, for `duration` seconds)."""
    steps = edits()
    names = sorted({n for _, models in steps if models for n in models})
    ports = {n: free_port() for n in names}
    box = Sandbox(bench, f"p13-{label}")
    fakes = REPO / "tests" / "fakes"
    box.env["LF_RUNTIMES_PATH"] = str(fakes / "runtimes")
    box.env["PYTHONPATH"] = ":".join(filter(None, [str(fakes.parent), box.env.get("PYTHONPATH", "")]))
    config = box.work / "llamafarm.yaml"
    current = dict(steps[0][1] or {})
    write(config, document(current, ports))
    port = free_port()
    log_path = box.root / "serve.log"
    gateway = bench.spawn(
        [*lf_argv(), "serve", "--port", str(port), "--probe-interval", "1", "--max-loaded", "0"],
        box.env,
        box.work,
        log_path,
    )
    outcomes = Outcomes()
    stop = threading.Event()
    runtime_of = {n: r for _, models in steps if models for n, (r, _m) in models.items()}

    def client(model: str) -> None:
        while not stop.is_set():
            kind = outcomes.add(stream(port, model, TOKENS[runtime_of[model]]))
            if kind == "refused":
                model = "a"  # its model was removed: this client goes on with one that stays
            elif kind == "failed":
                time.sleep(0.2)  # counted; no hot loop against a refusing gateway

    checks: list[str] = []
    try:
        wait_http_ok(port, "/health/liveness", gateway, timeout=60)
        for model in CLIENTS:  # every instance up before the load: the load measures the reload, not the starts
            outcomes.add(stream(port, model, TOKENS[runtime_of[model]]))
        threads = [
            threading.Thread(target=client, args=(model,), daemon=True)
            for model, count in CLIENTS.items()
            for _ in range(count)
        ]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(EDIT_EVERY)
        if with_edits:
            for _what, models in steps[1:]:
                if models is None:
                    config.write_text("version: v1\nruntime: {models: [{name: broken}]}\n")  # no provider, no model
                else:
                    for gone in set(current) - set(models):
                        outcomes.removed_at[gone] = time.monotonic()
                    write(config, document(models, ports))
                    for new in set(models) - set(current):
                        checker = threading.Thread(
                            target=_ask_when_listed, args=(port, new, outcomes, runtime_of, checks)
                        )
                        checker.daemon = True
                        checker.start()
                    current = models
                time.sleep(EDIT_EVERY)
            time.sleep(SETTLE_AFTER)
        else:
            time.sleep(duration or 0)
        stop.set()
        elapsed = time.monotonic() - began
        for thread in threads:
            thread.join(120)
        if any(t.is_alive() for t in threads):
            raise BenchError(f"P13 {label}: clients still streaming 120 s after the load ended")
    finally:
        stop.set()
        stop_group(gateway, timeout=60)
    text = log_path.read_text(errors="replace")
    fingerprints: dict[str, dict[str, int]] = {}
    for r in outcomes.ok:
        counts = fingerprints.setdefault(r["model"], {})
        counts[r["fingerprint"]] = counts.get(r["fingerprint"], 0) + 1
    loaded = [r for r in outcomes.ok if r["model"] in CLIENTS]
    return {
        "outcomes": outcomes,
        "elapsed": elapsed,
        "reloads": len(re.findall(r"reloaded llamafarm\.yaml", text)),
        "rejected": len(re.findall(r"llamafarm\.yaml not reloaded", text)),
        "restarts": len(re.findall(r"\(changed in llamafarm\.yaml\)", text)),
        "removals": len(re.findall(r"\(removed from llamafarm\.yaml\)", text)),
        "fingerprints": fingerprints,
        "checks": checks,
        "slowest": max((r["ended"] - r["sent"] for r in loaded), default=float("nan")),
    }


def _ask_when_listed(port: int, model: str, outcomes: Outcomes, runtime_of: dict, checks: list[str]) -> None:
    deadline = time.monotonic() + 15
    while model not in listed(port):
        if time.monotonic() > deadline:
            checks.append(f"{model} never listed")
            return
        time.sleep(0.1)
    checks.append(f"{model}: {outcomes.add(stream(port, model, TOKENS[runtime_of[model]]))}")


def measure(bench: Bench) -> list[Row]:
    bench.log(
        f"P13: {sum(CLIENTS.values())} concurrent streams through lf serve while llamafarm.yaml is edited 10 times"
    )
    edited = run_load(bench, "edited", True)
    quiet = run_load(bench, "quiet", False, duration=edited["elapsed"])
    o, q = edited["outcomes"], quiet["outcomes"]
    bench.extra["p13"] = edited
    served = ", ".join(
        f"{model} {' '.join(f'{fp}×{n}' for fp, n in sorted(counts.items(), key=lambda kv: str(kv[0])))}"
        for model, counts in sorted(edited["fingerprints"].items())
    )
    return [
        Row(
            "P13",
            f"{sum(CLIENTS.values())} concurrent streams through `lf serve` while llamafarm.yaml is edited 10 times "
            "(3 added, 2 removed, 4 changed, 1 invalid): streams cut, failed",
            f"{len(o.cut)} cut, {len(o.failed)} failed of {len(o.ok) + len(o.cut) + len(o.failed)}",
            f"{len(q.cut)} cut, {len(q.failed)} failed of {len(q.ok) + len(q.cut) + len(q.failed)}",
            len(o.ok) / len(q.ok) if q.ok else None,
            "0 cut and 0 failed",
            not o.cut and not o.failed,
            f"paced fake engines (60 tokens 0.1 s apart); {edited['elapsed']:.0f} s of load each side, the floor "
            f"without edits; ratio is of complete streams; the gateway logged {edited['reloads']} reloads, "
            f"{edited['rejected']} rejected file(s), {edited['restarts']} restarts and {edited['removals']} removals; "
            f"{len(o.refused)} requests for a removed model refused with 404 (clients then moved on); added models "
            f"asked once listed: {'; '.join(edited['checks']) or 'none'}; slowest stream {edited['slowest']:.1f} s vs "
            f"{quiet['slowest']:.1f} s; answers by instance (system_fingerprint): {served}",
        )
    ]


def explain(bench: Bench, row: Row) -> list[str]:
    found = bench.extra.get("p13")
    if not found:
        return []
    o = found["outcomes"]
    lines = []
    for kind, results in (("cut", o.cut), ("failed", o.failed)):
        for r in results[:5]:
            removed = o.removed_at.get(r["model"])
            when = f", sent {r['sent'] - removed:+.1f} s from its removal" if removed is not None else ""
            lines.append(
                f"- {kind}: {r['model']}, HTTP {r['status']}, {r['tokens']}/{r['expected']} tokens, finish "
                f"{r['finish']}, [DONE] {r['done']}{when}, error {r['error']!r}"
            )
        if len(results) > 5:
            lines.append(f"- … and {len(results) - 5} more {kind}")
    return lines
