"""`lf runtime …`: start, stop, restart, status, logs, list."""

from __future__ import annotations

from typing import Annotated

import typer

from lf.cli._common import (
    ConfigOpt,
    JsonOpt,
    Progress,
    command,
    complete_instances,
    complete_models,
    complete_runtimes,
    complete_settings,
    complete_startable,
    err,
    load_project,
    out,
    print_json,
    table,
)
from lf.cli.models_pull import PullOpt, with_pull

TargetArg = Annotated[
    str | None,
    typer.Argument(
        help="A runtime (all its configured models) or one model entry; default: every model the project needs.",
        autocompletion=complete_startable,
        show_default=False,
    ),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option("--timeout", help="Seconds to wait until healthy (default: the runtime's).", show_default=False),
]
StopTimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds between SIGTERM and SIGKILL.")]
ProjectOpt = Annotated[
    str | None,
    typer.Option(
        "--project",
        help="Another project's instances: NAMESPACE/NAME as status --all-projects shows it, or none for those of no project.",
        show_default=False,
    ),
]
AllProjectsOpt = Annotated[
    bool, typer.Option("--all-projects", "-A", help="Every project's instances, not only this project's.")
]
DirectOpt = Annotated[
    bool,
    typer.Option(
        "--direct", help="Go around a running lf serve of the project (by default it starts the models it serves)."
    ),
]


def _scope(config: str | None, project: str | None, *, lenient: bool = False):
    """(the project, the store of its instances) a command acts on: --project names one by its key; else
    the llamafarm.yaml found (none: the instances of no project). With `lenient` (stop, logs), a file that
    cannot be read does not block: its folder's instances are found by the folder their records name."""
    from lf.daemon.records import StateStore, parse_project
    from lf.errors import ConfigError

    if project is not None:
        return None, StateStore(project=parse_project(project))
    try:
        loaded = load_project(config)
    except ConfigError as exc:
        if not lenient:
            raise
        from lf.config.project import find_config

        path = find_config(config)
        store = StateStore().of_folder(path.resolve().parent) if path is not None else None
        if store is None or path is None:
            raise
        err(f"Warning: {exc.message}; acting on the instances started from {path.parent} (project {store.project})")
        return None, store
    return loaded, StateStore.of(loaded)


def _settings(pairs: list[str] | None) -> dict:
    """--set NAME=VALUE pairs: the value as YAML would read it (8 is a number, true a boolean)."""
    from lf.errors import ExitStatus, LfError

    values = {}
    for pair in pairs or []:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise LfError(f"--set {pair!r}: expected NAME=VALUE", exit_status=ExitStatus.USAGE)
        values[name.strip()] = _scalar(text)
    return values


def _scalar(text: str):
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@command
def start(
    target: TargetArg = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model name or file (one instance only).", autocompletion=complete_models),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", "-p", min=1, max=65535, help="Port to listen on (one instance only).")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to bind (default 127.0.0.1).")] = None,
    ctx_size: Annotated[int | None, typer.Option("--ctx-size", min=128, help="Context window in tokens.")] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", min=1, help="CPU threads (default: all cores).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Any setting the runtime declares, as NAME=VALUE (repeatable; see lf config show).",
            autocompletion=complete_settings,
            show_default=False,
        ),
    ] = None,
    engine_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--engine-arg",
            help="One more flag for the engine, e.g. --engine-arg=--ubatch-size=512 (repeatable; runtimes that declare engine_args).",
            show_default=False,
        ),
    ] = None,
    timeout: TimeoutOpt = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return as soon as the process is launched.")] = False,
    pull: PullOpt = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print what would be started (command, port, model, memory estimate); start nothing."
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Start even when the memory estimate exceeds the memory available.")
    ] = False,
    direct: DirectOpt = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start runtime daemons and wait until they are healthy. Already running is a success.

    A model a running lf serve of the project serves is started by that gateway (which then owns it: its idle
    timer and memory budget apply); --direct starts it as a daemon of its own."""
    from lf.core import actions
    from lf.core.targets import Overrides

    settings = _settings(set_)
    if engine_arg:
        settings["engine_args"] = list(engine_arg)
    overrides = Overrides(model=model, port=port, host=host, context_size=ctx_size, threads=threads, settings=settings)
    if dry_run:
        _print_plans(actions.dry_run(target, load_project(config, warn=True), overrides), json_out)
        return
    progress = Progress()
    try:
        project = load_project(config, warn=True)
        results = with_pull(
            pull,
            lambda: actions.start(
                target,
                project,
                overrides,
                wait=not no_wait,
                timeout=timeout,
                on_event=progress,
                force=force,
                direct=direct,
            ),
        )
    finally:
        progress.done()
    if json_out:
        print_json({"started": [_start_json(r) for r in results]})
        return
    for result in results:
        r = result.record
        verb = "already running" if result.already_running else ("launched" if no_wait else "running")
        out(f"{r.name}: {verb} at {r.base_url} (pid {r.pid}, model {r.model})")
        if result.gateway:
            out(
                f"  served by {result.gateway}: it unloads it when idle (lf runtime start --direct runs one of its own)"
            )
        out(f"  log: {r.log_path}")


def _print_plans(plans: list[dict], json_out: bool) -> None:
    import shlex

    from lf.models.gguf_meta import human_bytes

    if json_out:
        print_json({"plan": plans})
        return
    for p in plans:
        out(
            f"{p['name']}: {'already running' if p['already_running'] else 'would start'} {p['runtime']} ({p['engine']}) on {p['host']}:{p['port']}, model {p['model']}"
        )
        out(f"  command: {shlex.join(p['argv'])}")
        e = p["estimate"]
        if e:
            verdict = "fits" if p["fits"] else "does NOT fit (start refuses it without --force)"
            out(
                f"  memory: about {human_bytes(e['total'])} (weights {human_bytes(e['weights'] + e['repacked'])}, KV cache {human_bytes(e['kv_cache'])} "
                f"for {e['context_size']} tokens × {e['parallel']} slots, compute {human_bytes(e['compute'])}, engine {human_bytes(e['vocab'] + e['base'])}); "
                f"available {human_bytes(p['available_bytes'])}: {verdict}"
            )


def _start_json(result) -> dict:
    r = result.record
    return {
        "name": r.name,
        "runtime": r.runtime,
        "already_running": result.already_running,
        "pid": r.pid,
        "host": r.instance.host,
        "port": r.port,
        "base_url": r.base_url,
        "model": r.model,
        "engine": r.instance.engine,
        "log_path": r.log_path,
        "health": result.health.to_dict() if result.health else None,
        "changed": list(result.changed),  # already running with other settings: "name: old → new"
        "gateway": result.gateway,  # the lf serve that started it (it serves the entry), else null
    }


@command
def stop(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Instances or runtimes to stop.", autocompletion=complete_instances, show_default=False),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Stop every instance of this project.")] = False,
    all_projects: AllProjectsOpt = False,
    timeout: StopTimeoutOpt = 10.0,
    project: ProjectOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Stop daemons of this project (or --project's): SIGTERM to the process group, SIGKILL after --timeout. Stopping a stopped one succeeds."""
    from lf.core import actions

    loaded, store = _scope(config, project, lenient=True)
    results = actions.stop(names, loaded, every=all_, all_projects=all_projects, timeout=timeout, store=store)
    if json_out:
        print_json(
            {
                "stopped": [
                    {
                        "name": r.name,
                        "project": r.project,
                        "was_running": r.was_running,
                        "escalated": r.escalated,
                        "note": r.note,
                        "running_elsewhere": list(r.elsewhere),
                    }
                    for r in results
                ]
            }
        )
        return
    if not results:
        out("nothing to stop")
    for r in results:
        out(f"{r.name}{f' ({r.project})' if all_projects and r.project else ''}: {r.note}")


@command
def restart(
    target: TargetArg = None,
    timeout: TimeoutOpt = None,
    direct: DirectOpt = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Stop, then start again with the current settings (through a running lf serve that serves it, unless --direct)."""
    from lf.core import actions

    progress = Progress(starting="restarting {name}")
    try:
        results = actions.restart(target, load_project(config), timeout=timeout, on_event=progress, direct=direct)
    finally:
        progress.done()
    if json_out:
        print_json({"started": [_start_json(r) for r in results]})
        return
    for result in results:
        out(f"{result.record.name}: restarted at {result.record.base_url} (pid {result.record.pid})")


@command
def status(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Instances or runtimes (default: all known).", autocompletion=complete_runtimes, show_default=False
        ),
    ] = None,
    probe_timeout: Annotated[
        float, typer.Option("--probe-timeout", min=0.05, help="Seconds each health probe may take.")
    ] = 1.0,
    all_projects: AllProjectsOpt = False,
    project: ProjectOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """State and health of this project's instances (or every project's). Exit 0 all healthy, 3 not running, 4 unknown, 6 unhealthy."""
    from lf.core.status import collect

    loaded, store = _scope(config, project)
    report = collect(names or None, loaded, store, probe_timeout, all_projects=all_projects)
    for warning in report.warnings:
        err(warning)
    if json_out:
        print_json(report.to_dict())
    else:
        _print_status(report)
    for name in report.unknown:
        err(f"Error: unknown runtime or instance {name!r}")
    raise typer.Exit(int(report.exit_status))


def _print_status(report) -> None:
    if not report.instances:
        return  # nothing known by those names: the error says so, no empty table
    rows = []
    for inst in report.instances:
        d = inst.to_dict()
        h = d["health"]
        health = (d["message"] or "-") if not h else ("ok" if h["healthy"] else h["message"])
        latency = f"{h['latency_ms']:.0f}ms" if h and h["latency_ms"] is not None else "-"
        uptime = _duration(d["uptime_s"]) if d["uptime_s"] is not None else "-"
        rows.append(
            [
                d["name"],
                d["runtime"],
                d["state"],
                str(d["pid"] or "-"),
                d["base_url"] or "-",
                d["model"] or "-",
                uptime,
                health,
                latency,
            ]
        )
    headers = ["NAME", "RUNTIME", "STATE", "PID", "URL", "MODEL", "UPTIME", "HEALTH", "LATENCY"]
    if any(inst.project for inst in report.instances):  # whose each one is, once a project is involved
        rows = [[inst.project or "-", *row] for inst, row in zip(report.instances, rows)]
        headers = ["PROJECT", *headers]
    out(table(rows, headers))
    for inst in report.instances:
        if inst.log_tail:
            err(f"{inst.name} {inst.state.value}; last lines of {inst.record.log_path if inst.record else '?'}:")
            for line in inst.log_tail:
                err(f"  {line}")


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@command
def logs(
    name: Annotated[str, typer.Argument(help="Instance name.", autocompletion=complete_instances)],
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="How many lines from the end.")] = 50,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Keep printing new lines, across rotation and truncation, like tail -F (Ctrl-C to stop).",
        ),
    ] = False,
    project: ProjectOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print the last lines of an instance's log (stdout and stderr of the daemon; rotated ones too when needed)."""
    import sys

    from lf.core.logs import find_log
    from lf.errors import LfError
    from lf.files import follow as follow_log
    from lf.files import write_tail

    loaded, store = _scope(config, project, lenient=True)
    path, warnings = find_log(name, loaded, store)
    for warning in warnings:
        err(warning)
    sys.stdout.flush()
    stdout = sys.stdout.buffer

    def write(chunk: bytes) -> None:
        stdout.write(chunk)
        if follow:
            stdout.flush()

    try:
        if follow:
            follow_log(path, write, lines, on_notice=lambda text: err(f"lf: {text}"))
        else:
            write_tail(path, lines, write)
    except OSError as exc:
        raise LfError(f"cannot read {path}: {exc.strerror or exc}") from exc
    stdout.flush()


@command
def list_runtimes(json_out: JsonOpt = False) -> None:
    """Every runtime lf knows: engine available here?, default port, what it is."""
    from lf.runtimes.registry import describe_runtimes

    rows = describe_runtimes()
    if json_out:
        print_json({"runtimes": rows})
        return
    # the narrow SOURCE column names lf's own install command; other runtimes' hints are in --json
    out(
        table(
            [
                [
                    r["name"],
                    "external" if not r["managed"] else ("yes" if r["available"] else "no"),
                    str(r["default_port"] or "-"),
                    r["engine"] or "-",
                    r["source"] or (r["install"] and r["install_command"]) or "-",
                    r["description"],
                ]
                for r in rows
            ],
            ["RUNTIME", "INSTALLED", "PORT", "ENGINE", "SOURCE", "DESCRIPTION"],
        )
    )
