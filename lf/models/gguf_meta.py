"""What a GGUF file's header says: architecture, size, quantization, trained context, the shape the KV cache
needs. Read with the `gguf` package (llama.cpp's own reader), through a memory map: only the header's pages are
touched, never the weights.

GGUFReader turns every element of every array into a numpy view; a tokenizer's 262144 strings take it
seconds. `_HeaderReader` changes only that: a long array is skipped over (numbers as one view, strings by
their lengths), which brings a read to milliseconds. Nothing lf uses lives in such an array.
"""

from __future__ import annotations

import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

# llama.cpp's enum llama_pooling_type, as a GGUF's ARCH.pooling_type holds it (0: none, -1: unspecified)
POOLING_TYPES = {1: "mean", 2: "cls", 3: "last", 4: "rank"}
LONG_ARRAY = 1024  # arrays longer than this are skipped, not parsed element by element
CACHE_FORMAT = 2  # of the cached form; raise it when GgufMeta's fields change


@dataclass(frozen=True)
class GgufMeta:
    path: str
    file_size: int  # bytes on disk
    architecture: str
    name: str | None  # general.name
    parameters: int  # general.parameter_count, else the elements of every tensor
    quantization: str  # the file type (general.file_type), e.g. Q4_K_M; else the tensors' main type
    context_length: int | None  # trained context (ARCH.context_length)
    layers: int | None  # ARCH.block_count
    embedding_size: int | None  # ARCH.embedding_length
    feed_forward_size: int | None  # ARCH.feed_forward_length (the largest, when it varies per layer)
    head_count: int | None  # ARCH.attention.head_count
    head_count_kv: int | None  # ARCH.attention.head_count_kv (grouped-query attention); else head_count
    key_length: int | None  # per-head K size (ARCH.attention.key_length, else embedding / heads)
    value_length: int | None
    sliding_window: int | None  # ARCH.attention.sliding_window: layers with a window keep a smaller KV cache
    sliding_window_pattern: int | None  # every Nth layer is global (gemma3: 6); None: from the architecture
    vocab_size: int | None
    merges: int  # BPE merges in the tokenizer
    tensor_bytes: int  # the weights: what is mapped and resident once every tensor has been used
    tensor_bytes_by_type: dict  # ggml type name → bytes (the token embedding counted apart, as "token_embd")
    pooling: str | None = None  # ARCH.pooling_type ("mean", "cls", "last", "rank"): an embedding model's own
    causal: bool | None = None  # ARCH.attention.causal: False for an encoder (BERT), which keeps no KV cache

    def to_dict(self) -> dict:
        return asdict(self)


def _reader_class():
    from gguf import GGUFReader, GGUFValueType

    class _HeaderReader(GGUFReader):
        def _get_field_parts(self, orig_offs, raw_type):
            if GGUFValueType(raw_type) != GGUFValueType.ARRAY or self.byte_order != "I":
                return super()._get_field_parts(orig_offs, raw_type)
            import numpy as np

            itype = self._get(orig_offs, np.uint32)
            count = self._get(orig_offs + 4, np.uint64)
            n = int(count[0])
            if n <= LONG_ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            sub = GGUFValueType(int(itype[0]))
            offs = orig_offs + 12
            if sub == GGUFValueType.STRING:
                buffer = memoryview(self.data)
                unpack = struct.Struct("<Q").unpack_from
                for _ in range(n):
                    offs += 8 + unpack(buffer, offs)[0]
                parts = [itype, count]
                data: list[int] = []  # the strings are not kept: contents() gives [] for such an array
            elif sub in self.gguf_scalar_to_np:
                values = self._get(offs, self.gguf_scalar_to_np[sub], n)
                offs += int(values.nbytes)
                parts, data = [itype, count, values], [2]
            else:  # arrays of arrays: rare, and short; the reader's own way
                return super()._get_field_parts(orig_offs, raw_type)
            return offs - orig_offs, parts, data, [GGUFValueType.ARRAY, sub]

    return _HeaderReader


def read(path: str | os.PathLike) -> GgufMeta:
    """The metadata of one GGUF file. ValueError for a file that is not GGUF.

    Kept in lf's cache (keyed by the file's path, size, times and inode, and lf's version), like the checked
    form of llamafarm.yaml: every `start` estimates its memory from it, and importing `gguf` (numpy with it)
    alone costs more than the rest of a start's own work."""
    path = Path(path)
    key = _cache_key(path)
    cached = _cache_read(key)
    if cached is not None:
        return cached
    meta = _read_header(path)
    _cache_write(key, meta)
    return meta


def _cache_key(path: Path) -> list | None:
    from lf import __version__

    try:
        st = path.stat()
    except OSError:
        return None
    return [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, __version__, CACHE_FORMAT]


def _cache_file(key: list) -> Path:
    import zlib

    from lf.dirs import state_dir

    return state_dir() / "cache" / f"gguf-{zlib.crc32(key[0].encode()):08x}.json"


def _cache_read(key: list | None) -> GgufMeta | None:
    if key is None:
        return None
    import json

    try:
        data = json.loads(_cache_file(key).read_text(encoding="utf-8"))
        return GgufMeta(**data["meta"]) if data.get("key") == key else None
    except (OSError, ValueError, TypeError, KeyError):
        return None  # none yet, or written by another version of lf: read the file again


def _cache_write(key: list | None, meta: GgufMeta) -> None:
    if key is None:
        return
    import json

    from lf.dirs import ensure_private_dir
    from lf.errors import LfError
    from lf.files import atomic_write

    try:
        ensure_private_dir(_cache_file(key).parent)
        atomic_write(_cache_file(key), json.dumps({"key": key, "meta": meta.to_dict()}))
    except (OSError, LfError):
        pass  # a cache that cannot be written (read-only state dir) costs time, nothing else


def _read_header(path: Path) -> GgufMeta:
    from gguf import GGUFValueType, LlamaFileType

    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
    try:
        reader = _reader_class()(path)
    except (IndexError, struct.error) as exc:  # numpy and struct say "truncated" their own ways
        raise ValueError(f"{path} is not a complete GGUF file ({exc})") from None
    fields = reader.fields

    def value(key: str):
        field = fields.get(key)
        if field is None or not field.types:
            return None
        if field.types[0] == GGUFValueType.ARRAY:
            values = field.contents()
            return max(values) if values and field.types[-1] != GGUFValueType.STRING else None
        return field.contents()

    def count(key: str) -> int | None:
        field = fields.get(key)
        # a field's parts: key length, key, value type, then the array's item type and length, then its items
        return int(field.parts[4][0]) if field is not None and field.types[:1] == [GGUFValueType.ARRAY] else None

    arch = str(value("general.architecture") or "unknown")
    by_type: dict[str, int] = {}
    elements = 0
    for tensor in reader.tensors:
        kind = "token_embd" if tensor.name == "token_embd.weight" else tensor.tensor_type.name
        by_type[kind] = by_type.get(kind, 0) + int(tensor.n_bytes)
        elements += int(tensor.n_elements)
    file_type = value("general.file_type")
    try:
        quantization = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_") if file_type is not None else None
    except ValueError:
        quantization = None
    if quantization is None:  # no file type: the type holding most of the weights
        main = max(((b, t) for t, b in by_type.items() if t != "token_embd"), default=(0, "unknown"))
        quantization = main[1]
    heads = value(f"{arch}.attention.head_count")
    embedding = value(f"{arch}.embedding_length")
    head_dim = embedding // heads if embedding and heads else None
    return GgufMeta(
        path=str(path),
        file_size=path.stat().st_size,
        architecture=arch,
        name=value("general.name"),
        parameters=int(value("general.parameter_count") or elements),
        quantization=quantization,
        context_length=value(f"{arch}.context_length"),
        layers=value(f"{arch}.block_count"),
        embedding_size=embedding,
        feed_forward_size=value(f"{arch}.feed_forward_length"),
        head_count=heads,
        head_count_kv=value(f"{arch}.attention.head_count_kv") or heads,
        key_length=value(f"{arch}.attention.key_length") or head_dim,
        value_length=value(f"{arch}.attention.value_length") or head_dim,
        sliding_window=value(f"{arch}.attention.sliding_window"),
        sliding_window_pattern=value(f"{arch}.attention.sliding_window_pattern"),
        vocab_size=count("tokenizer.ggml.tokens") or value(f"{arch}.vocab_size"),
        merges=count("tokenizer.ggml.merges") or 0,
        tensor_bytes=sum(by_type.values()),
        tensor_bytes_by_type=by_type,
        pooling=POOLING_TYPES.get(value(f"{arch}.pooling_type")),
        causal=value(f"{arch}.attention.causal"),
    )


def human_count(n: int) -> str:
    """135M, 1.2B: a parameter count as people say it."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            shown = f"{n / size:.1f}".removesuffix(".0") if n < 10 * size else f"{n / size:.0f}"
            return f"{shown}{unit}"
    return str(n)


def human_bytes(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
