"""lf's own code as Ray ships it to every node.

lf is not installed in the cluster's environment: a deploy hands Ray a copy of the `lf` package (with its runtime
folders inside, where an installed wheel has them) as the job's `runtime_env` `py_modules`. Ray zips it once per
content, keeps it in the cluster's object store (GCS) and unpacks it on each node before a replica starts there,
on PYTHONPATH; the engines a replica starts inherit that PYTHONPATH. So every node runs the very code that
deployed, whatever lf (if any) that node has installed. The copy lives under the data dir, named by its content,
and is made once per version of the code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import lf
from lf.dirs import data_dir, ensure_private_dir
from lf.runtimes.folders import runtimes_dir

_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


def package_dir() -> Path:
    return Path(lf.__file__).resolve().parent


def _files(root: Path) -> list[tuple[str, Path]]:
    """(path inside the copy, source file) of every file the copy holds, in a stable order."""
    found: list[tuple[str, Path]] = []
    for base, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(names):
            if name.endswith(_SKIPPED_SUFFIXES):
                continue
            source = Path(base) / name
            found.append((str(source.relative_to(root)), source))
    return found


def contents() -> list[tuple[str, Path]]:
    """What the copy of lf holds: the package, and the runtime folders at lf/runtimes/builtin (where lf looks
    for them when it runs from an installed wheel; a checkout keeps them beside the package)."""
    files = _files(package_dir())
    builtin = runtimes_dir()
    if builtin.parent != package_dir() / "runtimes":  # a source checkout: runtimes/ beside lf/
        files += [(os.path.join("runtimes", "builtin", rel), source) for rel, source in _files(builtin)]
    return files


def stage() -> Path:
    """The folder whose `lf` subfolder is the copy to ship (made now if this version of the code has none)."""
    files = contents()
    digest = hashlib.sha256()
    for rel, source in files:
        digest.update(rel.encode() + b"\0" + source.read_bytes() + b"\0")
    root = ensure_private_dir(data_dir() / "cluster" / "code")
    target = root / digest.hexdigest()[:16]
    if (target / "lf" / "__init__.py").is_file():
        os.utime(target)  # in use: the last to be pruned
        return target
    _prune(root)
    partial = root / f".{target.name}.{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    for rel, source in files:
        destination = partial / "lf" / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    try:
        os.rename(partial, target)  # whole or not at all; a concurrent deploy may have made it first
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return target


KEEP_S = 24 * 3600  # a copy unused this long belongs to an lf that is gone (Ray keeps what it uploaded itself)


def _prune(root: Path) -> None:
    import time

    for entry in root.iterdir():
        try:
            if entry.is_dir() and time.time() - entry.stat().st_mtime > KEEP_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue
