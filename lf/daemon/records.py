"""Records of running instances: one private JSON file per instance, written atomically."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lf.daemon.instance import Instance
from lf.dirs import UnwritableDir, ensure_private_dir, state_dir
from lf.errors import ExitStatus, LfError, UnknownNameError
from lf.files import LockBusy, LockUnavailable, atomic_write, exclusive_lock, open_no_follow
from lf.platform import open_flag, owned_by_me

RECORD_VERSION = 2  # 2: typed fields for what version 1 kept in `extra`
GATEWAY_RUNTIME = "lf-serve"  # the runtime a gateway's own record names: `lf runtime stop lf-serve` stops it
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


@dataclass(frozen=True)
class RuntimeRecord:
    """What lf knows about an instance it started: the instance as it was launched (lf.daemon.instance) and the
    process that runs it. Written once at launch, read back by every command and by the gateway, never edited."""

    instance: Instance
    pid: int
    create_time: float  # the process's start time: guards against pid reuse
    started_at: float
    log_path: str
    log_pump_pid: int | None = None  # the process that writes and rotates the log (lf.daemon.logpump)
    log_pump_create_time: float | None = None
    version: int = RECORD_VERSION
    # what from_dict left out of a record it could still use, as sentences (not written back)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    # who it is and where it listens, asked by every reader
    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def runtime(self) -> str:
        return self.instance.runtime

    @property
    def project(self) -> str | None:
        return self.instance.project

    @property
    def port(self) -> int:
        return self.instance.port

    @property
    def base_url(self) -> str:
        return self.instance.base_url

    @property
    def model(self) -> str:
        return self.instance.model

    @property
    def start_timeout(self) -> float:
        return self.instance.start_timeout

    def process_alive(self) -> bool:
        """Is the recorded process alive, and the very one lf started (not a reused pid)?"""
        from lf.daemon.process import is_same_process

        return is_same_process(self.pid, self.create_time)

    def log_pump_lost(self) -> bool:
        """True when the process that writes this instance's log is gone while the instance still runs:
        what it prints from then on is lost (a SIGKILL, the OOM killer)."""
        from lf.daemon.process import is_same_process

        if self.log_pump_pid is None or self.log_pump_create_time is None:
            return False
        return self.process_alive() and not is_same_process(self.log_pump_pid, self.log_pump_create_time)

    def process_frozen(self) -> bool:
        """Is the recorded process stopped by a signal (SIGSTOP)? Only meaningful when it is alive."""
        from lf.daemon.process import process_frozen

        return process_frozen(self.pid)

    def health_probe(self):
        """The probe of this instance's health endpoint, as its runtime declared it; None if it has none."""
        url = self.instance.health_url
        if not url:
            return None
        from lf.daemon.health import Probe

        return Probe(url, self.instance.health_ready)

    def to_json(self) -> str:
        data = {
            **self.instance.recorded(),
            "pid": self.pid,
            "create_time": self.create_time,
            "started_at": self.started_at,
            "log_path": self.log_path,
            "log_pump_pid": self.log_pump_pid,
            "log_pump_create_time": self.log_pump_create_time,
            "version": self.version,
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict, project: str | None = None) -> RuntimeRecord:
        """A record read back from disk (this version or version 1), of the project whose folder it lies in.
        ValueError/TypeError unless every field has the type lf relies on, and what lf acts on checks out."""
        data = dict(data)
        if data.get("version", 1) == 1:
            extra = data.pop("extra", {})
            if not isinstance(extra, dict):
                raise ValueError("extra is not an object")
            for key in ("health_ready", "start_timeout", "overrides"):
                if key in extra:
                    data[key] = extra[key]
            data["version"] = RECORD_VERSION
        data.setdefault("engine", "")
        missing = [key for key in ("pid", "create_time", "started_at", "log_path") if key not in data]
        if missing:
            raise ValueError(f"{missing[0]} is missing")
        # where a record lies says whose it is (a record of an earlier lf names none)
        data["project"] = project
        overrides, dropped = _usable_overrides(data.get("overrides", {}))
        data["overrides"] = overrides
        instance = Instance.from_recorded(data)
        record = cls(
            instance=instance,
            pid=data["pid"],
            create_time=data["create_time"],
            started_at=data["started_at"],
            log_path=data["log_path"],
            log_pump_pid=data.get("log_pump_pid"),
            log_pump_create_time=data.get("log_pump_create_time"),
            version=data["version"],
            warnings=tuple(f"Warning: the record of {instance.name} holds {what}: left out" for what in dropped),
        )
        _check_strictly(record)
        return record


def _is_int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_seconds(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


# the rules lf.daemon.health.interpret reads, besides json:<key>
HEALTH_RULES = ("http-ok", "answers", "reachable", "loaded-by-lf")


def is_health_rule(rule) -> bool:
    return isinstance(rule, str) and (rule in HEALTH_RULES or (rule.startswith("json:") and len(rule) > 5))


def _is_text(value) -> bool:
    return isinstance(value, str) and value != ""


def _is_setting_value(value) -> bool:
    scalar = (str, int, float, bool, type(None))
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(item, scalar) for item in value))


# what `overrides` may hold: the fields of lf.core.targets.Overrides (a test keeps the two in step)
OVERRIDE_CHECKS = {
    "model": _is_text,
    "port": lambda value: _is_int(value, 1, 65535),
    "host": _is_text,
    "context_size": lambda value: _is_int(value, 1, 2**31 - 1),
    "threads": lambda value: _is_int(value, 1, 2**31 - 1),
    "settings": lambda value: isinstance(value, dict),
}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _usable_overrides(overrides) -> tuple[dict, list[str]]:
    """The overrides a restart can reapply, and what was left out (a key a newer lf wrote, a wrong type)."""
    if not isinstance(overrides, dict):
        raise ValueError("overrides is not an object")
    kept: dict = {}
    dropped: list[str] = []
    for key, value in overrides.items():
        check = OVERRIDE_CHECKS.get(key)
        if check is None:
            dropped.append(f"an override {_short(key)}, which this lf does not know")
        elif not check(value):
            dropped.append(f"an override {key!r} of the wrong type ({_short(value)})")
        elif key == "settings":
            settings = {}
            for name, setting in value.items():
                if _is_text(name) and _is_setting_value(setting):
                    settings[name] = setting
                else:
                    dropped.append(
                        f"a setting override {_short(name)}: {_short(setting)}, which is not a name with a plain value"
                    )
            kept[key] = settings
        else:
            kept[key] = value
    return kept, dropped


def _check_strictly(record: RuntimeRecord) -> None:
    """Beyond the instance's types: what lf relies on when it acts on a record. ValueError names the field.

    A field that decides whether a process is ours (pid, command), how to read its health, or where it is makes
    the record unreadable (state `unknown`); an override only `restart` uses is dropped with a warning."""
    instance = record.instance
    if not is_valid_name(instance.name):
        raise ValueError("name is not a valid instance name")
    if not _is_int(record.pid, 2, 2**31 - 1):
        raise ValueError("pid is not a valid process id")
    if not instance.argv:
        raise ValueError("command is empty: nothing to tell its process by")
    if not is_health_rule(instance.health_ready):
        rules = ", ".join(HEALTH_RULES)
        raise ValueError(
            f"health_ready {_short(instance.health_ready)} is not a rule this lf knows ({rules}, json:KEY)"
        )
    if not isinstance(record.log_path, str):
        raise ValueError("log_path is not text")
    for name in ("create_time", "started_at"):
        if not _is_seconds(getattr(record, name)):
            raise ValueError(f"{name} is not a time")
    if not _is_seconds(instance.start_timeout):
        raise ValueError("start_timeout is not a number of seconds")
    if not _is_int(record.version, 1, 2**31 - 1):
        raise ValueError("version is not a record version")
    if record.log_pump_pid is not None or record.log_pump_create_time is not None:
        if not _is_int(record.log_pump_pid, 2, 2**31 - 1):
            raise ValueError("log_pump_pid is not a valid process id")
        if not _is_seconds(record.log_pump_create_time):
            raise ValueError("log_pump_create_time is not a time")


NO_PROJECT = "none"  # what --project takes for the instances of no project (a project's key has a slash)


def project_label(project: str | None, folder: str | None = None) -> str:
    if project is None:
        return "no project"
    return f"project {project}" + (f" ({folder})" if folder else "")


def parse_project(text: str) -> str | None:
    """--project as given: "namespace/name", or NO_PROJECT for the instances of no project."""
    if text == NO_PROJECT:
        return None
    namespace, slash, name = text.partition("/")
    if not (slash and namespace and name):
        raise LfError(
            f"--project {text!r} is not NAMESPACE/NAME",
            hint=f"as lf runtime status --all-projects shows it, or {NO_PROJECT} for what runs outside any project",
            exit_status=ExitStatus.USAGE,
        )
    return text


def _project_dir(key: str) -> str:
    """projects/<namespace>/<name> of a project's key (lf.config.project.Project.key), each part made one safe folder name."""
    from urllib.parse import unquote

    namespace, _, name = key.partition("/")
    return f"{_quote(unquote(namespace))}/{_quote(name)}"


def _quote(part: str) -> str:
    """A namespace or project name as one safe folder name (any text LlamaFarm allows; reversible)."""
    from urllib.parse import quote

    text = quote(part, safe="")
    return "%2E" + text[1:] if text.startswith(".") else text


def _unquote(part: str) -> str:
    from urllib.parse import unquote

    return unquote(part)


def _subdirs(folder: Path) -> list[str]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    return [e.name for e in entries if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]


class CorruptRecord(Exception):
    def __init__(self, path: Path, reason: str):
        super().__init__(reason)
        self.path = path
        self.reason = reason


class RecordNotRemoved(LfError):
    """A record that must go cannot be removed (a read-only state dir): whatever it named is not running."""

    def __init__(self, name: str, path: Path, exc: OSError):
        from lf.dirs import fix_hint

        self.name = name
        self.path = path
        self.reason = exc.strerror or str(exc)
        self.fix = fix_hint(path, exc)
        super().__init__(
            f"could not remove the record of {name} ({path}): {self.reason}",
            hint=f"{name} is not running: lf stopped its process first, if it had one\n{self.fix}; then `lf runtime stop {name}` removes the record",
        )


MAX_RECORD_BYTES = 1024 * 1024


def _read_own_file(path: Path) -> bytes:
    """The bytes of a record: not through a symlink, only a regular file of ours, bounded in size."""
    fd = open_no_follow(path, os.O_RDONLY | open_flag("O_NONBLOCK"))
    try:  # checked before fdopen, which refuses a directory without closing the descriptor it was given
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "it is not a regular file")
        if not owned_by_me(info):
            raise OSError(errno.EPERM, f"it belongs to another user (uid {info.st_uid})")
        if info.st_size > MAX_RECORD_BYTES:
            raise OSError(errno.EFBIG, f"it is too big for a record ({info.st_size} bytes)")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        return fh.read(MAX_RECORD_BYTES + 1)


class StateStore:
    """One project's instances in the state dir: <base>/instances/<name>.json, <base>/logs/<name>.log,
    <base>/locks/<name>.lock. An instance belongs to its project (llamafarm.yaml's namespace and name), so
    two projects with an entry of the same name never share a record; without a project (the embedded
    default) the base is the state dir itself, and for project NS/NAME it is <state dir>/projects/NS/NAME."""

    def __init__(self, root: Path | None = None, project: str | None = None):
        self.root = root or state_dir()
        self.project = project
        self.base = self.root if project is None else self.root / "projects" / _project_dir(project)

    @classmethod
    def of(cls, project, root: Path | None = None) -> StateStore:
        """The store of a loaded project (lf.config.project.Project), or of no project (None)."""
        return cls(root, project.key if project is not None else None)

    def scoped(self, project: str | None) -> StateStore:
        return self if project == self.project else StateStore(self.root, project)

    def every_project(self) -> list[StateStore]:
        """This store first, then the store of every other project that has a folder in the state dir."""
        keys: list[str | None] = [None]
        projects = self.root / "projects"
        for namespace in _subdirs(projects):
            for name in _subdirs(projects / namespace):
                keys.append(f"{_unquote(namespace).replace('%', '%25').replace('/', '%2F')}/{_unquote(name)}")
        return [self, *(self.scoped(key) for key in keys if key != self.project)]

    def of_folder(self, folder: Path) -> StateStore | None:
        """The store of the project whose instances were started from `folder` (its llamafarm.yaml cannot
        be read now, so its namespace and name are not known), None when no record names that folder."""
        for each in self.every_project():
            if each.project is not None and any(r.instance.project_folder == str(folder) for r in each.records()):
                return each
        return None

    def all_records(self) -> list[RuntimeRecord]:
        """Every readable record of every project (what holds ports, what uses a runtime's env)."""
        return [record for store in self.every_project() for record in store.records()]

    # -- paths -------------------------------------------------------------------------------
    def record_path(self, name: str) -> Path:
        return self.base / "instances" / f"{validate_name(name)}.json"

    def log_path(self, name: str) -> Path:
        return self.base / "logs" / f"{validate_name(name)}.log"

    def lock_path(self, name: str) -> Path:
        return self.base / "locks" / f"{validate_name(name)}.lock"

    def ensure(self) -> None:
        ensure_private_dir(self.root)
        if self.base != self.root:
            for folder in (self.root / "projects", self.base.parent, self.base):
                ensure_private_dir(folder)
        for sub in ("instances", "logs", "locks"):
            ensure_private_dir(self.base / sub)

    # -- records -----------------------------------------------------------------------------
    def load(self, name: str) -> RuntimeRecord | None:
        """The record for `name`, None if there is none; CorruptRecord if it cannot be read."""
        path = self.record_path(name)
        try:
            raw = _read_own_file(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            reason = (
                "it is a symbolic link, which lf does not follow"
                if exc.errno == errno.ELOOP
                else exc.strerror or str(exc)
            )
            raise CorruptRecord(path, reason) from exc
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            record = RuntimeRecord.from_dict(data, self.project)
        except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as exc:
            raise CorruptRecord(path, str(exc) or type(exc).__name__) from exc
        if record.name != name:
            raise CorruptRecord(path, f"it names the instance {record.name!r}, not {name!r}")
        return record

    def names(self) -> list[str]:
        folder = self.base / "instances"
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

    # -- a stop in progress ---------------------------------------------------------------------
    def stopping_path(self, name: str) -> Path:
        return self.base / "instances" / f"{validate_name(name)}.stopping"

    def mark_stopping(self, name: str) -> None:
        """Say that this process is stopping `name` (status shows `stopping` meanwhile). Best effort: a state dir
        that cannot be written still lets a stop go on."""
        from lf.daemon.process import process_create_time

        try:
            atomic_write(self.stopping_path(name), f"{os.getpid()} {process_create_time(os.getpid()) or 0}\n")
        except (OSError, LfError):  # a read-only state dir: write_error says why, and the stop needs no mark
            pass

    def is_stopping(self, name: str) -> bool:
        """Is a live lf process stopping `name` right now (its mark is there and its writer alive)?"""
        from lf.daemon.process import is_same_process

        try:
            pid, _, created = self.stopping_path(name).read_text().partition(" ")
            return is_same_process(int(pid), float(created))
        except (OSError, ValueError):
            return False

    def remove(self, name: str) -> bool:
        """Remove the record of `name` (True), or find none (False); RecordNotRemoved when it cannot go."""
        try:
            self.stopping_path(name).unlink()
        except OSError:
            pass  # none, or a read-only dir (then the record cannot go either: said below)
        path = self.record_path(name)
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            if not os.path.lexists(path):  # a read-only mount refuses even the unlink of nothing
                return False
            raise RecordNotRemoved(name, path, exc) from exc

    @contextmanager
    def lock(self, name: str, timeout: float = 60.0) -> Iterator[None]:
        """An exclusive per-instance lock, so concurrent starts and stops serialize (across processes
        and across threads of one process).

        In a state dir that cannot be written (read-only mount, permissions) the lock cannot be created, and
        is not needed: nothing can write a record there, so nothing can race. What only reads and signals
        (stop) goes on without it; what must write (start) fails with a clear error when it tries."""
        with ExitStack() as held:
            try:
                self.ensure()
                held.enter_context(exclusive_lock(self.lock_path(name), timeout))
            except (UnwritableDir, LockUnavailable):
                pass
            except LockBusy:
                raise LfError(f"another lf command is busy with {name!r}", hint="try again in a moment") from None
            yield
