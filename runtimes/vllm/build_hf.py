"""Convert a GGUF file into a Hugging Face model folder, offline. Runs inside vLLM's env (not lf's).

vLLM 0.32 has no GGUF loader; transformers (with gguf and accelerate) reads the GGUF and writes safetensors,
config and tokenizer. The export is the one Lemonade's ONNX builder starts with (its tokenizer fixes for
SmolLM2 included), loaded from runtimes/lemonade/build_onnx.py so both runtimes get the same folder.
`lf models build-hf` (lf.models.hf) starts it; it imports nothing from lf, since lf is not installed here.

    python build_hf.py --gguf FILE --out DIR [--dtype float32|bfloat16|float16]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

SHARED_EXPORT = Path(__file__).resolve().parent.parent / "lemonade" / "build_onnx.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub: everything comes from the GGUF file
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    started = time.monotonic()
    step(f"reading {args.gguf.name} with transformers")
    export = _shared_export()
    export.export_hf(args.gguf, args.out, tiny=False)
    if args.dtype != "float32":
        step(f"casting the weights to {args.dtype}")
        _cast(args.out, args.dtype)
    step(f"done in {time.monotonic() - started:.0f}s: {args.out}")
    return 0


def _shared_export():
    spec = importlib.util.spec_from_file_location("lf_gguf_export", SHARED_EXPORT)
    if spec is None or spec.loader is None:
        raise SystemExit(f"build-hf: {SHARED_EXPORT} is missing")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cast(folder: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=getattr(torch, dtype))
    model.save_pretrained(str(folder))


def step(text: str) -> None:
    print(f"build-hf: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
