"""Where `lf` keeps its files. Directories are created private (0700)."""

from __future__ import annotations

import errno
import os
import stat
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


class UnwritableDir(LfError):
    """A directory lf must write to cannot be written (read-only file system, permissions)."""


class NotPrivateDir(LfError):
    """A directory lf keeps its files in is open to other users and lf cannot make it private."""


_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def env_var_for(path: Path) -> str:
    """The variable that moves the dir `path` lives in: LF_DATA_DIR for the data dir, else LF_STATE_DIR."""
    try:
        return AppEnvVars.DATA_DIR if Path(path).is_relative_to(data_dir()) else AppEnvVars.STATE_DIR
    except Exception:  # noqa: BLE001 - only chooses the words of a hint
        return AppEnvVars.STATE_DIR


def fix_hint(path: Path, exc: OSError) -> str:
    """What to do when writing in the dir of `path` failed with `exc`, naming that dir."""
    folder = Path(path).parent
    env = env_var_for(path)
    if exc.errno == errno.EROFS:
        return f"{folder} is on a read-only file system: point {env} at a writable dir, or remount it read-write"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"fix the permissions of {folder} (it must be yours, mode 0700), or point {env} at a writable dir"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"free disk space where {folder} lives, or point {env} at another disk"
    return f"check free disk space and the permissions of {folder}, or point {env} elsewhere"


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700; tighten it if it already exists and is ours.

    A dir that belongs to someone else is refused: whoever owns it could plant links or records in it."""
    try:
        for missing in reversed([p for p in (path, *path.parents) if not p.exists()]):  # parents private too
            missing.mkdir(mode=0o700, exist_ok=True)
        info = path.stat()  # through a symlink: the dir it names is the one that must be private
    except OSError as exc:
        kind = UnwritableDir if exc.errno in _UNWRITABLE else LfError
        raise kind(f"cannot create directory {path}: {exc.strerror or exc}", hint=fix_hint(path, exc)) from exc
    env = env_var_for(path)
    if not stat.S_ISDIR(info.st_mode):
        raise NotPrivateDir(f"{path} is not a directory", hint=f"remove it, or point {env} elsewhere")
    if info.st_uid != os.geteuid():
        raise NotPrivateDir(
            f"{path} belongs to another user (uid {info.st_uid}): lf keeps its files only in a dir of your own",
            hint=f"point {env} at a dir of yours (lf creates it with mode 0700), or have {path} handed over to you and made 0700",
        )
    if info.st_mode & 0o077:
        try:
            path.chmod(0o700)
        except OSError as exc:
            kind = UnwritableDir if exc.errno in _UNWRITABLE else NotPrivateDir
            raise kind(
                f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}) and lf cannot make it private: {exc.strerror or exc}",
                hint=f"make it private with: chmod 0700 {path}, or point {env} at a dir of yours",
            ) from exc
    return path
