"""The llamafarm.yaml schema as pydantic models, built from the runtime registry, and a validator that
reports every problem with file:line:column, its dotted field path and what is allowed.

lf accepts what LlamaFarm accepts: LlamaFarm's loader does not forbid extra keys and its schema leaves the
runtime and model objects open, so an unknown key is kept and reported as a warning (with a did-you-mean),
and `null` means "not set". What lf cannot run is an error: a wrong type where lf needs the value, an
unknown provider, a broken file. `lf config validate --strict` makes the warnings errors too.

The models are the source of truth: `schema.yaml` at the repository root is their JSON Schema
(`python -m lf.config.schema > schema.yaml`; a test fails when the two disagree). The provider enum,
the per-provider sections and what each section accepts come from the runtimes' manifests, so adding a
runtime folder, or a setting to one, changes the schema with no edit here.

Only the slow path imports this module (a llamafarm.yaml that changed since it was last validated);
`lf runtime status` reads the cached normalised form (lf.config.project) and never loads pydantic.
"""

from __future__ import annotations

import typing
from collections.abc import Collection, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, create_model

from lf.config.yamlfile import key_node_at, node_at
from lf.errors import ConfigError
from lf.runtimes.settings import SIZE_PATTERN, Setting, describe_type, describe_value
from lf.suggest import did_you_mean

ENTRY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# typed where a field is known, open to the rest (reported as warnings by `unknown_keys`)
OPEN = ConfigDict(extra="allow", strict=True)
# Request parameters LlamaFarm lets a file set as defaults (runtime.temperature, provider_config.temperature,
# model_api_parameters): lf sends them with every request to that model; the request's own values win.
GENERATION_PARAMS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "frequency_penalty",
    "presence_penalty",
    "repeat_penalty",
    "stop",
    "seed",
)
MODES = Literal["config_only", "api_replace", "api_supplement"]


ROUTE: Any = create_model(
    "Route",
    __config__=ConfigDict(extra="allow", strict=True),
    name=(str, Field(min_length=1, description="the route's name")),
    target_model=(str, Field(min_length=1, description="the model entry it routes to")),
    description=(str, Field(None, description="what it is for")),
    utterances=(list[str], Field(None, min_length=1, description="example requests that belong to it")),
    dataset=(str, Field(None, description="LlamaFarm's dataset of utterances (lf reads inline utterances)")),
)
ROUTER = "router"  # LlamaFarm's provider for a model that routes to other entries by meaning (lf serve's)


def _model_fields(provider_type) -> dict[str, Any]:
    """What a model has in both of LlamaFarm's shapes, then the fields LlamaFarm defines that lf keeps
    but does not use (instructor_mode, tools, prompts, …)."""
    return {
        "provider": (provider_type, Field(description="which runtime serves the model")),
        # required for every provider but router (semantic_checks says so, located)
        "model": (str, Field(None, min_length=1, description="model name, or a path to a model file or folder")),
        "description": (str, None),
        "base_url": (
            str,
            Field(None, pattern="^https?://", description="OpenAI-compatible endpoint (external runtimes)"),
        ),
        "api_key": (
            str,
            Field(None, description="a key, or an env reference such as ${OPENAI_API_KEY}; never printed"),
        ),
        "model_api_parameters": (dict, Field(None, description="passed through in chat requests (temperature, ...)")),
        "instructor_mode": (str, None),
        "extra_body": (dict, None),
        "encoder_config": (dict, None),
        "prompts": (list[str], None),
        "mcp_servers": (list[str], None),
        "tool_call_strategy": (Literal["native_api", "prompt_based"], None),
        "tools": (list, None),
        "tools_mode": (MODES, None),
        "prompts_mode": (MODES, None),
        "keep_loaded": (bool, Field(None, description="never unloaded by `lf serve` (LlamaFarm's field)")),
        "prompt_format": (str, None),
        "idle_ttl": (
            float,
            Field(None, ge=0, description="seconds `lf serve` keeps it loaded after its last request (0: forever)"),
        ),
        "aliases": (list[str], Field(None, description="more names `lf serve` routes to this model")),
        "peers": (
            list[str],
            Field(None, description="gateway peers (runtime.gateway.peers) that serve this same model, by its name"),
        ),
        # LlamaFarm's router models (provider: router): a request goes to the route whose utterances are most like it
        "embedder_model": (str, Field(None, min_length=1, description="router: the model that embeds messages")),
        "default_model": (str, Field(None, min_length=1, description="router: where a request no route fits goes")),
        "similarity_threshold": (
            float,
            Field(None, ge=0, le=1, description="router: the least cosine similarity a route needs (default 0.7)"),
        ),
        "complexity_classifier": (
            str,
            Field(None, description="router: LlamaFarm's SetFit classifier (not used by lf)"),
        ),
        "routes": (list[ROUTE], Field(None, min_length=1, description="router: its routes")),
        "context_size": (
            typing.Annotated[int, Field(ge=128, le=1048576)] | Literal["auto"],
            Field(None, description="context window in tokens, or auto: the largest that fits the memory left"),
        ),
        "max_concurrent": (
            int,
            Field(None, ge=1, description="requests `lf serve` sends it at once (default: its engine's slots × 2)"),
        ),
        "max_queue": (
            int,
            Field(None, ge=0, description="requests that wait for it beyond max_concurrent; more get 429"),
        ),
        "max_tokens_default": (
            int,
            Field(None, ge=1, description="max_tokens of a request through `lf serve` that sets none"),
        ),
        "max_tokens_limit": (
            int,
            Field(None, ge=1, description="the most max_tokens a request through `lf serve` may ask for"),
        ),
        **_replica_fields(),
    }


def _replica_fields() -> dict[str, Any]:
    """How many copies of a model run, and where (lf.config.cluster)."""
    from lf.config.cluster import REPLICA_FIELDS

    fields: dict[str, Any] = {}
    for name, s in REPLICA_FIELDS.items():
        limits = {"ge": s.minimum, "le": s.maximum}
        constraints: dict[str, Any] = {k: v for k, v in limits.items() if v is not None}
        fields[name] = (_python_type(s), Field(None, description=s.description, **constraints))
    return fields


def _python_type(setting: Setting):
    if setting.enum:
        return Literal[tuple(setting.enum)]
    if setting.type == "size":
        return typing.Annotated[int, Field(ge=0)] | typing.Annotated[str, Field(pattern=SIZE_PATTERN)]
    return {"integer": int, "number": float, "string": str, "boolean": bool, "array": list[str]}[setting.type]


def settings_model(title: str, settings: dict[str, Setting], **more: Any) -> type[BaseModel]:
    """A closed mapping of the given settings, each with its declared type and limits (and `more` fields)."""
    fields: dict[str, Any] = dict(more)
    for name, s in settings.items():
        constraints = {"ge": s.minimum, "le": s.maximum, "min_length": s.min_length}
        fields[name] = (
            _python_type(s),
            Field(None, description=s.description or None, **{k: v for k, v in constraints.items() if v is not None}),
        )
    return create_model(title, __config__=OPEN, **fields)


def _any_settings(runtimes: dict) -> dict[str, Setting]:
    """Every setting any runtime declares: what a `provider_config` may hold before lf knows whose it is.
    A name declared differently by two runtimes is checked against the provider's own declaration."""
    merged: dict[str, Setting] = {}
    for runtime in runtimes.values():
        for name, setting in runtime.settings.items():
            if name not in merged:
                merged[name] = setting
            elif merged[name].type != setting.type or merged[name].enum != setting.enum:
                merged[name] = Setting(
                    name, merged[name].type if merged[name].type == setting.type else "string", merged[name].description
                )
    return merged


def _which_shape(value) -> str:
    return "list" if isinstance(value, dict) and "models" in value else "single"


@lru_cache(maxsize=4)
def _document(registry_key: tuple) -> tuple[type[BaseModel], TypeAdapter]:
    from lf.runtimes.registry import all_runtimes

    runtimes = all_runtimes()
    providers = tuple(sorted([*runtimes, ROUTER]))
    provider_type = Literal[providers]
    any_settings = settings_model("ProviderConfig", _any_settings(runtimes))
    from lf.config.gateway import GATEWAY_SETTINGS

    peer = create_model(
        "Peer",
        __config__=OPEN,
        name=(str, Field(pattern=ENTRY_NAME_PATTERN, description="what its models are called here: NAME/MODEL")),
        url=(str, Field(pattern="^https?://", description="its OpenAI base URL, with or without /v1")),
        api_key=(str, Field(None, description="its key, or an env reference such as ${env:PEER_KEY}; never printed")),
    )
    gateway = (
        settings_model(
            "Gateway",
            GATEWAY_SETTINGS,
            peers=(list[peer], Field(None, description="other lf serves or OpenAI-compatible servers to route to")),
        ),
        Field(None, description="settings of `lf serve` (lf's; LlamaFarm leaves runtime open)"),
    )
    from lf.config.cluster import CLUSTER_SETTINGS

    cluster = (
        settings_model("Cluster", CLUSTER_SETTINGS),
        Field(None, description="the Ray cluster `lf cluster deploy` uses (lf's; LlamaFarm leaves runtime open)"),
    )
    sections = {
        name.replace("-", "_"): (
            settings_model(f"{name}Settings", dict(rt.settings)),
            Field(None, alias=name, description=f"settings for the {name} runtime"),
        )
        for name, rt in sorted(runtimes.items())
    }
    single = create_model(
        "SingleRuntime",
        __config__=OPEN,
        __doc__="single runtime (seed shape)",
        **_model_fields(provider_type),
        provider_config=(any_settings, None),
        gateway=gateway,
        cluster=cluster,
        **sections,
    )
    entry = create_model(
        "ModelEntry",
        __config__=OPEN,
        name=(str, Field(pattern=ENTRY_NAME_PATTERN, description="entry name; also the instance name")),
        **_model_fields(provider_type),
        default=(bool, Field(None, description="mark the default entry (default_model wins when both are set)")),
        provider_config=(any_settings, None),
        **sections,  # as in the single shape: settings under the provider's own name
    )
    listed = create_model(
        "ModelList",
        __config__=OPEN,
        __doc__="list of models (LlamaFarm shape)",
        default_model=(str, Field(None, description="name of the entry to use by default (else the first)")),
        models=(list[entry], Field(min_length=1)),
        gateway=gateway,
        cluster=cluster,
    )
    runtime_type = typing.Annotated[
        typing.Annotated[single, Tag("single")] | typing.Annotated[listed, Tag("list")],
        Discriminator(_which_shape),
    ]
    document = create_model(
        "LlamafarmYaml",
        # rag, datasets, prompts, mcp, …: LlamaFarm's, left alone
        __config__=ConfigDict(extra="allow", strict=True),
        version=(Literal["v1"], ...),
        name=(str, Field(min_length=1)),
        namespace=(str, Field(min_length=1)),
        runtime=(runtime_type, ...),
    )
    return document, TypeAdapter(document)


def document_model() -> tuple[type[BaseModel], TypeAdapter]:
    from lf.runtimes.registry import all_runtimes

    runtimes = all_runtimes()
    return _document(tuple((name, id(rt)) for name, rt in sorted(runtimes.items())))


# -- the JSON Schema ---------------------------------------------------------------------------------
def schema() -> dict:
    """The models' JSON Schema with every $ref inlined: one readable document, as schema.yaml holds it."""
    _model, adapter = document_model()
    raw = adapter.json_schema()
    defs = raw.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[1]])
            # titles repeat the field names, and `default: null` only says the field is optional
            return {
                k: inline(v)
                for k, v in node.items()
                if not (k == "title" and isinstance(v, str)) and not (k == "default" and v is None)
            }
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    body = inline(raw)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "llamafarm.yaml (the parts lf reads)",
        "description": "Generated by `python -m lf.config.schema`; do not edit by hand.",
        **{k: v for k, v in body.items() if k not in ("title", "description")},
    }


def schema_yaml() -> str:
    import yaml

    return yaml.safe_dump(schema(), sort_keys=False, width=110, allow_unicode=True)


# -- problems ----------------------------------------------------------------------------------------
class Problem:
    def __init__(
        self, path: tuple, message: str, allowed: str | None = None, at_key: bool = False, warning: bool = False
    ):
        self.path = path
        self.message = message
        self.allowed = allowed
        self.at_key = at_key
        self.warning = warning  # kept and reported; an error only with --strict

    def dotted(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out or "(top level)"


def without_nulls(data):
    """The document with `key: null` dropped under `runtime` (LlamaFarm's "not set")."""

    def clean(node):
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if v is not None}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    if isinstance(data, dict) and isinstance(data.get("runtime"), dict):
        return {**data, "runtime": clean(data["runtime"])}
    return data


def collect_problems(data) -> list[Problem]:
    """Every problem of a parsed llamafarm.yaml (nulls already dropped): the models' findings, then (when
    those pass) what a schema cannot say; warnings among them for what lf keeps but does not use."""
    if not isinstance(data, dict):
        return [Problem((), f"expected a mapping at the top level, got {describe_value(data)}")]
    model, adapter = document_model()
    try:
        adapter.validate_python(data)
    except ValidationError as exc:
        return [_problem(model, error) for error in exc.errors(include_url=False, include_input=True)]
    problems: list[Problem] = []
    semantic_checks(data, problems)
    return problems


def _problem(model: type[BaseModel], error: Mapping[str, Any]) -> Problem:
    """One pydantic error as lf says it: the field path without pydantic's union tags, a plain message,
    what is allowed, and a did-you-mean."""
    raw_loc = error["loc"]
    tags = [i for i, part in enumerate(raw_loc) if part in ("single", "list") and i > 0 and raw_loc[i - 1] == "runtime"]
    path = tuple(part for i, part in enumerate(raw_loc) if i not in tags)
    kind, value = error["type"], error.get("input")
    field = _field_at(model, raw_loc)
    if kind == "missing":
        return Problem(path[:-1], f"missing required field {path[-1]!r}")
    if kind == "literal_error":
        choices = [str(c) for c in _literal_choices(field)]
        hint = did_you_mean(value, choices) if isinstance(value, str) else None
        return Problem(
            path, f"{_short(value)} is not allowed" + (f" ({hint})" if hint else ""), "one of: " + ", ".join(choices)
        )
    if kind in ("greater_than_equal", "greater_than"):
        return Problem(path, f"{_short(value)} is below the minimum", _range(field))
    if kind in ("less_than_equal", "less_than"):
        return Problem(path, f"{_short(value)} is above the maximum", _range(field))
    if kind == "string_too_short":
        return Problem(path, "must not be empty")
    if kind == "too_short":
        return Problem(path, f"needs at least {error.get('ctx', {}).get('min_length', 1)} item(s)")
    if kind == "string_pattern_mismatch":
        if isinstance(value, str):
            from lf.secrets import redact_url

            value = redact_url(value)  # a URL, maybe with credentials in it
        return Problem(path, f"{_short(value)} does not match the pattern {error.get('ctx', {}).get('pattern')}")
    if kind == "invalid_key":
        return Problem(path[:-1], f"keys must be text, got {describe_value(value)}")
    wanted = _EXPECTED.get(kind)
    if wanted:
        return Problem(path, f"expected {describe_type(wanted)}, got {describe_value(value)}")
    return Problem(path, error["msg"])


_EXPECTED = {
    "int_type": "integer",
    "float_type": "number",
    "string_type": "string",
    "bool_type": "boolean",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
    "list_type": "array",
}


def _short(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return "a huge number"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _unwrap(annotation):
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _field_at(model, loc: tuple, container: bool = False):
    """The annotation (a model class, a Literal, ...) or FieldInfo at a pydantic error location."""
    current: Any = model
    info = None
    for part in loc:
        current = _unwrap(current)
        if typing.get_origin(current) is Union:
            members = {
                typing.get_args(m)[1].tag: typing.get_args(m)[0]
                for m in typing.get_args(current)
                if typing.get_origin(m) is typing.Annotated
            }
            if part in members:
                current = members[part]
                continue
            return None
        if typing.get_origin(current) is list and isinstance(part, int):
            current = typing.get_args(current)[0]
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            found = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
            if found is None:
                return None
            info, current = found, found.annotation
            continue
        return None
    return _unwrap(current) if container else (info, _unwrap(current))


def _field_names(model) -> list[str]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [f.alias or n for n, f in model.model_fields.items()]
    return []


def _literal_choices(found) -> list:
    if not found:
        return []
    _info, annotation = found
    return list(typing.get_args(annotation)) if typing.get_origin(annotation) is Literal else []


def _range(found) -> str | None:
    if not found or found[0] is None:
        return None
    low = high = None
    for meta in found[0].metadata:
        low = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else low
        high = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else high
    return f"{'-∞' if low is None else low} to {'∞' if high is None else high}"


def semantic_checks(data: dict, problems: list[Problem]) -> None:
    """What a schema cannot say: names unique, default_model names an entry, provider sections fit; and the
    keys lf keeps without using them (warnings)."""
    from lf.runtimes.registry import all_runtimes

    runtime = data.get("runtime")
    if not isinstance(runtime, dict):
        return
    runtimes = all_runtimes()
    model, _ = document_model()
    shapes = {name: _field_at(model, ("runtime", name), container=True) for name in ("single", "list")}
    if isinstance(runtime.get("cluster"), dict):
        from lf.config.cluster import CLUSTER_SETTINGS

        _unknown_keys(runtime["cluster"], ("runtime", "cluster"), list(CLUSTER_SETTINGS), problems)
    models = runtime.get("models")
    if isinstance(models, list):
        _unknown_keys(runtime, ("runtime",), _field_names(shapes["list"]), problems)
        names = [m.get("name") for m in models if isinstance(m, dict)]
        seen: set = set()
        for i, name in enumerate(names):
            if name in seen:
                problems.append(Problem(("runtime", "models", i, "name"), f"duplicate model name {name!r}"))
            seen.add(name)
        default = runtime.get("default_model")
        if isinstance(default, str) and default not in names:
            hint = did_you_mean(default, [n for n in names if isinstance(n, str)])
            listed = ", ".join(dict.fromkeys(map(str, names)))
            problems.append(
                Problem(
                    ("runtime", "default_model"),
                    f"{default!r} names no model entry" + (f" ({hint})" if hint else ""),
                    f"one of: {listed}",
                )
            )
        entry_fields = _field_names(_field_at(model, ("runtime", "list", "models", 0), container=True))
        for i, item in enumerate(models):
            if isinstance(item, dict):
                _check_model(item, ("runtime", "models", i), entry_fields, runtimes, problems)
        _check_routers(models, problems)
        _check_peer_names(runtime, models, problems)
    else:
        _check_model(runtime, ("runtime",), _field_names(shapes["single"]), runtimes, problems)


def _check_peer_names(runtime: dict, models: list, problems: list[Problem]) -> None:
    """An entry's `peers` name peers of runtime.gateway.peers."""
    gateway = runtime["gateway"] if isinstance(runtime.get("gateway"), dict) else {}
    known = [p.get("name") for p in gateway.get("peers") or [] if isinstance(p, dict)]
    for i, item in enumerate(models):
        for j, name in enumerate(item.get("peers") or [] if isinstance(item, dict) else []):
            if name not in known:
                hint = did_you_mean(str(name), [k for k in known if isinstance(k, str)])
                problems.append(
                    Problem(
                        ("runtime", "models", i, "peers", j),
                        f"{name!r} is not a peer of runtime.gateway.peers" + (f" ({hint})" if hint else ""),
                        f"one of: {', '.join(map(str, known))}" if known else "declare it under runtime.gateway.peers",
                    )
                )


def _check_routers(models: list, problems: list[Problem]) -> None:
    """A router's routes and default go to entries of the project that are not routers; it has routes, each with
    utterances lf can embed, and an embedder."""
    entries = {m.get("name"): m for m in models if isinstance(m, dict)}
    targets = [n for n, m in entries.items() if isinstance(n, str) and m.get("provider") != ROUTER]
    for i, item in enumerate(models):
        if not isinstance(item, dict) or item.get("provider") != ROUTER:
            continue
        path = ("runtime", "models", i)

        def names_an_entry(value, where: tuple, what: str) -> None:
            if not isinstance(value, str):
                return
            if value not in entries or entries[value].get("provider") == ROUTER:
                said = "is another router" if value in entries else "names no model entry"
                hint = did_you_mean(value, targets)
                problems.append(
                    Problem(
                        where,
                        f"{what} {value!r} {said}" + (f" ({hint})" if hint else ""),
                        f"one of: {', '.join(targets)}",
                    )
                )

        for key in ("default_model", "embedder_model", "routes"):
            if item.get(key) is None:
                problems.append(Problem(path, f"missing required field {key!r} (a router needs it)"))
        names_an_entry(item.get("default_model"), path + ("default_model",), "the default model")
        for j, route in enumerate(item.get("routes") or []):
            if not isinstance(route, dict):
                continue
            names_an_entry(route.get("target_model"), path + ("routes", j, "target_model"), "the target model")
            if not route.get("utterances"):
                reason = (
                    "lf routes by inline utterances, not by a LlamaFarm dataset"
                    if route.get("dataset")
                    else "it has none"
                )
                problems.append(Problem(path + ("routes", j), f"the route needs utterances: {reason}"))


def _check_model(item: dict, path: tuple, fields: list[str], runtimes: dict, problems: list[Problem]) -> None:
    provider = item.get("provider")
    if provider == ROUTER:
        return  # a router has no runtime settings: _check_routers checks it against the other entries
    if not item.get("model"):
        problems.append(Problem(path, "missing required field 'model'"))
    _unknown_keys(item, path, fields, problems, skip=set(runtimes))
    for name in runtimes:
        if name in item and name != provider:
            problems.append(
                Problem(
                    path + (name,),
                    f"a {name!r} section, but the provider is {provider!r}: kept, lf does not use it",
                    f"a section named after the provider ({provider})",
                    at_key=True,
                    warning=True,
                )
            )
    for key in (provider, "provider_config"):
        if isinstance(item.get(key), dict):
            _check_provider_config(provider, item[key], path + (key,), runtimes, problems)
    if isinstance(item.get("extra_body"), dict):
        config = {
            k: v
            for key in (provider, "provider_config")
            if isinstance(item.get(key), dict)
            for k, v in item[key].items()
        }
        _check_extra_body(provider, item["extra_body"], config, path + ("extra_body",), runtimes, problems)
    _check_external(item, path, runtimes, problems)
    _check_replicas(item, path, problems)


SCALING_ONLY = ("min_replicas", "max_replicas", "target_ongoing_requests", "scale_up_delay", "scale_down_delay")


def _check_replicas(item: dict, path: tuple, problems: list[Problem]) -> None:
    """A fixed number of copies, or a range Ray Serve scales within: not both, and the range in order."""
    scaling = [k for k in SCALING_ONLY if k in item]
    if "replicas" in item and scaling:
        problems.append(
            Problem(
                path + (scaling[0],),
                f"{scaling[0]} scales the model, but replicas fixes its copies at {item['replicas']!r}",
                "replicas alone, or min_replicas/max_replicas (and the scaling fields) without replicas",
                at_key=True,
            )
        )
    elif scaling and "max_replicas" not in item:
        problems.append(
            Problem(
                path + (scaling[0],),
                f"{scaling[0]} only applies when the model scales, and it has no max_replicas",
                "max_replicas: the most copies (scaling is on once it is set)",
                at_key=True,
            )
        )
    low, high = item.get("min_replicas", 1), item.get("max_replicas")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        problems.append(Problem(path + ("min_replicas",), f"{low} is above max_replicas ({high})", f"0 to {high}"))


def _check_extra_body(provider, body: dict, config: dict, path: tuple, runtimes: dict, problems: list[Problem]) -> None:
    """LlamaFarm's GGUF parameters in extra_body set the settings that declare their key, so they are checked
    as those are; other keys are LlamaFarm's own (sent with requests) and left alone."""
    if provider not in runtimes:
        return
    by_key = {s.extra_body: s for s in runtimes[provider].settings.values() if s.extra_body}
    for key, value in body.items():
        setting = by_key.get(key)
        if setting is None or value is None:
            continue
        if setting.problem(value):
            problems.append(
                Problem(
                    path + (key,),
                    f"{setting.problem(value)} (it sets {provider}'s setting {setting.name!r})",
                    setting.allowed(),
                )
            )
        elif config.get(setting.name) is not None and config[setting.name] != value:
            problems.append(
                Problem(
                    path + (key,),
                    f"{value!r} is overridden by {setting.name}: {config[setting.name]!r} in provider_config "
                    f"(lf's precedence: provider_config > extra_body)",
                    warning=True,
                )
            )


def _unknown_keys(
    mapping: dict, path: tuple, known: list[str], problems: list[Problem], skip: Collection[str] = frozenset()
) -> None:
    for key in mapping:
        if key in known or key in skip or key in GENERATION_PARAMS:
            continue
        hint = did_you_mean(str(key), [*known, *GENERATION_PARAMS])
        problems.append(
            Problem(
                path + (key,),
                f"unknown field {key!r}" + (f" ({hint})" if hint else "") + ": kept, lf does not use it",
                at_key=True,
                warning=True,
            )
        )


def _check_provider_config(provider, config: dict, path: tuple, runtimes: dict, problems: list[Problem]) -> None:
    if provider not in runtimes:
        return
    allowed = runtimes[provider].settings
    for key, value in config.items():
        setting = allowed.get(key)
        if setting is None:
            if key in GENERATION_PARAMS:
                continue  # a request default, as LlamaFarm reads it
            hint = did_you_mean(str(key), [*allowed, *GENERATION_PARAMS])
            problems.append(
                Problem(
                    path + (key,),
                    f"{provider} does not use the setting {key!r}"
                    + (f" ({hint})" if hint else "")
                    + ": kept, not used",
                    ", ".join(allowed),
                    at_key=True,
                    warning=True,
                )
            )
        elif setting.problem(value):
            problems.append(Problem(path + (key,), setting.problem(value), setting.allowed()))


def _check_external(entry: dict, path: tuple, runtimes: dict, problems: list[Problem]) -> None:
    provider = entry.get("provider")
    if provider not in runtimes or runtimes[provider].managed:
        return
    base_url = entry.get("base_url")
    if not runtimes[provider].default_port and not base_url:
        problems.append(
            Problem(path, f"provider {provider!r} needs a base_url", "an http(s):// URL of an OpenAI-compatible API")
        )
    elif isinstance(base_url, str) and runtimes[provider].api_base:
        from urllib.parse import urlsplit

        if urlsplit(base_url).path in ("", "/"):
            from lf.secrets import redact_url

            api = redact_url(runtimes[provider].external_base_url(base_url))
            problems.append(
                Problem(
                    path + ("base_url",),
                    f"has no API path: lf uses {api} (LlamaFarm expects the path written out)",
                    warning=True,
                )
            )


# -- reporting -----------------------------------------------------------------------------------------
def validate_document(path: Path, data, root) -> list[str]:
    """Raise one ConfigError listing every error, each with file:line:column and its field path; the
    warnings, located the same way, as lines for the caller to show."""
    problems = collect_problems(data)
    errors = [p for p in problems if not p.warning]
    if errors:
        raise ConfigError(format_problems(path, root, errors), hint="see the schema with: lf config schema")
    return warning_lines(path, root, problems)


def warning_lines(path: Path, root, problems: list[Problem]) -> list[str]:
    return [
        f"Warning: {line.strip()}"
        for line in format_problems(path, root, [p for p in problems if p.warning]).splitlines()[1:]
    ]


def locate(root, problem: Problem) -> tuple[int, int] | None:
    if root is None:
        return None
    node = key_node_at(root, problem.path) if problem.at_key and problem.path else node_at(root, problem.path)
    if node is None:
        return None
    return node.start_mark.line + 1, node.start_mark.column + 1


def format_problems(path: Path, root, problems: list[Problem]) -> str:
    lines = [
        f"{path}: invalid llamafarm.yaml ({len(problems)} problem{'s' if len(problems) != 1 else ''})"
    ]  # the first line is the summary
    located = sorted(((locate(root, p), p) for p in problems), key=lambda item: item[0] or (0, 0))
    for where, p in located:
        pos = f"{path}:{where[0]}:{where[1]}" if where else str(path)
        text = f"  {pos}: {p.dotted()}: {p.message}"
        if p.allowed:
            text += f" (allowed: {p.allowed})"
        lines.append(text)
    return "\n".join(lines)


def problems_as_json(path: Path, root, problems: list[Problem]) -> list[dict]:
    out = []
    for p in problems:
        where = locate(root, p)
        out.append(
            {
                "file": str(path),
                "line": where[0] if where else None,
                "column": where[1] if where else None,
                "field": p.dotted(),
                "message": p.message,
                "allowed": p.allowed,
                "severity": "warning" if p.warning else "error",
            }
        )
    return out


if __name__ == "__main__":
    print(schema_yaml(), end="")
