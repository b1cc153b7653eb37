"""Names for shell completion: from folder names, state records and llamafarm.yaml; never the network."""

from __future__ import annotations


def instance_names() -> list[str]:
    from lf.daemon.records import StateStore

    names = set(StateStore().names())
    names.update(_configured_names())
    return sorted(names)


def runtime_and_instance_names() -> list[str]:
    from lf.runtimes.folders import runtime_names

    return sorted(set(runtime_names()) | set(instance_names()))


def model_names() -> list[str]:
    from lf.models.catalog import CATALOG

    return sorted(set(_configured_names()) | set(CATALOG))


def _configured_names() -> list[str]:
    try:
        from lf.config.project import load_optional

        project = load_optional()
    except Exception:  # a broken config must not break the user's shell
        return []
    return [m.name for m in project.models] if project else []
