"""The router's decision (lf.core.router) with a fake embedding: which route wins, the threshold, the cache on
disk, what is read from a request, and a message too long for the embedding model."""

from __future__ import annotations

import pytest

from lf.core.router import (
    EmbeddingCache,
    Route,
    RouterSpec,
    RoutingTable,
    embed_query,
    fitted,
    last_user_text,
)
from lf.errors import RequestError

AXES = {"bill": (1.0, 0.0, 0.0), "login": (0.0, 1.0, 0.0), "rain": (0.0, 0.0, 1.0)}


def fake_embed(calls: list[list[str]] | None = None):
    """Each text is the sum of the axes of the words it holds: 'bill' and 'login' are orthogonal."""

    def embed(texts: list[str]) -> list[list[float]]:
        if calls is not None:
            calls.append(list(texts))
        out = []
        for text in texts:
            vector = [0.0, 0.0, 0.0]
            for word, axis in AXES.items():
                if word in text:
                    vector = [a + b for a, b in zip(vector, axis)]
            out.append(vector if any(vector) else [0.01, 0.01, 0.01])
        return out

    return embed


SPEC = RouterSpec(
    "router",
    "minilm",
    "general",
    0.6,
    (Route("billing", "billing-model", ("my bill", "bill due")), Route("support", "support-model", ("login help",))),
)


def test_the_most_similar_route_wins_and_below_the_threshold_the_default_takes_it():
    table = RoutingTable.build(SPEC, fake_embed())
    embed = fake_embed()
    assert table.decide(embed(["what is my bill"])[0]).target == "billing-model"
    assert table.decide(embed(["login broken"])[0]).route == "support"
    mixed = table.decide(embed(["bill and login and rain"])[0])  # cosine 0.58 with each: under 0.6
    assert (mixed.route, mixed.target) == (None, "general") and mixed.score == pytest.approx(3**-0.5)
    assert table.decide(embed(["rain"])[0]).target == "general"


def test_utterances_are_embedded_once_and_kept_on_disk_by_model_and_text(isolated):
    calls: list[list[str]] = []
    RoutingTable.build(SPEC, fake_embed(calls), EmbeddingCache("llamacpp|minilm.gguf|1|2"))
    assert calls == [["bill due", "login help", "my bill"]]
    RoutingTable.build(SPEC, fake_embed(calls), EmbeddingCache("llamacpp|minilm.gguf|1|2"))
    assert len(calls) == 1  # a second load asks nothing
    RoutingTable.build(SPEC, fake_embed(calls), EmbeddingCache("llamacpp|minilm.gguf|1|3"))
    assert len(calls) == 2  # another model file: embedded again


def test_what_a_request_is_routed_by():
    chat = {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"}]}
    chat["messages"].append({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})
    assert last_user_text(chat) == "a b"
    assert last_user_text({"prompt": "complete me"}) == "complete me"
    assert last_user_text({"messages": [{"role": "system", "content": "only a system"}]}) is None


REFUSAL = (
    'HTTP 500: {"error":{"code":500,"message":"input (1682 tokens) is too large to process. increase the physical '
    'batch size (current batch size: 512)","type":"server_error"}}'
)


def test_a_message_too_long_for_the_embedding_model_is_cut_to_fit():
    cut = fitted("x" * 3364, REFUSAL)
    assert cut is not None and len(cut) <= 3364 * 512 / 1682
    assert fitted("x" * 100, "HTTP 500: out of memory") is None

    sent: list[int] = []

    def embed(texts: list[str]) -> list[list[float]]:
        (text,) = texts
        sent.append(len(text))
        if len(text) > 1000:  # two characters a token, 512 at most
            raise RequestError(f"did not embed: {REFUSAL.replace('1682', str(len(text) // 2))}")
        return [[1.0]]

    assert embed_query(embed, "y" * 50_000) == [1.0]
    assert sent[0] == 4000 and sent[-1] <= 1000 and len(sent) == 2  # cut to its start, then to what fits

    def broken(texts: list[str]) -> list[list[float]]:
        raise RequestError("did not embed: connection refused")

    with pytest.raises(RequestError):
        embed_query(broken, "short")
