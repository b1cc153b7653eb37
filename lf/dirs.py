"""Where `lf` keeps its files. Directories are created private (0700)."""

from __future__ import annotations

import os
from pathlib import Path

from lf.envvars import AppEnvVars
from lf.errors import LfError


def _user_dir(env_var: str, kind: str) -> Path:
    override = os.environ.get(env_var)
    if override:
        return Path(override).expanduser()
    import platformdirs  # deferred: only needed when no override is set

    if kind == "state":
        return Path(platformdirs.user_state_dir("lf", appauthor=False))
    return Path(platformdirs.user_data_dir("lf", appauthor=False))


def state_dir() -> Path:
    return _user_dir(AppEnvVars.STATE_DIR, "state")


def data_dir() -> Path:
    return _user_dir(AppEnvVars.DATA_DIR, "data")


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700; tighten it if it already exists and is ours."""
    try:
        for missing in reversed([p for p in (path, *path.parents) if not p.exists()]):  # parents private too
            missing.mkdir(mode=0o700, exist_ok=True)
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
            path.chmod(0o700)
    except OSError as exc:
        raise LfError(
            f"cannot create directory {path}: {exc.strerror or exc}",
            hint=f"check its permissions, or point {AppEnvVars.STATE_DIR}/{AppEnvVars.DATA_DIR} elsewhere",
        ) from exc
    return path
