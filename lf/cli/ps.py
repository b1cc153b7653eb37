"""`lf ps`: what runs now, its memory, and when the gateway unloads it (as `ollama ps`)."""

from __future__ import annotations

from lf.cli._common import ConfigOpt, JsonOpt, command, err, out, print_json, table
from lf.cli.runtime import AllProjectsOpt, _scope


@command
def ps(all_projects: AllProjectsOpt = False, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """What runs now: each live instance of the project with its memory (its process tree's) and, for those a
    running `lf serve` started, when it unloads them. Always exits 0; `lf runtime status` judges health."""
    from lf.core.ps import duration, running
    from lf.models.gguf_meta import human_bytes

    loaded, store = _scope(config, None)
    report = running(loaded, store, all_projects=all_projects)
    for warning in report.warnings:
        err(warning)
    if json_out:
        print_json(report.to_dict())
        return
    rows = []
    for item in report.to_dict()["instances"]:
        rows.append(
            [
                item["name"],
                item["model"] or "-",
                item["runtime"],
                item["state"],
                str(item["pid"] or "-"),
                human_bytes(item["memory_bytes"]) if item["memory_bytes"] is not None else "-",
                duration(item["uptime_s"]) if item["uptime_s"] is not None else "-",
                item["until"],
            ]
        )
    headers = ["NAME", "MODEL", "RUNTIME", "STATE", "PID", "MEMORY", "UPTIME", "UNTIL"]
    if all_projects:
        rows = [[i.project or "-", *row] for i, row in zip(report.instances, rows)]
        headers = ["PROJECT", *headers]
    out(table(rows, headers))
