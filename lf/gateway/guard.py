"""Who may ask the gateway what: every request's checks in one place, before any route runs.

A browser is the client to fear. A page on another site can send a form, a `no-cors` fetch or a preflighted
fetch to 127.0.0.1 (and, by DNS rebinding, read the answers under a name of its own), so for every route but
the liveness probe the gateway refuses:

- a Host that is not this gateway's (403): only localhost, an IP address, the address it listens on, this
  machine's name and `allowed_hosts` are; a rebound name is none of them;
- a request that says it comes from another origin or site (403): an `Origin` other than the gateway's own,
  or `Sec-Fetch-Site` other than same-origin/none (a link that opens the page is fine: it is only HTML);
- a POST whose body is not declared JSON (415): what a form or a simple fetch can send without a preflight;
- without the gateway's API key, when it has one (401): as a Bearer header, or for the page's own routes
  (/ui/*) as the cookie the page sets.

A web app the user trusts may be let in: an origin in `allowed_origins` may call the OpenAI routes (/v1/*)
from its pages, as Ollama's OLLAMA_ORIGINS allows. Its preflight is answered, its answers carry
Access-Control-Allow-Origin; everything else still holds (Host, JSON bodies, the key), and the page's
routes (/, /ui/*) stay same-origin whatever the list says.

The page's actions (/ui/action) also need lf's own header (X-LF-Action: 1), which no page elsewhere can add
without a preflight that is never granted, and from another machine the key, refused when there is none.
Scripts (curl, the openai client, `llm`) send none of the browser's headers and pass as before.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from lf.config.gateway import GatewayConfig
from lf.core.served import ACTION_HEADER
from lf.net import bearer_token, is_loopback, is_wildcard, key_matches

COOKIE = "lf_gateway_key"
LIVENESS_PATH = "/health/liveness"


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


@dataclass(frozen=True)
class Policy:
    """What a route asks of a request."""

    checked: bool = True  # Host and origin: anything but the liveness probe
    key: bool = True  # the gateway's key, when it has one
    cookie: bool = False  # the key may come as the page's cookie
    navigation: bool = False  # a browser may open it from a link on another site (the page: HTML only)
    action: bool = False  # a page action: lf's header, and the key from another machine


LIVENESS = Policy(checked=False, key=False)
PAGE = Policy(key=False, navigation=True)
API = Policy()
VIEW = Policy(cookie=True)
ACTION = Policy(cookie=True, action=True)


def wants_page(request: Request) -> bool:
    """A browser asking for / (HTML in Accept), not a script asking for the JSON index."""
    return "text/html" in request.headers.get("accept", "")


def policy_of(request: Request) -> Policy:
    path = request.scope["path"]  # not request.url: building it costs more than every check here
    if path == LIVENESS_PATH:
        return LIVENESS
    if path == "/":
        return PAGE if request.method in ("GET", "HEAD") and wants_page(request) else API
    if path == "/ui/action":
        return ACTION
    if path.startswith("/ui/"):
        return VIEW
    return API


def is_json(content_type: str | None) -> bool:
    """application/json, with parameters (charset) or not."""
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


class Guard:
    """The checks, and the ASGI middleware that applies them before the routes (`wrap`)."""

    def __init__(self, config: GatewayConfig, on_refused: Callable[[Request, int, float], None] | None = None):
        self.config = config
        self.on_refused = on_refused
        self.draining = False  # set when the gateway stops: new requests are refused (503)
        names = {"localhost", *(h.lower().rstrip(".") for h in config.allowed_hosts)}
        if not is_wildcard(config.host):
            names.add(config.host.lower())
        try:
            names.add(socket.gethostname().lower())  # how other machines may name it (no DNS lookup)
        except OSError:
            pass
        self.names = frozenset(names)
        self._hosts: dict[str, bool] = {}  # Host header → is it this gateway's
        self.origins = frozenset(o.lower() for o in config.allowed_origins if not o.endswith("*"))
        self.origin_prefixes = tuple(o[:-1].lower() for o in config.allowed_origins if o.endswith("*"))

    # -- the checks ------------------------------------------------------------------------------------
    def refusal(self, request: Request, policy: Policy | None = None) -> HTTPProblem | None:
        """Why `request` may not go on, or None when it may."""
        policy = policy or policy_of(request)
        if not policy.checked:
            return None
        if self.draining:
            return HTTPProblem(
                503, "the gateway is shutting down", "shutting_down", "server_error", {"connection": "close"}
            )
        headers = _headers(request)
        host = headers.get("host")
        if host is not None and not self.host_ok(host):
            return HTTPProblem(
                403,
                f"refused: this gateway is not {_host_name(host)!r} (open it by its address, e.g. "
                f"http://127.0.0.1:{self.config.port}/, or add the name to allowed_hosts)",
                "wrong_host",
            )
        origin = headers.get("origin")
        let_in = origin is not None and _openai_route(request, policy) and self.origin_allowed(origin)
        if (
            origin is not None
            and not let_in
            and origin.lower() != f"{request.scope.get('scheme', 'http')}://{host or ''}".lower()
        ):
            return HTTPProblem(
                403,
                f"refused: a request from another origin ({origin})"
                + (
                    f"; a web app of yours: lf serve --allowed-origin {origin}"
                    if _openai_route(request, policy)
                    else ""
                ),
                "cross_origin",
            )
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none") and not let_in:
            opened = policy.navigation and headers.get("sec-fetch-mode") == "navigate"
            if not opened:
                return HTTPProblem(403, f"refused: a request from another site ({site})", "cross_origin")
        if policy.action:
            if headers.get(ACTION_HEADER) != "1" or not is_json(headers.get("content-type")):
                return HTTPProblem(
                    403, f"an action is a JSON POST with the header {ACTION_HEADER}: 1 (as the page sends)", "forbidden"
                )
        elif request.method == "POST" and not is_json(headers.get("content-type")):
            return HTTPProblem(
                415,
                "send the body as JSON with Content-Type: application/json (curl: -H 'Content-Type: application/json')",
                "unsupported_media_type",
            )
        if policy.key and self.config.api_key and not self.key_given(request, policy.cookie, headers):
            if policy.cookie:
                message = "this gateway has an API key: give it (the page asks for it)"
            else:
                message = "missing or wrong API key: send Authorization: Bearer <the gateway's key>"
            return HTTPProblem(401, message, "invalid_api_key", headers={"www-authenticate": "Bearer"})
        remote = not is_loopback(request.client.host if request.client else None)
        if policy.action and not self.config.api_key and remote:
            return HTTPProblem(
                403,
                "actions from another machine need the gateway's API key, and this gateway has none "
                "(set LF_GATEWAY_API_KEY)",
                "forbidden",
            )
        return None

    def origin_allowed(self, origin: str) -> bool:
        """Is `origin` one of `allowed_origins` (or matched by one ending in *)?"""
        origin = origin.lower()
        return origin in self.origins or any(origin.startswith(prefix) for prefix in self.origin_prefixes)

    def cors(self, request: Request) -> str | None:
        """The origin to answer with Access-Control-Allow-Origin: an allowed web app's, on an OpenAI route."""
        if not (self.origins or self.origin_prefixes) or not _openai_route(request, policy_of(request)):
            return None
        origin = request.headers.get("origin")
        return origin if origin is not None and self.origin_allowed(origin) else None

    def host_ok(self, host: str) -> bool:
        """Is `host` (a Host header) a name of this gateway? An IP address always is: DNS rebinding needs a name."""
        known = self._hosts.get(host)
        if known is None:
            name = _host_name(host).lower().rstrip(".")
            known = name in self.names or _is_ip(name)
            if len(self._hosts) < 256:  # the few Host values clients send, not every one an attacker may make up
                self._hosts[host] = known
        return known

    def key_given(self, request: Request, cookie: bool = False, headers: dict[str, str] | None = None) -> bool:
        """Does the request carry the gateway's key: as a Bearer header, or (`cookie`) as the page's cookie?"""
        key = self.config.api_key
        if not key:
            return False
        authorization = (headers if headers is not None else _headers(request)).get("authorization")
        if authorization or not cookie:
            return key_matches(bearer_token(authorization), key)
        return key_matches(unquote(request.cookies.get(COOKIE, "")), key)  # the page URL-encodes it

    # -- as middleware ---------------------------------------------------------------------------------
    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            arrived = time.monotonic()
            request = Request(scope)
            allowed = self.cors(request)
            if allowed is not None:  # an allowed web app: its preflight answered (no key: browsers send none)
                if request.method == "OPTIONS" and not self.draining and self.host_ok(request.headers.get("host", "")):
                    await Response(status_code=204, headers=_preflight(request, allowed))(scope, receive, send)
                    return
                send = _with_cors(send, allowed)  # and every answer readable by it, refusals included
            problem = self.refusal(request)
            if problem is None:
                await app(scope, receive, send)
                return
            await problem.response()(scope, receive, send)
            if self.on_refused is not None:
                self.on_refused(request, problem.status, arrived)

        return guarded


def _openai_route(request: Request, policy: Policy) -> bool:
    """One of the OpenAI routes (/v1/*): all an allowed web app may call."""
    return policy is API and request.scope["path"].startswith("/v1/")


CORS_EXPOSED = "retry-after, x-lf-route, x-lf-routed-to"


def _preflight(request: Request, origin: str) -> dict[str, str]:
    """The answer to an allowed web app's preflight: the methods the OpenAI routes take, the headers it asked for
    (the openai JS client sends its own x-stainless-* ones), kept for ten minutes."""
    return {
        "access-control-allow-origin": origin,
        "access-control-allow-methods": "GET, POST",
        "access-control-allow-headers": request.headers.get("access-control-request-headers", "content-type"),
        "access-control-max-age": "600",
        "vary": "Origin",
    }


def _with_cors(send: Send, origin: str) -> Send:
    """`send`, with an allowed web app's CORS headers added to the answer."""
    extra = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", CORS_EXPOSED.encode()),
        (b"vary", b"Origin"),
    ]

    async def sending(message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _headers(request: Request) -> dict[str, str]:
    """The request's headers as a dict (names are lower case in ASGI; of a repeated one, the last)."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in request.scope["headers"]}


def _host_name(host: str) -> str:
    """The name in a Host header: without its port, an IPv6 address without its brackets."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
