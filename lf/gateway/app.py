"""The gateway's HTTP side: OpenAI routes that forward to the right model's instance, /v1/models,
/health, /metrics. Requests go upstream through one httpx.AsyncClient; answers come back byte for
byte as they arrive (SSE unbuffered), and a client that goes away closes its upstream request."""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
from contextlib import asynccontextmanager

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lf.config.project import ModelEntry, Project
from lf.core.events import Endpoint
from lf.core.targets import target_of
from lf.errors import LfError
from lf.gateway.dashboard import Dashboard, wants_page
from lf.gateway.metrics import Metrics
from lf.gateway.monitor import Monitor
from lf.gateway.pool import Pool, PoolHooks, QueueFull, QueueTimeout, Slot, SlotState, StartFailed
from lf.gateway.settings import GatewayConfig
from lf.gateway.upstream import UpstreamClient

KEEPALIVE_SECONDS = 2.0  # a streaming request waiting for its model gets an SSE comment this often
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
PASSED_HEADERS = ("content-type", "cache-control")


class HTTPProblem(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self, status: int, message: str, code: str, kind: str = "invalid_request_error", headers: dict | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.kind, self.headers = status, message, code, kind, headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(
            error_body(self.message, self.kind, self.code), status_code=self.status, headers=self.headers
        )


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def sse_error(message: str, code: str) -> bytes:
    return b"data: " + json.dumps(error_body(message, "upstream_error", code)).encode() + b"\n\n"


class KeyMask:
    """Replaces a secret in a byte stream, even when it arrives split across chunks."""

    def __init__(self, secret: str | None):
        self.secret = secret.encode() if secret else None
        self.tail = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self.secret:
            return chunk
        data = (self.tail + chunk).replace(self.secret, b"***")
        keep = len(self.secret) - 1
        cut = max(0, len(data) - keep)
        # hold back what could be the start of the secret, unless it cannot be
        while cut < len(data) and not self.secret.startswith(data[cut:]):
            cut += 1
        self.tail = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        tail, self.tail = self.tail, b""
        return tail


class Gateway:
    def __init__(
        self,
        project: Project | None,
        config: GatewayConfig,
        entries: list[ModelEntry],
        default_model: str | None,
        on_stop=None,
    ):
        self.project = project
        self.on_stop = on_stop  # called last on the way out (uvicorn re-raises SIGTERM once its shutdown is done)
        self.config = config
        self.entries = entries
        self.default_model = default_model
        self.metrics = Metrics()
        self.pool = Pool(project, config, entries, _Hooks(self))
        self.routes = _routes(entries)
        self.external = {e.name: target_of(e) for e in entries if not e.managed}
        self.client: httpx.AsyncClient | None = None
        self.upstream = UpstreamClient()
        self.monitor: Monitor | None = None
        self.started_at = time.time()
        self.dashboard = Dashboard(self)

    # -- the application ---------------------------------------------------------------------------
    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(_app):
            self.client = httpx.AsyncClient(
                timeout=httpx.Timeout(None, connect=5.0),
                # no kept-alive connections: llama.cpp's server may drop a request sent on one (see upstream.py)
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
                trust_env=False,
            )
            self.monitor = Monitor(
                self.pool,
                self.entries,
                self.config.probe_interval,
                self.metrics,
                self.client,
                on_probed=self.dashboard.changed,
            )
            await self.pool.adopt()
            monitor = asyncio.get_running_loop().create_task(self.monitor.run())
            try:
                yield
            finally:
                monitor.cancel()
                try:
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
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/", self.index, methods=["GET"]),
            Route("/ui/events", self.dashboard.events, methods=["GET"]),
            Route("/ui/action", self.dashboard.action, methods=["POST"]),
            Route("/ui/log/{name}", self.dashboard.log, methods=["GET"]),
        ]
        return Starlette(
            routes=routes, lifespan=lifespan, exception_handlers={404: self.not_found, 405: self.not_allowed}
        )

    # -- small endpoints ---------------------------------------------------------------------------------
    async def liveness(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def index(self, request: Request) -> Response:
        if wants_page(request):  # a browser: the dashboard
            return await self.dashboard.page(request)
        return JSONResponse(
            {
                "name": "lf serve",
                "models": list(self.routes_by_name()),
                "endpoints": [
                    "/v1/chat/completions",
                    "/v1/completions",
                    "/v1/embeddings",
                    "/v1/models",
                    "/health",
                    "/metrics",
                ],
            }
        )

    async def health(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        document, status = self.monitor.document()
        return JSONResponse(document, status_code=status)

    async def prometheus(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        self.metrics.queue.set(self.pool.waiting)
        self.metrics.loaded.set(self.pool.loaded_count())
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def list_models(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        return JSONResponse({"object": "list", "data": [self._model_object(e) for e in self.entries]})

    async def get_model(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        entry = self.routes.get(request.path_params["model"])
        if entry is None:
            return self._unknown_model(request.path_params["model"]).response()
        return JSONResponse(self._model_object(entry))

    def _model_object(self, entry: ModelEntry) -> dict:
        slot = self.pool.slots.get(entry.name)
        return {
            "id": entry.name,
            "object": "model",
            "created": int(self.started_at),
            "owned_by": entry.provider,
            "lf": {
                "state": slot.state.value if slot else "external",
                "model": entry.model,
                "aliases": entry.aliases,
                "default": entry.name == self.default_model,
            },
        }

    def routes_by_name(self) -> list[str]:
        return [e.name for e in self.entries]

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

    # -- auth ----------------------------------------------------------------------------------------------
    def _denied(self, request: Request) -> Response | None:
        key = self.config.api_key
        if not key:
            return None
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode()):
            return None
        return JSONResponse(
            error_body(
                "missing or wrong API key: send Authorization: Bearer <the gateway's key>",
                "invalid_request_error",
                "invalid_api_key",
            ),
            status_code=401,
            headers={"www-authenticate": "Bearer"},
        )

    # -- the OpenAI routes -----------------------------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        return await self.forward(request, "/chat/completions")

    async def completions(self, request: Request) -> Response:
        return await self.forward(request, "/completions")

    async def embeddings(self, request: Request) -> Response:
        return await self.forward(request, "/embeddings")

    async def forward(self, request: Request, path: str) -> Response:
        arrived = time.monotonic()
        if (denied := self._denied(request)) is not None:
            return denied
        try:
            payload = await self._payload(request)
            name = payload.get("model") or self.default_model
            entry = self.routes.get(name) if isinstance(name, str) else None
            if entry is None:
                raise self._unknown_model(name)
        except HTTPProblem as problem:
            self._log(request, "-", problem.status, arrived)
            return problem.response()
        stream = payload.get("stream") is True
        slot = self.pool.slots.get(entry.name)
        exchange = _Exchange(self, request, entry, slot, payload, path, stream, arrived)
        if slot is not None and slot.state != SlotState.RUNNING and stream:
            return await exchange.cold_stream()
        return await exchange.answer()

    async def send(self, url: str, headers: dict, body: bytes):
        """POST upstream, the answer streamed: plain HTTP (lf's own runtimes) through the lean client,
        anything else (https, proxies) through httpx."""
        if url.startswith("http://"):
            return await self.upstream.send("POST", url, headers, body)
        return await self.client.send(
            self.client.build_request("POST", url, content=body, headers=headers), stream=True
        )

    async def _payload(self, request: Request) -> dict:
        limit = self.config.max_body
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise HTTPProblem(413, f"the request body is larger than {limit} bytes", "request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPProblem(413, f"the request body is larger than {limit} bytes", "request_too_large")
        try:
            payload = json.loads(body)
        except ValueError:
            raise HTTPProblem(400, "the request body is not JSON", "invalid_json") from None
        if not isinstance(payload, dict):
            raise HTTPProblem(400, "the request body must be a JSON object", "invalid_json")
        return payload

    def _unknown_model(self, name) -> HTTPProblem:
        return HTTPProblem(
            404,
            f"The model {name!r} does not exist here. Models: {', '.join(self.routes_by_name()) or 'none'}",
            "model_not_found",
        )

    def _log(self, request: Request, model: str, status: int, arrived: float, answer: dict | None = None) -> None:
        # what was asked of which model and how it went; never a message's content, never a key
        seconds = time.monotonic() - arrived
        print(
            f"lf-serve: {request.method} {request.url.path} model={model} {status} {seconds:.3f}s",
            file=sys.stderr,
            flush=True,
        )
        self.dashboard.request_done(model, request.url.path, status, seconds, answer)


class _Exchange:
    """One request forwarded upstream and its answer streamed back."""

    def __init__(
        self,
        gateway: Gateway,
        request: Request,
        entry: ModelEntry,
        slot: Slot | None,
        payload: dict,
        path: str,
        stream: bool,
        arrived: float,
    ):
        self.gateway, self.request, self.entry, self.slot = gateway, request, entry, slot
        self.payload, self.path, self.stream, self.arrived = payload, path, stream, arrived
        self.acquired = False
        self.first_token: float | None = None
        self.tokens = 0
        self.status = 0
        self.mask = KeyMask(None)

    # -- getting an endpoint -------------------------------------------------------------------------------
    async def _endpoint(self) -> Endpoint:
        if self.slot is None:
            target = self.gateway.external[self.entry.name]
            return Endpoint(self.entry.name, target.base_url, self.entry.model, target.api_key, managed=False)
        endpoint = await self.gateway.pool.acquire(self.slot)
        self.acquired = True
        return endpoint

    def _release(self) -> None:
        if self.acquired:
            self.acquired = False
            self.gateway.pool.release(self.slot)

    async def _open(self):
        """Send the request upstream; once more if a managed instance turns out to have died (it is started again)."""
        for attempt in (1, 2):
            endpoint = await self._endpoint()
            self.mask = KeyMask(endpoint.api_key)
            # the file's request defaults (temperature, …) under what the request itself says
            body = json.dumps({**self.entry.request_defaults, **self.payload, "model": endpoint.model}).encode()
            headers = {"content-type": "application/json", "accept": self.request.headers.get("accept", "*/*")}
            if endpoint.api_key:
                headers["authorization"] = f"Bearer {endpoint.api_key}"
            try:
                return await self.gateway.send(endpoint.base_url.rstrip("/") + self.path, headers, body)
            except httpx.ConnectError as exc:
                self._release()
                record = endpoint.record
                if attempt == 1 and record is not None and not record.process_alive():
                    self.gateway.pool.crashed(self.slot, f"its process (pid {record.pid}) exited")
                    continue
                raise HTTPProblem(
                    502,
                    f"cannot reach {self.entry.name} at {endpoint.base_url}: {exc}",
                    "upstream_unreachable",
                    "api_error",
                ) from None
            except httpx.HTTPError as exc:
                self._release()
                raise HTTPProblem(
                    502, f"{self.entry.name} did not answer: {exc}", "upstream_error", "api_error"
                ) from None
        raise AssertionError("unreachable")

    def _problem(self, exc: Exception) -> HTTPProblem:
        if isinstance(exc, HTTPProblem):
            return exc
        if isinstance(exc, (QueueFull, QueueTimeout)):
            return HTTPProblem(503, exc.message, "overloaded", "server_error", headers={"retry-after": "5"})
        if isinstance(exc, StartFailed):
            return HTTPProblem(
                503, exc.message + (f"\n{exc.hint}" if exc.hint else ""), "model_start_failed", "server_error"
            )
        if isinstance(exc, LfError):
            return HTTPProblem(503, exc.message, "unavailable", "server_error")
        raise exc

    # -- answering -------------------------------------------------------------------------------------------
    async def answer(self) -> Response:
        try:
            upstream = await self._open()
        except (HTTPProblem, LfError) as exc:
            problem = self._problem(exc)
            self._finish(problem.status)
            return problem.response()
        except BaseException:
            self._release()  # never leave the model counted busy (it would never go idle)
            raise
        self.status = upstream.status_code
        headers = {k: v for k, v in upstream.headers.items() if k in PASSED_HEADERS}
        if "text/event-stream" in headers.get("content-type", ""):
            headers.update(SSE_HEADERS)
        return StreamingResponse(self._relay(upstream), status_code=upstream.status_code, headers=headers)

    async def cold_stream(self) -> Response:
        """A streaming request for a model that is not running: answer at once, with SSE comments while
        the model starts (clients do not time out), then the model's own stream."""
        acquire = asyncio.get_running_loop().create_task(self._open())
        await asyncio.wait([acquire], timeout=0.05)  # a fast failure (queue full, crashed start) gets a proper status
        if acquire.done() and acquire.exception() is not None:
            problem = self._problem(acquire.exception())
            self._finish(problem.status)
            return problem.response()
        return StreamingResponse(
            self._wait_then_relay(acquire),
            status_code=200,
            headers={"content-type": "text/event-stream", **SSE_HEADERS},
        )

    async def _wait_then_relay(self, opening: asyncio.Task):
        waited = time.monotonic()
        try:
            while not opening.done():
                yield f": loading {self.entry.name} ({time.monotonic() - waited:.0f}s)\n\n".encode()
                await asyncio.wait([opening], timeout=KEEPALIVE_SECONDS)
            try:
                upstream = opening.result()
            except (HTTPProblem, LfError) as exc:
                problem = self._problem(exc)
                self.status = problem.status
                yield sse_error(problem.message, problem.code)
                return
            self.status = upstream.status_code
            if upstream.status_code >= 400:  # the 200 is sent already: the refusal becomes an error event
                text = (self.mask.feed(await upstream.aread()) + self.mask.flush()).decode("utf-8", "replace")
                yield sse_error(
                    f"{self.entry.name} answered HTTP {upstream.status_code}: {text[:2000]}", "upstream_error"
                )
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
            self._finish(self.status or 499)

    async def _relay(self, upstream: httpx.Response, finish: bool = True):
        try:
            if upstream.status_code >= 400:
                # an error answer is read whole, so a key it quotes is masked, and ends as a clean JSON body
                body = await upstream.aread()
                yield self.mask.feed(body) + self.mask.flush()
                return
            async for chunk in upstream.aiter_raw():
                self._observe(chunk)
                out = self.mask.feed(chunk)
                if out:
                    yield out
            rest = self.mask.flush()
            if rest:
                yield rest
        except httpx.HTTPError as exc:
            self.status = 502
            if self.stream:  # the client learns the answer broke, instead of waiting or taking it as complete
                yield sse_error(
                    f"{self.entry.name} stopped answering mid-stream ({type(exc).__name__})", "upstream_broke"
                )
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
            if finish:
                self._finish(self.status)

    def _observe(self, chunk: bytes) -> None:
        """Count generated pieces as they pass (a chat stream's content, a completion stream's text), without
        parsing the events; a whole answer's count comes from its usage."""
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
            except (ValueError, AttributeError, TypeError):
                pass

    def _finish(self, status: int) -> None:
        self._release()
        gateway, name = self.gateway, self.entry.name
        ended = time.monotonic()
        gateway.metrics.requests.labels(name, self.path.strip("/"), str(status)).inc()
        gateway.metrics.duration.labels(name).observe(ended - self.arrived)
        if self.tokens:
            gateway.metrics.tokens.labels(name).inc(self.tokens)
        ttft = self.first_token - self.arrived if self.first_token is not None else None
        if ttft is not None:
            gateway.metrics.ttft.labels(name).observe(ttft)
        component = gateway.monitor.components.get(name) if gateway.monitor else None
        answer = None
        if component is not None and status < 400 and self.tokens:
            # tokens/s of the generation itself: from the first token when streamed, else over the whole answer
            span = ended - (self.first_token if self.first_token is not None else self.arrived)
            generated = self.tokens - 1 if self.first_token is not None else self.tokens
            component.last_request = {
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "status": status,
                "stream": self.stream,
                "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
                "duration_ms": round((ended - self.arrived) * 1000, 1),
                "tokens": self.tokens,
                "tokens_per_s": round(generated / span, 1) if span > 0 and generated > 0 else None,
            }
            answer = component.last_request
        gateway._log(self.request, name, status, self.arrived, answer)


class _Hooks(PoolHooks):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def changed(self, slot: Slot) -> None:
        self.gateway.dashboard.changed()
        metrics = self.gateway.metrics
        metrics.in_flight.labels(slot.name).set(slot.in_flight)
        metrics.loaded.set(self.gateway.pool.loaded_count())
        metrics.queue.set(self.gateway.pool.waiting)

    def started(self, slot: Slot, seconds: float) -> None:
        self.gateway.metrics.starts.labels(slot.name).inc()
        self.gateway.metrics.start_seconds.labels(slot.name).observe(seconds)
        print(f"lf-serve: started {slot.name} in {seconds:.1f}s", file=sys.stderr, flush=True)

    def start_failed(self, slot: Slot) -> None:
        self.gateway.metrics.start_failures.labels(slot.name).inc()
        print(
            f"lf-serve: could not start {slot.name}: {(slot.last_error or '').splitlines()[0] if slot.last_error else ''}",
            file=sys.stderr,
            flush=True,
        )

    def stopped(self, slot: Slot, reason: str) -> None:
        self.gateway.metrics.stops.labels(slot.name, reason).inc()
        if reason == "evicted":
            self.gateway.metrics.evictions.labels(slot.name).inc()
        print(f"lf-serve: stopped {slot.name} ({reason})", file=sys.stderr, flush=True)


def _routes(entries: list[ModelEntry]) -> dict[str, ModelEntry]:
    """Every name a request may use for a model: entry names first, then aliases, then model names."""
    routes: dict[str, ModelEntry] = {}
    for entry in entries:
        routes.setdefault(entry.name, entry)
    for entry in entries:
        for alias in entry.aliases:
            routes.setdefault(alias, entry)
    for entry in entries:
        routes.setdefault(entry.model, entry)
    return routes
