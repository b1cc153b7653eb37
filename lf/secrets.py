"""Keeping secrets out of what lf prints: API keys, and credentials written into a URL (`https://user:key@host`).

A base module (it imports nothing): the status path uses it on every call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar, overload

T = TypeVar("T", str, bytes)

MASK = "***"
MIN_SECRET = 4  # shorter values are not searched for in text: masking every "ab" would garble it, and hide little


@overload
def redact_url(url: str) -> str: ...
@overload
def redact_url(url: None) -> None: ...
def redact_url(url: str | None) -> str | None:
    """`https://user:key@host/v1` → `https://***@host/v1`; any other URL as it is."""
    if not url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    if at < 0:
        return url
    return f"{scheme}://{MASK}@{rest[at + 1 :]}"


def url_secrets(url: str | None) -> list[str]:
    """What to look for in text that may quote a URL's credentials: `user:key` as written and decoded, the
    key alone, and the Basic authorization HTTP clients make of them (a server may quote that header back)."""
    if not url or redact_url(url) == url:
        return []
    import base64
    from urllib.parse import unquote

    rest = url.partition("://")[2]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo = rest[: rest.rfind("@", 0, end)]
    plain = unquote(userinfo)
    found = {
        userinfo,
        plain,
        userinfo.partition(":")[2],
        plain.partition(":")[2],
        base64.b64encode(plain.encode()).decode(),
    }
    return [s for s in found if s]


def secrets_of(api_key: str | None, *urls: str | None) -> tuple[str, ...]:
    """Every secret an endpoint's output could quote, longest first (so `user:key` is masked whole)."""
    found = {s for s in (api_key, *(x for url in urls for x in url_secrets(url))) if s and len(s) >= MIN_SECRET}
    return tuple(sorted(found, key=len, reverse=True))


def mask(text: str, secrets: tuple[str, ...] | list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_data(data, secrets: tuple[str, ...] | list[str]):
    """A JSON-like value with every secret masked, in keys and strings at any depth."""
    if not secrets:
        return data
    if isinstance(data, str):
        return mask(data, secrets)
    if isinstance(data, dict):
        return {mask_data(k, secrets): mask_data(v, secrets) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [mask_data(v, secrets) for v in data]
    return data


class StreamMasker(Generic[T]):
    """Rewrites text that arrives in pieces (a streamed answer), a pattern split across pieces too: every secret
    becomes `***`, and each of `replace`'s keys its value (the gateway gives back the model name the client asked
    for). Pieces are str, or bytes (then secrets and replacements are given as bytes too).

    `feed` returns what is safe to show now; the end of a piece that could begin a pattern waits for the next
    piece. `flush` returns what waited: as it is when too short to be telling, else masked.
    """

    def __init__(self, secrets: Sequence[T], replace: Mapping[T, T] | None = None, mask: T | None = None):
        self.secrets: tuple[T, ...] = tuple(secrets)
        self.replace: dict[T, T] = dict(replace or {})
        self.patterns: tuple[T, ...] = self.secrets + tuple(self.replace)
        if mask is None:
            binary = bool(self.patterns) and isinstance(self.patterns[0], bytes)
            mask = MASK.encode() if binary else MASK  # type: ignore[assignment]
        self.mask: T = mask  # type: ignore[assignment]
        self.held: T | None = None

    def feed(self, piece: T) -> T:
        if not self.patterns:
            return piece
        text = self._rewrite(piece if self.held is None else self.held + piece)
        keep = self._unfinished(text)
        self.held = text[len(text) - keep :] if keep else None
        return text[: len(text) - keep]

    def flush(self) -> T | None:
        """What was held back, or None when nothing was."""
        held, self.held = self.held, None
        if held is None:
            return None
        if any(secret.startswith(held) for secret in self.secrets) and len(held) >= MIN_SECRET:
            return self.mask
        return held

    def _rewrite(self, text: T) -> T:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, self.mask)
        for old, new in self.replace.items():
            if old in text:
                text = text.replace(old, new)
        return text

    def _unfinished(self, text: T) -> int:
        """The length of the longest end of `text` that is the start of a pattern."""
        longest = 0
        for pattern in self.patterns:
            for n in range(min(len(pattern) - 1, len(text)), longest, -1):
                if text.endswith(pattern[:n]):
                    longest = n
                    break
        return longest
