"""`lf serve`: one OpenAI endpoint for every model of the project (see lf.gateway)."""

from __future__ import annotations

from typing import Annotated

import typer

from lf.cli._common import ConfigOpt, JsonOpt, Progress, Spinner, command, err, load_project, out, print_json
from lf.cli.cluster import AddressOpt


@command
def serve(
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="Address to listen on (default 127.0.0.1; anything else needs an API key, or --insecure).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", "-p", min=1, max=65535, help="Port to listen on (default 11500).", show_default=False),
    ] = None,
    idle_ttl: Annotated[
        float | None,
        typer.Option(
            "--idle-ttl",
            min=0,
            help="Seconds an instance the gateway started stays loaded after its last response (0: forever; default 300).",
            show_default=False,
        ),
    ] = None,
    max_loaded: Annotated[
        int | None,
        typer.Option(
            "--max-loaded",
            min=0,
            help="A cap on instances kept loaded at once, besides the memory budget; the least recently used idle one makes room (default 0: no cap).",
            show_default=False,
        ),
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option(
            "--max-queue",
            min=0,
            help="Requests that may wait for room; beyond, 503 with Retry-After (default 64).",
            show_default=False,
        ),
    ] = None,
    queue_timeout: Annotated[
        float | None,
        typer.Option(
            "--queue-timeout", min=0.1, help="Seconds a request may wait for room (default 120).", show_default=False
        ),
    ] = None,
    start_timeout: Annotated[
        float | None,
        typer.Option(
            "--start-timeout",
            min=0.1,
            help="Seconds a start on demand may take (default: the runtime's).",
            show_default=False,
        ),
    ] = None,
    probe_interval: Annotated[
        float | None,
        typer.Option(
            "--probe-interval", min=0.1, help="Seconds between health probes (default 5).", show_default=False
        ),
    ] = None,
    max_body: Annotated[
        int | None,
        typer.Option(
            "--max-body", min=1024, help="Largest request body accepted, in bytes (default 10 MiB).", show_default=False
        ),
    ] = None,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            "--memory-budget",
            help="Memory the models may take together, e.g. 6GiB or 450MiB (default: the machine's memory minus 10%).",
            show_default=False,
        ),
    ] = None,
    max_tokens_default: Annotated[
        int | None,
        typer.Option(
            "--max-tokens-default",
            min=1,
            help="max_tokens of a request that sets none (default 2048).",
            show_default=False,
        ),
    ] = None,
    max_tokens_limit: Annotated[
        int | None,
        typer.Option(
            "--max-tokens-limit", min=1, help="The most max_tokens a request may ask for.", show_default=False
        ),
    ] = None,
    request_timeout: Annotated[
        float | None,
        typer.Option(
            "--request-timeout",
            min=0,
            help="Seconds an answer may take; a longer stream ends with finish_reason length (default 600; 0: none).",
            show_default=False,
        ),
    ] = None,
    reload: Annotated[
        bool | None,
        typer.Option(
            "--reload/--no-reload",
            help="Reload llamafarm.yaml when it changes, and on SIGHUP (default: on).",
            show_default=False,
        ),
    ] = None,
    read_timeout: Annotated[
        float | None,
        typer.Option(
            "--read-timeout",
            min=0.5,
            help="Seconds a client has to send a request's headers, and the longest pause inside a body (default 10).",
            show_default=False,
        ),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            "--max-connections",
            min=16,
            help="Client connections held at once; past it the longest idle one is closed (default 1000).",
            show_default=False,
        ),
    ] = None,
    shutdown_grace: Annotated[
        float | None,
        typer.Option(
            "--shutdown-grace",
            min=0,
            help="Seconds answers in flight may take to finish after SIGTERM; then streams end in error (default 5).",
            show_default=False,
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="A host name clients may use besides localhost, this machine's name and IP addresses (repeatable).",
            show_default=False,
        ),
    ] = None,
    allowed_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-origin",
            help="The origin of a web app whose pages may call /v1/* (CORS), e.g. http://localhost:3000; a trailing "
            "* matches the rest (repeatable).",
            show_default=False,
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback address without an API key.")
    ] = False,
    pull: Annotated[
        bool,
        typer.Option(
            "--pull",
            help="Pull a model's Hugging Face reference that is not in the cache on its first request (default: 503 naming the pull command).",
        ),
    ] = False,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            "-d",
            help="Run as a supervised daemon (record, log; lf runtime stop lf-serve) and return once it answers.",
        ),
    ] = False,
    open_page: Annotated[
        bool,
        typer.Option("--open", help="Open the gateway's page (its dashboard) in the default browser once it answers."),
    ] = False,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level", help="Least severe log line shown: debug, info, warning or error.", case_sensitive=False
        ),
    ] = "info",
    log_format: Annotated[
        str,
        typer.Option("--log-format", help="text (lf-serve: … lines) or json (one object per line, for journald)."),
    ] = "text",
    install_service: Annotated[
        bool,
        typer.Option(
            "--install-service",
            help="Install lf serve for this project as a user service (systemd, or launchd on macOS): "
            "started now, at login and at boot, restarted when it fails; with the other flags given.",
        ),
    ] = False,
    uninstall_service: Annotated[
        bool, typer.Option("--uninstall-service", help="Stop and remove this project's service.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="With --install-service or --uninstall-service: print what would be written and run."
        ),
    ] = False,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="Run the project's model entries on the Ray cluster (RAY_ADDRESS, runtime.cluster.address, or "
            "lf cluster start's) with Ray Serve, and serve them from here; what it deployed is taken off the "
            "cluster when it stops.",
        ),
    ] = False,
    address: AddressOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Serve every model of the project behind one OpenAI-compatible endpoint, starting them on demand.

    Routes /v1/chat/completions, /v1/completions and /v1/embeddings by the request's model (entry name,
    alias or model name); /v1/models lists them; /health and /metrics report. Settings: these flags, then
    LF_GATEWAY_* env vars (LF_GATEWAY_API_KEY for the key), then runtime.gateway in llamafarm.yaml.
    Foreground by default; SIGTERM stops the instances it started and leaves the others running.
    """
    from lf.config.gateway import resolve_config
    from lf.errors import ExitStatus, LfError
    from lf.gateway.logs import FORMATS, LEVELS

    log_level = log_level.lower()
    if log_level not in LEVELS or log_format not in FORMATS:
        bad, allowed = ("--log-level", LEVELS) if log_level not in LEVELS else ("--log-format", FORMATS)
        raise LfError(f"{bad}: expected one of {', '.join(allowed)}", exit_status=ExitStatus.USAGE)
    project = load_project(config, warn=True)
    flags = {
        "host": host,
        "port": port,
        "idle_ttl": idle_ttl,
        "max_loaded": max_loaded,
        "max_queue": max_queue,
        "queue_timeout": queue_timeout,
        "start_timeout": start_timeout,
        "probe_interval": probe_interval,
        "max_body": max_body,
        "memory_budget": memory_budget,
        "max_tokens_default": max_tokens_default,
        "max_tokens_limit": max_tokens_limit,
        "request_timeout": request_timeout,
        "reload": reload,
        "read_timeout": read_timeout,
        "max_connections": max_connections,
        "shutdown_grace": shutdown_grace,
        "allowed_hosts": allowed_host or None,
        "allowed_origins": allowed_origin or None,
        "insecure": insecure or None,
        "pull": pull or None,
    }
    settings = resolve_config(project, flags)
    if install_service or uninstall_service or dry_run:
        logs = [
            *(["--log-level", log_level] if log_level != "info" else []),
            *(["--log-format", log_format] if log_format != "text" else []),
        ]
        _service(
            project, settings, flags, logs, install_service, uninstall_service, dry_run, detach or open_page, json_out
        )
        return
    if cluster and detach:
        raise LfError("--cluster runs in the foreground: leave out --detach", exit_status=ExitStatus.USAGE)
    if address and not cluster:
        raise LfError("--address goes with --cluster", exit_status=ExitStatus.USAGE)
    if not detach:
        from lf.gateway.server import run

        on_ready = (lambda: _open_page(settings)) if open_page else None
        if not cluster:
            run(project, settings, on_ready=on_ready, log_level=log_level, log_format=log_format)
            return
        _serve_on_cluster(project, address, settings, on_ready, log_level, log_format)
        return
    from lf.gateway.server import detach as run_detached

    spinner = Spinner(f"starting the gateway on port {settings.port}")
    try:
        result = run_detached(project, settings, on_wait=spinner, log_level=log_level, log_format=log_format)
    finally:
        spinner.done()
    record = result.record
    if json_out:
        print_json(
            {
                "name": record.name,
                "already_running": result.already_running,
                "pid": record.pid,
                "base_url": record.base_url,
                "log_path": record.log_path,
            }
        )
        return
    verb = "already running" if result.already_running else "serving"
    out(f"{record.name}: {verb} at {record.base_url} (pid {record.pid})")
    out(f"  log: {record.log_path}; stop it with: lf runtime stop {record.name}")
    if open_page:
        _open_page(settings)
    if not settings.loopback:
        err(
            f"Warning: listening on {settings.host}: reachable from other machines"
            + ("" if settings.api_key else ", with no API key (--insecure)")
        )


def _serve_on_cluster(project, address: str | None, settings, on_ready, log_level: str, log_format: str) -> None:
    """The project's entries deployed on the cluster, served from this gateway, taken off when it stops."""
    from lf.cluster.front import Front
    from lf.gateway.server import run

    spinner = Spinner("deploying the project's models to the cluster")
    spinner(0.0)
    try:
        front = Front(project, address, Progress())  # its notices, as every command prints them
    finally:
        spinner.done()
    for name, url in front.placed.items():
        err(f"{name}: on the cluster at {url}")
    try:
        run(
            project,
            settings,
            on_ready=on_ready,
            log_level=log_level,
            log_format=log_format,
            elsewhere=front,
        )
    finally:
        front.take_off()


def _service(project, settings, flags, logs, install, uninstall, dry_run, other, json_out) -> None:
    from lf.cli import service
    from lf.errors import ExitStatus, LfError

    if install == uninstall or other:
        raise LfError(
            "--dry-run goes with --install-service or --uninstall-service"
            if not (install or uninstall)
            else "give one of --install-service and --uninstall-service, without --detach or --open",
            exit_status=ExitStatus.USAGE,
        )
    if uninstall:
        service.uninstall(project, dry_run=dry_run, json_out=json_out)
        return
    from lf.config.gateway import serve_flags

    given = serve_flags(flags) + logs  # the flags given here: the service's own command line
    service.install(project, given, settings.record_name, dry_run=dry_run, json_out=json_out)


def _open_page(settings) -> None:
    import webbrowser

    from lf.net import local_url

    url = local_url(settings.host, settings.port, "/")
    if not webbrowser.open(url):
        err(f"lf: no browser to open here; the dashboard is at {url}")
