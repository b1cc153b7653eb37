"""all-MiniLM-L6-v2 served for real: the GGUF `lf models fetch` converts, on llama.cpp (xllamacpp), through
`lf serve` with the official openai client and through `lf runtime start`, held against sentence-transformers'
own embeddings of the same sentences (tests/data/minilm_reference.json, made by scripts/minilm_reference.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import run_lf

from fakes import Gateway, daemons, free_ports, read_record

pytestmark = pytest.mark.e2e
REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())
TOLERANCE = 0.01  # on every pairwise cosine similarity
# about 400 tokens: four of them fill llama.cpp's physical batch (512) for the memory check
LONG = " ".join(["How do I reverse a list in Python, and why does the slice with a negative step work?"] * 22)


@pytest.fixture
def minilm(isolated) -> Path:
    fetched = run_lf("models", "fetch", "all-minilm-l6-v2", "--json", timeout=900, check=True)
    return Path(json.loads(fetched.stdout)["path"])


def assert_like_sentence_transformers(vectors: list[list[float]]) -> None:
    got = np.array(vectors, dtype=np.float64)
    assert got.shape == (len(REFERENCE["sentences"]), 384)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    cosine = got @ got.T
    worst = np.abs(cosine - np.array(REFERENCE["cosine"])).max()
    assert worst <= TOLERANCE, f"a pairwise cosine similarity differs by {worst:.4f} from sentence-transformers'"
    assert (got * np.array(REFERENCE["vectors"])).sum(axis=1).min() > 0.999  # each vector itself, too


def test_lf_serve_gives_the_openai_client_the_embeddings_sentence_transformers_gives(tmp_path, minilm):
    from openai import OpenAI

    engine, chat, port = free_ports(3)
    (tmp_path / "work" / "llamafarm.yaml").write_text(
        "version: v1\nname: emb\nnamespace: tests\nruntime:\n  models:\n"
        "    - {name: router-embeddings, provider: llamacpp, model: sentence-transformers/all-MiniLM-L6-v2,\n"
        f"       provider_config: {{port: {engine}}}}}\n"
        f"    - {{name: chat, provider: llamacpp, model: smollm2-135m, provider_config: {{port: {chat}}}}}\n"
    )
    with Gateway(tmp_path / "work", port) as gateway:
        client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        answer = client.embeddings.create(model="router-embeddings", input=REFERENCE["sentences"])
        assert [d.index for d in answer.data] == list(range(len(REFERENCE["sentences"])))
        assert_like_sentence_transformers([d.embedding for d in answer.data])
        one = client.embeddings.create(model="router-embeddings", input="The cat sits on the mat.")
        assert np.dot(one.data[0].embedding, answer.data[0].embedding) > 0.9999  # a single string, the same vector
        assert read_record(tmp_path / "state", "router-embeddings")["command"][-1] == "--embeddings"

        # a plain chat entry on the embedded engine answers both
        question = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
        answer = client.chat.completions.create(model="chat", messages=question, temperature=0, max_tokens=48)
        assert "Paris" in answer.choices[0].message.content
        pooled = client.embeddings.create(model="chat", input=["The cat sits on the mat.", "Bonjour"])
        assert [len(d.embedding) for d in pooled.data] == [576, 576]  # SmolLM2's hidden size, mean-pooled
    assert daemons(tmp_path / "state") == []


def test_lf_runtime_start_serves_embeddings_on_its_own_and_within_the_memory_estimate(tmp_path, minilm):
    (port,) = free_ports(1)
    started = run_lf("runtime", "start", "llamacpp", "--model", "all-minilm-l6-v2", "--port", str(port), check=True)
    assert "running at" in started.stdout
    try:
        record = read_record(tmp_path / "state", "llamacpp")
        assert record["model_path"] == str(minilm) and "--embeddings" in record["command"]
        import psutil

        engine = psutil.Process(record["pid"])
        assert engine.environ().get("OMP_WAIT_POLICY") == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
        url = f"http://127.0.0.1:{port}/v1/embeddings"
        response = httpx.post(url, json={"model": "all-minilm-l6-v2", "input": REFERENCE["sentences"]}, timeout=120)
        assert response.status_code == 200, response.text
        assert_like_sentence_transformers([d["embedding"] for d in response.json()["data"]])

        # the estimate `lf runtime start --dry-run` shows, against the process tree after a full physical batch
        from lf.models.memory import estimate_settings

        assert httpx.post(url, json={"input": [LONG] * 4}, timeout=120).status_code == 200
        root = psutil.Process(record["pid"])
        rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        estimate = estimate_settings(str(minilm), record["settings"]).total
        assert abs(estimate - rss) <= 0.15 * rss, f"estimate {estimate / 2**20:.0f} MiB, measured {rss / 2**20:.0f} MiB"
    finally:
        run_lf("runtime", "stop", "llamacpp", check=True)
    assert daemons(tmp_path / "state") == []
