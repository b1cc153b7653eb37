"""The gateway's HTTP side: OpenAI routes that forward to the right model's instance, /v1/models, /health,
/metrics. Every request passes lf.gateway.guard first (Host, origin, JSON, key) and its body is read by
lf.gateway.body (bounded, parsed off the event loop when large). Answers come back byte for byte as they
arrive (SSE unbuffered), with the model named as the client named it and any upstream key masked; a client
that goes away closes its upstream request (and is logged as 499). When the gateway stops, answers in flight
have `shutdown_grace` seconds to finish; then a stream ends with an error event, a waiting request with 503."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Protocol

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from lf.config.gateway import GatewayConfig
from lf.config.names import Names, served_entries
from lf.config.project import ModelEntry, Project
from lf.core.events import Endpoint
from lf.core.targets import target_of
from lf.daemon.records import StateStore
from lf.daemon.states import State
from lf.errors import LfError
from lf.gateway.body import Bodies, Gone, Payload
from lf.gateway.dashboard import Dashboard
from lf.gateway.effects import CoreEffects, Effects
from lf.gateway.events import EventBus, RequestFinished, Routed, log_event
from lf.gateway.guard import Guard, HTTPProblem, error_body, wants_page
from lf.gateway.metrics import Metrics
from lf.gateway.monitor import Monitor, describe_loading, loading
from lf.gateway.peers import Peers
from lf.gateway.pool import (
    NOT_LOADED,
    SERVING,
    CouldNotStart,
    Frozen,
    Pool,
    QueueFull,
    QueueTimeout,
    Slot,
    TooBusy,
    TooLarge,
    Unreachable,
)
from lf.gateway.reload import watch
from lf.gateway.routers import Routers, embedder_entries
from lf.gateway.upstream import UpstreamClient
from lf.net import split_userinfo
from lf.platform import hangup_signal
from lf.secrets import StreamMasker, redact_url, secrets_of

log = logging.getLogger(__name__)
SHUTTING_DOWN = "the gateway is shutting down"
KEEPALIVE_SECONDS = 2.0  # a streaming request waiting for its model gets an SSE comment this often
CLUSTER_INTERVAL = 15.0  # seconds between two askings of the cluster where the replicas run (lf serve --cluster)
COLD_DECISION_SECONDS = 1.0  # a streamed request for a model not loaded waits this long for a refusal to come
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
PASSED_HEADERS = ("content-type", "cache-control")
OPENAI_ROUTES = {
    "/v1/chat/completions": "/chat/completions",
    "/v1/completions": "/completions",
    "/v1/embeddings": "/embeddings",
}


def sse_error(message: str, code: str) -> bytes:
    return b"data: " + json.dumps(error_body(message, "upstream_error", code)).encode() + b"\n\n"


class Elsewhere(Protocol):
    """Entries that run on a cluster, not here (lf serve --cluster: lf.cluster.front.Front)."""

    @property
    def placed(self) -> Mapping[str, str]:
        """Entry name → the OpenAI base URL it is served at."""
        ...

    def view(self) -> dict:
        """Where their replicas run now (blocking: seconds)."""
        ...

    def place(self, project: Project) -> Mapping[str, str]:
        """Take an edited llamafarm.yaml to the cluster (blocking: minutes); `placed` follows. LfError: refused."""
        ...

    def take_off(self) -> None:
        """Take off the cluster what this gateway put there."""
        ...


class Gateway:
    def __init__(
        self,
        project: Project | None,
        config: GatewayConfig,
        entries: list[ModelEntry],
        default_model: str | None,
        effects: Effects | None = None,
        on_stop=None,
        elsewhere: Elsewhere | None = None,
    ):
        self.project = project
        self.elsewhere = elsewhere  # entries that run on a cluster (lf serve --cluster)
        self.cluster: dict | None = None  # where they run, as last asked: for /health, /metrics and the page
        self.on_stop = on_stop  # called last on the way out (uvicorn re-raises SIGTERM once its shutdown is done)
        self.config = config
        self.entries = entries
        self.default_model = default_model
        self.store = StateStore.of(project)
        self.names = Names(project, entries)
        self.events = EventBus()
        self.metrics = Metrics()
        served = _pooled(project, entries)
        self.pool = Pool(
            config,
            served,
            effects or CoreEffects(project, config, self.events),
            self.events,
            _external_endpoints(served),
        )
        self.routers = Routers(project, self.pool, self.post_json)
        self._reloading = asyncio.Lock()
        self._gateway_section = dict(project.gateway) if project else {}
        self.client: httpx.AsyncClient | None = None
        self.upstream = UpstreamClient()
        self.monitor: Monitor | None = None
        self.peers: Peers | None = None
        self.started_at = time.time()
        self.guard = Guard(config, on_refused=lambda request, status, at: self.finished(request, "", "-", status, at))
        self.bodies = Bodies(config.max_body, config.read_timeout, config.queue_timeout)
        self.cut = asyncio.Event()  # set when shutdown_grace has run out: what is still answering is cut short
        self._cuttable: dict[anyio.CancelScope, bool] = {}  # → cancelled when the stop begins (not at the cut)
        self.dashboard = Dashboard(self)
        self.events.subscribe(log_event)
        self.events.subscribe(self.metrics.on_event)
        self.events.subscribe(self.dashboard.on_event)

    # -- the application ---------------------------------------------------------------------------
    def app(self) -> ASGIApp:
        @asynccontextmanager
        async def lifespan(_app):
            self.client = httpx.AsyncClient(
                timeout=httpx.Timeout(None, connect=5.0),
                # no kept-alive connections: llama.cpp's server may drop a request sent on one (see upstream.py)
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
                trust_env=False,
            )
            self.peers = Peers(self.config.peers, self.pool, self.client, on_probe=self.metrics.peer_probed)
            self.monitor = Monitor(
                self.pool,
                self.store,
                self.config.probe_interval,
                self.client,
                on_probe=lambda slot, health: self.metrics.probed(slot.name, health),
                on_probed=self.dashboard.changed,
                peers=self.peers,
                routers=self.routers,
            )
            await self.pool.adopt()
            loop = asyncio.get_running_loop()
            background = [loop.create_task(self.monitor.run())]
            if self.elsewhere is not None:
                background.append(loop.create_task(self._watch_cluster(self.elsewhere)))
            if self.project is not None and self.config.reload:
                background.append(loop.create_task(watch(self.project.path, self.reload)))
            hangup = hangup_signal()
            if self.project is not None and hangup is not None:  # a service manager's "reload"
                loop.add_signal_handler(hangup, lambda: loop.create_task(self.reload()))
            try:
                yield
            finally:
                for task in background:
                    task.cancel()
                try:
                    await self.bodies.close()
                    await self.pool.close()
                    await self.client.aclose()
                finally:
                    if self.on_stop is not None:
                        self.on_stop()

        routes = [
            Route("/health/liveness", self.liveness, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.get_model, methods=["GET"]),
            *(Route(path, self.forward, methods=["POST"]) for path in OPENAI_ROUTES),
            Route("/", self.index, methods=["GET"]),
            Route("/ui/events", self.dashboard.events, methods=["GET"]),
            Route("/ui/action", self.dashboard.action, methods=["POST"]),
            Route("/ui/log/{name}", self.dashboard.log, methods=["GET"]),
        ]
        return self.guard.wrap(
            Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: self.not_found, 405: self.not_allowed})
        )

    @property
    def placed(self) -> Mapping[str, str]:
        return self.elsewhere.placed if self.elsewhere is not None else {}

    async def _watch_cluster(self, elsewhere: Elsewhere) -> None:
        """Ask the cluster where the deployed entries' replicas run, every CLUSTER_INTERVAL seconds (each asking
        is a Ray driver process of its own: seconds of CPU, so never at the probe interval)."""
        while True:
            try:
                self.cluster = await anyio.to_thread.run_sync(elsewhere.view)
            except Exception as exc:  # noqa: BLE001 - shown where the answer would be; the gateway goes on
                self.cluster = {"checked_at": time.time(), "error": f"{type(exc).__name__}: {exc}", "entries": []}
            self.dashboard.changed()
            await asyncio.sleep(CLUSTER_INTERVAL)

    # -- llamafarm.yaml edited ----------------------------------------------------------------------------------
    async def reload(self) -> None:
        """Read llamafarm.yaml again and take its models (lf.gateway.pool.Pool.reconfigure): no answer is cut. An
        invalid file is logged where it is wrong, and the running models stay as they are."""
        from lf.config.project import load_project
        from lf.errors import ConfigError

        assert self.project is not None
        async with self._reloading:
            try:
                project = await anyio.to_thread.run_sync(load_project, self.project.path)
            except ConfigError as exc:
                log.warning("llamafarm.yaml not reloaded, the running models stay as they are: %s", exc.message)
                return
            if self.elsewhere is not None:
                try:
                    await anyio.to_thread.run_sync(self.elsewhere.place, project)
                except LfError as exc:
                    log.warning(
                        "llamafarm.yaml not reloaded, the running models stay as they are: the cluster: %s",
                        exc.message,
                    )
                    return
            entries, default = served_entries(project, self.placed)
            pooled = _pooled(project, entries)
            done = self.pool.reconfigure(pooled, _external_endpoints(pooled))
            self.routers.load(project)
            self.project, self.entries, self.default_model = project, entries, default
            self.names = Names(project, entries)
            if project.gateway != self._gateway_section:
                log.warning("runtime.gateway changed in llamafarm.yaml: restart lf serve to apply it")
                self._gateway_section = project.gateway
            said = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in done.items() if names)
            log.info("reloaded llamafarm.yaml (%s)", said or "no model changed", extra={"event": "reload"})
            self.dashboard.changed()

    # -- stopping --------------------------------------------------------------------------------------------
    def drain(self) -> None:
        """The gateway was asked to stop (called on the event loop as its server stops accepting connections):
        new requests are refused, the page's streams end, the answers in flight get `shutdown_grace` seconds."""
        self.guard.draining = True
        for scope, at_drain in list(self._cuttable.items()):
            if at_drain:
                scope.cancel()
        asyncio.get_running_loop().call_later(self.config.shutdown_grace, self._cut)

    def _cut(self) -> None:
        self.cut.set()
        for scope in list(self._cuttable):
            scope.cancel()

    @contextmanager
    def cuttable(self, at_drain: bool = False) -> Iterator[anyio.CancelScope]:
        """A scope that the stop cancels: at its start (`at_drain`: endless streams such as the page's), or once
        `shutdown_grace` has run out. Afterwards `scope.cancelled_caught` says whether it was."""
        with anyio.CancelScope() as scope:
            if self.cut.is_set() or (at_drain and self.guard.draining):
                scope.cancel()
            self._cuttable[scope] = at_drain
            try:
                yield scope
            finally:
                self._cuttable.pop(scope, None)

    # -- small endpoints ---------------------------------------------------------------------------------
    async def liveness(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def index(self, request: Request) -> Response:
        if wants_page(request):  # a browser: the dashboard
            return await self.dashboard.page(request)
        return JSONResponse(
            {
                "name": "lf serve",
                "models": [e.name for e in self.entries],
                "endpoints": [*OPENAI_ROUTES, "/v1/models", "/health", "/metrics"],
            }
        )

    async def health(self, request: Request) -> Response:
        assert self.monitor is not None
        document, status = self.monitor.document()
        if self.elsewhere is not None:
            document["cluster"] = self.cluster
        return JSONResponse(document, status_code=status)

    async def prometheus(self, request: Request) -> Response:
        body, content_type = self.metrics.render(self.pool, self.cluster)
        return Response(body, media_type=content_type)

    async def list_models(self, request: Request) -> Response:
        peers = [self._peer_object(s) for s in self.pool.slots.values() if s.peer is not None]
        return JSONResponse({"object": "list", "data": [*(self._model_object(e) for e in self.entries), *peers]})

    async def get_model(self, request: Request) -> Response:
        places = self.route(request.path_params["model"])
        if not places:
            return self._unknown_model(request.path_params["model"]).response()
        slot = places[0]
        return JSONResponse(self._peer_object(slot) if slot.peer is not None else self._model_object(slot.entry))

    def _model_object(self, entry: ModelEntry) -> dict:
        if entry.is_router:
            state = self.routers.states[entry.name]
            return {
                "id": entry.name,
                "object": "model",
                "created": int(self.started_at),
                "owned_by": "router",
                "lf": {
                    "router": state.to_dict(),
                    "aliases": entry.aliases,
                    "default": entry.name == self.default_model,
                },
            }
        slot = self.pool.slots[entry.name]
        return {
            "id": entry.name,
            "object": "model",
            "created": int(self.started_at),
            "owned_by": entry.provider,
            "lf": {
                "state": slot.state.value,
                "loading": loading(slot),
                "model": entry.model,
                "aliases": entry.aliases,
                "default": entry.name == self.default_model,
            },
        }

    def _peer_object(self, slot: Slot) -> dict:
        return {
            "id": slot.name,
            "object": "model",
            "created": int(self.started_at),
            "owned_by": slot.peer,
            "lf": {"state": slot.state.value, "peer": slot.peer, "model": slot.entry.model, "down": slot.down},
        }

    async def not_found(self, request: Request, exc) -> Response:
        return JSONResponse(
            error_body(f"no route {request.method} {request.url.path}", "invalid_request_error", "not_found"),
            status_code=404,
        )

    async def not_allowed(self, request: Request, exc) -> Response:
        return JSONResponse(
            error_body(
                f"{request.method} is not allowed on {request.url.path}", "invalid_request_error", "method_not_allowed"
            ),
            status_code=405,
        )

    # -- the OpenAI routes -----------------------------------------------------------------------------------
    async def forward(self, request: Request) -> Response:
        arrived = time.monotonic()
        path = OPENAI_ROUTES[request.url.path]
        routed: dict[str, str] = {}
        try:
            payload = await self.bodies.json_object(request)
        except Gone:
            self.finished(request, path, "-", 499, arrived)
            return Response(status_code=499)  # nobody reads it
        except HTTPProblem as problem:
            self.finished(request, path, "-", problem.status, arrived)
            return problem.response()
        try:
            name = payload.get("model") or self.default_model
            router = self.names.lookup(name) if isinstance(name, str) else None
            if router is not None and router.is_router:
                target, routed = await self._routed(router, payload, path)
                places = self.pool.places(target)
            else:
                places = self.route(name) if isinstance(name, str) else []
            if not places:
                raise self._unknown_model(name)
        except HTTPProblem as problem:
            payload.release()
            self.finished(request, path, "-", problem.status, arrived)
            return problem.response()
        stream = payload.get("stream") is True
        slot = places[0]
        entry = slot.entry
        if path == "/embeddings" and slot.embeddings is False:  # refused as it is, never started just to refuse
            refusal = HTTPProblem(
                501,
                f"{entry.name} does not serve embeddings: its {entry.provider} engine runs with them off; say "
                "embeddings: true in its provider_config (llamafarm.yaml) to turn them on",
                "embeddings_off",
            )
            self.finished(request, path, entry.name, refusal.status, arrived)
            return refusal.response()
        asked = name if isinstance(name, str) else entry.name
        exchange = _Exchange(self, request, places, asked, payload, path, stream, arrived, routed)
        ready = any(p.state in SERVING or (p.state == State.EXTERNAL and p.down is None) for p in places)
        if stream and not ready and any(p.managed for p in places):
            return await exchange.cold_stream()
        return await exchange.answer()

    async def _routed(self, router: ModelEntry, payload: Payload, path: str) -> tuple[str, dict[str, str]]:
        """The entry a request for a router goes to, and the headers that say so."""
        from lf.core.router import last_user_text

        if path == "/embeddings":
            raise HTTPProblem(
                400, f"{router.name} is a router: it routes chats and completions, not embeddings", "not_routable"
            )
        text = last_user_text(payload)
        if not text:
            raise HTTPProblem(
                400, f"{router.name} is a router: it needs a user message (or a prompt) to route by", "not_routable"
            )
        try:
            decision, seconds = await self.routers.route(router.name, text)
        except LfError as exc:
            raise HTTPProblem(
                503, f"{router.name} could not route: {exc.message}", "router_failed", "server_error"
            ) from None
        self.events.emit(Routed(router.name, decision.route or "default", decision.target, seconds))
        headers = {"x-lf-route": decision.route or "default", "x-lf-routed-to": decision.target}
        return decision.target, headers

    async def post_json(self, endpoint: Endpoint, path: str, body: dict) -> dict:
        """POST a JSON body upstream and read the whole JSON answer (what the routers' embeddings take)."""
        headers = {"content-type": "application/json", "accept": "application/json"}
        if endpoint.api_key:
            headers["authorization"] = f"Bearer {endpoint.api_key}"
        answer = await self.send(endpoint.base_url.rstrip("/") + path, headers, json.dumps(body).encode())
        try:
            raw = await answer.aread()
        finally:
            await answer.aclose()
        if answer.status_code >= 400:
            raise ValueError(f"HTTP {answer.status_code}: {raw[:300].decode('utf-8', 'replace')}")
        return json.loads(raw)

    def route(self, name: str) -> list[Slot]:
        """The places a model name means: a configured entry's (by any of its names), a peer's PEER/MODEL, or a
        bare model name only one peer serves."""
        entry = self.names.lookup(name)
        if entry is not None:
            return self.pool.places(entry.name)
        peer = self.pool.slots.get(name)
        return [peer] if peer is not None and peer.peer is not None else self.pool.peer_models(name)

    async def send(self, url: str, headers: dict, body: bytes):
        """POST upstream, the answer streamed: plain HTTP (lf's own runtimes) through the lean client,
        anything else (https, proxies) through httpx. Credentials in the URL become Basic authorization, as
        httpx sends them for lf chat."""
        url, basic = split_userinfo(url)
        if basic is not None:
            headers = {**headers, "authorization": basic}
        if url.startswith("http://"):
            return await self.upstream.send("POST", url, headers, body)
        assert self.client is not None
        return await self.client.send(
            self.client.build_request("POST", url, content=body, headers=headers), stream=True
        )

    def _unknown_model(self, name) -> HTTPProblem:
        known = ", ".join(e.name for e in self.entries) or "none"
        return HTTPProblem(404, f"The model {name!r} does not exist here. Models: {known}", "model_not_found")

    def finished(self, request: Request, path: str, model: str, status: int, arrived: float, **answer) -> None:
        """One request done: what was asked of which model and how it went; never a message's content, never a key."""
        self.events.emit(
            RequestFinished(
                request.method, request.url.path, path.strip("/"), model, status, time.monotonic() - arrived, **answer
            )
        )


class _Exchange:
    """One request forwarded upstream and its answer streamed back."""

    def __init__(
        self,
        gateway: Gateway,
        request: Request,
        places: list[Slot],
        asked: str,
        payload: Payload,
        path: str,
        stream: bool,
        arrived: float,
        routed: dict[str, str] | None = None,
    ):
        self.gateway, self.request, self.places, self.asked = gateway, request, places, asked
        self.routed = routed or {}  # a router's decision, said in the answer's headers
        self.slot = places[0]  # the place it goes to (chosen when it is sent)
        self.entry = self.slot.entry
        self.payload, self.path, self.stream, self.arrived = payload, path, stream, arrived
        self.acquired = False
        self.ended = False  # the answer ran to its end (else the client went away: 499)
        self.delivered = False  # the stream's closing "data: [DONE]" went out: a client may hang up right after it
        self._sent_tail = b""
        self.first_token: float | None = None
        self.tokens = 0
        self.status = 0
        self.rewrite: StreamMasker[bytes] = StreamMasker([])
        self.deadline: float | None = None  # loop time when lf ends the answer (request_timeout)
        self.defaulted = False  # lf set its max_tokens (the request set none)
        self.length = False  # the answer ended for its length (finish_reason "length")
        self.cut: str | None = None  # why lf ended it: "deadline", or its default max_tokens

    # -- getting an endpoint -------------------------------------------------------------------------------
    async def _endpoint(self) -> Endpoint:
        endpoint = await self.gateway.pool.acquire(self.slot)
        self.acquired = True
        return endpoint

    def _release(self) -> None:
        if self.acquired:
            self.acquired = False
            self.gateway.pool.release(self.slot)

    async def _open(self):
        """Send the request upstream; once more if it fails before its first byte: to another place of the model (a
        replica, a peer) when it has one, else to the same instance started again if it turns out to have died."""
        try:
            return await self._send()
        finally:
            self.payload.release()  # sent or refused: its place goes to the next large body

    async def _send(self):
        pool = self.gateway.pool
        tried: list[Slot] = []
        for attempt in (1, 2):
            if len(self.places) > 1:
                self.slot = pool.choose(self.places, exclude=tuple(tried))
                self.entry = self.slot.entry
            endpoint = await self._endpoint()
            self.rewrite = _rewriter(endpoint, self.asked)
            # the file's request defaults (temperature, …) under what the request itself says
            overrides = {"model": endpoint.model}
            if self.path != "/embeddings":
                overrides.update(self._bounds(endpoint))
            body = self.payload.forwarded(self.entry.request_defaults, **overrides)
            headers = {"content-type": "application/json", "accept": self.request.headers.get("accept", "*/*")}
            if endpoint.api_key:
                headers["authorization"] = f"Bearer {endpoint.api_key}"
            timeout = self.gateway.config.request_timeout or None
            self.deadline = asyncio.get_running_loop().time() + timeout if timeout else None
            try:
                answer = await asyncio.wait_for(
                    self.gateway.send(endpoint.base_url.rstrip("/") + self.path, headers, body), timeout
                )
            except asyncio.TimeoutError:
                self._release()
                raise HTTPProblem(
                    504,
                    f"{self.entry.name} did not answer within {timeout:g}s (the gateway's request_timeout)",
                    "upstream_timeout",
                    "api_error",
                ) from None
            except httpx.HTTPError as exc:  # before the first byte: nothing was sent back yet, it may go elsewhere
                self._release()
                record = endpoint.record
                died = record is not None and not record.process_alive()
                if died:
                    pool.crashed(self.slot, f"its process (pid {record.pid}) exited")
                else:
                    pool.failed(self.slot, _why(exc))
                    tried.append(self.slot)
                elsewhere = any(p not in tried for p in self.places) and len(self.places) > 1
                if attempt == 1 and (died or elsewhere):
                    continue
                if isinstance(exc, httpx.ConnectError):
                    raise HTTPProblem(
                        502,
                        f"cannot reach {self.entry.name} at {redact_url(endpoint.base_url)}: {exc}",
                        "upstream_unreachable",
                        "api_error",
                    ) from None
                raise HTTPProblem(
                    502, f"{self.entry.name} did not answer: {exc}", "upstream_error", "api_error"
                ) from None
            pool.succeeded(self.slot)
            return answer
        raise AssertionError("unreachable")

    def _bounds(self, endpoint: Endpoint) -> dict:
        """What bounds the answer's length, laid over the request: max_tokens where it sets none (the entry's default,
        else the gateway's, never more than the instance's context), and lowered to the limit where it asks for more."""
        config, entry = self.gateway.config, self.entry
        limit = entry.max_tokens_limit or config.max_tokens_limit
        context = endpoint.record.instance.settings.get("context_size") if endpoint.record else None
        asked = {}
        for key in ("max_tokens", "max_completion_tokens"):
            value = self.payload.get(key) if key in self.payload else entry.request_defaults.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                asked[key] = value
        if not asked:
            default = entry.max_tokens_default or config.max_tokens_default
            if isinstance(context, int):
                default = min(default, context)
            if limit:
                default = min(default, limit)
            self.defaulted = True
            return {"max_tokens": default}
        return {key: min(value, limit) for key, value in asked.items()} if limit else {}

    def _problem(self, exc: BaseException) -> HTTPProblem:
        if isinstance(exc, HTTPProblem):
            return exc
        if isinstance(exc, Unreachable):
            return HTTPProblem(503, exc.message, "upstream_down", "server_error", headers={"retry-after": "5"})
        if isinstance(exc, TooBusy):
            return HTTPProblem(429, exc.message, "model_busy", "rate_limit_error", headers={"retry-after": "1"})
        if isinstance(exc, TooLarge):
            return HTTPProblem(
                503, exc.message + (f"; {exc.hint}" if exc.hint else ""), "model_too_large", "server_error"
            )
        if isinstance(exc, (QueueFull, QueueTimeout)):
            return HTTPProblem(503, exc.message, "overloaded", "server_error", headers={"retry-after": "5"})
        if isinstance(exc, CouldNotStart):
            return HTTPProblem(
                503, exc.message + (f"\n{exc.hint}" if exc.hint else ""), "model_start_failed", "server_error"
            )
        if isinstance(exc, Frozen):
            return HTTPProblem(503, exc.message + (f"; {exc.hint}" if exc.hint else ""), "model_frozen", "server_error")
        if isinstance(exc, LfError):
            return HTTPProblem(503, exc.message, "unavailable", "server_error")
        raise exc

    # -- answering -------------------------------------------------------------------------------------------
    async def answer(self) -> Response:
        with self.gateway.cuttable() as cut:
            try:
                upstream = await self._open()
            except (HTTPProblem, LfError) as exc:
                problem = self._problem(exc)
                self._finish(problem.status)
                return problem.response()
            except BaseException:
                self._release()  # never leave the model counted busy (it would never go idle)
                raise
        if cut.cancelled_caught:  # still waiting for its model when the gateway's stop ran out of grace
            self._finish(503)
            return HTTPProblem(503, SHUTTING_DOWN, "shutting_down", "server_error").response()
        self.status = upstream.status_code
        headers = {k: v for k, v in upstream.headers.items() if k in PASSED_HEADERS}
        if "text/event-stream" in headers.get("content-type", ""):
            headers.update(SSE_HEADERS)
        headers.update(self.routed)
        return StreamingResponse(self._relay(upstream), status_code=upstream.status_code, headers=headers)

    async def cold_stream(self) -> Response:
        """A streaming request for a model that is not running: answer at once, with SSE comments while
        the model starts (clients do not time out), then the model's own stream."""
        acquire = asyncio.get_running_loop().create_task(self._open())
        # a refusal that comes first (too large for the budget, queue full, a start that fails at once) gets a
        # proper status: wait until the pool has decided to start it, or for up to a second while it decides
        decided = asyncio.get_running_loop().time() + COLD_DECISION_SECONDS
        await asyncio.wait([acquire], timeout=0.05)
        while not acquire.done() and self.slot.state in NOT_LOADED and asyncio.get_running_loop().time() < decided:
            await asyncio.wait([acquire], timeout=0.02)
        failure = acquire.exception() if acquire.done() else None
        if failure is not None:
            problem = self._problem(failure)
            self._finish(problem.status)
            return problem.response()
        return StreamingResponse(
            self._wait_then_relay(acquire),
            status_code=200,
            headers={"content-type": "text/event-stream", **SSE_HEADERS, **self.routed},
        )

    async def _wait_then_relay(self, opening: asyncio.Task):
        waited = time.monotonic()
        try:
            while not opening.done():
                progress = loading(self.slot)
                said = describe_loading(progress) if progress else f"waiting ({time.monotonic() - waited:.0f}s)"
                yield f": loading {self.entry.name}: {said}\n\n".encode()
                with self.gateway.cuttable() as cut:
                    await asyncio.wait([opening], timeout=KEEPALIVE_SECONDS)
                if cut.cancelled_caught:
                    self.status = 503
                    yield sse_error(SHUTTING_DOWN, "shutting_down")
                    self.ended = True
                    return
            try:
                upstream = opening.result()
            except (HTTPProblem, LfError) as exc:
                problem = self._problem(exc)
                self.status = problem.status
                yield sse_error(problem.message, problem.code)
                self.ended = True
                return
            self.status = upstream.status_code
            if upstream.status_code >= 400:  # the 200 is sent already: the refusal becomes an error event
                text = self._rewritten(await upstream.aread()).decode("utf-8", "replace")
                yield sse_error(
                    f"{self.entry.name} answered HTTP {upstream.status_code}: {text[:2000]}", "upstream_error"
                )
                self.ended = True
                return
            async for chunk in self._relay(upstream, finish=False):
                yield chunk
        finally:
            if not opening.done():
                opening.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([opening])
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                with anyio.CancelScope(shield=True):
                    await opening.result().aclose()
            self._finish(self._outcome())

    def _rewritten(self, body: bytes) -> bytes:
        return self.rewrite.feed(body) + (self.rewrite.flush() or b"")

    async def _relay(self, upstream, finish: bool = True):
        watchdog = None
        if self.deadline is not None:
            watchdog = asyncio.get_running_loop().call_at(self.deadline, self._time_up, upstream)
        try:
            if upstream.status_code >= 400:
                # an error answer is read whole, so a key it quotes is masked, and ends as a clean JSON body
                yield self._rewritten(await upstream.aread())
                self.ended = True
                return
            chunks = upstream.aiter_raw()
            cut_short = False
            try:
                while True:
                    chunk, cut_short = await self._next(chunks)
                    if chunk is None:
                        break
                    self._observe(chunk)
                    out = self.rewrite.feed(chunk)
                    if out:
                        yield out
                        self._sent(out)
            except httpx.HTTPError:
                if self.cut != "deadline":  # else lf closed it: the answer took too long
                    raise
            if cut_short:
                self.status = 503
                grace = self.gateway.config.shutdown_grace
                yield sse_error(
                    f"{SHUTTING_DOWN}: {self.entry.name}'s answer was cut after {grace:g}s", "shutting_down"
                )
            else:
                rest = self.rewrite.flush()
                if rest:
                    yield rest
                if self.cut == "deadline" and self.stream:
                    yield self._length_event()  # lf ended it: said as the engine says an answer cut for its length
            self.ended = True
        except httpx.HTTPError as exc:
            self.status = 502
            if self.stream:  # the client learns the answer broke, instead of waiting or taking it as complete
                yield sse_error(
                    f"{self.entry.name} stopped answering mid-stream ({type(exc).__name__})", "upstream_broke"
                )
            self.ended = True
        finally:
            if watchdog is not None:
                watchdog.cancel()
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
            if self.defaulted and self.length and self.cut is None:
                self.cut = "max_tokens_default"
            if finish:
                self._finish(self._outcome())  # not to its end: the client went away

    def _sent(self, out: bytes) -> None:
        if self.stream and not self.delivered:
            seen = self._sent_tail + out
            self.delivered = b"data: [DONE]" in seen
            self._sent_tail = seen[-16:]

    def _outcome(self) -> int:
        """The status the request is logged with: 499 when the client went away before the answer's end."""
        return self.status if self.ended or self.delivered else 499

    async def _next(self, chunks) -> tuple[bytes | None, bool]:
        """The upstream's next piece (None at its end), and whether the gateway's stop cut a stream short; a
        whole answer (not streamed) is never cut: it comes in one piece once generated."""
        if not self.stream:
            return await anext(chunks, None), False
        chunk = None
        with self.gateway.cuttable() as cut:
            chunk = await anext(chunks, None)
        return (None, True) if cut.cancelled_caught else (chunk, False)

    def _time_up(self, upstream) -> None:
        """The gateway's request_timeout: the upstream is closed, the stream ends with finish_reason length."""
        self.cut = "deadline"
        asyncio.get_running_loop().create_task(upstream.aclose())

    def _length_event(self) -> bytes:
        kind = "text_completion" if self.path == "/completions" else "chat.completion.chunk"
        choice: dict[str, object] = {
            "index": 0,
            "finish_reason": "length",
            **({"text": ""} if self.path == "/completions" else {"delta": {}}),
        }
        event = {
            "id": "lf-deadline",
            "object": kind,
            "created": int(time.time()),
            "model": self.asked,
            "choices": [choice],
        }
        return b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n"

    def _observe(self, chunk: bytes) -> None:
        """Count generated pieces as they pass (a chat stream's content, a completion stream's text), without
        parsing the events; a whole answer's count comes from its usage."""
        if b'"length"' in chunk and (b'"finish_reason":"length"' in chunk or b'"finish_reason": "length"' in chunk):
            self.length = True
        if self.stream:
            field = b'"text"' if self.path == "/completions" else b'"content"'
            pieces = (
                chunk.count(field + b':"')
                + chunk.count(field + b': "')
                - chunk.count(field + b':""')
                - chunk.count(field + b': ""')
            )
            if pieces > 0:
                if self.first_token is None:
                    self.first_token = time.monotonic()
                self.tokens += pieces
        elif b'"completion_tokens"' in chunk:
            try:
                self.tokens = int(json.loads(chunk).get("usage", {}).get("completion_tokens") or 0)
            except (ValueError, AttributeError, TypeError, RecursionError):
                pass

    def _finish(self, status: int) -> None:
        self._release()
        ended = time.monotonic()
        ttft = self.first_token - self.arrived if self.first_token is not None else None
        rate = None
        if status < 400 and self.tokens:
            # tokens/s of the generation itself: from the first token when streamed, else over the whole answer
            span = ended - (self.first_token if self.first_token is not None else self.arrived)
            generated = self.tokens - 1 if self.first_token is not None else self.tokens
            rate = round(generated / span, 1) if span > 0 and generated > 0 else None
            self.slot.last_request = {
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "status": status,
                "stream": self.stream,
                "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
                "duration_ms": round((ended - self.arrived) * 1000, 1),
                "tokens": self.tokens,
                "tokens_per_s": rate,
                "cut": self.cut,
            }
        self.gateway.finished(
            self.request,
            self.path,
            self.entry.replica_of or self.entry.name,  # the model asked for; the place is `upstream`
            status,
            self.arrived,
            stream=self.stream,
            ttft=ttft,
            tokens=self.tokens,
            tokens_per_s=rate,
            cut=self.cut,
            upstream=self.slot.peer or self.slot.name,
        )


def _why(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _pooled(project: Project | None, entries: list[ModelEntry]) -> list[ModelEntry]:
    """What the pool serves: every entry but the routers (they pick among the others), each `replicas` times (the
    copies named NAME-r2, NAME-r3, …, on ports of their own), and the embedding models the routers need that the
    project does not list itself."""
    pooled: list[ModelEntry] = []
    for entry in entries:
        if entry.is_router:
            continue
        pooled.append(entry)
        if entry.managed:
            pooled += [replica(entry, k) for k in range(2, int(entry.scaling.get("replicas") or 1) + 1)]
    return pooled + embedder_entries(project)


def replica(entry: ModelEntry, k: int) -> ModelEntry:
    """The k-th local copy of an entry: an instance of its own (its own record and log), on a port lf picks."""
    from dataclasses import replace

    config = {key: value for key, value in entry.provider_config.items() if key != "port"}
    return replace(entry, name=f"{entry.name}-r{k}", provider_config=config, aliases=[], replica_of=entry.name)


def _external_endpoints(entries: list[ModelEntry]) -> dict[str, Endpoint]:
    """Where each endpoint lf does not run is, as configured."""
    found = {}
    for entry in entries:
        if not entry.managed:
            target = target_of(entry)
            found[entry.name] = Endpoint(entry.name, target.base_url or "", entry.model, target.api_key)
    return found


def _rewriter(endpoint: Endpoint, asked: str) -> StreamMasker[bytes]:
    """What an answer goes through on its way back: the endpoint's secrets masked (its key, credentials in its
    URL, as lf chat masks them), and the model it names renamed to the name the client asked for (OpenAI's
    clients expect their own name back)."""
    secrets = [s.encode() for s in secrets_of(endpoint.api_key, endpoint.base_url)]
    renames: dict[bytes, bytes] = {}
    if asked != endpoint.model:
        for sep in (b":", b": "):
            renames[b'"model"' + sep + json.dumps(endpoint.model).encode()] = (
                b'"model"' + sep + json.dumps(asked).encode()
            )
    return StreamMasker(secrets, renames)
