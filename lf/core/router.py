"""LlamaFarm's router models (`provider: router`): one model name that routes by meaning. A request for the router
goes to the route whose example utterances are most like its last user message (the cosine of their embeddings),
or to the router's default model when no route is similar enough (`similarity_threshold`).

The decision is made here, for `lf serve` (lf.gateway.routers, which embeds through its pool) and for `lf chat`
without a gateway alike; what embeds is an embedding model lf serves like any model (`embedder_model`: a packaged
model, a Hugging Face reference in the cache, a file, or another entry of the project). The utterances' embeddings
are computed once per configuration and kept on disk, keyed by the embedding model and the text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lf.config.project import ModelEntry, Project

Vector = tuple[float, ...]
Embed = Callable[[list[str]], list[list[float]]]  # texts → their embeddings, in order


@dataclass(frozen=True)
class Route:
    name: str
    target: str  # a model entry of the project
    utterances: tuple[str, ...]


@dataclass(frozen=True)
class RouterSpec:
    name: str
    embedder: str  # as written: a model reference, or an entry's name
    default: str
    threshold: float
    routes: tuple[Route, ...]

    @classmethod
    def of(cls, entry: ModelEntry) -> RouterSpec:
        router = entry.router or {}
        routes = tuple(Route(r["name"], r["target_model"], tuple(r["utterances"])) for r in router.get("routes") or ())
        return cls(
            entry.name, router["embedder_model"], router["default_model"], router["similarity_threshold"], routes
        )


def embedder_entry(spec: RouterSpec, project: Project | None) -> ModelEntry:
    """The entry whose instance embeds for the router: another entry of the project when `embedder_model` names one,
    else one of lf's own on the embedded llama.cpp engine (named after the router), serving the model named."""
    for entry in project.models if project else []:
        if entry.name == spec.embedder and not entry.is_router:
            return entry
    return ModelEntry(
        name=f"{spec.name}-embedder",
        provider="llamacpp",
        model=spec.embedder,
        description=f"embeds messages for the router {spec.name}",
        provider_config={"embeddings": True},
        managed=True,
    )


@dataclass(frozen=True)
class Decision:
    route: str | None  # None: no route was similar enough; the default took it
    target: str
    score: float  # the best similarity found


class RoutingTable:
    """The routes' utterance embeddings, ready to compare a message's with."""

    def __init__(self, spec: RouterSpec, vectors: dict[str, list[Vector]]):
        self.spec = spec
        self.vectors = vectors  # route name → its utterances' unit vectors

    @classmethod
    def build(cls, spec: RouterSpec, embed: Embed, cache: EmbeddingCache | None = None) -> RoutingTable:
        texts = sorted({u for route in spec.routes for u in route.utterances})
        known = cache.get(texts) if cache else {}
        missing = [t for t in texts if t not in known]
        if missing:
            fresh = dict(zip(missing, (unit(v) for v in embed(missing))))
            if cache:
                cache.put(fresh)
            known.update(fresh)
        return cls(spec, {route.name: [known[u] for u in route.utterances] for route in spec.routes})

    def decide(self, embedding: Sequence[float]) -> Decision:
        query = unit(embedding)
        best_route, best = None, -1.0
        for route in self.spec.routes:
            score = max((dot(query, v) for v in self.vectors[route.name]), default=-1.0)
            if score > best:
                best_route, best = route, score
        if best_route is not None and best >= self.spec.threshold:
            return Decision(best_route.name, best_route.target, best)
        return Decision(None, self.spec.default, best)


QUERY_CHARS = 4000  # a longer message is routed by its start: an embedding model reads a few hundred tokens


def fitted(text: str, failure: str) -> str | None:
    """`text` cut to fit an embedding model that refused it as too long (llama.cpp: "input (602 tokens) is too
    large to process. increase the physical batch size (current batch size: 512)"), or None for another failure."""
    import re

    found = re.search(r"\((\d+) tokens\) is too large.*?(\d+)\D*$", failure, re.S)
    if not found or len(text) < 2:
        return None
    tokens, limit = int(found[1]), int(found[2])
    return text[: max(1, min(len(text) - 1, int(len(text) * 0.9 * limit / max(tokens, 1))))]


def embed_query(embed: Embed, text: str) -> list[float]:
    """The embedding of a message to route, cut to what the embedding model takes."""
    from lf.errors import RequestError

    text = text[:QUERY_CHARS]
    for _ in range(4):
        try:
            return embed([text])[0]
        except RequestError as exc:
            shorter = fitted(text, exc.message)
            if shorter is None:
                raise
            text = shorter
    return embed([text[:256]])[0]


def unit(vector: Sequence[float]) -> Vector:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return tuple(x / norm for x in vector)


def dot(a: Vector, b: Vector) -> float:
    return sum(x * y for x, y in zip(a, b))


def last_user_text(payload) -> str | None:
    """What a request asks, as the router reads it: the last user message of a chat (its text parts), or a
    completion's prompt."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):  # OpenAI's content parts: the text ones
                    texts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
                    return " ".join(texts) if texts else None
        return None
    prompt = payload.get("prompt")
    return prompt if isinstance(prompt, str) else None


class EmbeddingCache:
    """Embeddings kept on disk, keyed by the embedding model (what it is, down to its file) and the text."""

    def __init__(self, identity: str):
        import zlib

        from lf.dirs import state_dir

        self.identity = identity
        self.path = state_dir() / "cache" / f"embeddings-{zlib.crc32(identity.encode()):08x}.json"

    def get(self, texts: list[str]) -> dict[str, Vector]:
        import json

        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("identity") != self.identity:
                return {}
            vectors = data.get("vectors") or {}
            return {t: tuple(vectors[t]) for t in texts if isinstance(vectors.get(t), list)}
        except (OSError, ValueError, TypeError):
            return {}

    def put(self, fresh: dict[str, Vector]) -> None:
        import json

        from lf.dirs import ensure_private_dir
        from lf.files import atomic_write

        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            vectors = data.get("vectors") if data.get("identity") == self.identity else None
        except (OSError, ValueError, TypeError, AttributeError):
            vectors = None
        merged = {**(vectors or {}), **{t: list(v) for t, v in fresh.items()}}
        try:
            ensure_private_dir(self.path.parent)
            atomic_write(self.path, json.dumps({"identity": self.identity, "vectors": merged}))
        except Exception:  # a cache that cannot be written costs time, nothing else
            pass


def identity_of(entry: ModelEntry, project: Project | None) -> str:
    """What makes an embedding model's vectors what they are: the model as resolved, down to its file."""
    import os

    from lf.errors import LfError
    from lf.models.catalog import resolve_model_path

    try:
        path = resolve_model_path(entry.model, project.folder if project else None)
        st = os.stat(path)
        return f"{entry.provider}|{path}|{st.st_size}|{st.st_mtime_ns}"
    except (LfError, OSError):
        return f"{entry.provider}|{entry.model}"


def embed_with(base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0) -> Embed:
    """An Embed that asks an OpenAI-compatible /embeddings endpoint (what `lf chat` uses without a gateway)."""

    def embed(texts: list[str]) -> list[list[float]]:
        import httpx

        from lf.errors import RequestError

        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            response = httpx.post(
                base_url.rstrip("/") + "/embeddings",
                json={"model": model, "input": texts},
                headers=headers,
                timeout=timeout,
                trust_env=False,
            )
            if response.status_code >= 400:
                raise RequestError(
                    f"the router's embedding model at {base_url} answered HTTP {response.status_code}: "
                    f"{response.text[:300]}"
                )
            data = response.json()["data"]
            return [item["embedding"] for item in sorted(data, key=lambda d: d.get("index", 0))]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise RequestError(f"the router's embedding model at {base_url} did not embed: {exc}") from None

    return embed
