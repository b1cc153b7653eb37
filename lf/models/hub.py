"""GGUF models from the Hugging Face Hub: references, finding them in the standard cache, pulling them.

A reference is `org/repo` (its one GGUF), `org/repo:QUANT` (the file of that quant, LlamaFarm's form; a
split `-00001-of-0000N.gguf` set counts as one model) or `org/repo/path/file.gguf`. Files live in the
Hugging Face cache (HF_HOME, HF_HUB_CACHE), laid out as huggingface_hub lays it out, so other tools share
them. Finding a cached model reads that layout and imports nothing heavy: `lf runtime start` must not touch
the network nor wait for huggingface_hub's import when the model is already there.

Pulling goes through huggingface_hub (endpoint, token, offline mode, proxies, errors: HF_ENDPOINT,
HF_TOKEN, HF_HUB_OFFLINE). Two things its `hf_hub_download` does not do in the pinned versions, so they
are done here: it discards a partial download (we keep `blobs/<etag>.incomplete` and continue it with a
Range request, as older huggingface_hub versions did), and it checks only the size (we check the sha256
the Hub lists for every LFS file before the blob is moved into place).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lf.errors import ExitStatus, LfError, NotInstalledError, UnknownNameError

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"  # a Hub org or repo name
_REPO_RE = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?::(?P<quant>[A-Za-z0-9][A-Za-z0-9._-]*))?$")
_FILE_RE = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})/(?P<file>[^:]+\.gguf)$", re.IGNORECASE)
_SPLIT_RE = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
# a quantization named in a file name: Q4_K_M, Q8_0, IQ4_XS, UD-Q4_K_XL, TQ1_0, BF16, F16, F32, MXFP4
_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q\d+(?:_[A-Z0-9]+)*|TQ\d_\d|BF16|F16|F32|MXFP4(?:_MOE)?))(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class HubUnreachableError(LfError):
    """The Hub could not be asked (no network, offline mode, a server error, access refused): exit 9."""

    exit_status = ExitStatus.REQUEST_FAILED


class ModelNotPulledError(NotInstalledError):
    """A Hub reference that is not in the cache: exit 8, with the command that pulls it."""

    def __init__(self, ref: HubRef):
        super().__init__(
            f"model {ref} is not in the Hugging Face cache ({hub_cache_dir()})",
            hint=f"pull it with: lf models pull {ref}\n(or start with --pull)",
        )
        self.ref = ref


@dataclass(frozen=True)
class HubRef:
    repo: str  # org/name
    filename: str | None = None  # org/repo/path/file.gguf
    quant: str | None = None  # org/repo:QUANT
    revision: str = "main"

    def __str__(self) -> str:
        if self.filename:
            return f"{self.repo}/{self.filename}"
        return f"{self.repo}:{self.quant}" if self.quant else self.repo


def parse_ref(text: str) -> HubRef | None:
    """`text` as a Hub reference, or None when it does not have that shape (a path, a known name)."""
    text = text.strip()
    if text.startswith((".", "~", "/")) or "\\" in text or "//" in text or ".." in text:
        return None
    match = _REPO_RE.match(text)
    if match:
        if match["quant"] is None and match["repo"].lower().endswith(".gguf"):
            return None  # dir/file.gguf: a local file name, not a repo
        return HubRef(repo=match["repo"], quant=match["quant"])
    match = _FILE_RE.match(text)
    if match:
        return HubRef(repo=match["repo"], filename=match["file"])
    return None


@dataclass(frozen=True)
class GgufModel:
    """One model in a repo: a GGUF file, or every part of a split one (the first part is what engines load)."""

    files: tuple[str, ...]
    quant: str | None
    size: int | None = None

    @property
    def name(self) -> str:
        return self.files[0]


def quant_of(filename: str) -> str | None:
    base = _base(filename)
    found = _QUANT_RE.findall(base)
    return found[-1].upper() if found else None


def _base(filename: str) -> str:
    name = filename.rsplit("/", 1)[-1]
    split = _SPLIT_RE.match(name)
    return split["stem"] if split else re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)


def gguf_models(files: Iterable[str], sizes: dict[str, int | None] | None = None) -> list[GgufModel]:
    """The models among a repo's files: GGUFs (not vision projectors, `mmproj*`), split sets grouped."""
    sizes = sizes or {}
    singles: list[str] = []
    sets: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for name in files:
        if not name.lower().endswith(".gguf") or name.rsplit("/", 1)[-1].lower().startswith("mmproj"):
            continue
        split = _SPLIT_RE.match(name)
        if split:
            sets.setdefault((split["stem"], split["count"]), []).append((int(split["index"]), name))
        else:
            singles.append(name)
    groups = [(n,) for n in singles] + [tuple(n for _, n in sorted(parts)) for parts in sets.values()]
    models = []
    for group in sorted(groups):
        part_sizes = [sizes.get(n) for n in group]
        total = sum(part_sizes) if all(s is not None for s in part_sizes) else None  # type: ignore[arg-type]
        models.append(GgufModel(files=group, quant=quant_of(group[0]), size=total))
    return models


def _quant_matches(model: GgufModel, quant: str) -> bool:
    pattern = rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])"
    return re.search(pattern, _base(model.name), re.IGNORECASE) is not None


def select(ref: HubRef, models: list[GgufModel], files: Iterable[str] = ()) -> GgufModel:
    """The model a reference names among a repo's models; a clear error when it names none or several."""
    if ref.filename:
        for model in models:
            if ref.filename in model.files:
                return model if ref.filename == model.files[0] else GgufModel((ref.filename,), model.quant)
        raise UnknownNameError(
            f"{ref.repo} has no file {ref.filename!r}",
            hint=_choices(ref, models) if models else None,
        )
    if not models:
        others = [f for f in files if not f.startswith(".")][:8]
        raise UnknownNameError(
            f"{ref.repo} holds no GGUF model file",
            hint=(f"its files: {', '.join(others)}" if others else "the repository is empty")
            + "\nlf pulls GGUF files (for llamacpp and llama-cpp-python); look for a repo named …-GGUF",
        )
    if ref.quant:
        matching = [m for m in models if _quant_matches(m, ref.quant)]
        if len(matching) == 1:
            return matching[0]
        if not matching:
            raise UnknownNameError(f"{ref.repo} has no GGUF of quant {ref.quant}", hint=_choices(ref, models))
        raise LfError(
            f"{ref} is ambiguous: {len(matching)} models in {ref.repo} are {ref.quant}",
            hint=_choices(ref, matching),
            exit_status=ExitStatus.USAGE,
        )
    if len(models) == 1:
        return models[0]
    raise LfError(
        f"{ref.repo} holds {len(models)} GGUF models: say which one",
        hint=_choices(ref, models),
        exit_status=ExitStatus.USAGE,
    )


def _choices(ref: HubRef, models: list[GgufModel]) -> str:
    """One line per model with the exact command that pulls it: by quant when that names it alone."""
    lines = ["pick one:"]
    for model in models:
        quant_alone = model.quant and sum(1 for m in models if m.quant and m.quant == model.quant) == 1
        how = f"{ref.repo}:{model.quant}" if quant_alone else f"{ref.repo}/{model.name}"
        parts = f", {len(model.files)} parts" if len(model.files) > 1 else ""
        size = (
            f" ({human_size(model.size)}{parts})"
            if model.size is not None
            else (f" ({len(model.files)} parts)" if parts else "")
        )
        lines.append(f"  lf models pull {how}{size}")
    return "\n".join(lines)


def human_size(n: int | float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# --- the cache, read without huggingface_hub's download machinery --------------------------------------


def hub_cache_dir() -> Path:
    from huggingface_hub import constants  # reads HF_HOME / HF_HUB_CACHE as every HF tool does; cheap

    return Path(constants.HF_HUB_CACHE)


def repo_cache_dir(repo: str) -> Path:
    return hub_cache_dir() / ("models--" + repo.replace("/", "--"))


def _snapshot(repo: str, revision: str) -> tuple[str, Path] | None:
    folder = repo_cache_dir(repo)
    commit = revision
    ref_file = folder / "refs" / revision
    if ref_file.is_file():
        commit = ref_file.read_text().strip()
    snapshot = folder / "snapshots" / commit
    return (commit, snapshot) if snapshot.is_dir() else None


def find_cached(ref: HubRef) -> Path | None:
    """The cached file a reference names (the first part of a split model, all parts present), or None.
    The path is the snapshot's, not the blob it links to: llama.cpp finds split parts next to the first."""
    found = _snapshot(ref.repo, ref.revision)
    if found is None:
        return None
    _, snapshot = found
    if ref.filename:
        path = snapshot / ref.filename
        return path if path.is_file() else None
    files = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.gguf")]
    try:
        model = select(ref, gguf_models(files))
    except LfError:
        return None
    if not all((snapshot / name).is_file() for name in model.files):
        return None
    return snapshot / model.name


def resolve_cached(ref: HubRef) -> Path:
    """For a model entry: the cached file, or exit 8 naming the exact `lf models pull`."""
    path = find_cached(ref)
    if path is None:
        raise ModelNotPulledError(ref)
    return path


# --- pulling ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadProgress:
    """An event while a file downloads: bytes on disk so far (resumed bytes included) of `total`."""

    filename: str
    done: int
    total: int | None
    resumed_from: int = 0
    finished: bool = False


@dataclass(frozen=True)
class PulledFile:
    name: str
    path: Path
    size: int | None
    sha256: str | None
    already_present: bool
    downloaded_bytes: int = 0
    resumed_from: int = 0


@dataclass(frozen=True)
class PullResult:
    ref: HubRef
    commit: str | None
    model: GgufModel
    files: tuple[PulledFile, ...]
    path: Path
    already_present: bool
    offline: bool = False  # the Hub was not asked (HF_HUB_OFFLINE) or not reachable: the cached copy was used
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def size(self) -> int:
        return sum(f.path.stat().st_size for f in self.files)

    @property
    def downloaded_bytes(self) -> int:
        return sum(f.downloaded_bytes for f in self.files)

    def to_dict(self) -> dict:
        return {
            "ref": str(self.ref),
            "repo": self.ref.repo,
            "revision": self.ref.revision,
            "commit": self.commit,
            "quant": self.model.quant,
            "files": [
                {
                    "name": f.name,
                    "path": str(f.path),
                    "size": f.path.stat().st_size,
                    "sha256": f.sha256,
                    "already_present": f.already_present,
                    "downloaded_bytes": f.downloaded_bytes,
                    "resumed_from": f.resumed_from,
                }
                for f in self.files
            ],
            "path": str(self.path),
            "size": self.size,
            "already_present": self.already_present,
            "downloaded_bytes": self.downloaded_bytes,
            "offline": self.offline,
            "cache_dir": str(hub_cache_dir()),
        }


OnProgress = Callable[[DownloadProgress], None]


def pull(ref: HubRef, on_progress: OnProgress | None = None) -> PullResult:
    """Download the model a reference names into the Hugging Face cache (continuing a partial download),
    check each file's sha256, and return where it is. Already cached: nothing is downloaded."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return _cached_result(ref, "HF_HUB_OFFLINE is set", hint="unset HF_HUB_OFFLINE to download it")
    info = _model_info(ref)
    if info is None:  # not reachable, but cached
        return _cached_result(ref, "the Hugging Face Hub is not reachable")
    files = [s.rfilename for s in info.siblings or []]
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    sha256 = {s.rfilename: (s.lfs.sha256 if s.lfs else None) for s in info.siblings or []}
    model = select(ref, gguf_models(files, sizes), files)
    commit = info.sha
    snapshot = repo_cache_dir(ref.repo) / "snapshots" / (commit or ref.revision)
    wanted = [name for name in model.files if not (snapshot / name).is_file()]
    _check_disk_space(ref, [(name, sizes.get(name)) for name in wanted])
    pulled = []
    for name in model.files:
        if name in wanted:
            pulled.append(_download(ref, commit or ref.revision, name, sizes.get(name), sha256.get(name), on_progress))
        else:
            pulled.append(PulledFile(name, snapshot / name, sizes.get(name), sha256.get(name), already_present=True))
    path = pulled[0].path
    return PullResult(ref, commit, model, tuple(pulled), path, already_present=not wanted)


def _cached_result(ref: HubRef, why: str, hint: str | None = None) -> PullResult:
    """The Hub cannot be asked: the cached copy if there is one, else exit 9 saying why."""
    path = find_cached(ref)
    if path is None:
        raise HubUnreachableError(
            f"cannot pull {ref}: {why}, and it is not in the cache ({hub_cache_dir()})", hint=hint
        )
    commit, snapshot = _snapshot(ref.repo, ref.revision) or (None, path.parent)
    if ref.filename:
        model = GgufModel((ref.filename,), quant_of(ref.filename))
    else:
        files = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.gguf")]
        model = select(ref, gguf_models(files))
    pulled = tuple(
        PulledFile(n, snapshot / n, (snapshot / n).stat().st_size, None, already_present=True) for n in model.files
    )
    return PullResult(
        ref, commit, model, pulled, path, already_present=True, offline=True, notes=(f"{why}: using the cached copy",)
    )


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _network_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        import httpx2 as http  # huggingface_hub's HTTP client (its own httpx fork since 2.x)
    except ImportError:
        import httpx as http  # type: ignore[no-redef]
    return (http.TransportError, OfflineModeIsEnabled)


def _model_info(ref: HubRef):
    """The repo's file list with sizes and sha256 (one request); None when the Hub is unreachable but the
    model is cached."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return HfApi().model_info(
            ref.repo, revision=None if ref.revision == "main" else ref.revision, files_metadata=True
        )
    except GatedRepoError as exc:
        raise _gated(ref, exc) from None
    except RepositoryNotFoundError:
        raise UnknownNameError(
            f"no model repository {ref.repo} on the Hugging Face Hub ({_endpoint()})",
            hint="check the name (org/repo, as in the Hub's URL); a private repo needs a token: set HF_TOKEN",
        ) from None
    except RevisionNotFoundError:
        raise UnknownNameError(f"{ref.repo} has no revision {ref.revision!r}") from None
    except _network_errors() as exc:
        if find_cached(ref) is not None:
            return None
        raise HubUnreachableError(
            f"cannot reach the Hugging Face Hub at {_endpoint()}: {_reason(exc)}",
            hint="check the network (or HF_ENDPOINT, proxies); models already pulled work offline",
        ) from None
    except HfHubHTTPError as exc:
        raise HubUnreachableError(f"the Hugging Face Hub refused the request for {ref.repo}: {_reason(exc)}") from None


def _gated(ref: HubRef, exc: BaseException) -> LfError:
    from huggingface_hub import get_token

    if get_token():
        hint = f"your token has no access yet: accept the model's terms on its Hub page ({ref.repo}), then pull again"
    else:
        hint = f"accept the model's terms on its Hub page ({ref.repo}), then set HF_TOKEN to a token of that account"
    return HubUnreachableError(f"{ref.repo} is a gated model: downloading it needs an access token", hint=hint)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return next((line for line in text if line.strip()), type(exc).__name__)[:300]


def _check_disk_space(ref: HubRef, files: list[tuple[str, int | None]]) -> None:
    """Refuse before downloading when the files' known size does not fit (partial downloads counted)."""
    blobs = repo_cache_dir(ref.repo) / "blobs"
    partial = {p.name: p.stat().st_size for p in blobs.glob("*.incomplete")} if blobs.is_dir() else {}
    needed = sum(size for _, size in files if size) - sum(partial.values())
    if needed <= 0:
        return
    where = blobs
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if needed > free:
        raise LfError(
            f"not enough disk space for {ref}: it needs {human_size(needed)}, {where} has {human_size(free)} free",
            hint="free some space, or point HF_HOME (or HF_HUB_CACHE) at a disk with room",
        )


def _download(
    ref: HubRef,
    commit: str,
    name: str,
    listed_size: int | None,
    listed_sha256: str | None,
    on_progress: OnProgress | None,
) -> PulledFile:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RemoteEntryNotFoundError
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    url = hf_hub_url(ref.repo, name, revision=commit)
    try:
        meta = get_hf_file_metadata(url)
    except GatedRepoError as exc:
        raise _gated(ref, exc) from None
    except RemoteEntryNotFoundError:
        raise UnknownNameError(f"{ref.repo} has no file {name!r} (at {commit})") from None
    except _network_errors() as exc:
        raise HubUnreachableError(f"cannot reach the Hugging Face Hub at {_endpoint()}: {_reason(exc)}") from None
    except HfHubHTTPError as exc:
        raise HubUnreachableError(f"the Hugging Face Hub refused {name}: {_reason(exc)}") from None
    if not meta.etag:
        raise HubUnreachableError(f"the Hub gave no ETag for {name}: cannot store it in the cache")
    size = meta.size if meta.size is not None else listed_size
    expected = listed_sha256 or (meta.etag if _SHA256_RE.match(meta.etag) else None)
    folder = repo_cache_dir(ref.repo)
    blob = folder / "blobs" / meta.etag
    partial = blob.with_name(blob.name + ".incomplete")  # huggingface_hub's own name for it before 1.0
    lock = folder.parent / ".locks" / folder.name / f"{meta.etag}.lock"  # the one hf_hub_download takes
    try:
        blob.parent.mkdir(parents=True, exist_ok=True)
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        no_room = _no_room(ref, name, partial, size, exc)
        if no_room is None:
            raise
        raise no_room from None
    resumed_from = downloaded = 0
    with WeakFileLock(str(lock)):
        if not blob.is_file():
            resumed_from = partial.stat().st_size if partial.is_file() else 0
            if size is not None and resumed_from > size:
                partial.unlink()
                resumed_from = 0
            headers = build_hf_headers()
            if meta.location and _host(meta.location) != _host(url):
                headers.pop("authorization", None)  # a signed CDN URL: the token stays with the Hub
            progress = _progress_class(name, resumed_from, on_progress)
            try:
                with open(partial, "ab") as fh:
                    http_get(
                        meta.location or url,
                        fh,
                        resume_size=resumed_from,
                        headers=headers,
                        expected_size=size,
                        displayed_filename=name,
                        tqdm_class=progress,
                    )
            except _network_errors() + (HfHubHTTPError,) as exc:
                have = partial.stat().st_size if partial.is_file() else 0
                raise HubUnreachableError(
                    f"the download of {name} stopped at {human_size(have)} of {human_size(size)}: {_reason(exc)}",
                    hint=f"run the same command again: it continues from there (lf models pull {ref})",
                ) from None
            except ValueError as exc:  # over the Hub's limit for plain HTTP downloads (50 GB)
                raise LfError(f"cannot download {name}: {_reason(exc)}") from None
            except OSError as exc:
                if "Consistency check failed" not in str(exc):
                    no_room = _no_room(ref, name, partial, size, exc)
                    if no_room is None:
                        raise
                    raise no_room from None
                partial.unlink(missing_ok=True)
                raise HubUnreachableError(
                    f"the download of {name} has the wrong size: {_reason(exc)}",
                    hint="the partial file was removed; pull again",
                ) from None
            downloaded = partial.stat().st_size - resumed_from
            if expected is not None:
                actual = _sha256(partial)
                if actual != expected:
                    partial.unlink()
                    raise HubUnreachableError(
                        f"the download of {name} is corrupt: its sha256 is {actual}, the Hub lists {expected}",
                        hint=f"the bad file was removed; pull again (lf models pull {ref}); "
                        "if it repeats, a proxy or the disk is damaging it",
                    )
            os.chmod(partial, 0o666 & ~_umask())
            os.replace(partial, blob)
    # huggingface_hub links the blob into the snapshot and records the revision, as for its own downloads
    try:
        path = Path(hf_hub_download(ref.repo, name, revision=ref.revision))
    except _network_errors() + (HfHubHTTPError,) as exc:
        raise HubUnreachableError(
            f"{name} is downloaded, but the Hub could not be asked to record it: {_reason(exc)}", hint="pull again"
        ) from None
    except OSError as exc:
        if exc.errno not in _NO_ROOM:
            raise
        raise LfError(
            f"{name} is downloaded ({blob}), but there is no room left in {folder} to link it into the cache: "
            f"{exc.strerror}",
            hint=f"free some space and run the same command again (lf models pull {ref}): nothing is downloaded again",
        ) from None
    return PulledFile(
        name, path, size, expected, already_present=False, downloaded_bytes=downloaded, resumed_from=resumed_from
    )


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _no_room(ref: HubRef, name: str, partial: Path, size: int | None, exc: OSError) -> LfError | None:
    """The error for a download the disk had no room for (full, over quota, past a file size limit), saying
    where, how much it needed and had, and that what came is kept; None for any other OSError."""
    if exc.errno not in _NO_ROOM:
        return None
    folder = partial.parent
    have = partial.stat().st_size if partial.is_file() else 0
    where = folder
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    missing = f"{human_size(size - have)} more" if size is not None else "more"
    if exc.errno == errno.EFBIG:
        why = f"the file cannot grow past {human_size(have)} ({exc.strerror}: a limit on file size, see ulimit -f)"
    else:
        why = f"{exc.strerror}: {where} has {human_size(free)} free, and it needs {missing}"
    kept = (
        f"the {human_size(have)} downloaded so far are kept ({partial}): " if have else ""
    ) + f"make room and run the same command again, it continues from there (lf models pull {ref})"
    return LfError(
        f"the download of {name} stopped at {human_size(have)} of {human_size(size)}: {why}",
        hint=f"{kept}; or point HF_HOME (or HF_HUB_CACHE) at a disk with room",
    )


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _progress_class(name: str, resumed_from: int, on_progress: OnProgress | None):
    """A tqdm stand-in for http_get: turns its updates into DownloadProgress events (and draws nothing)."""

    class Progress:
        def __init__(self, total=None, initial=0, **_):
            self.total = total
            self.n = initial

        def __enter__(self):
            self._emit()
            return self

        def __exit__(self, *exc):
            if exc[0] is None:
                self._emit(finished=True)

        def update(self, n=1):
            self.n += n
            self._emit()

        def _emit(self, finished: bool = False):
            if on_progress is not None:
                on_progress(DownloadProgress(name, self.n, self.total, resumed_from, finished))

        def close(self):
            pass

    return Progress
