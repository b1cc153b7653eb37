"""The resolved configuration behind `lf config show`: defaults filled, secrets redacted."""

from __future__ import annotations

REDACTED = "***"
SHOWN_APART = ("port", "host", "context_size")  # shown as fields of their own, not among `settings`


def resolved_config(project) -> dict:
    from lf.config.names import Names
    from lf.core.targets import Overrides, build_spec
    from lf.net import local_url
    from lf.runtimes.registry import get_runtime

    entries = project.models if project else Names(None).to_start(None)
    models = []
    for entry in entries:
        if entry.is_router:
            models.append({"name": entry.name, "provider": entry.provider, "managed": False, "router": entry.router})
            continue
        runtime = get_runtime(entry.provider)
        item = {
            "name": entry.name,
            "provider": entry.provider,
            "model": entry.model,
            "default": (project.default_model == entry.name) if project else True,
            "aliases": list(entry.aliases),  # more names the gateway routes to this entry
            "managed": bool(entry.managed),
            "api_key": _redact(entry.api_key),
            "model_api_parameters": entry.model_api_parameters,
            "request_defaults": entry.request_defaults,  # sent with every request (the request's own values win)
        }
        if entry.managed:
            spec = build_spec(entry, project, Overrides(), single=False, resolve_model=False)
            item.update(
                host=spec.host,
                port=spec.port,
                port_auto=spec.port_auto,
                base_url=local_url(spec.host, spec.port, runtime.api_base),
                context_size=spec.context_size,
                settings={k: v for k, v in spec.settings.items() if k not in SHOWN_APART},
            )
        else:
            from lf.secrets import redact_url

            item["base_url"] = redact_url(runtime.external_base_url(entry.base_url))
        models.append(item)
    return {
        "config": str(project.path) if project else None,
        "shape": project.shape if project else None,
        "name": project.name if project else None,
        "namespace": project.namespace if project else None,
        "default_model": project.default_model if project else entries[0].name,
        "models": models,
        "gateway": gateway_settings(project),
    }


def gateway_settings(project) -> dict:
    """`lf serve`'s settings as it would resolve them here (without flags): each value and where it comes from
    (env, config, default); the API key only as *** (or the ${env:NAME} reference that names it)."""
    from lf.config.gateway import GATEWAY_SETTINGS
    from lf.runtimes.settings import resolve

    values, sources = resolve(GATEWAY_SETTINGS, {}, dict(project.gateway) if project else {})
    values["api_key"] = _redact(values["api_key"])
    return {name: {"value": values[name], "source": sources[name]} for name in GATEWAY_SETTINGS}


def _redact(value: str | None) -> str | None:
    if value is None:
        return None
    from lf.config.envref import is_env_ref

    if is_env_ref(value):
        return value  # a reference names a variable, not the secret
    return REDACTED
