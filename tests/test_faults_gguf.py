"""Hostile GGUF files: cut short, lying about lengths, nested without end, announcing more than they hold.
Each is a clear error naming the file and what is wrong (`lf models info`: exit 1; a start: exit 8, before
anything is launched), `lf models list` lists the others and marks the bad one, and a fuzz of the header
reader finds nothing but GgufError."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
from conftest import run_lf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BUG = "this is a bug in lf"
U8, U32, I32, F32, BOOL, STRING, ARRAY, U64 = 0, 4, 5, 6, 7, 8, 9, 10
F32_TENSOR = 0


# -- a GGUF writer that writes whatever it is told (llama.cpp's own writer refuses nonsense) ---------
def gstr(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def u32(key: str, value: int) -> bytes:
    return kv(key, U32, struct.pack("<I", value))


def text(key: str, value: str) -> bytes:
    return kv(key, STRING, gstr(value))


def tensor(name: str, dims: list[int], ggml_type: int = F32_TENSOR, offset: int = 0) -> bytes:
    return (
        gstr(name)
        + struct.pack("<I", len(dims))
        + struct.pack(f"<{len(dims)}Q", *dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def gguf(kvs: list[bytes], tensors: list[bytes] = (), data: bytes = b"", n_kv=None, n_tensors=None, version=3):
    head = b"GGUF" + struct.pack(
        "<IQQ", version, len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    body = head + b"".join(kvs) + b"".join(tensors)
    return body + b"\0" * (-len(body) % 32) + data


BASE = [text("general.architecture", "llama"), text("general.name", "hostile"), u32("llama.context_length", 128)]


def valid(path: Path, tokens: int = 20000) -> Path:
    """A real GGUF (llama.cpp's writer): a tokenizer's worth of strings, a few tensors."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("valid")
    writer.add_context_length(2048)
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_token_list([f"token{i}" for i in range(tokens)])
    for i in range(4):
        writer.add_tensor(f"blk.{i}.weight", np.ones((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def hostile_files(folder: Path) -> dict[str, tuple[bytes, str]]:
    """name → (content, a part of what the error must say)."""
    whole = valid(folder / "whole.gguf").read_bytes()
    deep = kv("deep", ARRAY, b"".join(struct.pack("<IQ", ARRAY, 1) for _ in range(100_000)) + struct.pack("<IQ", U8, 0))
    return {
        "cut-24": (whole[:24], "the file ends at byte 24"),
        "cut-1000": (whole[:1000], "an incomplete download or copy?"),
        "cut-100000": (whole[:100_000], "'tokenizer.ggml.tokens' is an array of 20000 items"),
        "cut-in-the-weights": (whole[:-100], "the data of tensor 'blk.3.weight' ends at byte"),
        "empty": (b"", "it is not a GGUF file"),
        "not-gguf": (b"PK\x03\x04" + bytes(100), "it is not a GGUF file"),
        "version-1": (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "GGUF version 1"),
        "version-99": (b"GGUF" + struct.pack("<IQQ", 99, 0, 0), "GGUF version 99"),
        "bad-key-length": (
            gguf([struct.pack("<Q", 1 << 62) + b"key" + bytes(200)]),
            "the key of metadata entry 1 is 4611686018427387904 bytes long",
        ),
        "bad-string-length": (gguf([kv("general.name", STRING, struct.pack("<Q", 1 << 40) + b"x" * 64)]), "bytes long"),
        "deep-nesting": (gguf([deep]), "nests arrays more than 4 deep"),
        "2^60-array": (
            gguf([*BASE, kv("big", ARRAY, struct.pack("<IQ", U8, 1 << 60) + bytes(64))]),
            "1152921504606846976 items",
        ),
        "2^60-strings": (gguf([kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 1 << 60))]), "items"),
        "2^63-entries": (gguf(BASE, n_kv=1 << 63), "the 9223372036854775808 metadata entries"),
        "unknown-value-type": (gguf([kv("odd", 13, bytes(16))]), "value type 13"),
        "duplicate-key": (gguf([*BASE, u32("llama.context_length", 256)]), "'llama.context_length' appears twice"),
        "five-dims": (gguf(BASE, [tensor("t", [1, 1, 1, 1, 1])], bytes(64)), "5 dimensions"),
        "unknown-tensor-type": (gguf(BASE, [tensor("t", [32], ggml_type=999)], bytes(128)), "type 999"),
        "overflowing-shape": (gguf(BASE, [tensor("t", [1 << 40, 1 << 40])], bytes(64)), "more elements"),
        "data-past-the-end": (gguf(BASE, [tensor("t", [32], offset=1 << 50)], bytes(128)), "past the end of the file"),
        "layers-2^40": (gguf([*BASE, u32("llama.block_count", 0xFFFFFFFF)]), "llama.block_count is 4294967295"),
        "context-as-text": (gguf([BASE[0], text("llama.context_length", "lots")]), "llama.context_length is 'lots'"),
        "architecture-as-number": (gguf([u32("general.architecture", 7)]), "general.architecture should be a string"),
        "bad-alignment": (gguf([*BASE, u32("general.alignment", 3)]), "general.alignment is 3"),
    }


@pytest.fixture
def hostile(tmp_path) -> dict[str, tuple[Path, str]]:
    folder = tmp_path / "hostile"
    folder.mkdir()
    files = {}
    for name, (content, says) in hostile_files(folder).items():
        path = folder / f"{name}.gguf"
        path.write_bytes(content)
        files[name] = (path, says)
    return files


def test_every_hostile_file_is_a_gguf_error_saying_what_is_wrong(hostile):
    from lf.models.gguf_meta import GgufError, read

    for name, (path, says) in hostile.items():
        with pytest.raises(GgufError) as caught:
            read(path)
        assert says in caught.value.reason, f"{name}: {caught.value.reason}"
        assert caught.value.path == str(path)


def test_a_valid_file_reads_the_same_in_either_byte_order(tmp_path):
    import numpy as np
    from gguf import GGUFEndian, GGUFWriter

    from lf.models.gguf_meta import read

    metas = []
    for order in (GGUFEndian.LITTLE, GGUFEndian.BIG):
        path = tmp_path / f"{order.name}.gguf"
        writer = GGUFWriter(str(path), "llama", endianess=order)
        writer.add_context_length(4096)
        writer.add_block_count(3)
        writer.add_token_list(["a", "b", "c"])
        writer.add_tensor("w", np.ones((32, 2), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        metas.append(read(path))
    little, big = metas
    assert (little.context_length, little.layers, little.vocab_size, little.parameters) == (4096, 3, 3, 64)
    assert (big.context_length, big.layers, big.vocab_size, big.parameters) == (4096, 3, 3, 64)


def test_models_info_on_a_hostile_file_names_the_file_and_what_is_wrong(hostile):
    for name in ("cut-1000", "bad-key-length", "deep-nesting", "2^60-array"):
        path, says = hostile[name]
        result = run_lf("models", "info", str(path))
        assert result.returncode == 1, f"{name}: exit {result.returncode}\n{result.stderr}"
        assert f"cannot read {path} as GGUF" in result.stderr and says in result.stderr, result.stderr
        assert BUG not in result.stderr and "Traceback" not in result.stderr


def test_a_start_with_a_hostile_model_exits_8_before_anything_runs(hostile, isolated, free_port):
    for name in ("cut-24", "cut-100000", "bad-key-length", "deep-nesting", "2^60-array", "layers-2^40"):
        path, says = hostile[name]
        result = run_lf("runtime", "start", "llamacpp", "--model", str(path), "--port", str(free_port))
        assert result.returncode == 8, f"{name}: exit {result.returncode}\n{result.stderr}"
        assert f"the model file {path} cannot be used" in result.stderr and says in result.stderr, result.stderr
        assert BUG not in result.stderr and "Traceback" not in result.stderr
        assert not list((isolated / "state").glob("**/instances/*.json")), "a record was written"
        assert not list((isolated / "state").glob("**/logs/*.log")), "something was launched"


def test_models_list_lists_the_good_files_and_marks_each_bad_one(hostile, isolated):
    models = isolated / "data" / "models"
    models.mkdir(parents=True)
    valid(models / "good.gguf", tokens=100)
    for path, _says in hostile.values():
        (models / path.name).write_bytes(path.read_bytes())
    result = run_lf("models", "list", "--json")
    assert result.returncode == 0, result.stderr
    listed = {Path(g["path"]).name: g for g in json.loads(result.stdout)["gguf"] if g["source"] == "models-dir"}
    assert listed["good.gguf"]["parameters"] == 4 * 64 * 64 and "error" not in listed["good.gguf"]
    for name, (_path, says) in hostile.items():
        entry = listed[f"{name}.gguf"]
        assert says in entry["error"], f"{name}: {entry}"
        assert BUG not in entry["error"]
    table = run_lf("models", "list")
    assert table.returncode == 0, table.stderr
    assert f"{models / 'cut-1000.gguf'} (unreadable: " in table.stdout


# -- fuzz: whatever the bytes, the reader answers or says what is wrong ----------------------------
_SEED: dict[str, bytes] = {}


def _seed() -> bytes:
    if "whole" not in _SEED:
        with tempfile.TemporaryDirectory() as folder:
            _SEED["whole"] = valid(Path(folder) / "seed.gguf", tokens=50).read_bytes()
    return _SEED["whole"]


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(_seed())
    header = 700  # the kv entries and tensor infos of the seed: where a mutation says something
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "byte", "u64", "cut", "insert", "delete"]))
        at = draw(st.integers(0, min(header, len(data) - 1)))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "u64":
            data[at : at + 8] = struct.pack(
                "<Q", draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**60, 2**63, 2**64 - 1]))
            )
        elif kind == "cut":
            del data[draw(st.integers(0, len(data))) :]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[at : at + draw(st.integers(1, 32))]
    return bytes(data)


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.one_of(mutated(), st.binary(max_size=512).map(lambda b: b"GGUF" + b)))
def test_fuzz_the_header_reader_finds_nothing_but_gguf_errors(content):
    from lf.models.gguf_meta import GgufError, _read_header

    with tempfile.NamedTemporaryFile(suffix=".gguf") as fh:
        fh.write(content)
        fh.flush()
        try:
            meta = _read_header(Path(fh.name))
        except GgufError as exc:
            assert exc.reason and exc.path == fh.name
            return
    # what it read must be usable: an estimate of it is a number, made in bounded time
    from lf.models.memory import estimate

    assert estimate(meta, 4096, 4, repacks=False).total >= 0
