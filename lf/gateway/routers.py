"""Router models in `lf serve`: a request for a router's name is embedded (its last user message) by the router's
embedding model, which the pool serves like any model (started on demand, unloaded when idle), compared with the
routes' utterances (lf.core.router), and forwarded to the winning route's target, or the router's default. The
utterances' embeddings are computed on the router's first request after each configuration load, and kept on
disk by model and text. Counts per route and the embedding time go to /health, /metrics and the page."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import anyio

from lf.config.project import ModelEntry, Project
from lf.core.router import (
    QUERY_CHARS,
    Decision,
    EmbeddingCache,
    RouterSpec,
    RoutingTable,
    embedder_entry,
    fitted,
    identity_of,
)
from lf.errors import LfError, RequestError
from lf.gateway.pool import Pool

TIMES_KEPT = 100  # embedding times kept per router, for the percentiles


@dataclass
class RouterState:
    spec: RouterSpec
    embedder: ModelEntry
    identity: str
    table: RoutingTable | None = None
    counts: Counter = field(default_factory=Counter)  # route name (or "default") → requests
    embed_ms: deque = field(default_factory=lambda: deque(maxlen=TIMES_KEPT))
    building: asyncio.Lock = field(default_factory=asyncio.Lock)

    def to_dict(self) -> dict:
        times = sorted(self.embed_ms)
        return {
            "name": self.spec.name,
            "embedder": self.embedder.name,
            "embedder_model": self.spec.embedder,
            "default_model": self.spec.default,
            "similarity_threshold": self.spec.threshold,
            "routes": [
                {"name": r.name, "target_model": r.target, "requests": self.counts[r.name]} for r in self.spec.routes
            ],
            "default_requests": self.counts["default"],
            "embedding_ms_p50": _percentile(times, 0.5),
            "embedding_ms_p95": _percentile(times, 0.95),
        }


def router_entries(project: Project | None) -> list[ModelEntry]:
    return [e for e in project.models if e.is_router] if project else []


def embedder_entries(project: Project | None) -> list[ModelEntry]:
    """The embedding models the routers need that are not entries of the project: lf serves them as its own."""
    names = {e.name for e in project.models} if project else set()
    found = [embedder_entry(RouterSpec.of(e), project) for e in router_entries(project)]
    return [e for e in found if e.name not in names]


class Routers:
    def __init__(self, project: Project | None, pool: Pool, post):
        self.pool = pool
        self.post = post  # async (endpoint, path, body: dict) -> dict: the gateway's way upstream
        self.states: dict[str, RouterState] = {}
        self.load(project)

    def load(self, project: Project | None) -> None:
        """The routers of a (re)loaded configuration: their tables are built again on their next request."""
        self.states = {}
        for entry in router_entries(project):
            spec = RouterSpec.of(entry)
            embedder = embedder_entry(spec, project)
            self.states[entry.name] = RouterState(spec, embedder, identity_of(embedder, project))

    async def route(self, name: str, text: str) -> tuple[Decision, float]:
        """Where a request for the router `name` goes, and the seconds its embedding took."""
        state = self.states[name]
        table = await self._table(state)
        started = time.perf_counter()
        vector = await self._embed_query(state, text)
        seconds = time.perf_counter() - started
        state.embed_ms.append(round(seconds * 1000, 2))
        decision = table.decide(vector)
        state.counts[decision.route or "default"] += 1
        return decision, seconds

    async def _table(self, state: RouterState) -> RoutingTable:
        async with state.building:  # one build for the requests that come while it is made
            if state.table is None:
                cache = EmbeddingCache(state.identity)
                texts = sorted({u for route in state.spec.routes for u in route.utterances})
                known = await anyio.to_thread.run_sync(cache.get, texts)
                missing = [t for t in texts if t not in known]
                fresh = dict(zip(missing, await self._embed(state, missing))) if missing else {}

                def build() -> RoutingTable:
                    return RoutingTable.build(state.spec, lambda todo: [list(fresh[t]) for t in todo], cache)

                state.table = await anyio.to_thread.run_sync(build)
            return state.table

    async def _embed_query(self, state: RouterState, text: str) -> list[float]:
        """The message's embedding, cut to what the embedding model takes (as lf.core.router.embed_query does)."""
        text = text[:QUERY_CHARS]
        for _ in range(4):
            try:
                return (await self._embed(state, [text]))[0]
            except RequestError as exc:
                shorter = fitted(text, exc.message)
                if shorter is None:
                    raise
                text = shorter
        return (await self._embed(state, [text[:256]]))[0]

    async def _embed(self, state: RouterState, texts: list[str]) -> list[list[float]]:
        slot = self.pool.slots.get(state.embedder.name)
        if slot is None:
            raise LfError(f"the router {state.spec.name}'s embedding model {state.embedder.name} is not served")
        endpoint = await self.pool.acquire(slot)
        try:
            answer = await self.post(endpoint, "/embeddings", {"model": endpoint.model, "input": texts})
            data = sorted(answer["data"], key=lambda d: d.get("index", 0))
            vectors = [item["embedding"] for item in data]
            if len(vectors) != len(texts):
                raise ValueError(f"{len(vectors)} embeddings for {len(texts)} texts")
            return vectors
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise RequestError(f"the router {state.spec.name}'s embedding model did not embed: {exc}") from None
        finally:
            self.pool.release(slot)

    def document(self) -> list[dict]:
        return [state.to_dict() for state in self.states.values()]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]
