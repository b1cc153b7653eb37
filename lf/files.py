"""Files written so that readers never see half of them, locks that die with their holder, log tails."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lf.errors import LfError


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` via a private temp file + fsync + rename: readers never see half a file."""
    import tempfile  # deferred: the status path only reads

    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise LfError(
                f"could not write {path}: {exc.strerror or exc}",
                hint="check free disk space and the permissions of the state dir",
            ) from exc
        raise


class LockBusy(Exception):
    """The lock was still held by someone else when the timeout ran out."""


@contextmanager
def exclusive_lock(path: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created 0600): blocking, or LockBusy after `timeout` s.

    The kernel drops the lock when the holder exits, however it exits: no stale lock files. Each call
    opens its own file description, so threads of one process exclude each other too."""
    import fcntl
    import time

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockBusy(str(path)) from None
                    time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_tail(path: str | Path, lines: int) -> str:
    """The last `lines` lines of a text file (from its last 64 KiB), or '(no log)'."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.rstrip("\n").splitlines()[-lines:])
