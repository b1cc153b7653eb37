"""Run llama.cpp's server (through the xllamacpp wheel) until SIGTERM or SIGINT.

xllamacpp serves in background threads for as long as the process lives, so this process is the daemon:
it builds the server, then waits for a signal and lets the server shut down cleanly.

It takes llama-server's own spelling for the flags it supports, so a model entry's `engine_args` work with
either engine; `--param NAME=VALUE` sets any other field of xllamacpp's CommonParams.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lf.runtimes.engines.xllamacpp_server", allow_abbrev=False)
    parser.add_argument("--model", "-m", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ctx-size", "-c", type=int, default=4096)
    parser.add_argument("--threads", "-t", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--alias", "-a", default=None)
    # llama-server's defaults: 4 slots sharing one (unified) KV cache, so requests are served at once
    parser.add_argument("--parallel", "-np", type=int, default=4)
    parser.add_argument("--embeddings", "--embedding", action="store_true", help="serve /v1/embeddings")
    parser.add_argument("--batch-size", "-b", type=int)
    parser.add_argument("--ubatch-size", "-ub", type=int)
    parser.add_argument("--n-gpu-layers", "--gpu-layers", "-ngl", type=int)
    parser.add_argument("--flash-attn", "-fa", choices=["on", "off", "auto"])
    mmap = parser.add_mutually_exclusive_group()
    mmap.add_argument(
        "--mmap", dest="mmap", action="store_true", default=None, help="memory-map the model file (the default)"
    )
    mmap.add_argument("--no-mmap", dest="mmap", action="store_false", help="read the model into memory instead")
    parser.add_argument("--mlock", action="store_true", help="lock the model in RAM")
    parser.add_argument("--cache-type-k", "-ctk")
    parser.add_argument("--cache-type-v", "-ctv")
    parser.add_argument("--pooling", choices=["none", "mean", "cls", "last", "rank"])
    parser.add_argument("--chat-template")
    parser.add_argument("--keep", type=int)
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="any CommonParams field, e.g. n_keep=16"
    )
    return parser


def configure(params, args) -> None:
    """Apply the parsed flags to xllamacpp's CommonParams."""
    import xllamacpp

    params.model.path = args.model
    params.n_ctx = args.ctx_size
    params.hostnames = [args.host]
    params.port = args.port
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.n_parallel = args.parallel
    params.kv_unified = True
    if args.alias:
        params.model_alias = {args.alias}
    params.embedding = args.embeddings
    for flag, field in (
        ("batch_size", "n_batch"),
        ("ubatch_size", "n_ubatch"),
        ("n_gpu_layers", "n_gpu_layers"),
        ("keep", "n_keep"),
        ("chat_template", "chat_template"),
    ):
        if getattr(args, flag) is not None:
            setattr(params, field, getattr(args, flag))
    if args.flash_attn:
        kind = {"on": "ENABLED", "off": "DISABLED", "auto": "AUTO"}[args.flash_attn]
        params.flash_attn_type = getattr(xllamacpp.llama_flash_attn_type, f"LLAMA_FLASH_ATTN_TYPE_{kind}")
    for flag, field in (("cache_type_k", "cache_type_k"), ("cache_type_v", "cache_type_v")):
        if getattr(args, flag):
            setattr(params, field, getattr(xllamacpp.ggml_type, f"GGML_TYPE_{getattr(args, flag).upper()}"))
    if args.mmap is not None or args.mlock:
        _set_load_mode(params, xllamacpp, mmap=args.mmap is not False, mlock=args.mlock)
    if args.pooling:
        params.pooling_type = getattr(xllamacpp.llama_pooling_type, f"LLAMA_POOLING_TYPE_{args.pooling.upper()}")
    if args.no_warmup:
        params.warmup = False
    for item in args.param:
        name, _, text = item.partition("=")
        current = getattr(params, name)  # AttributeError: a field CommonParams does not have
        value = text.lower() in ("1", "true", "yes", "on") if isinstance(current, bool) else type(current)(text)
        setattr(params, name, value)


def _set_load_mode(params, xllamacpp, mmap: bool, mlock: bool) -> None:
    """llama.cpp's --mmap/--no-mmap and --mlock: one load mode in recent builds, two booleans in older ones."""
    if hasattr(params, "load_mode"):
        kind = {(True, True): "MMAP_MLOCK", (True, False): "MMAP", (False, True): "MLOCK", (False, False): "NONE"}[
            (mmap, mlock)
        ]
        params.load_mode = getattr(xllamacpp.llama_load_mode, f"LLAMA_LOAD_MODE_{kind}")
    else:
        params.use_mmap, params.use_mlock = mmap, mlock


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    if not os.path.isfile(args.model):
        print(f"error: model file not found: {args.model}", file=sys.stderr, flush=True)
        return 2

    # Block SIGTERM/SIGINT before the server's threads exist (they inherit the mask) and take them with
    # sigwait in this thread. A handler would run only in the main thread, and a process-directed signal
    # the kernel hands to one of llama.cpp's threads would leave the main thread waiting forever: the
    # stop then needs SIGKILL.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    import xllamacpp

    params = xllamacpp.CommonParams()
    try:
        configure(params, args)
    except (AttributeError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        server = xllamacpp.Server(params)
    except Exception as exc:  # the engine reports load failures as exceptions; the log carries them
        print(f"error: llama.cpp server failed to start: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"lf: llama.cpp server listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    signal.sigwait(stop_signals)
    print("lf: shutting down", file=sys.stderr, flush=True)
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
