"""P2: `lf --help` against `python -c "import typer"`, alternately. Target ≤ 1.6×.

Also records lf's peak RSS and the command's import profile.
"""

from __future__ import annotations

import importtime
from harness import Bench, Row, Sandbox, alternate, floor_run, interpreter_note, median, ratio_row


def measure(bench: Bench) -> list[Row]:
    bench.log("P2: lf --help vs python -c 'import typer'")
    box = Sandbox(bench, "p2")
    box.lf("--help", check=True)
    lf_runs, floor_runs = alternate(lambda: box.lf("--help"), lambda: floor_run(box), bench.reps, bench.warmup)
    row = ratio_row("P2", "`lf --help` vs `import typer`", lf_runs, floor_runs, 1.6)
    bench.memory.append(("`lf --help`", median([r.rss_kb for r in lf_runs]) / 1024, ""))
    bench.profiles["help"] = importtime.profile(bench, box, ["--help"])
    return [row]


def explain(bench: Bench, row: Row) -> list[str]:
    return importtime.reasons(bench, "help") + interpreter_note(bench, row)
