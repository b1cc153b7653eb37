"""The data behind `lf models list`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path


def collect_models(project, probe_timeout: float) -> dict:
    from lf.daemon.health import http_get
    from lf.daemon.records import StateStore
    from lf.models.catalog import CATALOG, local_model_files

    configured = [
        {"name": e.name, "provider": e.provider, "model": e.model, "default": project.default_model == e.name}
        for e in (project.models if project else [])
    ]
    served, errors = [], []
    for record in StateStore().all_records():  # every project's
        name = record.name
        if not record.process_alive():
            continue
        try:
            status, body = http_get(record.base_url.rstrip("/") + "/models", probe_timeout)
            data = json.loads(body) if status == 200 else {}
        except (OSError, ValueError) as exc:
            errors.append(f"{name}: could not list models ({exc})")
            continue
        for item in data.get("data") or []:
            served.append({"id": item.get("id"), "instance": name, "base_url": record.base_url})
    known = []
    for model in CATALOG.values():
        path = model.path()
        known.append(
            {
                "name": model.name,
                "format": model.format,
                "task": model.task,
                "installed": path is not None,
                "path": str(path) if path else None,
                "description": model.description,
            }
        )
    made = {k["path"] for k in known if k["path"]}  # a converted catalog model lives in the models dir too
    local = [
        {"name": p.name, "format": "gguf" if p.suffix == ".gguf" else "onnx", "path": str(p)}
        for p in local_model_files()
        if str(p) not in made
    ]
    return {"configured": configured, "served": served, "known": known, "local": local, "errors": errors}


# -- local GGUF files, with what their headers say ----------------------------------------------------
SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def _hf_cache_files() -> list[tuple[str, Path]]:
    """(org/repo/file.gguf, snapshot path) of every GGUF in the Hugging Face cache; none without
    huggingface_hub. The first part stands for a split model."""
    try:
        from huggingface_hub import scan_cache_dir
    except ImportError:
        return []
    try:
        info = scan_cache_dir()
    except Exception:  # noqa: BLE001 - no cache yet, or one huggingface_hub cannot read: nothing pulled
        return []
    found = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            for f in sorted(revision.files, key=lambda f: f.file_name):
                name = str(f.file_path.relative_to(revision.snapshot_path).as_posix())
                split = SPLIT_PART.search(name)
                if name.lower().endswith(".gguf") and (split is None or split.group(1) == "00001"):
                    found.append((f"{repo.repo_id}/{name}", f.file_path))
    return found


def local_gguf_files(project=None) -> list[dict]:
    """Every GGUF on this machine lf knows of: packaged (installed), in lf's models dir, pulled into the
    Hugging Face cache, named by a path in llamafarm.yaml. Each {name, source, path}."""
    from lf.models.catalog import CATALOG, existing_path, local_model_files, looks_like_path

    files: list[dict] = [
        {"name": m.name, "source": "packaged", "path": m.path()}
        for m in CATALOG.values()
        if m.format == "gguf" and m.path()
    ]
    files += [{"name": p.name, "source": "models-dir", "path": p} for p in local_model_files() if p.suffix == ".gguf"]
    files += [{"name": name, "source": "hf-cache", "path": path} for name, path in _hf_cache_files()]
    for entry in project.models if project else []:
        if entry.model and looks_like_path(entry.model) and entry.model.endswith(".gguf"):
            path = existing_path(entry.model, project.folder)
            if path is not None:
                files.append({"name": entry.model, "source": "config", "path": path})
    seen, unique = set(), []
    for f in files:
        key = os.path.realpath(f["path"])
        if key not in seen:
            seen.add(key)
            unique.append({**f, "path": str(f["path"])})
    return unique


def describe(item: dict) -> dict:
    """A local GGUF with its header's metadata (an unreadable one: with `error`)."""
    from lf.models.gguf_meta import GgufError, read

    try:
        meta = read(item["path"]).to_dict()
    except GgufError as exc:
        return {**item, "error": exc.reason}
    except OSError as exc:
        return {**item, "error": exc.strerror or str(exc)}
    except Exception as exc:  # noqa: BLE001 - one file the reader fails on must not hide the others
        return {**item, "error": f"unexpected {type(exc).__name__}: {exc} (this is a bug in lf)"}
    meta.pop("path")
    meta["model_name"] = meta.pop("name")  # the header's general.name; `name` stays what lf calls it
    return {**item, **meta}


def find_local(name: str, project=None) -> dict:
    """The local GGUF `name` means: a listed name, an HF reference that is cached, or a path."""
    from lf.errors import UnknownNameError
    from lf.models.catalog import existing_path, packaged

    files = local_gguf_files(project)
    known = packaged(name)  # a catalog name, or its alias (sentence-transformers/all-MiniLM-L6-v2)
    for f in files:
        if f["name"] == name or (known is not None and f["source"] == "packaged" and f["name"] == known.name):
            return f
    path = existing_path(name, project.folder if project else None)
    if path is None:
        path = _cached_ref(name)
    if path is not None:
        real = os.path.realpath(path)
        for f in files:
            if os.path.realpath(f["path"]) == real:
                return f
        return {"name": name, "source": "path", "path": str(path)}
    from lf.suggest import did_you_mean

    raise UnknownNameError(
        f"no local model {name!r}", hint=did_you_mean(name, [f["name"] for f in files]) or "see: lf models list"
    )


def _cached_ref(name: str) -> Path | None:
    try:
        from lf.models.hub import find_cached, parse_ref
    except ImportError:
        return None
    ref = parse_ref(name)
    return find_cached(ref) if ref is not None else None


def users_of(path: str) -> list:
    """Running instances (of every project) serving the file at `path`."""
    from lf.daemon.records import StateStore

    real = os.path.realpath(path)
    return [
        r
        for r in StateStore().all_records()
        if r.instance.model_path and os.path.realpath(r.instance.model_path) == real and r.process_alive()
    ]


def remove(name: str, project=None) -> dict:
    """Delete a model lf installed (models dir) or pulled (Hugging Face cache). Refused (exit 2) for a packaged
    model (pip owns it), a file of the user's own, and a model a running instance serves."""
    from lf.daemon.records import project_label
    from lf.daemon.supervisor import stop_command
    from lf.errors import ExitStatus, LfError
    from lf.models.catalog import CATALOG

    item = find_local(name, project)
    if item["source"] == "packaged" and CATALOG[item["name"]].conversion is None:
        model = CATALOG[item["name"]]
        raise LfError(
            f"{item['name']} comes from the Python package {model.package}: pip owns its file",
            hint=f"remove it with: {' '.join(['pip', 'uninstall', '-y', model.package, *model.parts])}",
            exit_status=ExitStatus.USAGE,
        )
    if item["source"] not in ("models-dir", "hf-cache", "packaged"):  # packaged here: a GGUF lf converted
        raise LfError(
            f"{item['path']} is a file of yours, not one lf installed or pulled: lf leaves it alone",
            hint="delete it yourself if you mean to",
            exit_status=ExitStatus.USAGE,
        )
    users = users_of(item["path"])
    if users:
        from lf.daemon.records import StateStore

        r = users[0]
        using = ", ".join(f"{u.name} ({project_label(u.project)}, pid {u.pid})" for u in users)
        raise LfError(
            f"{item['name']} is in use by {using}",
            hint=f"stop it first: {stop_command(r, StateStore())}",
            exit_status=ExitStatus.USAGE,
        )
    path = Path(item["path"])
    freed = _remove_hf_file(path) if item["source"] == "hf-cache" else _remove_local(path)
    return {"name": item["name"], "source": item["source"], "path": item["path"], "freed_bytes": freed}


def _remove_local(path: Path) -> int:
    import shutil

    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        shutil.rmtree(path)
        return size
    size = path.stat().st_size
    path.unlink()
    return size


def _remove_hf_file(path: Path) -> int:
    """A snapshot's file (every part of a split model): its link, and its blob when no other snapshot links to it."""
    split = SPLIT_PART.search(path.name)
    parts = (
        [
            path.with_name(SPLIT_PART.sub(f"-{i:05d}-of-{split.group(2)}.gguf", path.name))
            for i in range(1, int(split.group(2)) + 1)
        ]
        if split
        else [path]
    )
    repo = next(p for p in path.parents if p.name.startswith("models--"))
    freed = 0
    for part in parts:
        if not part.exists() and not part.is_symlink():
            continue
        blob = part.resolve()
        part.unlink()
        others = [p for p in (repo / "snapshots").rglob("*") if p.is_symlink() and p.resolve() == blob]
        if blob.is_file() and blob != part and not others:
            freed += blob.stat().st_size
            blob.unlink()
    return freed


def model_info(name: str, project=None, settings: dict | None = None) -> dict:
    """Everything `lf models info` shows: the header's metadata, where the file lives, who serves it, and
    the memory estimate for an instance with `settings` (an InstanceSpec's; default: llamacpp's defaults)."""
    from lf.errors import LfError
    from lf.models.memory import estimate_settings

    item = describe(find_local(name, project))
    if "error" in item:
        raise LfError(
            f"cannot read {item['path']} as GGUF: {item['error']}",
            hint="fetch or pull it again (lf models pull resumes an interrupted download), or remove it",
        )
    item["estimate"] = estimate_settings(item["path"], settings or {"context_size": 4096, "parallel": 4}).to_dict()
    item["in_use_by"] = [r.name for r in users_of(item["path"])]
    return item
