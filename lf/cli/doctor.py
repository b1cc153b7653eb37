"""`lf doctor`: whether this machine can run what the project asks, each check with its fix."""

from __future__ import annotations

import typer

from lf.cli._common import ConfigOpt, JsonOpt, command, err, out, print_json

MARKS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


@command
def doctor(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Check Python, CPU, memory, GPUs and NPUs, engines, ports, the memory budget, the state dir, llamafarm.yaml and its models.

    Exits 0 when no check fails, 10 when one does; each warning and failure says how to fix it."""
    from lf.core.doctor import run

    report = run(config)
    if json_out:
        print_json(report.as_json())
    else:
        width = max(len(c.name) for c in report.checks)
        for c in report.checks:
            out(f"{MARKS[c.status]}  {c.name.ljust(width)}  {c.detail}")
            if c.fix:
                out(f"      {' ' * width}  fix: {c.fix}")
        failed = sum(c.status == "fail" for c in report.checks)
        warned = sum(c.status == "warn" for c in report.checks)
        err(
            f"{len(report.checks)} checks: {failed} failed, {warned} warnings"
            if failed or warned
            else f"{len(report.checks)} checks: all ok"
        )
    if report.exit_status:
        raise typer.Exit(int(report.exit_status))
