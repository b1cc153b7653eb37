"""Running the gateway: in the foreground (systemd, launchd, containers) or as a supervised daemon
(`--detach`), with a record in the state dir either way, so `lf runtime status` shows it and
`lf runtime stop lf-serve` stops it."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from lf.config.project import Project
from lf.daemon.health import local_url
from lf.daemon.process import process_create_time
from lf.daemon.records import RuntimeRecord, StateStore
from lf.daemon.supervisor import choose_port
from lf.errors import LfError
from lf.gateway.settings import RECORD_RUNTIME, GatewayConfig
from lf.platform import hangup_signal

START_TIMEOUT = 30.0
LIVENESS = "/health/liveness"


def run(project: Project | None, config: GatewayConfig, on_ready=None) -> None:
    """Serve until SIGTERM, SIGINT or SIGHUP; then stop the instances a gateway started and leave."""
    import uvicorn

    from lf.gateway.app import Gateway

    entries = list(project.models) if project else [_default_entry()]
    default = project.default_model if project else entries[0].name
    store = StateStore.of(project)  # the gateway's record lies with its project's instances
    own = _claim_record(store, project, config, len(entries))
    release = (lambda: _release_record(store, config)) if own else None
    gateway = Gateway(project, config, entries, default, on_stop=release)
    if on_ready is not None:
        _when_listening(config, on_ready)
    server = uvicorn.Server(
        uvicorn.Config(
            gateway.app(),
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,  # lf-serve logs one line per request itself, never a message or a key
            lifespan="on",
            timeout_graceful_shutdown=10,
            server_header=False,
        )
    )
    # a closed terminal (SIGHUP) stops the gateway as SIGTERM does, instances included; uvicorn shuts down
    # gracefully on SIGTERM and then re-raises it, which should end the process as a service manager
    # expects of a SIGTERM, not as lf's commands turn it into an error
    hangup = hangup_signal()
    if hangup is not None:  # Windows has none
        signal.signal(hangup, lambda *_: setattr(server, "should_exit", True))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    print(
        f"lf-serve: listening on {local_url(config.host, config.port)} for {', '.join(e.name for e in entries)}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run()
    finally:
        if release is not None:
            release()  # when the lifespan never ran (the port was taken after all)
    if not server.started:
        raise LfError(f"the gateway could not listen on {config.host}:{config.port}", hint="see the messages above")


def _when_listening(config: GatewayConfig, then, timeout: float = 30.0) -> None:
    """Call `then()` from a thread once the gateway accepts connections (uvicorn binds after its startup)."""
    import socket
    import threading

    def wait() -> None:
        deadline = time.monotonic() + timeout
        host = "127.0.0.1" if config.host in ("0.0.0.0", "") else "::1" if config.host == "::" else config.host
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, config.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            return
        then()

    threading.Thread(target=wait, name="when-listening", daemon=True).start()


def _default_entry():
    from lf.core.targets import default_entry
    from lf.runtimes.registry import DEFAULT_RUNTIME, get_runtime

    return default_entry(get_runtime(DEFAULT_RUNTIME))


def _claim_record(store: StateStore, project: Project | None, config: GatewayConfig, models: int) -> bool:
    """Write the gateway's record (unless `--detach` launched this process and wrote it already).
    True when this call wrote it and must remove it on the way out."""
    name = config.record_name
    with store.lock(name):
        existing = store.load_or_none(name)
        if existing is not None and existing.pid == os.getpid():
            return False  # launched by `lf serve --detach`: the supervisor owns the record
        if existing is not None and existing.process_alive():
            raise LfError(
                f"a gateway already runs on port {config.port} (pid {existing.pid})",
                hint=f"stop it with: lf runtime stop {name}",
            )
        choose_port(config.host, config.port, auto=False)
        import psutil

        store.save(
            RuntimeRecord(
                name=name,
                runtime=RECORD_RUNTIME,
                pid=os.getpid(),
                create_time=process_create_time(os.getpid()) or time.time(),
                host=config.host,
                port=config.port,
                base_url=local_url(config.host, config.port, "/v1"),
                model=f"{models} model{'s' if models != 1 else ''}" + (f" of {project.path}" if project else ""),
                command=psutil.Process().cmdline(),
                log_path="(the foreground process's stderr)",
                started_at=time.time(),
                engine="uvicorn",
                health_url=local_url(config.host, config.port, LIVENESS),
                start_timeout=START_TIMEOUT,
            )
        )
    return True


def _release_record(store: StateStore, config: GatewayConfig) -> None:
    with store.lock(config.record_name):
        record = store.load_or_none(config.record_name)
        if record is not None and record.pid == os.getpid():
            store.remove(config.record_name)


def detach(project: Project | None, config: GatewayConfig, on_wait=None):
    """Run `lf serve` as a supervised daemon (its own session, a log, a record) and wait until it answers.
    The daemon gets every resolved setting as a flag, except the API key (never on a command line: it
    reads it from the same environment or llamafarm.yaml)."""
    from lf.daemon import supervisor
    from lf.daemon.supervisor import LaunchPlan

    command = [sys.executable, "-m", "lf", "serve", *_flags(config)]
    if project is not None:
        command += ["--config", str(Path(project.path).resolve())]

    def plan() -> LaunchPlan:
        choose_port(config.host, config.port, auto=False)
        return LaunchPlan(
            name=config.record_name,
            runtime=RECORD_RUNTIME,
            engine="uvicorn",
            argv=tuple(command),
            host=config.host,
            port=config.port,
            api_base="/v1",
            model=f"{len(project.models) if project else 1} models" + (f" of {project.path}" if project else ""),
            health_path=LIVENESS,
            start_timeout=START_TIMEOUT,
            env={"PYTHONUNBUFFERED": "1"},
        )

    return supervisor.start(config.record_name, StateStore.of(project), plan, on_wait=on_wait)


def _flags(config: GatewayConfig) -> list[str]:
    from dataclasses import fields

    from lf.config.gateway import GATEWAY_SETTINGS

    out: list[str] = []
    for f in fields(config):
        setting = GATEWAY_SETTINGS.get(f.name)
        value = getattr(config, f.name)
        if setting is None or setting.flag is None or value is None or f.name == "api_key":
            continue
        if setting.type == "boolean":
            out += [setting.flag] if value else []
        else:
            out += [setting.flag, str(value)]
    return out
