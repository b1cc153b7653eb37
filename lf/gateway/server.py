"""Running the gateway: in the foreground (systemd, launchd, containers) or as a supervised daemon
(`--detach`), with a record in the state dir either way, built like any instance's (lf.daemon.instance), so
`lf runtime status` shows it, `lf chat` finds it and `lf runtime stop lf-serve` stops it."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from lf.config.gateway import GATEWAY_SETTINGS, RECORD_RUNTIME, GatewayConfig, serve_flags
from lf.config.names import served_entries
from lf.config.project import Project
from lf.core.served import gateway_records
from lf.daemon import supervisor
from lf.daemon.instance import Instance
from lf.daemon.process import process_create_time
from lf.daemon.records import RuntimeRecord, StateStore
from lf.daemon.supervisor import choose_port
from lf.errors import LfError
from lf.net import connect_host, is_wildcard, local_url
from lf.platform import hangup_signal

if TYPE_CHECKING:
    from lf.gateway.app import Elsewhere

START_TIMEOUT = 30.0
LIVENESS = "/health/liveness"
KEEP_ALIVE = 5.0  # seconds an idle kept-alive connection stays open (uvicorn's default; at most read_timeout)
SHUTDOWN_BACKSTOP = 3.0  # seconds past shutdown_grace after which uvicorn cancels what still runs
FILES_PER_CONNECTION = 2  # a client's connection and, while it is answered, the one to its model
RELEASE_LOCK_WAIT = 1.0  # seconds the gateway waits for its record's lock on the way out
log = logging.getLogger(__name__)


def instance_of(project: Project | None, config: GatewayConfig, argv: list[str]) -> Instance:
    """The gateway as an instance: its identity, its command, where it listens, and the models it serves."""
    entries, default = served_entries(project)
    return Instance(
        name=config.record_name,
        runtime=RECORD_RUNTIME,
        engine="uvicorn",
        argv=tuple(argv),
        host=config.host,
        port=config.port,
        api_base="/v1",
        model=default,
        health_path=LIVENESS,
        start_timeout=START_TIMEOUT,
        settings=MappingProxyType({"serves": [e.name for e in entries]}),
        project=project.key if project else None,
        project_folder=str(project.folder) if project else None,
        env=MappingProxyType({"PYTHONUNBUFFERED": "1"}),
    )


def run(
    project: Project | None,
    config: GatewayConfig,
    on_ready=None,
    log_level: str = "info",
    log_format: str = "text",
    elsewhere: Elsewhere | None = None,
) -> None:
    """Serve until SIGTERM, SIGINT or SIGHUP; then stop the instances a gateway started and leave."""
    import uvicorn

    from lf.gateway.app import Gateway
    from lf.gateway.connections import Server, protocol
    from lf.gateway.logs import configure

    configure(log_level, log_format)
    entries, default = served_entries(project, elsewhere.placed if elsewhere is not None else None)
    store = StateStore.of(project)  # the gateway's record lies with its project's instances
    own = _claim_record(store, project, config)
    release = (lambda: _release_record(store, config)) if own else None
    if elsewhere is not None:  # SIGTERM ends the process once the lifespan is over: that is the last word
        release = _both(release, elsewhere.take_off)
    gateway = Gateway(project, config, entries, default, on_stop=release, elsewhere=elsewhere)
    if on_ready is not None:
        _when_listening(config, on_ready)
    limit = connection_limit(config.max_connections)
    if limit < config.max_connections:
        log.warning(
            "at most %d connections, not %d: the open-file limit is lower (raise it with ulimit -n)",
            limit,
            config.max_connections,
        )
    if "*" in config.allowed_origins:
        log.warning("allowed_origins has *: any web page this machine's browser opens may use these models")
    where = local_url(config.host, config.port)
    if is_wildcard(config.host):
        where = f"http://{config.host or '*'}:{config.port} (every address of this machine; from here: {where})"
    server = Server(
        uvicorn.Config(
            gateway.app(),
            host=config.host,
            port=config.port,
            http=protocol(limit, config.read_timeout),
            log_config=None,  # lf.gateway.logs configured the loggers
            access_log=False,  # the gateway logs one line per request itself, never a message or a key
            lifespan="on",
            timeout_keep_alive=min(KEEP_ALIVE, config.read_timeout),  # type: ignore[arg-type]
            timeout_graceful_shutdown=config.shutdown_grace + SHUTDOWN_BACKSTOP,  # type: ignore[arg-type]
            server_header=False,
        ),
        on_listening=lambda: log.info("listening on %s for %s", where, ", ".join(e.name for e in entries)),
        on_stopping=gateway.drain,
    )
    # SIGHUP reloads llamafarm.yaml (the app installs that once its loop runs; until then it is ignored, not
    # fatal; Windows has none); uvicorn shuts down gracefully on SIGTERM and then re-raises it, which should end
    # the process as a service manager expects of a SIGTERM, not as lf's commands turn it into an error
    hangup = hangup_signal()
    if hangup is not None:
        signal.signal(hangup, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        server.run()
    finally:
        if release is not None:
            release()  # when the lifespan never ran (the port was taken after all)
    if not server.started:
        raise LfError(f"the gateway could not listen on {config.host}:{config.port}", hint="see the messages above")


def _both(first: Callable[[], None] | None, then: Callable[[], None]) -> Callable[[], None]:
    def call() -> None:
        try:
            if first is not None:
                first()
        finally:
            then()

    return call


def connection_limit(wanted: int) -> int:
    """How many client connections the gateway can hold: `wanted`, unless the open-file limit is too low for it
    (with what the gateway needs besides: its models' connections, logs, the engines' pipes). The soft limit is
    raised toward the hard one first, as servers do (the gateway never uses select)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = FILES_PER_CONNECTION * wanted + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    reserve = max(32, min(256, soft // 4))
    return max(8, min(wanted, (soft - reserve) // FILES_PER_CONNECTION))


def _when_listening(config: GatewayConfig, then, timeout: float = 30.0) -> None:
    """Call `then()` from a thread once the gateway accepts connections (uvicorn binds after its startup)."""
    import socket
    import threading

    def wait() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((connect_host(config.host), config.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            return
        then()

    threading.Thread(target=wait, name="when-listening", daemon=True).start()


def refuse_a_second(store: StateStore, config: GatewayConfig, pid: int | None = None) -> None:
    """One gateway per project: a second would adopt the first one's instances, and its idle timer and its
    shutdown would stop them under the first one's requests. `pid`: the process that may hold a record already
    (a gateway `--detach` launched, claiming its own)."""
    for record in gateway_records(store):
        if record.pid != pid:
            where = local_url(record.instance.host, record.port)
            raise LfError(
                f"{lf_serve_of(store)} already runs at {where} (pid {record.pid})",
                hint=f"use that one, or stop it first: lf runtime stop {record.name}",
            )


def lf_serve_of(store: StateStore) -> str:
    return f"a gateway for project {store.project}" if store.project else "a gateway"


def _claim_record(store: StateStore, project: Project | None, config: GatewayConfig) -> bool:
    """Write the gateway's record (unless `--detach` launched this process and wrote it already).
    True when this call wrote it and must remove it on the way out."""
    import psutil

    name = config.record_name
    with store.lock(name), supervisor.ports_lock(store):  # as any launch: one claim of a port at a time
        existing = store.load_or_none(name)
        if existing is not None and existing.pid == os.getpid():
            return False  # launched by `lf serve --detach`: the supervisor owns the record
        refuse_a_second(store, config)
        choose_port(config.host, config.port, auto=False)
        instance = instance_of(project, config, psutil.Process().cmdline())
        store.save(
            RuntimeRecord(
                instance=replace(instance, env=MappingProxyType({})),
                pid=os.getpid(),
                create_time=process_create_time(os.getpid()) or time.time(),
                started_at=time.time(),
                log_path="(the foreground process's stderr)",
            )
        )
    return True


def _release_record(store: StateStore, config: GatewayConfig) -> None:
    from lf.files import LockBusy

    try:
        with store.lock(config.record_name, timeout=RELEASE_LOCK_WAIT):
            record = store.load_or_none(config.record_name)
            if record is not None and record.pid == os.getpid():
                store.remove(config.record_name)
    except LockBusy:
        # `lf runtime stop` holds the lock while it waits for this gateway to end, and removes the record
        # itself: waiting here would hold the gateway until the stop gives up and SIGKILLs it
        pass


def detach(
    project: Project | None, config: GatewayConfig, on_wait=None, log_level: str = "info", log_format: str = "text"
):
    """Run `lf serve` as a supervised daemon (its own session, a log, a record) and wait until it answers.
    The daemon gets every resolved setting as a flag, except the API key (never on a command line: it
    reads it from the same environment or llamafarm.yaml)."""
    command = [
        sys.executable,
        "-m",
        "lf",
        "serve",
        *_flags(config),
        "--log-level",
        log_level,
        "--log-format",
        log_format,
    ]
    if project is not None:
        command += ["--config", str(Path(project.path).resolve())]
    store = StateStore.of(project)

    def plan() -> Instance:
        refuse_a_second(store, config)
        choose_port(config.host, config.port, auto=False)
        return instance_of(project, config, command)

    return supervisor.start(
        config.record_name, store, plan, on_wait=(lambda at: on_wait(at.elapsed)) if on_wait else None
    )


def _flags(config: GatewayConfig) -> list[str]:
    """The flags that give the daemon every resolved setting (booleans only where they differ from the default)."""
    from dataclasses import fields

    values = {f.name: getattr(config, f.name) for f in fields(config)}
    return serve_flags(
        {k: v for k, v in values.items() if not (isinstance(v, bool) and v == GATEWAY_SETTINGS[k].default)}
    )
