"""The resolved configuration behind `lf config show`: defaults filled, secrets redacted."""

from __future__ import annotations

REDACTED = "***"


def resolved_config(project) -> dict:
    from lf.instances import Overrides, build_spec, entries_for
    from lf.registry import all_runtimes

    runtimes = all_runtimes()
    entries = project.models if project else entries_for(None, None)
    models = []
    for entry in entries:
        runtime = runtimes[entry.provider]
        item = {
            "name": entry.name,
            "provider": entry.provider,
            "model": entry.model,
            "default": (project.default_model == entry.name) if project else True,
            "managed": runtime.managed and not entry.base_url,
            "api_key": _redact(entry.api_key),
            "model_api_parameters": entry.model_api_parameters,
        }
        if item["managed"]:
            spec = build_spec(entry, project, Overrides(), single=False, resolve_model=False)
            item.update(
                host=spec.host,
                port=spec.port,
                port_auto=spec.port_auto,
                base_url=spec.base_url,
                context_size=spec.context_size,
                settings={k: v for k, v in spec.settings.items() if k not in ("port", "host", "context_size", "threads")},
            )
        else:
            from lf.status import api_base_url

            item["base_url"] = api_base_url(runtime, entry.base_url)
        models.append(item)
    return {
        "config": str(project.path) if project else None,
        "shape": project.shape if project else None,
        "name": project.name if project else None,
        "namespace": project.namespace if project else None,
        "default_model": project.default_model if project else entries[0].name,
        "models": models,
    }


def _redact(value: str | None) -> str | None:
    if value is None:
        return None
    from lf.config import _ENV_REF

    if _ENV_REF.match(value.strip()):
        return value  # a reference names a variable, not the secret
    return REDACTED
