"""`lf cluster …`: a Ray cluster run by lf (start, join, stop, status, install) and a project served on it by Ray
Serve (deploy, undeploy). See lf.cluster."""

from __future__ import annotations

from typing import Annotated

import typer

from lf.cli._common import ConfigOpt, JsonOpt, Progress, Spinner, command, err, load_project, out, print_json, table

AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="The Ray head's HOST:PORT (default: RAY_ADDRESS, runtime.cluster.address, then lf's own head here).",
        show_default=False,
    ),
]
NumCpusOpt = Annotated[
    int | None,
    typer.Option("--num-cpus", min=0, help="CPUs this node offers Ray (default: all it has).", show_default=False),
]
NumGpusOpt = Annotated[
    int | None,
    typer.Option("--num-gpus", min=0, help="GPUs this node offers Ray (default: all it has).", show_default=False),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout", min=1, help="Seconds to wait until the node is healthy (default 120).", show_default=False
    ),
]
EntriesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Model entries of llamafarm.yaml (default: every entry lf runs).", show_default=False),
]


def _started(result, what: str) -> None:
    record = result.record
    verb = "already running" if result.already_running else "running"
    out(f"{record.name}: {verb}, {what} (pid {record.pid})")
    err(f"  log: {record.log_path}")


@command
def start(
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="Port of the head (Ray's GCS).")] = 6379,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="This node's address. 127.0.0.1 (the default) keeps Ray on loopback, one node only; any other "
            "address lets nodes join and makes Ray listen on every interface (see the warning).",
        ),
    ] = "127.0.0.1",
    num_cpus: NumCpusOpt = None,
    num_gpus: NumGpusOpt = None,
    serve_port: Annotated[
        int | None,
        typer.Option(
            "--serve-port",
            min=1,
            max=65535,
            help="Port of Ray Serve's HTTP proxy, the models' endpoint (default 11560).",
            show_default=False,
        ),
    ] = None,
    timeout: TimeoutOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a Ray head node on this machine as an lf daemon (a record, a log; stopped by lf cluster stop).

    Ray's token authentication is turned on with a fresh random key (the token file, mode 0600, in the state
    dir): other nodes and lf's own commands present it. Ray Serve's HTTP proxy, started by the first deploy,
    listens on 127.0.0.1 and has no authentication.
    """
    from lf.cluster.nodes import is_loopback, security_warning, start_head

    spinner = Spinner("starting the Ray head node")
    try:
        result = start_head(
            host=host,
            port=port,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            serve_port=serve_port,
            timeout=timeout,
            on_wait=lambda loading: spinner(loading.elapsed),
        )
    finally:
        spinner.done()
    settings = result.record.instance.settings
    if json_out:
        print_json(_node_json(result))
    else:
        _started(result, f"head of {settings['address']}")
        if not settings.get("loopback"):
            err(f"  join from another machine with: lf cluster join {settings['address']} --token-file FILE")
            err(f"  (FILE: a copy of {settings['token_file']})")
        err(
            f"  deploy with: lf cluster deploy   (Ray Serve on http://{settings['serve_host']}:{settings['serve_port']})"
        )
    if not is_loopback(result.record.instance.host):
        err(security_warning(result.record.instance.host))


@command
def join(
    address: Annotated[str, typer.Argument(help="The head node's HOST:PORT, as lf cluster start printed it.")],
    num_cpus: NumCpusOpt = None,
    num_gpus: NumGpusOpt = None,
    token_file: Annotated[
        str | None,
        typer.Option(
            "--token-file",
            help="A copy of the head's token file (default: this machine's own head's, then RAY_AUTH_TOKEN[_PATH]).",
            show_default=False,
        ),
    ] = None,
    timeout: TimeoutOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a Ray worker node on this machine that joins the cluster at ADDRESS (an lf daemon, like the head)."""
    from lf.cluster.nodes import join as join_cluster
    from lf.cluster.nodes import security_warning

    spinner = Spinner(f"joining {address}")
    try:
        result = join_cluster(
            address,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            token_file=token_file,
            timeout=timeout,
            on_wait=lambda loading: spinner(loading.elapsed),
        )
    finally:
        spinner.done()
    if json_out:
        print_json(_node_json(result))
    else:
        _started(result, f"worker of {result.record.instance.settings['address']}")
    err(security_warning(address.rpartition(":")[0]))


def _node_json(result) -> dict:
    record = result.record
    settings = record.instance.settings
    return {
        "name": record.name,
        "already_running": result.already_running,
        "pid": record.pid,
        "address": settings.get("address"),
        "loopback": bool(settings.get("loopback")),
        "token_file": settings.get("token_file"),
        "serve_url": f"http://{settings['serve_host']}:{settings['serve_port']}" if "serve_port" in settings else None,
        "log_path": record.log_path,
    }


@command
def stop(
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, help="Seconds between SIGTERM and SIGKILL for each node.")
    ] = 30.0,
    json_out: JsonOpt = False,
) -> None:
    """Stop the Ray nodes lf started on this machine (worker, then head), by pid and process group, and the engines
    their replicas ran. Never `ray stop`: other Ray processes of the machine are left alone."""
    from lf.cluster.nodes import stop as stop_nodes

    results = stop_nodes(timeout=timeout)
    if json_out:
        print_json({"stopped": [{"name": r.name, "was_running": r.was_running, "note": r.note} for r in results]})
        return
    for r in results:
        out(f"{r.name}: {r.note}")


@command
def status(address: AddressOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """The cluster's nodes (id, address, alive, CPUs, GPUs, memory), Ray Serve's applications and where each
    replica runs, and this machine's own nodes. Asked through Ray's own state, from the cluster environment."""
    from lf.cluster.status import status as cluster_status

    report = cluster_status(load_project(config), address)
    if json_out:
        print_json(report.to_dict())
    else:
        _render(report)
    if report.error:
        from lf.errors import ExitStatus

        if not json_out:
            err(f"lf: {report.error}")
        raise typer.Exit(int(ExitStatus.NOT_RUNNING))


def _render(report) -> None:
    from lf.models.gguf_meta import human_bytes

    if report.local_nodes:
        rows = [[n.name, n.state, str(n.pid), n.address] for n in report.local_nodes]
        out(table(rows, ["LOCAL NODE", "STATE", "PID", "CLUSTER"]))
    if report.address is None:
        return
    out(f"\ncluster {report.address} ({report.source}; authentication: {report.auth})")
    replicas_on: dict[str, list[str]] = {}
    for app in report.applications:
        for r in app["replicas"]:
            replicas_on.setdefault(str(r.get("node_id")), []).append(app["name"])
    rows = []
    for n in report.nodes:
        here = replicas_on.get(n["node_id"], [])
        rows.append(
            [
                n["node_id"][:12] + (" (head)" if n.get("head") else ""),
                str(n.get("address")),
                "yes" if n.get("alive") else "no",
                f"{n.get('cpus', 0):g}",
                f"{n.get('gpus', 0):g}",
                human_bytes(n.get("memory_bytes") or 0),
                ", ".join(f"{name}×{here.count(name)}" for name in dict.fromkeys(here)) or "-",
            ]
        )
    if rows:
        out(table(rows, ["NODE", "ADDRESS", "ALIVE", "CPUS", "GPUS", "MEMORY", "REPLICAS"]))
    if report.applications:
        app_rows = []
        for app in report.applications:
            states: dict[str, int] = {}
            for r in app["replicas"]:
                states[str(r.get("state")).lower()] = states.get(str(r.get("state")).lower(), 0) + 1
            counts = ", ".join(f"{v} {k}" for k, v in states.items()) or "none"
            app_rows.append([app["name"], str(app["status"]), counts, app["base_url"] or "-"])
        out("")
        out(table(app_rows, ["APPLICATION", "STATUS", "REPLICAS", "URL"]))
    if report.checks:
        from lf.cli.doctor import MARKS

        width = max(len(c.name) for c in report.checks)
        out("")
        for c in report.checks:
            out(f"{MARKS[c.status]}  {c.name.ljust(width)}  {c.detail}")
            if c.fix:
                out(f"      {' ' * width}  fix: {c.fix}")


@command
def install(
    force: Annotated[bool, typer.Option("--force", help="Rebuild the environment even if it is installed.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Build the cluster's own environment: Ray Serve 2.60 and lf's runtime dependencies in an isolated venv of the
    data dir (pip's output on stderr). Needed on every node."""
    from lf.cluster import env as cluster_env

    if not (cluster_env.is_installed() and not force):
        err(f"Installing Ray into {cluster_env.env_dir()} (pip's output follows)…")
    result = cluster_env.install(force=force)
    if json_out:
        print_json(
            {
                "env_dir": str(result.env_dir),
                "already_installed": result.already_installed,
                "updated": result.updated,
                "ray": result.info.get("ray"),
                "python": result.info.get("python"),
                "duration_s": result.info.get("duration_s"),
                "note": result.note,
            }
        )
    else:
        took = f"in {result.info.get('duration_s', 0):.0f}s"
        verb = (
            "already installed"
            if result.already_installed
            else f"updated {took}"
            if result.updated
            else f"installed {took}"
        )
        out(f"cluster environment (Ray {result.info.get('ray')}): {verb} at {result.env_dir}")
    if result.note:
        err(f"Warning: {result.note}")


@command
def deploy(
    entries: EntriesArg = None,
    address: AddressOpt = None,
    serve_port: Annotated[
        int | None,
        typer.Option(
            "--serve-port",
            min=1,
            max=65535,
            help="Ray Serve's HTTP port, when this deploy starts Serve on a cluster lf did not start (default 11560).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait until every replica answers.")
    ] = 600.0,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run the project's model entries on the cluster: one Ray Serve application each, its replicas running the
    entry's engine (replicas, min_replicas/max_replicas, target_ongoing_requests, spread in llamafarm.yaml).
    Prints each entry's OpenAI base URL."""
    from lf.cluster.deploy import deploy as deploy_project

    spinner = Spinner("deploying to the cluster")
    spinner(0.0)
    try:
        result = deploy_project(
            load_project(config, warn=True),
            address,
            entries,
            serve_port=serve_port,
            timeout=timeout,
            on_event=Progress(),
        )
    finally:
        spinner.done()
    if json_out:
        print_json(
            {
                "address": result.address,
                "serve_url": result.serve_url,
                "entries": [e.to_dict() for e in result.entries],
                "skipped": list(result.skipped),
            }
        )
        return
    for e in result.entries:
        nodes = len({r.node_id for r in e.replicas if r.node_id})
        replicas = (
            f"{len(e.replicas)} replica{'s' if len(e.replicas) != 1 else ''} on {nodes} node{'s' if nodes != 1 else ''}"
        )
        out(f"{e.entry}: {e.base_url} ({replicas})")


@command
def undeploy(
    entries: EntriesArg = None, address: AddressOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False
) -> None:
    """Take the project's applications (or the named entries') off the cluster; each replica finishes its requests
    and stops its engine. Nothing deployed is a success too."""
    from lf.cluster.deploy import undeploy as undeploy_project

    deleted = undeploy_project(load_project(config), address, entries)
    if json_out:
        print_json({"deleted": deleted})
        return
    out("\n".join(f"{name}: removed" for name in deleted) if deleted else "nothing of this project was deployed")
