"""Addresses and keys, decided once: which hosts are this machine, how lf reaches a server bound to a wildcard,
what a URL's credentials become on the wire, and whether a request carries a key.

A base module (only the standard library, imported lazily where it costs): the status path uses it.
"""

from __future__ import annotations

WILDCARDS = ("0.0.0.0", "::", "")
LOOPBACK_NAMES = ("localhost",)


def is_wildcard(host: str) -> bool:
    """Every address of the machine: reachable from other machines."""
    return host in WILDCARDS


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or localhost: only this machine reaches it."""
    if not host:
        return False
    if host in LOOPBACK_NAMES:
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def connect_host(host: str) -> str:
    """The address lf connects to for a server bound to `host`: a wildcard bind is reached over loopback of the
    same family (0.0.0.0 → 127.0.0.1, :: → ::1)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def local_url(host: str, port: int, path: str = "") -> str:
    """The URL lf uses to reach a server bound to host:port."""
    host = connect_host(host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def split_userinfo(url: str) -> tuple[str, str | None]:
    """`http://user:key@host/v1` → (`http://host/v1`, the Basic authorization it stands for), as HTTP clients
    (httpx, curl, browsers) send it; any other URL as it is, with None."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, None
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    if at < 0:
        return url, None
    import base64
    from urllib.parse import unquote

    user, _, password = rest[:at].partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return f"{scheme}://{rest[at + 1 :]}", f"Basic {token}"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header, None for any other."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def key_matches(given: str | None, key: str) -> bool:
    """Does `given` equal the key? In constant time, so a timing cannot tell how much of a guess was right."""
    import hmac

    return given is not None and hmac.compare_digest(given.encode(), key.encode())
