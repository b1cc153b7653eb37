"""Files written so that readers never see half of them, locks that die with their holder, log tails.

Portable where the platform differs (lf.platform): no O_NOFOLLOW or POSIX owners on Windows, no fcntl there.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from lf.errors import LfError
from lf.platform import open_flag, owned_by_me, posix_owners, quote


def write_error(path: Path, exc: OSError) -> LfError:
    """The LfError for a file lf could not write or open, naming the file, its dir and what to do."""
    from lf.dirs import UnwritableDir, fix_hint

    if exc.errno == errno.ELOOP:
        return LfError(
            f"{path} is a symbolic link: lf does not write through links in its own dirs",
            hint=f"remove it (rm {quote(path)}); something else put it there, so check who else can write to "
            f"{quote(Path(path).parent)}",
        )
    kind = UnwritableDir if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else LfError
    return kind(f"could not write {path}: {exc.strerror or exc}", hint=fix_hint(path, exc))


def _check_own_file(fd: int, path: Path) -> None:
    """A file lf writes must be a regular file of ours: not a FIFO, a device, or someone else's file."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise LfError(f"{path} is not a regular file", hint=f"remove it (rm {quote(path)}); lf creates it again")
    if not owned_by_me(info):
        raise LfError(
            f"{path} belongs to another user (uid {info.st_uid})",
            hint=f"remove it (rm {quote(path)}); something else put it there, so check who else can write to "
            f"{quote(Path(path).parent)}",
        )
    if posix_owners() and info.st_mode & 0o077:
        os.fchmod(fd, 0o600)


def open_no_follow(path: str | Path, flags: int, mode: int = 0o600) -> int:
    """os.open that never goes through a symbolic link at `path` (ELOOP instead): O_NOFOLLOW where the platform
    has it; where it has not (Windows, where making links takes a privilege) a link found just before is refused.
    Binary mode on Windows, where a descriptor would otherwise translate line ends."""
    nofollow = open_flag("O_NOFOLLOW")
    if not nofollow and os.path.islink(path):
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
    return os.open(path, flags | nofollow | open_flag("O_BINARY"), mode)


def open_append(path: Path) -> int:
    """Open (create, 0600) a file to append to: never through a symlink, never a FIFO or someone else's file.
    Returns the fd; an LfError naming the path otherwise."""
    # O_NONBLOCK: a FIFO planted here must not block the open (it fails the regular-file check instead)
    nonblock = open_flag("O_NONBLOCK")
    try:
        fd = open_no_follow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | nonblock)
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        _check_own_file(fd, path)
        if nonblock:
            os.set_blocking(fd, True)
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise
    return fd


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` via a private temp file + fsync + rename: readers never see half a file.

    The temp file is created exclusively (O_EXCL never follows a link) and the rename replaces whatever
    is at `path`, a planted symlink included, without following it."""
    tmp = None
    try:
        # a name of its own (tempfile.mkstemp would cost a start ~3 ms of imports for `random`)
        name = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | open_flag("O_NOFOLLOW"), 0o600)
        tmp = name  # ours from here: removed if what follows fails
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if posix_owners():
                os.fchmod(fh.fileno(), 0o600)  # the mode given already, unless a umask-less platform ignored it
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise


class LockBusy(Exception):
    """The lock was still held by someone else when the timeout ran out."""


class LockUnavailable(LfError):
    """The lock file cannot be created: its dir is read-only or not writable for this user."""


def _open_lock(path: Path) -> int:
    try:
        return open_no_follow(path, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise write_error(path, exc) from exc
        try:  # an existing lock file still locks when it cannot be written (flock needs no write access)
            return open_no_follow(path, os.O_RDONLY)
        except OSError:
            error = write_error(path, exc)
            raise LockUnavailable(
                f"cannot create the lock file {path}: {exc.strerror or exc}", hint=error.hint
            ) from exc


@contextmanager
def exclusive_lock(path: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created 0600, never through a symlink): blocking, or LockBusy
    after `timeout` s; LockUnavailable when the file cannot be created (a read-only dir).

    The kernel drops the lock when the holder exits, however it exits: no stale lock files. Each call
    opens its own file description, so threads of one process exclude each other too."""
    import time

    try:
        import fcntl
    except ImportError:  # Windows
        with _lock_without_fcntl(path, timeout):
            yield
        return
    fd = _open_lock(path)
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


@contextmanager
def _lock_without_fcntl(path: Path, timeout: float | None) -> Iterator[None]:
    """exclusive_lock where there is no flock: Windows' byte-range lock (msvcrt, through the filelock package),
    which also dies with its holder; one lock object per call, as above. Where neither exists, a lock file that
    exists while it is held (filelock's SoftFileLock: one a killed holder leaves behind)."""
    try:
        import msvcrt  # noqa: F401

        from filelock import WindowsFileLock as Lock

        os.close(_open_lock(path))  # the refusals flock gets first: a link, an unwritable dir (filelock would wait)
    except ImportError:
        import warnings

        with warnings.catch_warnings():  # filelock warns that it has only this one here
            warnings.simplefilter("ignore")
            from filelock import SoftFileLock as Lock  # type: ignore[assignment]

        if os.path.islink(path):
            raise write_error(path, OSError(errno.ELOOP, os.strerror(errno.ELOOP))) from None
    from filelock import Timeout

    lock = Lock(str(path), timeout=-1 if timeout is None else timeout)
    try:
        lock.acquire()
    except Timeout:
        raise LockBusy(str(path)) from None
    try:
        yield
    finally:
        lock.release()


_BLOCK = 64 * 1024


def _open_log(path: str | Path) -> BinaryIO:
    return os.fdopen(open_no_follow(path, os.O_RDONLY), "rb", buffering=0)


def _tail_start(fh: BinaryIO, lines: int) -> tuple[int, int]:
    """(offset where the last `lines` lines of `fh` begin, how many lines that is: fewer when the file has
    fewer). Reads backwards a block at a time, so any count is exact and a big file costs only its tail."""
    end = fh.seek(0, os.SEEK_END)
    if lines <= 0 or end == 0:
        return end, 0
    found = 0
    pos = end
    while pos > 0:
        size = min(_BLOCK, pos)
        pos -= size
        fh.seek(pos)
        block = fh.read(size)
        stop = size - 1 if pos + size == end and block.endswith(b"\n") else size  # a final newline ends a line
        while (stop := block.rfind(b"\n", 0, stop)) >= 0:
            found += 1  # each newline (but the final one) starts one more line after it
            if found == lines:
                return pos + stop + 1, lines
    return 0, found + 1


def _tail_pieces(path: Path, lines: int) -> list[tuple[BinaryIO, int]]:
    """Open files and offsets that hold the last `lines` lines of `path`, oldest first: when `path` has fewer
    lines, its rotated predecessors (path.1, path.2, ...) make up the rest. The last one is `path` itself."""
    current = _open_log(path)
    offset, found = _tail_start(current, lines)
    pieces = [(current, offset)]
    n = 1
    while found < lines:
        try:
            older = _open_log(f"{path}.{n}")
        except OSError:
            break
        offset, more = _tail_start(older, lines - found)
        pieces.insert(0, (older, offset))
        found += more
        n += 1
    return pieces


def _copy(fh: BinaryIO, offset: int, write: Callable[[bytes], object]) -> int:
    """Copy `fh` from `offset` to its end into `write`; the offset it ended at."""
    fh.seek(offset)
    while chunk := fh.read(_BLOCK):
        write(chunk)
        offset += len(chunk)
    return offset


def write_tail(path: str | Path, lines: int, write: Callable[[bytes], object]) -> None:
    """Write the last `lines` lines of a log (continuing into its rotated files when it has fewer) as bytes.
    OSError when the log cannot be opened (missing, or a symbolic link)."""
    for fh, offset in _tail_pieces(Path(path), lines):
        with fh:
            _copy(fh, offset, write)


def read_tail(path: str | Path, lines: int) -> str:
    """The last `lines` lines of a log as text (exactly that many, when it has them), or '(no log)'."""
    chunks: list[bytes] = []
    try:
        write_tail(path, lines, chunks.append)
    except OSError:
        return "(no log)"
    return b"".join(chunks).decode("utf-8", "replace").removesuffix("\n")


def follow(
    path: str | Path,
    write: Callable[[bytes], object],
    lines: int = 0,
    poll: float = 0.2,
    on_notice: Callable[[str], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Write the last `lines` lines of a log, then whatever is appended to it, like `tail -F`, until
    `should_stop()` says so (never, without it): when the file at `path` is replaced (rotated: another
    inode) the rest of the old one is written first, then the new one from its start; when it shrinks
    (truncated) it is read again from its start."""
    import time

    path = Path(path)
    pieces = _tail_pieces(path, lines)
    for fh, offset in pieces[:-1]:
        with fh:
            _copy(fh, offset, write)
    current: BinaryIO | None
    current, offset = pieces[-1]
    pos = _copy(current, offset, write)
    while should_stop is None or not should_stop():
        if current is None:  # rotated away and not there again yet
            try:
                current, pos = _open_log(path), 0
            except OSError:
                time.sleep(poll)
                continue
        chunk = current.read(_BLOCK)
        if chunk:
            write(chunk)
            pos += len(chunk)
            continue
        try:
            now = os.stat(path, follow_symlinks=False)
        except OSError:
            now = None
        mine = os.fstat(current.fileno())
        if now is None or (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
            _copy(current, pos, write)  # lines written just before the switch
            current.close()
            current = None
            if on_notice is not None:
                on_notice(f"{path} was rotated; following the new file")
            continue
        if now.st_size < pos:
            current.seek(0)
            pos = 0
            if on_notice is not None:
                on_notice(f"{path} was truncated; reading it from its start")
            continue
        time.sleep(poll)
    if current is not None:
        current.close()
