"""P8: `lf runtime stop llamacpp` until it returns against the same engine, started directly, SIGTERMed by its
parent and reaped the moment it exits. Target: at most 100 ms more (the issue's `stop` budget: the engine's own
exit time plus lf's start-up, not a wait for a reaper or a poll interval).

Each round starts both engines untimed and waits until they are healthy; only the stops are timed, alternately.
"""

from __future__ import annotations

import os
import signal
import time

from harness import Bench, Row, Sandbox, alternate, median, ms, wait_http_ok

TARGET_S = 0.100


def measure(bench: Bench) -> list[Row]:
    bench.log("P8: lf runtime stop llamacpp vs SIGTERM to the same engine started directly, until it exited")
    box = Sandbox(bench, "p8")
    lf_port, _argv, direct_port, direct_argv = bench.llamacpp_argv_pair(box)
    escalated: list[bool] = []

    def via_lf() -> float:
        box.lf("runtime", "start", "llamacpp", "--port", str(lf_port), check=True)
        result = box.lf("runtime", "stop", "llamacpp", "--json", check=True)
        escalated.append('"escalated": true' in result.stdout)
        return result.wall

    def direct() -> float:
        proc = bench.spawn(direct_argv, box.env, box.state, box.root / "direct.log")
        wait_http_ok(direct_port, "/health", proc, timeout=120)
        started = time.perf_counter()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        return time.perf_counter() - started

    lf_times, direct_times = alternate(via_lf, direct, bench.heavy_reps, 1)
    s, f = median(lf_times), median(direct_times)
    note = f"lf − direct = {(s - f) * 1000:.0f} ms (median); SIGKILL needed in {sum(escalated)} of {len(escalated)} lf stops"
    return [
        Row(
            "P8",
            "`lf runtime stop llamacpp` vs SIGTERM-to-exit of the engine started directly",
            ms(s),
            ms(f),
            s / f,
            f"≤ +{TARGET_S * 1000:.0f} ms",
            s - f <= TARGET_S,
            note,
        )
    ]
