"""What an instance of a GGUF model will take in memory on the CPU, before it is started.

The parts, as llama.cpp allocates them (the figures it logs at start-up, checked with `--param verbosity=4`):

- weights: the tensors' bytes, memory-mapped, resident once every layer has run; tensors of the types the
  CPU backend repacks for its vector units (Q4_0, Q4_K, IQ4_NL with AVX2 or on ARM) take a second, repacked
  copy (the embedding table is never repacked);
- KV cache: for every layer, K and V of n_head_kv × head_dim elements of the cache type per cell; a global
  layer has n_ctx cells (one unified cache shared by the `parallel` slots, as lf's engine runs it), a
  sliding-window layer min(n_ctx, n_swa × parallel + n_ubatch) cells, padded to 256;
- compute: the buffer reserved for the worst-case batch (n_ubatch tokens): activations of order 12 × n_embd or
  3.5 × n_ff floats per token, the f16 attention mask (n_ubatch × cells), the KQ matrix without flash attention,
  and the logits of one output per slot; plus the output buffer (n_vocab floats per slot);
- an encoder (BERT: a GGUF whose attention is not causal) keeps no KV cache and llama.cpp caps each slot's
  context at the trained one, so context size and slots change nothing (measured: the same resident memory at
  512, 4096 and 16384 tokens, 1 or 4 slots); what grows is the working memory of a full physical batch, far
  beyond the compute buffer llama.cpp reports (7 MiB for all-MiniLM-L6-v2, which grew by 86 MiB after four
  ~440-token inputs): ENCODER_BYTES_PER_TOKEN_DIM per batch token and embedding dimension, calibrated on it;
- vocabulary: the tokenizer's tables, about VOCAB_BYTES_PER_TOKEN per token;
- base: the engine process with its libraries, and the log pump beside it.

The vocabulary and base constants are calibrated against the resident memory of the process tree `lf runtime
start` makes (SmolLM2-135M and Gemma 3 270M at two context sizes each, after a request of about a thousand
tokens: `bench/p10_memory.py`; tests/test_models_info.py keeps every estimate within ±15% of it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

MiB = 1024 * 1024
KV_PAD = 256  # llama.cpp pads KV cache sizes to this many cells
DEFAULT_UBATCH = 512  # llama.cpp's physical batch
VOCAB_BYTES_PER_TOKEN = 200  # calibrated (bench/p10_memory.py)
BASE_BYTES = 54 * MiB  # calibrated: interpreter, llama.cpp's libraries and threads, the log pump
REPACKED_TYPES = frozenset({"Q4_0", "Q4_K", "IQ4_NL"})  # what ggml's CPU backend repacks (CPU_REPACK buffer)
ENCODER_BYTES_PER_TOKEN_DIM = 440  # calibrated on all-MiniLM-L6-v2 (tests/test_embeddings_e2e.py)
# every Nth layer attends globally, the rest through a sliding window (llama.cpp's per-architecture default)
SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4, "gpt-oss": 2}


@dataclass(frozen=True)
class Estimate:
    total: int  # bytes
    weights: int
    repacked: int
    kv_cache: int
    compute: int  # compute buffer and output buffer
    vocab: int
    base: int
    context_size: int
    parallel: int
    cache_type_k: str
    cache_type_v: str
    kv_cells: int  # cells of a global layer
    kv_cells_swa: int | None  # cells of a sliding-window layer (None: the model has none)

    def to_dict(self) -> dict:
        return asdict(self)


def _pad(n: int, to: int = KV_PAD) -> int:
    return -(-n // to) * to


# (elements per block, bytes per block) of the types llama.cpp takes for its KV cache (--cache-type-k/-v), as
# ggml defines them: written out so a start need not import gguf (and numpy) for them; a test checks the table
KV_CACHE_TYPES = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "iq4_nl": (32, 18),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
}


def bytes_per_element(cache_type: str) -> float:
    sizes = KV_CACHE_TYPES.get(cache_type.lower())
    if sizes is None:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        try:
            sizes = GGML_QUANT_SIZES[GGMLQuantizationType[cache_type.upper()]]
        except KeyError:
            raise ValueError(f"unknown KV cache type {cache_type!r}") from None
    block, size = sizes
    return size / block


def swa_layers(meta) -> int:
    """How many layers attend through a sliding window (0: none, or an architecture lf does not know)."""
    if not meta.sliding_window or not meta.layers:
        return 0
    pattern = meta.sliding_window_pattern or SWA_PATTERN.get(meta.architecture)
    if not pattern:
        return 0  # unknown: count every layer as global (the larger cache)
    return meta.layers - meta.layers // pattern  # all but every pattern-th


def cpu_repacks() -> bool:
    import platform

    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    from lf.hardware import cpu_info

    return cpu_info().avx2


def estimate(
    meta,
    context_size: int,
    parallel: int = 1,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    *,
    batch_size: int | None = None,
    flash_attn: bool | None = None,
    repacks: bool | None = None,
) -> Estimate:
    """The memory an instance of the model `meta` (lf.models.gguf_meta.GgufMeta) will use on the CPU."""
    parallel = max(1, int(parallel))
    n_ctx = _pad(int(context_size))
    ubatch = min(DEFAULT_UBATCH, batch_size or DEFAULT_UBATCH)
    layers = meta.layers or 0
    swa = swa_layers(meta)
    cells_swa = min(n_ctx, _pad(meta.sliding_window * parallel + ubatch)) if swa else None
    heads_kv = meta.head_count_kv or meta.head_count or 1
    per_cell = heads_kv * (
        (meta.key_length or 0) * bytes_per_element(cache_type_k)
        + (meta.value_length or 0) * bytes_per_element(cache_type_v)
    )
    kv = int(per_cell * ((layers - swa) * n_ctx + swa * (cells_swa or 0)))
    encoder = meta.causal is False
    if encoder:
        n_ctx = min(n_ctx, _pad(meta.context_length or n_ctx))
        kv = 0

    repacks = cpu_repacks() if repacks is None else repacks
    repacked = sum(b for t, b in meta.tensor_bytes_by_type.items() if t in REPACKED_TYPES) if repacks else 0

    embd, ff, vocab = meta.embedding_size or 0, meta.feed_forward_size or 0, meta.vocab_size or 0
    activations = ubatch * 4 * max(12 * embd, 3.5 * ff)
    mask = ubatch * 2 * (n_ctx + (cells_swa or 0))
    scores = (
        0 if flash_attn is not False else ubatch * n_ctx * (meta.head_count or 1) * 4
    )  # KQ, without flash attention
    logits = 2 * vocab * parallel * 4  # in the graph, and the output buffer
    compute = int(activations + mask + scores + logits)
    if encoder:
        compute = ubatch * embd * ENCODER_BYTES_PER_TOKEN_DIM

    vocab_bytes = vocab * VOCAB_BYTES_PER_TOKEN
    total = meta.tensor_bytes + repacked + kv + compute + vocab_bytes + BASE_BYTES
    return Estimate(
        total=int(total),
        weights=meta.tensor_bytes,
        repacked=repacked,
        kv_cache=kv,
        compute=compute,
        vocab=vocab_bytes,
        base=BASE_BYTES,
        context_size=int(context_size),
        parallel=parallel,
        cache_type_k=cache_type_k,
        cache_type_v=cache_type_v,
        kv_cells=n_ctx,
        kv_cells_swa=cells_swa,
    )


def estimate_settings(model_path: str, settings: Mapping[str, object]) -> Estimate:
    """The estimate for a GGUF file and an instance's resolved settings (lf.runtimes.launch.InstanceSpec's
    `settings`): what `lf runtime start`, `lf models info` and a memory budget (the gateway's) share."""
    from lf.models.gguf_meta import GgufError, read

    def get(name: str, default):
        value = settings.get(name)
        return default if value is None else value

    try:
        meta = read(model_path)
    except (GgufError, OSError) as exc:
        raise unusable_model(model_path, exc) from None
    return estimate(
        meta,
        int(get("context_size", 4096)),
        int(get("parallel", 1)),
        str(get("cache_type_k", "f16")),
        str(get("cache_type_v", "f16")),
        batch_size=settings.get("batch_size"),  # type: ignore[arg-type]
        flash_attn=settings.get("flash_attn"),  # type: ignore[arg-type]
    )


MIN_AUTO_CONTEXT = 2048  # what `context_size: auto` never goes below (a chat needs room for its turns)
AUTO_STEP = 1024  # the context sizes auto tries are multiples of this


def fit_context(model_path: str, settings: Mapping[str, object], room: int) -> Estimate:
    """The estimate at the largest context (a multiple of AUTO_STEP, up to the model's trained length, at least
    MIN_AUTO_CONTEXT) whose instance fits in `room` bytes; at MIN_AUTO_CONTEXT when none does (the caller
    says that it does not fit). What `context_size: auto` starts with."""
    from lf.models.gguf_meta import GgufError, read

    try:
        trained = read(model_path).context_length or MIN_AUTO_CONTEXT
    except (GgufError, OSError) as exc:
        raise unusable_model(model_path, exc) from None
    top = max(MIN_AUTO_CONTEXT, trained)

    def at(ctx: int) -> Estimate:
        return estimate_settings(model_path, {**settings, "context_size": ctx})

    best = at(MIN_AUTO_CONTEXT)
    if best.total > room:
        return best
    low, high = MIN_AUTO_CONTEXT // AUTO_STEP, max(MIN_AUTO_CONTEXT, top) // AUTO_STEP
    while low < high:  # the estimate grows with the context: the largest step that fits
        mid = (low + high + 1) // 2
        candidate = at(mid * AUTO_STEP)
        if candidate.total <= room:
            low, best = mid, candidate
        else:
            high = mid - 1
    if top % AUTO_STEP and top > best.context_size and (full := at(top)).total <= room:
        best = full  # the trained length itself, when it is not a multiple of the step
    return best


def unusable_model(path: str, exc: Exception):
    """The error (exit 8, as for a model that is not installed) for a model file whose header cannot be read:
    no engine would load it either."""
    from lf.errors import ExitStatus, LfError

    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return LfError(
        f"the model file {path} cannot be used: {reason}",
        hint="fetch or pull it again (lf models pull resumes an interrupted download), or choose another model",
        exit_status=ExitStatus.NOT_INSTALLED,
    )
