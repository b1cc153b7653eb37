"""Records of running instances: one private JSON file per instance, written atomically."""

from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

from lf.dirs import ensure_private_dir, state_dir
from lf.errors import LfError, UnknownNameError
from lf.files import LockBusy, atomic_write, exclusive_lock

RECORD_VERSION = 2  # 2: typed fields for what version 1 kept in `extra`
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def is_valid_name(name) -> bool:
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None and ".." not in name


def validate_name(name: str, what: str = "instance") -> str:
    """Names become file names: no separators, no `..`, nothing hidden, bounded length."""
    if not is_valid_name(name):
        raise UnknownNameError(
            f"invalid {what} name {name!r}",
            hint="names use letters, digits, '.', '_' and '-', start with a letter or digit, at most 64 characters",
        )
    return name


@dataclass
class RuntimeRecord:
    """What lf knows about an instance it started: written once at launch, never edited (not frozen only
    because a frozen dataclass costs `lf runtime status` 0.4 ms more to define, measured)."""

    name: str  # instance name (the runtime's name, or a model entry's name)
    runtime: str
    pid: int
    create_time: float  # the process's start time: guards against pid reuse
    host: str
    port: int
    base_url: str  # OpenAI-compatible base, e.g. http://127.0.0.1:11634/v1
    model: str  # the name requests use
    command: list[str]
    log_path: str
    started_at: float
    model_path: str | None = None
    engine: str | None = None
    health_url: str | None = None
    health_ready: str = "http-ok"  # how to read the health endpoint (lf.daemon.health.interpret)
    start_timeout: float = 60.0  # until then an instance that is not ready yet is still starting
    overrides: dict = field(default_factory=dict)  # command-line settings, so `restart` reapplies them
    after_start: dict = field(default_factory=dict)  # what the runtime's after-start step needs (its own data)
    owner: str = "cli"  # who started it: "cli" (lf runtime start, lf chat) or "gateway" (lf serve, on demand)
    version: int = RECORD_VERSION

    def process_alive(self) -> bool:
        """Is the recorded process alive, and the very one lf started (not a reused pid)?"""
        from lf.daemon.process import is_same_process

        return is_same_process(self.pid, self.create_time)

    def health_probe(self):
        """The probe of this instance's health endpoint, as its runtime declared it; None if it has none."""
        if not self.health_url:
            return None
        from lf.daemon.health import Probe

        return Probe(self.health_url, self.health_ready)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "RuntimeRecord":
        """A record read back from disk (this version or version 1). ValueError/TypeError unless every
        field has the type lf relies on."""
        data = dict(data)
        if data.get("version", 1) == 1:
            extra = data.pop("extra", {})
            if not isinstance(extra, dict):
                raise ValueError("extra is not an object")
            for key in ("health_ready", "start_timeout", "overrides"):
                if key in extra:
                    data[key] = extra[key]
            data["version"] = RECORD_VERSION
        known = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in known})
        if not _is_int(record.pid, 2, 2**31 - 1):
            raise ValueError("pid is not a valid process id")
        if not _is_int(record.port, 0, 65535):
            raise ValueError("port is not a valid port number")
        for name in ("create_time", "started_at", "start_timeout"):
            value = getattr(record, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
                raise ValueError(f"{name} is not a number of seconds")
        for name in ("name", "runtime", "host", "base_url", "model", "log_path", "health_ready", "owner"):
            if not isinstance(getattr(record, name), str):
                raise ValueError(f"{name} is not text")
        for name in ("model_path", "engine", "health_url"):
            if not isinstance(getattr(record, name), (str, type(None))):
                raise ValueError(f"{name} is not text")
        if not (isinstance(record.command, list) and all(isinstance(part, str) for part in record.command)):
            raise ValueError("command is not a list of arguments")
        for name in ("overrides", "after_start"):
            if not isinstance(getattr(record, name), dict):
                raise ValueError(f"{name} is not an object")
        return record


def _is_int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


class CorruptRecord(Exception):
    def __init__(self, path: Path, reason: str):
        super().__init__(reason)
        self.path = path
        self.reason = reason


class StateStore:
    """The state dir: instances/<name>.json, logs/<name>.log, locks/<name>.lock."""

    def __init__(self, root: Path | None = None):
        self.root = root or state_dir()

    # -- paths -------------------------------------------------------------------------------
    def record_path(self, name: str) -> Path:
        return self.root / "instances" / f"{validate_name(name)}.json"

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{validate_name(name)}.log"

    def lock_path(self, name: str) -> Path:
        return self.root / "locks" / f"{validate_name(name)}.lock"

    def ensure(self) -> None:
        ensure_private_dir(self.root)
        for sub in ("instances", "logs", "locks"):
            ensure_private_dir(self.root / sub)

    # -- records -----------------------------------------------------------------------------
    def load(self, name: str) -> RuntimeRecord | None:
        """The record for `name`, None if there is none; CorruptRecord if it cannot be read."""
        path = self.record_path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CorruptRecord(path, exc.strerror or str(exc)) from exc
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            record = RuntimeRecord.from_dict(data)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise CorruptRecord(path, str(exc)) from exc
        if record.name != name:
            raise CorruptRecord(path, f"it names the instance {record.name!r}, not {name!r}")
        return record

    def names(self) -> list[str]:
        folder = self.root / "instances"
        try:
            entries = os.listdir(folder)
        except OSError:
            return []
        return sorted(e[:-5] for e in entries if e.endswith(".json") and is_valid_name(e[:-5]))

    def save(self, record: RuntimeRecord) -> None:
        self.ensure()
        atomic_write(self.record_path(record.name), record.to_json())

    def load_or_none(self, name: str) -> RuntimeRecord | None:
        """The record, or None when there is none or it cannot be read (status reports those)."""
        try:
            return self.load(name)
        except CorruptRecord:
            return None

    def records(self) -> list[RuntimeRecord]:
        """Every readable record."""
        return [record for name in self.names() if (record := self.load_or_none(name)) is not None]

    def remove(self, name: str) -> bool:
        try:
            self.record_path(name).unlink()
            return True
        except FileNotFoundError:
            return False

    @contextmanager
    def lock(self, name: str, timeout: float = 60.0) -> Iterator[None]:
        """An exclusive per-instance lock, so concurrent starts and stops serialize (across processes
        and across threads of one process)."""
        self.ensure()
        try:
            with exclusive_lock(self.lock_path(name), timeout):
                yield
        except LockBusy:
            raise LfError(f"another lf command is busy with {name!r}", hint="try again in a moment") from None
