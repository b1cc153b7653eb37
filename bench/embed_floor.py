"""The in-process floors of P16: all-MiniLM-L6-v2 run by sentence-transformers (torch) or by onnxruntime inside
this very process, no server, no HTTP. Standalone (no lf import): run it with the python of a venv that has
torch and sentence-transformers (and onnxruntime, onnx and onnxscript for the ONNX floor), e.g. the one
scripts/minilm_reference.py describes:

    /tmp/minilm-ref/bin/pip install onnxruntime onnx onnxscript
    /tmp/minilm-ref/bin/python bench/embed_floor.py --model-dir DIR --backend torch --threads 1

Prints one JSON object: seconds to load, per-embedding p50/p95 in ms for one short sentence, peak RSS in MiB,
and the cosine similarity of its vector to sentence-transformers' own (the ONNX floor's correctness check).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

SENTENCE = "How do I reverse a list in Python?"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def torch_embedder(model_dir: Path, threads: int):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(model_dir), device="cpu")
    return lambda text: model.encode(text, normalize_embeddings=True)


def onnx_embedder(model_dir: Path, threads: int, cache: Path):
    import numpy as np
    import onnxruntime
    from tokenizers import Tokenizer

    path = cache / "minilm.onnx"
    if not path.is_file():  # exported once, with torch, outside the timed part
        import torch
        from transformers import AutoModel

        cache.mkdir(parents=True, exist_ok=True)
        bert = AutoModel.from_pretrained(str(model_dir)).eval()

        class Encoder(torch.nn.Module):  # the inputs by name: transformers' forward() takes more, in its own order
            def __init__(self):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.bert(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                ).last_hidden_state

        ids = torch.ones(1, 8, dtype=torch.long)
        with torch.no_grad():
            torch.onnx.export(
                Encoder(),
                (ids, torch.ones_like(ids), torch.zeros_like(ids)),
                str(path),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                dynamic_axes={n: {0: "batch", 1: "tokens"} for n in ("input_ids", "attention_mask", "token_type_ids")},
                dynamo=False,
            )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)

    def embed(text: str):
        encoding = tokenizer.encode(text)
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        (hidden,) = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True))[0]

    return embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, type=Path, help="the Hugging Face folder of all-MiniLM-L6-v2")
    parser.add_argument("--backend", choices=["torch", "onnx"], required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "lf-bench-onnx")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np

    started = time.perf_counter()
    if args.backend == "torch":
        embed = torch_embedder(args.model_dir, args.threads)
    else:
        embed = onnx_embedder(args.model_dir, args.threads, args.cache)
    vector = embed(SENTENCE)
    load = time.perf_counter() - started
    for _ in range(20):
        embed(SENTENCE)
    times = []
    for _ in range(args.requests):
        t = time.perf_counter()
        embed(SENTENCE)
        times.append((time.perf_counter() - t) * 1000)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the reference loads torch
    reference = torch_embedder(args.model_dir, args.threads)(SENTENCE) if args.backend == "onnx" else vector
    print(
        json.dumps(
            {
                "backend": args.backend,
                "threads": args.threads,
                "load_s": load,
                "p50_ms": statistics.median(times),
                "p95_ms": percentile(times, 0.95),
                "rss_mib": rss,
                "cosine_to_reference": float(np.dot(vector, reference)),
            }
        )
    )


if __name__ == "__main__":
    main()
