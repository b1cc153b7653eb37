"""Run llama.cpp's server (through the xllamacpp wheel) until SIGTERM or SIGINT.

xllamacpp serves in background threads for as long as the process lives, so this process is the daemon:
it builds the server, then waits for a signal and lets the server shut down cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lf.runtimes.engines.xllamacpp_server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ctx-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--alias", default=None)
    # llama-server's defaults: 4 slots sharing one (unified) KV cache, so requests are served at once
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args(argv)

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
