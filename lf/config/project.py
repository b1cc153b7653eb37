"""llamafarm.yaml: discovery, loading and normalisation of both LlamaFarm shapes of `runtime`.

- single shape: runtime: {provider, model, base_url?, api_key?, model_api_parameters?, <provider>: {...}}
- list shape:   runtime: {default_model?, models: [{name, provider, model, ..., provider_config?}]}

Both become a Project with a list of ModelEntry. Validation (lf.config.schema) reports the file, line,
column and dotted field path of every problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from lf.config.envref import expand_env_ref, is_env_ref
from lf.envvars import AppEnvVars
from lf.errors import ConfigError

CONFIG_NAMES = ("llamafarm.yaml", "llamafarm.yml")


@dataclass
class ModelEntry:
    name: str
    provider: str
    model: str
    description: str | None = None
    base_url: str | None = None
    api_key: str | None = None  # as written: may be an env reference like ${OPENAI_API_KEY}
    model_api_parameters: dict = field(default_factory=dict)
    provider_config: dict = field(default_factory=dict)
    line: int | None = None  # where the entry starts in the file
    managed: bool | None = None  # started by lf (its provider is a managed runtime and no base_url)
    request_defaults: dict = field(default_factory=dict)  # sent with every request: model_api_parameters and
    # the generation parameters LlamaFarm lets a file place elsewhere (runtime.temperature, provider_config.top_p)
    keep_loaded: bool = False  # LlamaFarm's "never unload": the gateway neither times it out nor evicts it
    idle_ttl: float | None = None  # seconds the gateway keeps it loaded after its last request (0: forever)
    aliases: list[str] = field(default_factory=list)  # more names the gateway routes to this entry
    context_size: int | str | None = None  # tokens, or "auto": the largest that fits the memory left (the gateway's)
    max_concurrent: int | None = None  # requests the gateway sends it at once (default: its engine's slots × 2)
    max_queue: int | None = None  # requests that wait for it beyond those; more get 429
    max_tokens_default: int | None = None  # max_tokens of a request that sets none (default: the gateway's)
    max_tokens_limit: int | None = None  # the most max_tokens a request may ask of it
    router: dict | None = None  # provider: router: {embedder_model, default_model, similarity_threshold, routes}
    peers: list[str] = field(default_factory=list)  # gateway peers that serve this same model (as its entry name)
    replica_of: str | None = None  # a copy the gateway runs of another entry (replicas: N): that entry's name

    @property
    def is_router(self) -> bool:
        return self.router is not None

    def same_as(self, other: ModelEntry | None) -> bool:
        """The same settings, wherever each stands in its file (what a reload of llamafarm.yaml compares)."""
        return other is not None and replace(self, line=None) == replace(other, line=None)

    extra_body: dict = field(
        default_factory=dict
    )  # LlamaFarm's per-model parameters: its GGUF ones (n_ctx, n_gpu_layers, …)
    # set the runtime settings that declare them (lf.runtimes.settings), below provider_config
    scaling: dict = field(default_factory=dict)  # replicas, min/max_replicas, spread, … as written (lf.config.cluster)

    def resolved_api_key(self) -> str | None:
        return expand_env_ref(self.api_key)


@dataclass
class Project:
    path: Path
    name: str | None
    namespace: str | None
    models: list[ModelEntry]
    default_model: str
    shape: str  # "single" or "list"
    gateway: dict = field(default_factory=dict)  # runtime.gateway: settings of `lf serve` (lf.config.gateway)
    cluster: dict = field(default_factory=dict)  # runtime.cluster: the Ray cluster to deploy to (lf.config.cluster)
    warnings: list[str] = field(default_factory=list)  # what lf keeps without using (unknown keys), located

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def key(self) -> str:
        """The project's identity, "namespace/name" as llamafarm.yaml gives them: its instances are its own
        (two projects with an entry of the same name never share one). A file without them is named by its folder."""
        namespace = self.namespace if isinstance(self.namespace, str) and self.namespace else "default"
        name = self.name if isinstance(self.name, str) and self.name else self.folder.name or "project"
        # the first slash separates the two: one in the namespace is written %2F (and % as %25)
        return f"{namespace.replace('%', '%25').replace('/', '%2F')}/{name}"


def find_config(explicit: str | os.PathLike | None = None, start: Path | None = None) -> Path | None:
    """-c/--config, then LF_CONFIG, then llamafarm.yaml/.yml in the current dir or its nearest parent."""
    chosen = explicit or os.environ.get(AppEnvVars.CONFIG)
    if chosen:
        path = Path(chosen).expanduser()
        if not path.exists():
            source = "--config" if explicit else AppEnvVars.CONFIG
            raise ConfigError(
                f"{path}: no such file (from {source})",
                hint="give the path of a llamafarm.yaml, or create one with: lf config init",
            )
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        for name in CONFIG_NAMES:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def load_project(path: Path) -> Project:
    """Read, validate and normalise a llamafarm.yaml. Raises ConfigError with a located message.

    A file that validated before and has not changed since (same size, mtime, ctime and inode, same
    lf and runtime folders) is read back from a small JSON copy of its normalised form, as Python
    reuses a .pyc: parsing YAML and building the schema would otherwise be most of the cost of a
    `lf runtime status` call.
    """
    key = _cache_key(path)
    cached = _cache_read(path, key)
    if cached is not None:
        return cached
    from lf.config.schema import validate_document, without_nulls
    from lf.config.yamlfile import read_yaml

    document, root = read_yaml(path)
    document = without_nulls(document)
    warnings = validate_document(path, document, root)
    project = normalise(path, document, root)
    project.warnings = warnings
    _cache_write(path, key, project)
    return project


def _cache_file(path: Path) -> Path:
    import zlib

    from lf.dirs import state_dir

    resolved = str(path.resolve())
    return state_dir() / "cache" / f"config-{zlib.crc32(resolved.encode()):08x}.json"


def _cache_key(path: Path) -> list | None:
    from lf import __version__
    from lf.runtimes.folders import fingerprint

    try:
        st = path.stat()
    except OSError:
        return None
    return [
        str(path.resolve()),
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        __version__,
        fingerprint(),
        _cache_format(),
    ]


def _cache_format() -> str:
    """What a cached copy was written as: the fields of its dataclasses (a copy from before a field was added is
    not read back)."""
    from dataclasses import fields

    return ",".join(f.name for cls in (Project, ModelEntry) for f in fields(cls))


def _cache_read(path: Path, key: list | None) -> Project | None:
    import json

    if key is None:
        return None
    try:
        data = json.loads(_cache_file(path).read_text(encoding="utf-8"))
        if data.get("key") != key:
            return None
        p = data["project"]
        return Project(
            path=path,
            name=p["name"],
            namespace=p["namespace"],
            models=[ModelEntry(**m) for m in p["models"]],
            default_model=p["default_model"],
            shape=p["shape"],
            gateway=p.get("gateway") or {},
            cluster=p.get("cluster") or {},
            warnings=p.get("warnings") or [],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cache_write(path: Path, key: list | None, project: Project) -> None:
    import json
    from dataclasses import asdict

    if key is None:
        return
    if any(
        _holds_secret(m) for m in project.models
    ):  # a secret written into the file itself is not copied anywhere else
        try:
            _cache_file(path).unlink(missing_ok=True)  # nor left there by an earlier version of the file, or of lf
        except OSError:
            pass
        return
    try:
        from lf.dirs import ensure_private_dir
        from lf.files import atomic_write

        target = _cache_file(path)
        ensure_private_dir(target.parent)
        data = asdict(project)
        data.pop("path")
        atomic_write(target, json.dumps({"key": key, "project": data}))
    except Exception:  # a cache that cannot be written only costs speed
        pass


def _holds_secret(entry: ModelEntry) -> bool:
    """A key written out in the file, or credentials in base_url (`https://user:key@host`): the cache would
    need them to work (status probes with them, chat sends them), so such a file is not cached at all."""
    from lf.secrets import redact_url

    return bool(entry.api_key and not is_env_ref(entry.api_key)) or redact_url(entry.base_url) != entry.base_url


def normalise(path: Path, data: dict, root=None) -> Project:
    from lf.config.yamlfile import line_of

    runtime = data.get("runtime") or {}
    shared = _generation(runtime)  # runtime.temperature and the like: defaults for every model
    if "models" in runtime:
        shape = "list"
        items = runtime.get("models") or []
        models = [
            _entry(
                item,
                str(item["name"]),
                {**(item.get(item["provider"]) or {}), **(item.get("provider_config") or {})},
                line_of(root, ("runtime", "models", i)),
                shared,
            )
            for i, item in enumerate(items)
        ]
        marked = [m.name for m, item in zip(models, items) if item.get("default") is True]
        default = runtime.get("default_model") or (marked[0] if marked else (models[0].name if models else ""))
    else:
        shape = "single"
        provider = runtime["provider"]
        # the single shape has no entry name: the instance is named after the runtime
        models = [
            _entry(
                runtime,
                provider,
                runtime.get(provider) or runtime.get("provider_config"),
                line_of(root, ("runtime",)),
                {},
            )
        ]
        default = provider
    from lf.runtimes.registry import get_runtime

    for entry in models:
        entry.managed = not entry.is_router and get_runtime(entry.provider).managed and not entry.base_url
    return Project(
        path=path,
        name=data.get("name"),
        namespace=data.get("namespace"),
        models=models,
        default_model=default,
        shape=shape,
        gateway=dict(runtime.get("gateway") or {}),
        cluster=dict(runtime.get("cluster") or {}),
    )


def _router(item: dict) -> dict:
    """A router's own fields, as validated (lf.config.schema checks them against the other entries)."""
    return {
        "embedder_model": item["embedder_model"],
        "default_model": item["default_model"],
        "similarity_threshold": float(item.get("similarity_threshold", 0.7)),
        "routes": [
            {"name": r["name"], "target_model": r["target_model"], "utterances": list(r["utterances"])}
            for r in item["routes"]
        ],
    }


def _generation(mapping: dict) -> dict:
    from lf.config.schema import GENERATION_PARAMS

    return {k: v for k, v in mapping.items() if k in GENERATION_PARAMS}


def _entry(item: dict, name: str, provider_config: dict | None, line: int | None, shared: dict) -> ModelEntry:
    from lf.config.cluster import SCALING_KEYS

    settings = dict(provider_config or {})
    return ModelEntry(
        name=name,
        provider=item["provider"],
        model=str(item.get("model") or ""),
        description=item.get("description"),
        base_url=item.get("base_url"),
        api_key=item.get("api_key"),
        model_api_parameters=dict(item.get("model_api_parameters") or {}),
        provider_config=settings,
        request_defaults={
            **shared,
            **_generation(item),
            **_generation(settings),
            **(item.get("model_api_parameters") or {}),
        },
        line=line,
        keep_loaded=bool(item.get("keep_loaded")),
        idle_ttl=item.get("idle_ttl"),
        aliases=list(item.get("aliases") or []),
        context_size=item.get("context_size"),
        max_concurrent=item.get("max_concurrent"),
        max_queue=item.get("max_queue"),
        max_tokens_default=item.get("max_tokens_default"),
        max_tokens_limit=item.get("max_tokens_limit"),
        router=_router(item) if item["provider"] == "router" else None,
        peers=list(item.get("peers") or []),
        extra_body=dict(item.get("extra_body") or {}),
        scaling={key: item[key] for key in SCALING_KEYS if key in item},
    )


def load_optional(explicit: str | None = None) -> Project | None:
    path = find_config(explicit)
    return load_project(path) if path else None


STARTER = """\
# llamafarm.yaml: the runtime and models this project uses (schema: lf's schema.yaml).
version: v1
name: {name}
namespace: default

runtime:
  default_model: default
  models:
    - name: default
      description: SmolLM2-135M on the embedded llama.cpp runtime
      provider: llamacpp
      model: smollm2-135m
      # no port: each model gets the runtime's base port (11634), or the next free one after it
"""


def write_starter(path: Path, force: bool = False) -> Path:
    """Write a starter llamafarm.yaml (the embedded default runtime and model), named after its folder."""
    from lf.errors import LfError

    if path.exists() and not force:
        raise LfError(f"{path} already exists", hint="use --force to overwrite it")
    name = Path.cwd().name if path.parent == Path(".") else path.resolve().parent.name
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-") or "project"
    path.write_text(STARTER.format(name=safe), encoding="utf-8")
    return path
