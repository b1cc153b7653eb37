"""Peers: other `lf serve`s, or any OpenAI-compatible server (llama-swap, Ollama, vLLM, TGI, LocalAI, …), whose models
this gateway routes to as PEER/MODEL (and by the bare name when no other place has it). Each peer is probed like a
local model, by asking for its model list: what it lists becomes places of the pool; a peer that does not answer
has its models answered with 503 and the reason until a probe finds it again."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

from lf.config.gateway import Peer
from lf.gateway.pool import Pool
from lf.net import split_userinfo

PROBE_TIMEOUT = 2.0
MAX_MODELS = 1000  # a peer listing more is cut there (a page of them is what a person can route by name)


@dataclass
class PeerState:
    peer: Peer
    up: bool | None = None  # None: not probed yet
    message: str = "not probed yet"
    latency_ms: float | None = None
    models: list[str] = field(default_factory=list)
    checked_at: float | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.peer.name,
            "url": self.peer.shown_url,
            "up": self.up,
            "message": self.message,
            "latency_ms": self.latency_ms,
            "models": self.models,
            "checked_at": self.checked_at,
        }


class Peers:
    def __init__(self, peers: tuple[Peer, ...], pool: Pool, client: httpx.AsyncClient, on_probe=None):
        self.pool = pool
        self.client = client
        self.on_probe = on_probe  # (peer name, up) after each probe: the metrics
        self.states = {peer.name: PeerState(peer) for peer in peers}

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(state) for state in self.states.values()))

    async def _probe(self, state: PeerState) -> None:
        peer = state.peer
        url, basic = split_userinfo(peer.url + "/models")
        headers = {"authorization": f"Bearer {peer.api_key}"} if peer.api_key else {}
        if basic is not None:
            headers["authorization"] = basic
        started = time.perf_counter()
        models: list[str] | None = None
        try:
            response = await self.client.get(url, headers=headers, timeout=PROBE_TIMEOUT)
            if response.status_code != 200:
                reason = f"it answered HTTP {response.status_code} to GET /models"
            else:
                models = _model_ids(response.json())
                reason = "ok" if models is not None else "its /models answer is not a model list"
        except httpx.TimeoutException:
            reason = f"no answer within {PROBE_TIMEOUT:g}s"
        except httpx.HTTPError as exc:
            reason = _why(exc)
        except ValueError:
            reason = "its /models answer is not JSON"
        state.checked_at = time.time()
        state.up = models is not None
        state.message = reason if models is None else f"{len(models)} model{'s' if len(models) != 1 else ''}"
        state.latency_ms = round((time.perf_counter() - started) * 1000, 1) if models is not None else None
        if models is not None:
            state.models = models
        self.pool.set_peer(peer.name, peer.url, peer.api_key, models, None if models is not None else reason)
        if self.on_probe is not None:
            self.on_probe(peer.name, state.up)


def _model_ids(document) -> list[str] | None:
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        return None
    ids = [item["id"] for item in data[:MAX_MODELS] if isinstance(item, dict) and isinstance(item.get("id"), str)]
    return [i for i in ids if i and "/" not in i[:1]]


def _why(exc: httpx.HTTPError) -> str:
    cause: BaseException | None = exc
    while cause is not None:  # httpx says "All connection attempts failed"; the OS error under it says why
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
