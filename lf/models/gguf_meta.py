"""What a GGUF file's header says: architecture, size, quantization, trained context, the shape the KV cache
needs. Only the header is read, never the weights: the tensors' shapes and offsets say how big they are.

The file may be anything (a download cut short, a copy that failed, a file made to break readers), so the
reader trusts none of it: every length is checked against what is left of the file before it is used,
arrays nest at most MAX_NESTING deep, every tensor's data must lie within the file, and the fields lf
computes with must be whole numbers in a sane range. Whatever is wrong is a GgufError saying what and
where; nothing else escapes. The type tables (block sizes, file types) are llama.cpp's own, from the
`gguf` package. A long array (a tokenizer's 262144 strings) is skipped over, not decoded: nothing lf
uses lives in one, only its length.
"""

from __future__ import annotations

import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

# llama.cpp's enum llama_pooling_type, as a GGUF's ARCH.pooling_type holds it (0: none, -1: unspecified)
POOLING_TYPES = {1: "mean", 2: "cls", 3: "last", 4: "rank"}
LONG_ARRAY = 1024  # arrays longer than this are skipped, not decoded
CACHE_FORMAT = 3  # of the cached form; raise it when GgufMeta's fields change (or how they are read)
MAX_KEY_BYTES = 65535  # the GGUF specification's bound on a key
MAX_NESTING = 4  # arrays of arrays of …: llama.cpp loads none; lf reads a few levels, then refuses
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_LAYERS = 1 << 16  # the largest models have a few hundred
MAX_SIZE = 1 << 40  # any count or size lf computes with (context, embedding, heads, vocabulary)
_CHUNK = 1 << 20  # the header is read this much at a time

# value types (GGUFValueType): the struct format of each scalar, then string and array
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_UINT32 = 4
_DEFAULT_ALIGNMENT = 32
_CUT_SHORT = " (an incomplete download or copy?)"


class GgufError(ValueError):
    """A file lf cannot read as GGUF; `reason` says what is wrong and where (the file is `path`)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(reason)
        self.path = str(path)
        self.reason = reason


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


def read(path: str | os.PathLike) -> GgufMeta:
    """The metadata of one GGUF file. GgufError (a ValueError) for a file that is not a GGUF lf can read,
    OSError for one that cannot be opened.

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


class _Cursor:
    """Reads the header from the start of a file, a chunk at a time (no memory map: a file that shrinks
    while it is read is an error, not a SIGBUS), refusing to read or skip past its end."""

    def __init__(self, fh, size: int, path: Path):
        self.fh, self.size, self.path = fh, size, path
        self.buf = b""
        self.base = 0  # the file offset of buf[0]
        self.pos = 0
        self.order = "<"

    def fail(self, reason: str) -> GgufError:
        return GgufError(self.path, reason)

    def _ends_inside(self, what: str) -> GgufError:
        return self.fail(f"the file ends at byte {self.size}, inside {what}{_CUT_SHORT}")

    def need(self, n: int, what: str) -> int:
        """The buffer offset of the next `n` bytes, which the buffer then holds."""
        end = self.pos + n
        if end > self.size:
            raise self._ends_inside(what)
        if end > self.base + len(self.buf):
            if self.pos >= self.base + len(self.buf):
                self.fh.seek(self.pos)
                self.buf = b""
            else:
                self.buf = self.buf[self.pos - self.base :]
            self.base = self.pos
            self.buf += self.fh.read(max(n, _CHUNK) - len(self.buf))
            if end > self.base + len(self.buf):
                raise self._ends_inside(what)  # it shrank since it was measured
        return self.pos - self.base

    def unpack(self, fmt: str, what: str):
        layout = struct.Struct(self.order + fmt)
        at = self.need(layout.size, what)
        self.pos += layout.size
        values = layout.unpack_from(self.buf, at)
        return values[0] if len(values) == 1 else values

    def skip(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            raise self._ends_inside(what)
        self.pos += n

    def left(self) -> int:
        return self.size - self.pos

    def string(self, what: str, limit: int | None = None) -> str:
        length = self.unpack("Q", what)
        if limit is not None and length > limit:
            raise self.fail(f"{what} is {length} bytes long, more than the {limit} allowed")
        if length > self.left():
            raise self.fail(f"{what} is {length} bytes long, more than the {self.left()} left in the file{_CUT_SHORT}")
        at = self.need(length, what)
        self.pos += length
        return self.buf[at : at + length].decode("utf-8", "replace")

    def value(self, vtype: int, what: str, depth: int = 0) -> tuple[object, int | None]:
        """(the value, or the largest number of a short numeric array, else None; an array's length)."""
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what), None
        if vtype == _STRING:
            return self.string(what), None
        if vtype != _ARRAY:
            raise self.fail(f"{what} has value type {vtype}, which GGUF does not define")
        itype, count = self.unpack("IQ", what)
        if itype in _SCALARS:
            item = struct.calcsize(_SCALARS[itype])
            self._room(count, item, what)
            if count > LONG_ARRAY:
                self.skip(count * item, what)
                return None, count
            values = self.unpack(f"{count}{_SCALARS[itype]}", what) if count else ()
            values = values if isinstance(values, tuple) else (values,)
            return (max(values) if values else None), count
        if itype == _STRING:
            self._room(count, 8, what)
            self._skip_strings(count, what)
            return None, count
        if itype == _ARRAY:
            if depth + 1 >= MAX_NESTING:
                raise self.fail(f"{what} nests arrays more than {MAX_NESTING} deep")
            self._room(count, 12, what)
            for _ in range(count):
                self.value(_ARRAY, what, depth + 1)
            return None, count
        raise self.fail(f"{what} is an array of value type {itype}, which GGUF does not define")

    def _skip_strings(self, count: int, what: str) -> None:
        """Past `count` strings (a tokenizer's vocabulary), reading their lengths straight from the buffer."""
        unpack = struct.Struct(self.order + "Q").unpack_from
        while count:
            self.need(8, what)
            buf, base, pos = self.buf, self.base, self.pos
            end = base + len(buf)
            while count and pos + 8 <= end:
                pos += 8 + unpack(buf, pos - base)[0]
                count -= 1
            if pos > self.size:
                raise self._ends_inside(what)
            self.pos = pos

    def _room(self, count: int, item: int, what: str) -> None:
        if count * item > self.left():
            raise self.fail(
                f"{what} is an array of {count} items, more than the {self.left()} bytes left in the file can hold"
                + _CUT_SHORT
            )


def _read_header(path: Path) -> GgufMeta:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        cur = _Cursor(fh, size, path)
        if size < 4 or fh.read(4) != b"GGUF":
            raise cur.fail("it is not a GGUF file (it does not begin with the bytes GGUF)")
        cur.pos = cur.base = 4
        version = cur.unpack("I", "the header")
        if version & 0xFFFF == 0:  # written on a machine of the other byte order
            cur.order = ">"
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in (2, 3):
            raise cur.fail(
                f"it is GGUF version {version}; lf reads versions 2 and 3"
                + (" (version 1 is no longer loaded by llama.cpp either)" if version == 1 else "")
            )
        n_tensors, n_kv = cur.unpack("QQ", "the header")
        # every entry takes at least 13 bytes (key length, type, one byte of value), every tensor 24
        if n_kv * 13 + n_tensors * 24 > cur.left():
            raise cur.fail(
                f"the file ends at byte {size}, too soon for the {n_kv} metadata entries and {n_tensors} tensors "
                f"its header announces{_CUT_SHORT}"
            )
        fields: dict[str, tuple[int, object, int | None]] = {}
        for i in range(n_kv):
            key = cur.string(f"the key of metadata entry {i + 1}", limit=MAX_KEY_BYTES)
            if key in fields:
                raise cur.fail(f"the metadata key {key!r} appears twice")
            vtype = cur.unpack("I", f"the type of {key!r}")
            value, count = cur.value(vtype, f"the value of {key!r}")
            fields[key] = (vtype, value, count)
        tensors = _tensors(cur, n_tensors)
        alignment = _DEFAULT_ALIGNMENT
        if "general.alignment" in fields:
            vtype, value, _count = fields["general.alignment"]
            if vtype != _UINT32 or not isinstance(value, int) or value <= 0 or value & (value - 1):
                raise cur.fail(f"general.alignment is {value!r}: expected a power of two (a uint32)")
            alignment = value
        data_start = -(-cur.pos // alignment) * alignment
        for name, _label, _elements, n_bytes, offset in tensors:
            end = data_start + offset + n_bytes
            if end > size:
                raise cur.fail(
                    f"the data of tensor {name!r} ends at byte {end}, past the end of the file at byte {size}"
                    + _CUT_SHORT
                )
    return _meta(path, size, fields, tensors)


# ggml's tensor types (id: name, elements per block, bytes per block) and llama.cpp's file types, as the `gguf`
# package defines them: written out so reading a header (on every start that launches) needs neither gguf nor numpy
# (~0.4 s of imports); a type a newer model uses that is not here is looked up in the package. A test checks the tables.
QUANT_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}
FILE_TYPES: dict[int, str] = {
    0: "ALL_F32",
    1: "MOSTLY_F16",
    2: "MOSTLY_Q4_0",
    3: "MOSTLY_Q4_1",
    7: "MOSTLY_Q8_0",
    8: "MOSTLY_Q5_0",
    9: "MOSTLY_Q5_1",
    10: "MOSTLY_Q2_K",
    11: "MOSTLY_Q3_K_S",
    12: "MOSTLY_Q3_K_M",
    13: "MOSTLY_Q3_K_L",
    14: "MOSTLY_Q4_K_S",
    15: "MOSTLY_Q4_K_M",
    16: "MOSTLY_Q5_K_S",
    17: "MOSTLY_Q5_K_M",
    18: "MOSTLY_Q6_K",
    19: "MOSTLY_IQ2_XXS",
    20: "MOSTLY_IQ2_XS",
    21: "MOSTLY_Q2_K_S",
    22: "MOSTLY_IQ3_XS",
    23: "MOSTLY_IQ3_XXS",
    24: "MOSTLY_IQ1_S",
    25: "MOSTLY_IQ4_NL",
    26: "MOSTLY_IQ3_S",
    27: "MOSTLY_IQ3_M",
    28: "MOSTLY_IQ2_S",
    29: "MOSTLY_IQ2_M",
    30: "MOSTLY_IQ4_XS",
    31: "MOSTLY_IQ1_M",
    32: "MOSTLY_BF16",
    36: "MOSTLY_TQ1_0",
    37: "MOSTLY_TQ2_0",
    38: "MOSTLY_MXFP4_MOE",
    39: "MOSTLY_NVFP4",
    40: "MOSTLY_Q1_0",
    1024: "GUESSED",
}


def quant_type(raw: int) -> tuple[str, int, int] | None:
    """(name, elements per block, bytes per block) of a tensor type id; None when neither lf nor gguf knows it."""
    known = QUANT_TYPES.get(raw)
    if known is not None:
        return known
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        kind = GGMLQuantizationType(raw)
        block, size = GGML_QUANT_SIZES[kind]
    except (ValueError, KeyError):
        return None
    return kind.name, block, size


def file_type_name(raw: int) -> str | None:
    known = FILE_TYPES.get(raw)
    if known is not None:
        return known
    from gguf import LlamaFileType

    try:
        return LlamaFileType(raw).name
    except ValueError:
        return None


def _tensors(cur: _Cursor, count: int) -> list[tuple[str, str, int, int, int]]:
    """(name, type name, elements, bytes, data offset) of every tensor, checked as llama.cpp checks them."""
    tensors = []
    names: set[str] = set()
    for i in range(count):
        name = cur.string(f"the name of tensor {i + 1}", limit=MAX_KEY_BYTES)
        if name in names:
            raise cur.fail(f"the tensor {name!r} appears twice")
        names.add(name)
        n_dims = cur.unpack("I", f"the shape of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}")
        dims = [cur.unpack("Q", f"the shape of tensor {name!r}") for _ in range(n_dims)]
        elements = 1
        for dim in dims:
            elements *= dim
        if any(dim >= 1 << 63 for dim in dims) or elements >= 1 << 63:
            raise cur.fail(f"tensor {name!r} has the shape {dims}: more elements than a GGUF tensor can have")
        raw_type, offset = cur.unpack("IQ", f"the type of tensor {name!r}")
        known = quant_type(raw_type)
        if known is None:
            raise cur.fail(f"tensor {name!r} has type {raw_type}, which llama.cpp does not define")
        kind, block, type_size = known
        if dims and dims[0] % block:
            raise cur.fail(f"tensor {name!r} has rows of {dims[0]} elements, not a multiple of {kind}'s {block}")
        label = "token_embd" if name == "token_embd.weight" else kind
        tensors.append((name, label, elements, elements * type_size // block, offset))
    return tensors


def _meta(path: Path, size: int, fields: dict, tensors: list) -> GgufMeta:
    def fail(reason: str) -> GgufError:
        return GgufError(path, reason)

    def text(key: str) -> str | None:
        if key not in fields:
            return None
        vtype, value, _count = fields[key]
        if vtype != _STRING:
            raise fail(f"{key} should be a string, and is a value of GGUF type {vtype}")
        return str(value)

    def number(key: str, most: int = MAX_SIZE) -> int | None:
        """A whole number lf computes with (a per-layer array: its largest), bounded so no estimate runs away."""
        if key not in fields:
            return None
        _vtype, value, count = fields[key]
        if count is not None and (value is None or isinstance(value, bool)):
            return None  # an empty, long or boolean array (gemma3n's per-layer window flags): nothing lf can use
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"{key} is {_short(value)}: expected a whole number")
        if not 0 <= value <= most:
            raise fail(f"{key} is {value}: expected a whole number from 0 to {most}")
        return value

    def count(key: str) -> int | None:
        entry = fields.get(key)
        return entry[2] if entry is not None else None

    def flag(key: str) -> bool | None:
        entry = fields.get(key)
        return entry[1] if entry is not None and isinstance(entry[1], bool) else None

    def pooling(key: str) -> str | None:  # an int32 that may be -1 (unspecified): looked up, never bounded
        entry = fields.get(key)
        return POOLING_TYPES.get(entry[1]) if entry is not None and isinstance(entry[1], int) else None

    arch = text("general.architecture") or "unknown"
    by_type: dict[str, int] = {}
    elements = 0
    for _name, label, n, n_bytes, _offset in tensors:
        by_type[label] = by_type.get(label, 0) + n_bytes
        elements += n
    file_type = number("general.file_type", 1 << 31)
    named = file_type_name(file_type) if file_type is not None else None
    quantization = named.removeprefix("MOSTLY_") if named else None
    if quantization is None:  # no file type: the type holding most of the weights
        main = max(((b, t) for t, b in by_type.items() if t != "token_embd"), default=(0, "unknown"))
        quantization = main[1]
    heads = number(f"{arch}.attention.head_count")
    embedding = number(f"{arch}.embedding_length")
    head_dim = embedding // heads if embedding and heads else None
    return GgufMeta(
        path=str(path),
        file_size=size,
        architecture=arch,
        name=text("general.name"),
        parameters=number("general.parameter_count", 1 << 62) or elements,
        quantization=quantization,
        context_length=number(f"{arch}.context_length"),
        layers=number(f"{arch}.block_count", MAX_LAYERS),
        embedding_size=embedding,
        feed_forward_size=number(f"{arch}.feed_forward_length"),
        head_count=heads,
        head_count_kv=number(f"{arch}.attention.head_count_kv") or heads,
        key_length=number(f"{arch}.attention.key_length") or head_dim,
        value_length=number(f"{arch}.attention.value_length") or head_dim,
        sliding_window=number(f"{arch}.attention.sliding_window"),
        sliding_window_pattern=number(f"{arch}.attention.sliding_window_pattern", MAX_LAYERS),
        vocab_size=count("tokenizer.ggml.tokens") or number(f"{arch}.vocab_size"),
        merges=count("tokenizer.ggml.merges") or 0,
        tensor_bytes=sum(by_type.values()),
        tensor_bytes_by_type=by_type,
        pooling=pooling(f"{arch}.pooling_type"),
        causal=flag(f"{arch}.attention.causal"),
    )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
