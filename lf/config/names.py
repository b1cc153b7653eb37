"""Which model entry, or which instance, a name means: the one resolver every command and the gateway ask.

A name may be a model entry's name, one of its aliases, the model it serves, a runtime's name (every entry of
that runtime), or a project-qualified name (`NAMESPACE/PROJECT/ENTRY`, for an instance of another project).
Entry names win over aliases, aliases over model names (as llama-swap's RealModelName and Ollama's resolver
decide once for every caller). A name nothing knows gets one "did you mean" over everything that is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from lf.config.project import ModelEntry, Project
from lf.errors import LfError, UnknownNameError

if TYPE_CHECKING:
    from lf.daemon.records import StateStore


def default_entry(runtime_name: str, model: str | None = None) -> ModelEntry:
    """The entry a runtime gets when no llamafarm.yaml configures it: named after the runtime, its default model."""
    from lf.runtimes.registry import get_runtime

    runtime = get_runtime(runtime_name)
    return ModelEntry(
        name=runtime.name,
        provider=runtime.name,
        model=model or runtime.default_model or "",
        managed=runtime.managed,
    )


def served_entries(project: Project | None, placed: Mapping[str, str] | None = None) -> tuple[list[ModelEntry], str]:
    """The entries a gateway for `project` serves, and its default model (no project: the embedded default).
    `placed`: entries that run elsewhere (`lf serve --cluster`: on Ray Serve), by name → their OpenAI base URL; the
    gateway serves those as endpoints it does not run."""
    if project is None:
        from lf.runtimes.folders import DEFAULT_RUNTIME

        entry = default_entry(DEFAULT_RUNTIME)
        return [entry], entry.name
    if not placed:
        return list(project.models), project.default_model
    entries = [replace(e, base_url=placed[e.name], managed=False) if e.name in placed else e for e in project.models]
    return entries, project.default_model


@dataclass(frozen=True)
class Qualified:
    """`NAMESPACE/PROJECT/ENTRY`: an entry of the project NAMESPACE/PROJECT."""

    project: str
    name: str


def qualified(name: str) -> Qualified | None:
    """A project-qualified name, split; None for any other name (an entry name never holds a slash). Each part
    must be a plain name (what --project takes for other spellings): nothing here may climb out of a folder."""
    from lf.daemon.records import is_valid_name

    parts = name.split("/")
    if len(parts) == 3 and all(is_valid_name(part) for part in parts):
        return Qualified(f"{parts[0]}/{parts[1]}", parts[2])
    return None


class Names:
    """The names one project (or none: the embedded default) knows."""

    def __init__(self, project: Project | None, entries: list[ModelEntry] | None = None):
        self.project = project
        self.entries = list(entries if entries is not None else project.models if project else [])
        self._table: dict[str, ModelEntry] | None = None

    def table(self) -> dict[str, ModelEntry]:
        """Every name a request may use for a configured entry: entry names, then aliases, then model names."""
        if self._table is None:
            table: dict[str, ModelEntry] = {}
            for entry in self.entries:
                table.setdefault(entry.name, entry)
            for entry in self.entries:
                for alias in entry.aliases:
                    table.setdefault(alias, entry)
            for entry in self.entries:
                table.setdefault(entry.model, entry)
            self._table = table
        return self._table

    def lookup(self, name: str) -> ModelEntry | None:
        """The configured entry `name` means, or None."""
        return self.table().get(name)

    # -- one entry (chat, the gateway) ---------------------------------------------------------------------------
    def entry(self, name: str | None = None, runtime: str | None = None) -> ModelEntry:
        """The entry a chat (or `lf run`) means: `name` as any configured name, else the project's default model;
        with `runtime`, among that runtime's entries. Without a project, the runtime's (or the embedded default's)
        own entry, serving `name` when one is given (a model name or file)."""
        from lf.runtimes.folders import DEFAULT_RUNTIME

        if runtime is not None:
            self._require_runtime(runtime)
        if self.project is None:
            return default_entry(runtime or DEFAULT_RUNTIME, name)
        candidates = [e for e in self.entries if runtime is None or e.provider == runtime]
        if name is None:
            if runtime is None:
                return self.entry(self.project.default_model)
            if candidates:
                return candidates[0]
            return default_entry(runtime)
        found = self.lookup(name)
        if found is not None and found in candidates:
            return found
        if runtime is not None:  # a model the project does not configure, on that runtime
            return replace(candidates[0], model=name) if candidates else default_entry(runtime, name)
        raise self.unknown(name, what="model", where=str(self.project.path))

    # -- what a start means ---------------------------------------------------------------------------------
    def to_start(self, target: str | None) -> list[ModelEntry]:
        """The managed entries `lf runtime start|restart TARGET` means: an entry (by any of its names), a runtime
        (every entry of it, or its own default entry), or, with no target, every managed entry (the embedded
        default without a project)."""
        from lf.runtimes.folders import DEFAULT_RUNTIME

        managed = [e for e in self.entries if e.managed]
        if target is None:
            return managed if self.project is not None else [default_entry(DEFAULT_RUNTIME)]
        found = self.lookup(target)
        if found is not None:
            if found.is_router:
                targets = sorted({r["target_model"] for r in (found.router or {}).get("routes", ())})
                raise LfError(
                    f"{found.name!r} is a router: it has no instance of its own",
                    hint=f"start what it routes to ({', '.join(targets)}), or lf serve, which starts them on demand",
                )
            if not found.managed:
                raise LfError(
                    f"{found.name!r} is an endpoint lf does not run ({found.provider}): there is nothing to start",
                    hint="lf chat and lf serve use it as it is",
                )
            return [found]
        runtime = self._runtime(target)
        if runtime is not None:
            if not runtime.managed:
                raise LfError(
                    f"{target!r} is not started by lf: it is a server you run yourself", hint=runtime.description
                )
            return [e for e in managed if e.provider == target] or [default_entry(target)]
        raise self.unknown(target, what="runtime or model entry")

    # -- what a stop, status or logs means ----------------------------------------------------------------------
    def instance_name(self, name: str) -> str:
        """The instance a configured name stands for (an alias or a model name → its entry's name); any other name
        as it is (a recorded instance, a runtime)."""
        found = self.lookup(name)
        return found.name if found is not None else name

    def to_stop(self, names: Iterable[str], store: StateStore) -> list[str]:
        """Instance names of this project's store for `lf runtime stop NAMES`: configured names mean their entry's
        instance, a runtime's name every instance of it. A name lf knows but that is not running here passes
        through (stopping it is a no-op success, with a word on any project that does run one)."""
        from lf.daemon.records import validate_name
        from lf.runtimes.folders import runtime_names

        records = store.records()
        known = set(store.names())  # unreadable records too: stop removes them
        elsewhere = {r.name for each in store.every_project()[1:] for r in each.records()}
        targets: list[str] = []
        for given in names:
            validate_name(given)  # a path-like name is refused as such, before anything else
            name = self.instance_name(given)
            of_runtime = [r.name for r in records if r.runtime == name]
            if name in known or (not of_runtime and name in runtime_names()):
                targets.append(name)
            elif of_runtime:
                targets.extend(of_runtime)
            elif self.lookup(given) is not None or name in elsewhere:  # configured, or run by another project
                targets.append(name)
            else:
                raise self.unknown(given, what="runtime or instance", recorded=known)
        return list(dict.fromkeys(targets))

    # -- unknown names -------------------------------------------------------------------------------------------
    def known(self, recorded: Iterable[str] = ()) -> list[str]:
        from lf.runtimes.folders import runtime_names

        return list(dict.fromkeys([*self.table(), *recorded, *runtime_names()]))

    def unknown(self, name: str, what: str, where: str | None = None, recorded: Iterable[str] = ()) -> UnknownNameError:
        """The one error for a name nothing knows, with the one "did you mean" over every name that is known."""
        from lf.suggest import did_you_mean

        configured = [e.name for e in self.entries]
        hint = did_you_mean(name, self.known(recorded))
        if hint is None:
            hint = f"configured: {', '.join(configured)}" if configured else "lf runtime list shows the runtimes"
        return UnknownNameError(f"unknown {what} {name!r}" + (f" in {where}" if where else ""), hint=hint)

    # -- runtimes ------------------------------------------------------------------------------------------------
    @staticmethod
    def _runtime(name: str):
        from lf.runtimes.folders import runtime_names

        if name not in runtime_names():
            return None
        from lf.runtimes.registry import get_runtime

        return get_runtime(name)

    def _require_runtime(self, name: str) -> None:
        if self._runtime(name) is None:
            raise self.unknown(name, what="runtime")
