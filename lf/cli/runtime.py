"""`lf runtime …`: start, stop, restart, status, logs, list, install, uninstall."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from lf.cli._common import (
    CommandGroup,
    ConfigOpt,
    JsonOpt,
    Spinner,
    command,
    complete_instances,
    complete_models,
    complete_runtimes,
    err,
    out,
    print_json,
    table,
)

group = CommandGroup("Start, stop and inspect runtime daemons.")

TargetArg = Annotated[
    Optional[str],
    typer.Argument(help="A runtime (all its configured models) or one model entry; default: every model the project needs.", autocompletion=complete_runtimes, show_default=False),
]
TimeoutOpt = Annotated[Optional[float], typer.Option("--timeout", help="Seconds to wait until healthy (default: the runtime's).", show_default=False)]
StopTimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds between SIGTERM and SIGKILL.")]


@command(group, "start")
def start(
    target: TargetArg = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model name or file (one instance only).", autocompletion=complete_models)] = None,
    port: Annotated[Optional[int], typer.Option("--port", "-p", min=1, max=65535, help="Port to listen on (one instance only).")] = None,
    host: Annotated[Optional[str], typer.Option("--host", help="Address to bind (default 127.0.0.1).")] = None,
    ctx_size: Annotated[Optional[int], typer.Option("--ctx-size", min=128, help="Context window in tokens.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", "-t", min=1, help="CPU threads (default: all cores).")] = None,
    timeout: TimeoutOpt = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return as soon as the process is launched.")] = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start runtime daemons and wait until they are healthy. Already running is a success."""
    from lf.cli._common import load_project
    from lf.instances import Overrides, specs_for
    from lf.state import StateStore
    from lf.supervisor import start as start_instance

    project = load_project(config)
    specs = specs_for(target, project, Overrides(model=model, port=port, host=host, context_size=ctx_size, threads=threads))
    store = StateStore()
    taken: set[int] = set()
    results = []
    for spec in specs:
        spinner = Spinner(f"starting {spec.name} ({spec.runtime.name}, {spec.model})")
        try:
            result = start_instance(spec, store, wait=not no_wait, timeout=timeout, taken_ports=taken, on_wait=spinner)
        finally:
            spinner.done()
        taken.add(result.record.port)
        results.append(result)
        if not json_out:
            r = result.record
            verb = "already running" if result.already_running else ("launched" if no_wait else "running")
            out(f"{r.name}: {verb} at {r.base_url} (pid {r.pid}, model {r.model})")
            out(f"  log: {r.log_path}")
    if json_out:
        print_json({"started": [_start_json(r) for r in results]})


def _start_json(result) -> dict:
    from dataclasses import asdict

    r = result.record
    return {
        "name": r.name,
        "runtime": r.runtime,
        "already_running": result.already_running,
        "pid": r.pid,
        "host": r.host,
        "port": r.port,
        "base_url": r.base_url,
        "model": r.model,
        "engine": r.engine,
        "log_path": r.log_path,
        "health": asdict(result.health) if result.health else None,
    }


@command(group, "stop")
def stop(
    names: Annotated[Optional[List[str]], typer.Argument(help="Instances or runtimes to stop.", autocompletion=complete_instances, show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Stop every instance lf knows about.")] = False,
    timeout: StopTimeoutOpt = 10.0,
    json_out: JsonOpt = False,
) -> None:
    """Stop daemons: SIGTERM to the process group, SIGKILL after --timeout. Stopping a stopped one succeeds."""
    from lf.errors import ExitStatus, LfError
    from lf.state import StateStore
    from lf.supervisor import stop as stop_instance

    store = StateStore()
    if not names and not all_:
        raise LfError("name what to stop, or use --all", hint="running: " + (", ".join(store.names()) or "nothing"), exit_status=ExitStatus.USAGE)
    targets = _expand(names or [], store) if not all_ else store.names()
    results = [stop_instance(name, store, timeout=timeout) for name in targets]
    if json_out:
        print_json({"stopped": [{"name": r.name, "was_running": r.was_running, "escalated": r.escalated, "note": r.note} for r in results]})
        return
    if not results:
        out("nothing to stop")
    for r in results:
        out(f"{r.name}: {r.note}")


def _expand(names: list[str], store) -> list[str]:
    """Instance names as given; a runtime name means every instance of it. A name lf knows but that is
    not running passes through (stopping it is a no-op success); a name nothing knows is an error."""
    from lf.errors import ConfigError, UnknownNameError
    from lf.runtime_folders import runtime_names
    from lf.state import validate_name

    records = store.records()
    known = set(store.names())  # unreadable records too: stop removes them
    targets: list[str] = []
    for name in names:
        validate_name(name)  # a path-like name is refused as such, before anything else
        of_runtime = [r.name for r in records if r.runtime == name]
        if name in known or not of_runtime and name in runtime_names():
            targets.append(name)
        elif of_runtime:
            targets.extend(of_runtime)
        else:
            try:  # a configured model entry that is not running; a broken config must not block a stop
                from lf.config import load_optional

                project = load_optional()
            except ConfigError:
                project = None
            if project is None or name not in {m.name for m in project.models}:
                from lf.suggest import did_you_mean

                raise UnknownNameError(f"unknown runtime or instance {name!r}", hint=did_you_mean(name, [*known, *runtime_names()]))
            targets.append(name)
    return list(dict.fromkeys(targets))


@command(group, "restart")
def restart(
    target: TargetArg = None,
    timeout: TimeoutOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Stop, then start again with the current settings."""
    from lf.cli._common import load_project
    from lf.instances import Overrides
    from lf.state import StateStore
    from lf.supervisor import start as start_instance
    from lf.supervisor import stop as stop_instance

    from lf.instances import build_spec, entries_for

    project = load_project(config)
    store = StateStore()
    entries = entries_for(target, project)
    specs = []
    for entry in entries:
        record = store.load_or_none(entry.name)
        # flags given to `start` stay in force; everything else is read afresh from the config
        given = record.extra.get("overrides", {}) if record else {}
        specs.append(build_spec(entry, project, Overrides(**given), single=True))
    results = []
    for spec in specs:
        stop_instance(spec.name, store)
        spinner = Spinner(f"restarting {spec.name}")
        try:
            result = start_instance(spec, store, timeout=timeout, on_wait=spinner)
        finally:
            spinner.done()
        results.append(result)
        if not json_out:
            out(f"{spec.name}: restarted at {result.record.base_url} (pid {result.record.pid})")
    if json_out:
        print_json({"started": [_start_json(r) for r in results]})


@command(group, "status")
def status(
    names: Annotated[Optional[List[str]], typer.Argument(help="Instances or runtimes (default: all known).", autocompletion=complete_runtimes, show_default=False)] = None,
    probe_timeout: Annotated[float, typer.Option("--probe-timeout", min=0.05, help="Seconds each health probe may take.")] = 1.0,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """State and health of every instance. Exit 0 all healthy, 3 not running, 4 unknown, 6 unhealthy."""
    from lf.cli._common import load_project
    from lf.state import StateStore
    from lf.status import collect

    report = collect(names or None, load_project(config), StateStore(), probe_timeout, warn=err)
    if json_out:
        print_json(report.to_dict())
    else:
        _print_status(report)
    for name in report.unknown:
        err(f"Error: unknown runtime or instance {name!r}")
    raise typer.Exit(int(report.exit_status))


def _print_status(report) -> None:
    rows = []
    for inst in report.instances:
        d = inst.to_dict()
        h = d["health"]
        health = "-" if not h else ("ok" if h["healthy"] else h["message"])
        latency = f"{h['latency_ms']:.0f}ms" if h and h["latency_ms"] is not None else "-"
        uptime = _duration(d["uptime_s"]) if d["uptime_s"] is not None else "-"
        rows.append([d["name"], d["runtime"], d["state"], str(d["pid"] or "-"), d["base_url"] or "-", d["model"] or "-", uptime, health, latency])
    out(table(rows, ["NAME", "RUNTIME", "STATE", "PID", "URL", "MODEL", "UPTIME", "HEALTH", "LATENCY"]))
    for inst in report.instances:
        if inst.log_tail:
            err(f"{inst.name} {inst.state.value}; last lines of {inst.log_path}:")
            for line in inst.log_tail:
                err(f"  {line}")


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@command(group, "logs")
def logs(
    name: Annotated[str, typer.Argument(help="Instance name.", autocompletion=complete_instances)],
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="How many lines from the end.")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C to stop).")] = False,
) -> None:
    """Print the last lines of an instance's log (stdout and stderr of the daemon)."""
    import sys
    import time

    from lf.errors import UnknownNameError
    from lf.state import StateStore
    from lf.supervisor import log_tail

    path = StateStore().log_path(name)
    if not path.exists():
        raise UnknownNameError(f"no log for {name!r} in {path.parent}", hint="lf runtime status lists the known instances")
    text = log_tail(path, lines) if lines else ""
    if text:
        out(text)
    if not follow:
        return
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        while True:
            chunk = fh.read()
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
            else:
                time.sleep(0.2)


@command(group, "list")
def list_runtimes(json_out: JsonOpt = False) -> None:
    """Every runtime lf knows: engine available here?, default port, what it is."""
    from lf.registry import all_runtimes

    rows = []
    for rt in all_runtimes().values():
        engine = rt.find_engine() if rt.managed else None
        rows.append(
            {
                "name": rt.name,
                "managed": rt.managed,
                "available": bool(engine) if rt.managed else None,
                "engine": engine.engine.name if engine else None,
                "source": engine.source if engine else None,
                "install": None if engine or not rt.managed else rt.install_hint(),
                "default_port": rt.default_port,
                "description": rt.description,
            }
        )
    if json_out:
        print_json({"runtimes": rows})
        return
    out(
        table(
            [
                [r["name"], "external" if not r["managed"] else ("yes" if r["available"] else "no"), str(r["default_port"] or "-"), r["engine"] or "-", r["source"] or _install_command(r["install"]) or "-", r["description"]]
                for r in rows
            ],
            ["RUNTIME", "INSTALLED", "PORT", "ENGINE", "SOURCE", "DESCRIPTION"],
        )
    )


def _install_command(hint: str | None) -> str | None:
    """'lf runtime install X' out of an install hint, for the narrow SOURCE column."""
    return hint.removeprefix("install it with: ") if hint and hint.startswith("install it with: lf ") else None


from lf.cli import runtime_env as _runtime_env  # noqa: E402,F401  (registers install/uninstall on app)
