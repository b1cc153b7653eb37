"""Live reload: `lf serve` follows llamafarm.yaml as it is edited (and reloads it on SIGHUP), as llama-swap does.
The file is looked at every second (its size, times and inode: no watcher library, no inotify limit); a change is
read once it has held still for a moment, so an editor's save in several writes is read once, whole."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

INTERVAL = 1.0  # seconds between looks at the file
SETTLE = 0.3  # seconds a change must hold still before it is read
log = logging.getLogger(__name__)


def fingerprint(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # gone for a moment (an editor that writes a new file and renames it): looked at again
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


async def watch(path: Path, reload: Callable[[], Awaitable[None]], interval: float = INTERVAL) -> None:
    """Call `reload` each time the file changes, until cancelled."""
    seen = fingerprint(path)
    while True:
        await asyncio.sleep(interval)
        now = fingerprint(path)
        if now is None or now == seen:
            continue
        await asyncio.sleep(SETTLE)
        if fingerprint(path) != now:
            continue  # still being written: the next look reads it
        seen = now
        await reload()
