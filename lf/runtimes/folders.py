"""Where runtime folders are, found without parsing any manifest.

Kept apart from the registry so the cheap paths (status with a cached config, shell completion) can
list runtimes without building the registry's classes.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_RUNTIME = "llamacpp"  # the embedded default: works on a fresh machine with no compiler


def runtimes_dir() -> Path:
    """lf's own runtime folders: inside an installed wheel, else the source checkout's runtimes/."""
    here = Path(__file__).resolve().parent
    packaged = here / "builtin"
    return packaged if packaged.is_dir() else here.parent.parent / "runtimes"


def runtimes_dirs() -> list[Path]:
    """Folders holding runtime folders: the user's ($LF_RUNTIMES_PATH, searched first), then lf's own."""
    from lf.envvars import AppEnvVars

    extra = [Path(p).expanduser() for p in os.environ.get(AppEnvVars.RUNTIMES_PATH, "").split(os.pathsep) if p]
    return [*extra, runtimes_dir()]


def runtime_folders() -> list[Path]:
    seen: dict[str, Path] = {}
    for root in runtimes_dirs():
        try:
            entries = sorted(root.iterdir())
        except OSError:
            continue
        for folder in entries:
            if folder.name not in seen and (folder / "manifest.toml").is_file():
                seen[folder.name] = folder
    return [seen[name] for name in sorted(seen)]


def fingerprint() -> list:
    """What the runtime folders look like (names and manifest mtimes), without parsing them:
    a cached validation of llamafarm.yaml is only reused while this stays the same."""
    out = []
    for folder in runtime_folders():
        try:
            out.append([str(folder), (folder / "manifest.toml").stat().st_mtime_ns])
        except OSError:
            out.append([str(folder), None])
    return out


def runtime_names() -> list[str]:
    """Runtime names from the folder names alone: cheap enough for shell completion."""
    return [folder.name for folder in runtime_folders()]
