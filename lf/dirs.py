"""Where `lf` keeps its files. Directories are created private (0700).

Two dirs, each moved by its own variable: the state dir (records, logs, locks, caches, chat history;
LF_STATE_DIR) and the data dir (runtime envs, models; LF_DATA_DIR). platformdirs names their defaults; where it
gives one folder for both (macOS: ~/Library/Application Support/lf, Windows: %LOCALAPPDATA%\\lf), the state dir is
its `state` folder, so that each variable moves what it says.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from lf.envvars import AppEnvVars
from lf.errors import LfError
from lf.platform import owned_by_me, posix_owners, quote


def _user_dir(env_var: str, kind: str) -> Path:
    override = os.environ.get(env_var)
    if override:
        return Path(override).expanduser()
    if sys.platform.startswith("linux"):  # the XDG dirs, as platformdirs names them, without its ~10 ms of imports
        xdg, default = ("XDG_DATA_HOME", ".local/share") if kind == "data" else ("XDG_STATE_HOME", ".local/state")
        base = os.environ.get(xdg, "").strip()
        return Path(base or Path.home() / default) / "lf"
    import platformdirs  # elsewhere, what it says

    data = Path(platformdirs.user_data_dir("lf", appauthor=False))
    if kind == "data":
        return data
    state = Path(platformdirs.user_state_dir("lf", appauthor=False))
    return data / "state" if state == data else state


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
    """The variable that moves the dir `path` lives in: LF_DATA_DIR for the data dir, else LF_STATE_DIR. When one
    dir lies inside the other (the state dir in the data dir's folder, or a user's own choice), the inner one's."""
    try:
        path = Path(path)
        dirs = ((state_dir(), AppEnvVars.STATE_DIR), (data_dir(), AppEnvVars.DATA_DIR))
        inside = [(len(d.parts), env) for d, env in dirs if path.is_relative_to(d)]
        return max(inside)[1] if inside else AppEnvVars.STATE_DIR
    except Exception:  # noqa: BLE001 - only chooses the words of a hint
        return AppEnvVars.STATE_DIR


def fix_hint(path: Path, exc: OSError) -> str:
    """What to do when writing in the dir of `path` failed with `exc`, naming that dir (quoted when it holds a
    space, as macOS's ~/Library/Application Support does)."""
    folder = quote(Path(path).parent)
    env = env_var_for(path)
    if exc.errno == errno.EROFS:
        return f"{folder} is on a read-only file system: point {env} at a writable dir, or remount it read-write"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"fix the permissions of {folder} (it must be yours, mode 0700), or point {env} at a writable dir"
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG):
        return f"free disk space where {folder} lives, or point {env} at another disk"
    return f"check free disk space and the permissions of {folder}, or point {env} elsewhere"


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700; tighten it if it already exists and is ours.

    A dir that belongs to someone else is refused: whoever owns it could plant links or records in it. Where
    files have no POSIX owner and mode (Windows) the dir is only created: the user's profile folder, where lf's
    dirs live by default, is private by its access list."""
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
    if not owned_by_me(info):
        raise NotPrivateDir(
            f"{path} belongs to another user (uid {info.st_uid}): lf keeps its files only in a dir of your own",
            hint=f"point {env} at a dir of yours (lf creates it with mode 0700), or have {quote(path)} handed over "
            "to you and made 0700",
        )
    if posix_owners() and info.st_mode & 0o077:
        try:
            path.chmod(0o700)
        except OSError as exc:
            kind = UnwritableDir if exc.errno in _UNWRITABLE else NotPrivateDir
            raise kind(
                f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}) and lf cannot make it "
                f"private: {exc.strerror or exc}",
                hint=f"make it private with: chmod 0700 {quote(path)}, or point {env} at a dir of yours",
            ) from exc
    return path
