"""Which log `lf runtime logs NAME` reads: the instance any of its names means (lf.config.names), in this project
or in the one a qualified name gives, never through a link; and what the reader should hear first."""

from __future__ import annotations

from pathlib import Path

from lf.config.names import Names, qualified
from lf.daemon.records import NO_PROJECT, StateStore, parse_project
from lf.errors import LfError, UnknownNameError


def find_log(name: str, project, store: StateStore) -> tuple[Path, list[str]]:
    """The log's path, and warnings (its writer is gone: what the instance prints now is lost)."""
    found = qualified(name)
    if found is not None:
        store = store.scoped(parse_project(found.project))
        instance = found.name
    else:
        instance = Names(project).instance_name(name)
    path = store.log_path(instance)
    if path.is_symlink():
        raise LfError(
            f"{path} is a symbolic link: lf does not read through links in its own dirs", hint=f"remove it (rm {path})"
        )
    if not path.exists():
        others = [each.project for each in store.every_project()[1:] if each.log_path(instance).exists()]
        hint = "lf runtime status lists the known instances"
        if others:
            hint = (
                "; ".join(f"lf runtime logs {instance} --project {key or NO_PROJECT}" for key in others)
                + " (another project's)"
            )
        raise UnknownNameError(f"no log for {name!r} in {path.parent}", hint=hint)
    warnings = []
    record = store.load_or_none(instance)
    if record is not None and record.log_pump_lost():
        warnings.append(
            f"Warning: the process that writes this log (pid {record.log_pump_pid}) is gone: what {instance} prints "
            f"now is lost\n  lf runtime restart {instance} starts it with a new one"
        )
    return path, warnings
