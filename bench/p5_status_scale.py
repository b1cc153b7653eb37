"""P5: `lf runtime status --json` under load and with a hung endpoint.

P5a: 8 running llamacpp instances (SmolLM2-135M, ~200 MB each) against 1 (a state dir holding one of those
records and a llamafarm.yaml with that one entry), alternately. Target ≤ 1.3×.
P5b: one `provider: openai` entry whose base_url is a socket that accepts and never answers, plus the one running
instance, against the probe timeout. Target ≤ timeout + 0.2 s.
"""

from __future__ import annotations

from harness import Bench, BenchError, HungServer, Row, Sandbox, alternate, free_port, median, ms, parse_json, spread

PROBE_TIMEOUT = 1.0  # `lf runtime status`'s default --probe-timeout


def measure(bench: Bench) -> list[Row]:
    bench.log("P5: lf runtime status --json with 8 running instances vs 1; with one hung endpoint vs the probe timeout")
    ports = [free_port() for _ in range(8)]
    models = [
        {"name": f"n{i + 1}", "provider": "llamacpp", "model": "smollm2-135m", "provider_config": {"port": p}}
        for i, p in enumerate(ports)
    ]
    eight = Sandbox(bench, "p5-eight", models)
    eight.lf("runtime", "start", "llamacpp", timeout=600, check=True)
    one = Sandbox(bench, "p5-one", models[:1], borrowed=True)
    one.borrow(eight, "n1")
    bench.hung = HungServer()
    hung_entry = {
        "name": "hung",
        "provider": "openai",
        "model": "any",
        "base_url": f"http://127.0.0.1:{bench.hung.port}/v1",
    }
    hung = Sandbox(bench, "p5-hung", [models[0], hung_entry], borrowed=True)
    hung.borrow(eight, "n1")

    for box, expect in (
        (eight, {f"n{i + 1}": "running" for i in range(8)}),
        (one, {"n1": "running"}),
        (hung, {"n1": "running", "hung": "external"}),
    ):
        data = parse_json(box.lf("runtime", "status", "--json"), "lf runtime status --json")
        states = {i["name"]: i["state"] for i in data["instances"]}
        if states != expect:
            raise BenchError(f"P5 set-up ({box.name}): unexpected states {states}")
        if box is hung:
            health = next(i for i in data["instances"] if i["name"] == "hung")["health"]
            if not health or health.get("reachable"):
                raise BenchError(f"P5 set-up: the hung endpoint was not reported as unanswered: {health}")

    status = ("runtime", "status", "--json")
    many, single = alternate(lambda: eight.lf(*status), lambda: one.lf(*status), bench.reps, bench.warmup)
    s, f = median([r.wall for r in many]), median([r.wall for r in single])
    scale = Row(
        "P5a",
        "`lf runtime status --json`: 8 running instances vs 1",
        ms(s),
        ms(f),
        s / f,
        "≤ 1.3×",
        s / f <= 1.3,
        "8 real llamacpp (xllamacpp) instances with SmolLM2-135M; " + spread(many, single),
    )

    hung_runs, _ = alternate(lambda: hung.lf(*status), lambda: one.lf(*status), max(7, bench.reps // 2), 1)
    h = median([r.wall for r in hung_runs])
    limit = PROBE_TIMEOUT + 0.2
    bench.extra["p5"] = {"one": f, "hung": h}
    hung_row = Row(
        "P5b",
        f"status with one hung endpoint vs the probe timeout ({PROBE_TIMEOUT:g} s)",
        ms(h),
        ms(PROBE_TIMEOUT),
        h / PROBE_TIMEOUT,
        f"≤ {limit:g} s",
        h <= limit,
        "hung = a socket that accepts and never answers, a `provider: openai` entry + 1 running llamacpp; "
        f"max {max(r.wall for r in hung_runs) * 1000:.0f} ms",
    )
    return [scale, hung_row]


def explain(bench: Bench, row: Row) -> list[str]:
    if row.id == "P5b" and "p5" in bench.extra:
        p5 = bench.extra["p5"]
        return [
            f"status alone takes {p5['one'] * 1000:.0f} ms (1 instance); with a hung endpoint {p5['hung'] * 1000:.0f} ms = "
            f"start-up + probe timeout ({PROBE_TIMEOUT:g} s) + join slack. Its overshoot over the timeout "
            f"({(p5['hung'] - PROBE_TIMEOUT) * 1000:.0f} ms) is the start-up cost P1 measures: the fix is P1's, plus starting "
            "the probes before the JSON is assembled (they already run in parallel)."
        ]
    if row.id == "P5a":
        return [
            "Per-instance cost grows faster than the probes' parallelism hides: look at records read and probe threads."
        ]
    return []
