"""ONNX Runtime GenAI models built offline from a GGUF file (`lf models build-onnx`), for Lemonade.

No ONNX LLM ships on the package index, and no model hub may be reachable: transformers reads the GGUF,
onnxruntime-genai's model builder writes the ONNX model, both in the env of the runtime whose manifest
declares an `onnx` builder (Lemonade's, runtimes/lemonade/build_onnx.py). What every build shares is in
lf.models.build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

from lf.models.build import DEFAULT_SOURCE, BuildError, BuildResult, Kind, build
from lf.models.build import default_name as _default_name
from lf.models.build import is_built as _is_built

ONNX = Kind(key="onnx", what="ONNX", suffix="onnx", marker="genai_config.json", command="lf models build-onnx")
# onnxruntime-genai 0.6.0 (Lemonade v6) rejects the Llama tokenizer class transformers writes; the SmolLM2
# vocabulary is byte-level BPE, which it reads as GPT2Tokenizer from tokenizer.json
TOKENIZER_CLASS = "GPT2Tokenizer"


def default_name(source: str, tiny: bool) -> str:
    return _default_name(ONNX, source, *(["tiny"] if tiny else []))


def is_built(path: Path) -> bool:
    return _is_built(ONNX, path)


def build_onnx(
    source: str = DEFAULT_SOURCE,
    *,
    name: str | None = None,
    tiny: bool = False,
    force: bool = False,
    precision: str = "int4",
    log: IO[str] | None = None,
) -> BuildResult:
    """Build (or find already built) the ONNX model `name` from the GGUF `source`. Output goes to `log`."""
    return build(
        ONNX,
        source,
        name or default_name(source, tiny),
        force=force,
        log=log,
        args=lambda work: ["--work", str(work), "--precision", precision, *(["--tiny"] if tiny else [])],
        finish=fix_tokenizer_config,
        describe=lambda packages: {
            "tiny": tiny,
            "precision": precision,
            "execution_provider": "cpu",
            "onnxruntime_genai": packages.get("onnxruntime-genai"),
        },
    )


def fix_tokenizer_config(folder: Path) -> None:
    path = folder / "tokenizer_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path}: cannot be read after the build: {exc}") from None
    config["tokenizer_class"] = TOKENIZER_CLASS
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
