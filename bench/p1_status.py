"""P1: `lf runtime status --json` with one running llamacpp instance and two stopped ones (a llamafarm.yaml with
three entries) against `python -c "import typer"`, alternately. Target ≤ 1.3×.

Also records both sides' peak RSS, the command's import profile, the bare interpreter's start-up and, for the
reasons, where one fresh status process spends its time (STATUS_PHASES).
"""

from __future__ import annotations

import json

import importtime
from harness import (
    PY,
    Bench,
    BenchError,
    Row,
    Sandbox,
    alternate,
    floor_run,
    free_port,
    interpreter_note,
    median,
    parse_json,
    ratio_row,
    run,
)


def measure(bench: Bench) -> list[Row]:
    bench.log("P1: lf runtime status --json (1 running llamacpp instance, 2 stopped) vs python -c 'import typer'")
    ports = [free_port() for _ in range(3)]
    box = Sandbox(
        bench,
        "p1",
        [
            {"name": f"m{i + 1}", "provider": "llamacpp", "model": "smollm2-135m", "provider_config": {"port": p}}
            for i, p in enumerate(ports)
        ],
    )
    box.lf("runtime", "start", "m1", check=True)
    data = parse_json(box.lf("runtime", "status", "--json"), "lf runtime status --json")
    states = {i["name"]: i["state"] for i in data["instances"]}
    if states != {"m1": "running", "m2": "stopped", "m3": "stopped"}:
        raise BenchError(f"P1 set-up: unexpected states {states}")

    lf_runs, floor_runs = alternate(
        lambda: box.lf("runtime", "status", "--json"), lambda: floor_run(box), bench.reps, bench.warmup
    )
    row = ratio_row(
        "P1", "`lf runtime status --json` (1 running, 2 stopped) vs `import typer`", lf_runs, floor_runs, 1.3
    )
    bench.memory.append(
        ("`lf runtime status --json`", median([r.rss_kb for r in lf_runs]) / 1024, "1 running, 2 stopped")
    )
    bench.memory.append(("`python -c 'import typer'` (floor)", median([r.rss_kb for r in floor_runs]) / 1024, ""))

    # for the reasons, should the target be missed
    bench.profiles["status"] = importtime.profile(bench, box, ["runtime", "status", "--json"])
    bench.extra["status_box"] = box
    bench.extra["interpreter"] = median([run([PY, "-c", "pass"], box.env, box.work).wall for _ in range(bench.reps)])
    phases = []
    for _ in range(5):
        r = run([PY, "-c", STATUS_PHASES], box.env, box.work)
        try:
            phases.append(json.loads(r.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            break
    if phases:
        bench.extra["status_phases"] = {k: median([p[k] for p in phases]) for k in phases[0]}
    return [row]


def explain(bench: Bench, row: Row) -> list[str]:
    lines = importtime.reasons(bench, "status") + interpreter_note(bench, row)
    if "status_phases" in bench.extra:
        ph = bench.extra["status_phases"]
        lines.append(
            f"- Phases in one fresh process (median of 5, no -X importtime): `import typer` {ph['typer'] * 1000:.0f} ms, "
            f"`import lf.cli` {ph['lf_cli'] * 1000:.1f} ms, building the click command for `lf runtime status` "
            f"(`typer.main.get_command`, the one command main() registers) {ph['tree'] * 1000:.1f} ms, "
            f"the first status call {ph['first'] * 1000:.1f} ms (its lazy imports, the command again, config from its "
            f"cached form, records, probe, JSON), the same call again with everything imported {ph['again'] * 1000:.1f} ms. "
            "What is left is Typer converting the command on every call plus the status modules' own import (about ten "
            "dataclasses, socket, json); closing the gap would need status to answer without building a Typer command "
            "or without dataclasses on its path."
        )
    return lines


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
