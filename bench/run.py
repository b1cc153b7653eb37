"""lf's start-up and overhead benchmark: every claim is a ratio against a floor measured in the same run.

    make bench                       # = .venv/bin/python bench/run.py  (writes bench/RESULTS.md)
    .venv/bin/python bench/run.py --quick            # fewer repetitions, prints only
    .venv/bin/python bench/run.py --only P1,P2       # a subset, printed (RESULTS.md keeps the whole run)
    .venv/bin/python bench/run.py --llama-cpp-python /path/to/python   # P6 with another llama-cpp-python

Each measurement runs the subject and its floor alternately (ABAB…, the order flipped every round),
after warm-up runs, and reports medians. Everything runs under throw-away LF_STATE_DIR/LF_DATA_DIR and a
throw-away working dir, on free ports of its own, and everything started is stopped again on exit,
failure or Ctrl-C. See bench/README.md for what each row means.

This file is the entry point and the list of measurements; harness.py is what they share, one module per
measurement (p1_status.py …) does the measuring, importtime.py the import profiles, report.py RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this file, also under `python -P`

import importtime  # noqa: E402
import report  # noqa: E402
from harness import HERE, PY, REPO, Bench, BenchError  # noqa: E402

# The measurements, in the order they run: the key `--only` takes, and the module beside this file that measures it.
# A module has `measure(bench) -> list[Row]` and may have `explain(bench, row) -> list[str]`, the measured reason
# for one of its rows missing its target. A new measurement is one new module plus one line here.
MEASUREMENTS = {
    "P1": "p1_status",
    "P2": "p2_help",
    "P3": "p3_start",
    "P4": "p4_chat",
    "P5": "p5_status_scale",
    "P6": "p6_engines",
    "P7": "p7_gateway",
    "P8": "p8_stop",
    "P9": "p9_vllm",
    "P10": "p10_memory",
    "P11": "p11_placement",
    "P12": "p12_runaway",
    "P13": "p13_reload",
    "P14": "p14_replicas",
    "P15": "p15_routing",
    "P16": "p16_embeddings",
}


def run_all(bench: Bench) -> None:
    if not (REPO / "lf").is_dir():
        raise BenchError(f"run this from the lf repository ({REPO})")
    try:
        from lf.models.catalog import CATALOG

        if CATALOG["smollm2-135m"].path() is None:
            raise BenchError("the default model is not installed: lf models fetch smollm2-135m (make setup does it)")
    except ImportError as exc:
        raise BenchError(f"{PY} cannot import lf ({exc}): run it with the project's venv (make bench)") from None
    modules = {key: importlib.import_module(name) for key, name in MEASUREMENTS.items()}
    bench.started = time.time()
    bench.load_before = os.getloadavg()
    if bench.load_before[0] > 0.5 * len(os.sched_getaffinity(0)):
        bench.log(
            f"warning: load average {bench.load_before[0]:.2f} before the bench: other work is running; ratios stay "
            "comparable, absolute times and tokens/s will be low"
        )
    measured_by = {}
    for key, module in modules.items():
        if bench.wanted(key):
            for row in module.measure(bench):
                bench.add(row)
                measured_by[row.id] = module
    bench.floor_imports = importtime.floor_profile(bench)
    bench.load_after = os.getloadavg()
    bench.elapsed = time.time() - bench.started
    for row in bench.rows:  # for every target not met, the measured reason and what would be needed
        if row.met is False:
            explain = getattr(measured_by[row.id], "explain", None)
            bench.reasons += [
                f"**{row.id}** ({row.what}): {row.subject} vs {row.floor}, {row.ratio:.2f}× against {row.target}.",
                *(explain(bench, row) if explain else []),
                "",
            ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description="lf start-up and overhead benchmark (ratios against floors, one run)."
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions (5 cheap / 3 heavy); prints only unless --out is given"
    )
    parser.add_argument("--reps", type=int, help="repetitions per cheap command pair (default 21)")
    parser.add_argument("--heavy-reps", type=int, help="repetitions per start/chat/engine pair (default 9)")
    parser.add_argument(
        "--only", type=lambda s: {x.strip().upper() for x in s.split(",")}, help="comma-separated subset, e.g. P1,P4"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write the results (default bench/RESULTS.md; a quick run or a subset (--only) writes nothing)",
    )
    parser.add_argument(
        "--llama-cpp-python",
        help="python of a llama-cpp-python[server] install for P6 (default: lf's env, if installed)",
    )
    parser.add_argument(
        "--embed-floor-python",
        help="python of a venv with torch, sentence-transformers and onnxruntime for P16's in-process floors "
        "(see bench/embed_floor.py; default: those rows are skipped)",
    )
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1 or args.heavy_reps is not None and args.heavy_reps < 1:
        parser.error("repetitions must be at least 1")
    out = args.out or (None if args.quick or args.only else HERE / "RESULTS.md")  # a part never replaces the whole

    with Bench(args) as bench:  # leaving it stops everything the bench started
        try:
            run_all(bench)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping everything the bench started", file=sys.stderr)
            return 130
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
    text = report.render(bench)
    print(text)
    if out:
        out.write_text(text)
        print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
