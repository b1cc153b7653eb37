"""The gateway's page for people, at / (for a browser; scripts asking for JSON get the index as before).

One HTML file (dashboard.html: plain JavaScript and CSS, no build step, nothing from a CDN) shows every
model with its state, port, memory, uptime, TTL countdown, latency p50/p95 with the probe history, the
latest answer's time to first token and tokens/s, the loaded-model budget, the request log (model,
status, duration: never a message) and a crashed instance's last log lines. It is live through one
server-sent event stream per open page, pushed when something changes and at most once a second
(never polled). Its buttons start, stop, restart and unload through the pool, which calls the same core
functions as the CLI (lf.core.actions).

Who may do what is lf.gateway.guard's, as for every route: viewing needs what /health needs (the gateway's
API key, when it has one: as a Bearer header or as the cookie the page sets when asked for it). An action
is a POST with a JSON body and a header of lf's own, so a page on another origin cannot send one without a
CORS preflight that is never granted; an Origin or Sec-Fetch-Site header saying another site, or a Host
that is not this gateway's (DNS rebinding), is refused too. From another machine an action needs the API
key, and is refused outright when the gateway has none.

A followed log costs a thread (lf.files.follow reads it like `tail -F`): at most MAX_LOG_FOLLOWERS at once,
more get 503.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections import deque
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from lf.gateway.events import Event, RequestFinished, SlotChanged, StateChanged, Stopped
from lf.gateway.guard import HTTPProblem
from lf.gateway.monitor import component
from lf.gateway.pool import SERVING

PAGE = Path(__file__).with_name("dashboard.html")
ACTIONS = ("start", "stop", "restart", "unload")
REQUESTS_KEPT = 50
PUSH_INTERVAL = 1.0  # seconds: at most this often a snapshot per open page, however busy the gateway
HEARTBEAT = 15.0  # seconds: an SSE comment when nothing changed, so proxies and the browser keep the stream
MAX_ACTION_BODY = 4096
MAX_LOG_FOLLOWERS = 8  # logs followed at once (a thread each)


class Dashboard:
    def __init__(self, gateway):  # lf.gateway.app.Gateway, which builds it
        self.gateway = gateway
        self.requests: deque[dict] = deque(maxlen=REQUESTS_KEPT)
        self.version = 0
        self._changed: asyncio.Event | None = None
        self._page = PAGE.read_text(encoding="utf-8")
        self.followers = 0

    # -- what changes ----------------------------------------------------------------------------------
    def changed(self) -> None:
        """Something the page shows changed (called on the event loop: pool hooks, probes, requests)."""
        self.version += 1
        if self._changed is not None:
            self._changed.set()

    def on_event(self, event: Event) -> None:
        """What the page shows moved: a model's state or bookkeeping, or a request ended (its log line)."""
        if isinstance(event, RequestFinished):
            self.requests.appendleft(
                {
                    "at": time.time(),
                    "model": event.model,
                    "path": event.path,
                    "status": event.status,
                    "duration_ms": round(event.seconds * 1000, 1),
                    "ttft_ms": round(event.ttft * 1000, 1) if event.ttft is not None else None,
                    "tokens_per_s": event.tokens_per_s,
                }
            )
            self.changed()
        elif isinstance(event, (StateChanged, SlotChanged, Stopped)):
            self.changed()

    # -- the page and its data ----------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        html = self._page.replace("{{nonce}}", nonce)
        return HTMLResponse(html, headers=_page_headers(nonce))

    def snapshot(self) -> dict:
        gateway = self.gateway
        document, _ = gateway.monitor.document()
        models = []
        for slot in gateway.pool.slots.values():
            item = component(slot)
            record = slot.endpoint.record if slot.endpoint is not None else None
            models.append(
                {
                    "name": slot.name,
                    "state": slot.state.value,
                    "managed": slot.managed,
                    "owned": slot.owned,
                    "status": item["status"],
                    "message": item["message"],
                    "provider": slot.entry.provider,
                    "model": item["details"]["models"][0] if item["details"]["models"] else slot.entry.model,
                    "url": item["details"]["host"],
                    "port": record.port if record else None,
                    "pid": record.pid if record else None,
                    "memory_bytes": slot.rss if record else None,
                    "memory_need_bytes": slot.need.ram if slot.need else None,
                    "started_at": record.started_at if record else None,
                    "ttl_s": slot.ttl,
                    "expires_at": slot.expires_at,
                    "in_flight": slot.in_flight,
                    "latency_p50_ms": item["latency_p50_ms"],
                    "latency_p95_ms": item["latency_p95_ms"],
                    "latencies_ms": [round(v, 2) for v in slot.latencies],
                    "last_request": item["last_request"],
                    "log_tail": item.get("log_tail", []),
                    "context_size": item.get("context_size"),
                    "loading": item.get("loading"),
                    "peer": slot.peer,
                }
            )
        return {
            "now": time.time(),
            "version": self.version,
            "gateway": {
                "status": document["status"],
                "summary": document["summary"],
                "started_at": gateway.started_at,
                "project": gateway.project.key if gateway.project else None,
                **document["gateway"],
            },
            "models": models,
            "routers": document.get("routers", []),
            "peers": document.get("peers", []),
            "cluster": gateway.cluster,
            "requests": list(self.requests),
        }

    async def events(self, request: Request) -> Response:
        if request.method == "HEAD":  # the page asking whether it may (401 when the key is missing)
            return Response(media_type="text/event-stream")
        if self._changed is None:
            self._changed = asyncio.Event()

        async def stream():
            sent = -1
            while True:
                if self.version != sent:
                    sent = self.version
                    yield b"data: " + json.dumps(self.snapshot(), separators=(",", ":")).encode() + b"\n\n"
                    with self.gateway.cuttable(at_drain=True) as stop:
                        await asyncio.sleep(PUSH_INTERVAL)  # what changes meanwhile goes out in one snapshot
                    if stop.cancelled_caught:
                        return  # the gateway stops: the page reconnects to the next one
                    continue
                self._changed.clear()
                changed = False
                with self.gateway.cuttable(at_drain=True) as stop:
                    try:
                        await asyncio.wait_for(self._changed.wait(), HEARTBEAT)
                        changed = True
                    except asyncio.TimeoutError:
                        pass
                if stop.cancelled_caught:
                    return
                if not changed:
                    yield b": still here\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"cache-control": "no-cache", "x-accel-buffering": "no"}
        )

    async def log(self, request: Request) -> Response:
        """An instance's log, followed (SSE: each event one chunk of text), across rotation like logs -f."""
        name = request.path_params["name"]
        slot = self.gateway.pool.slots.get(name)
        if slot is None or not slot.managed:
            return _problem(404, f"no model {name!r} that lf runs here", "not_found")
        from lf.files import follow

        path = self.gateway.store.log_path(name)
        if not path.exists():
            return _problem(404, f"{name} has no log yet (it has not been started)", "not_found")
        if self.followers >= MAX_LOG_FOLLOWERS:
            return _too_many_followers(name).response()
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=256)
        done = threading.Event()

        def put(chunk: bytes) -> None:
            if done.is_set():
                raise _Gone
            asyncio.run_coroutine_threadsafe(chunks.put(chunk), loop).result()

        def reader() -> None:
            try:
                follow(path, put, lines=100, should_stop=done.is_set)
            except (_Gone, OSError, RuntimeError):
                pass

        async def stream():
            # counted and started here, not before the answer: a page gone before its first byte costs nothing
            if self.followers >= MAX_LOG_FOLLOWERS:
                problem = _too_many_followers(name)
                yield b"data: " + json.dumps(problem.message).encode() + b"\n\n"
                return
            self.followers += 1
            try:
                threading.Thread(target=reader, name=f"log-{name}", daemon=True).start()
                while True:
                    chunk = None
                    with self.gateway.cuttable(at_drain=True) as stop:
                        try:
                            chunk = await asyncio.wait_for(chunks.get(), HEARTBEAT)
                        except asyncio.TimeoutError:
                            pass
                    if stop.cancelled_caught:
                        return  # the gateway stops
                    if chunk is None:
                        yield b": still here\n\n"
                        continue
                    yield b"data: " + json.dumps(chunk.decode("utf-8", "replace")).encode() + b"\n\n"
            finally:
                self.followers -= 1
                done.set()
                while not chunks.empty():  # let a reader blocked on a full queue see `done`
                    chunks.get_nowait()

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"cache-control": "no-cache", "x-accel-buffering": "no"}
        )

    # -- actions -------------------------------------------------------------------------------------------
    async def action(self, request: Request) -> Response:
        try:
            data = await self.gateway.bodies.json_object(request, limit=MAX_ACTION_BODY)
            data.release()
            what, name = data.get("action"), data.get("model")
            if what not in ACTIONS or not isinstance(name, str):
                raise ValueError("unknown action")
        except (HTTPProblem, ValueError):
            return _problem(400, f'send {{"action": one of {", ".join(ACTIONS)}, "model": a model name}}', "bad_action")
        pool = self.gateway.pool
        entry = self.gateway.names.lookup(name)
        slot = pool.slots[entry.name] if entry is not None else None
        if slot is None or not slot.managed:
            return _problem(
                409 if slot else 404,
                f"{name} is an external endpoint: lf does not start or stop it" if slot else f"no model {name!r}",
                "not_managed" if slot else "not_found",
            )
        await pool.refresh(slot)  # one lf runtime start made since the gateway looked
        if what == "unload" and not slot.owned and slot.state in SERVING:
            return _problem(
                409, f"{name} was started by lf runtime start, not by the gateway: stop it instead", "not_owned"
            )
        try:
            if what in ("stop", "unload", "restart"):
                await pool.stop_now(slot, "unloaded from the page" if what == "unload" else "stopped from the page")
            if what in ("start", "restart"):
                await pool.start_now(slot)
        except Exception as exc:  # a failed start: its message is what the page shows
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            return _problem(502, message.splitlines()[0], "action_failed")
        return JSONResponse({"model": slot.name, "action": what, "state": slot.state.value})


class _Gone(Exception):
    """The page that followed a log has gone."""


def _problem(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}},
        status_code=status,
    )


def _page_headers(nonce: str) -> dict:
    return {
        "content-security-policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "x-frame-options": "DENY",
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-store",
    }


def _too_many_followers(name: str) -> HTTPProblem:
    return HTTPProblem(
        503,
        f"{MAX_LOG_FOLLOWERS} logs are being followed already: close one (or use lf runtime logs -f {name})",
        "too_many_followers",
        "server_error",
        headers={"retry-after": "10"},
    )
