"""The data behind `lf models list`."""

from __future__ import annotations

import json


def collect_models(project, probe_timeout: float) -> dict:
    from lf.daemon.health import http_get
    from lf.daemon.records import StateStore
    from lf.models.catalog import CATALOG, local_model_files

    configured = [
        {"name": e.name, "provider": e.provider, "model": e.model, "default": project.default_model == e.name}
        for e in (project.models if project else [])
    ]
    served, errors = [], []
    for record in StateStore().all_records():  # every project's
        name = record.name
        if not record.process_alive():
            continue
        try:
            status, body = http_get(record.base_url.rstrip("/") + "/models", probe_timeout)
            data = json.loads(body) if status == 200 else {}
        except (OSError, ValueError) as exc:
            errors.append(f"{name}: could not list models ({exc})")
            continue
        for item in data.get("data") or []:
            served.append({"id": item.get("id"), "instance": name, "base_url": record.base_url})
    known = []
    for model in CATALOG.values():
        path = model.path()
        known.append({"name": model.name, "format": model.format, "installed": path is not None, "path": str(path) if path else None, "description": model.description})
    local = [{"name": p.name, "format": "gguf" if p.suffix == ".gguf" else "onnx", "path": str(p)} for p in local_model_files()]
    return {"configured": configured, "served": served, "known": known, "local": local, "errors": errors}
