"""Build an ONNX Runtime GenAI model from a GGUF file, offline. Runs inside Lemonade's env (not lf's).

It runs there so the model is built by the onnxruntime-genai that will load it: Lemonade v6 pins 0.6.0,
which cannot read models built by newer releases. `lf models build-onnx` (lf.onnx_build) starts it; it
imports nothing from lf, since lf is not installed in that env.

    python build_onnx.py --gguf FILE --out DIR --work DIR [--tiny]

--tiny keeps the tokenizer but replaces the weights with a random 2-layer model: it builds in seconds and
exercises the whole serving path, but its answers are nonsense.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path, help="scratch folder (Hugging Face copy, builder cache)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--precision", default="int4", choices=["int4", "fp32"])
    args = parser.parse_args()
    # no model hub: everything comes from the GGUF file
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    started = time.monotonic()
    hf_dir = args.work / "hf"
    step(f"reading {args.gguf.name} with transformers")
    export_hf(args.gguf, hf_dir, tiny=args.tiny)
    step(f"building the ONNX model ({args.precision}, cpu) with onnxruntime-genai's model builder")
    builder = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(hf_dir),
        "-o",
        str(args.out),
        "-p",
        args.precision,
        "-e",
        "cpu",
        "-c",
        str(args.work / "cache"),
    ]
    subprocess.run(builder, check=True)
    step(f"done in {time.monotonic() - started:.0f}s")
    return 0


def export_hf(gguf: Path, hf_dir: Path, tiny: bool) -> None:
    """A plain Hugging Face Llama folder (safetensors + tokenizer) that the model builder can read."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    meta = gguf_metadata(gguf)
    bos_id, eos_id = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    # transformers' GGUF tokenizer conversion gets these wrong for SmolLM2 (eos = <|im_start|>, add_bos on):
    # take them from the GGUF itself, or generation never stops at the end of the answer
    if bos_id is not None:
        tokenizer.bos_token = tokenizer.convert_ids_to_tokens(bos_id)
    if eos_id is not None:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    if add_bos is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)
    if tiny:
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config)
    else:
        source = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32)
        # a fresh model with the same weights: drops what the GGUF loader attached (quantization
        # metadata) that the builder does not understand
        config = LlamaConfig(**{k: v for k, v in source.config.to_dict().items() if k != "quantization_config"})
        model = LlamaForCausalLM(config)
        model.load_state_dict(source.state_dict())
    model.config.bos_token_id = model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(hf_dir))
    tokenizer.save_pretrained(str(hf_dir))
    # the GGUF-backed tokenizer "saves its vocab file" by copying the whole GGUF as tokenizer.model;
    # tokenizer.json holds everything, and the builder would copy that 100 MB file into the model
    (hf_dir / "tokenizer.model").unlink(missing_ok=True)
    if meta.get("tokenizer.ggml.model") == "gpt2":
        plain_byte_level_bpe(hf_dir / "tokenizer.json", digits=meta.get("tokenizer.ggml.pre") == "smollm")


def plain_byte_level_bpe(path: Path, digits: bool) -> None:
    """Rewrite a GGUF-converted byte-level BPE tokenizer.json the way GPT-2-style tokenizers are written.

    transformers' converter adds SentencePiece-style parts (byte_fallback, a ▁-replacing decoder); the
    tokenizer inside onnxruntime-genai 0.6.0 then maps spaces and newlines to unknown ids, and the model
    answers garbage. `digits`: split numbers into single digits first, as SmolLM2's pre-tokenizer does.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    data["normalizer"] = None
    data["pre_tokenizer"] = (
        {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
        if digits
        else byte_level
    )
    data["decoder"] = {**byte_level, "add_prefix_space": True}
    data["model"]["byte_fallback"] = False
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def gguf_metadata(gguf: Path) -> dict:
    """The GGUF's scalar tokenizer metadata (ids, flags, names), as the file itself states it."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(gguf))
    values = {}
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.ggml.") or not field.data or len(field.types) != 1:
            continue  # arrays (the vocabulary, merges) are not needed here
        part = field.parts[field.data[0]]
        if field.types[0] == GGUFValueType.STRING:
            values[key] = bytes(part).decode("utf-8", "replace")
        else:
            values[key] = part[0].item()
    return values


def step(text: str) -> None:
    print(f"build-onnx: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
