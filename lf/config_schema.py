"""The llamafarm.yaml schema (as code) and a validator that reports file:line:column and field paths.

`schema()` is the source of truth; `schema.yaml` at the repository root is generated from it
(`python -m lf.config_schema > schema.yaml`) and a test fails when the two disagree. The provider enum
and the per-provider sections come from the runtime registry, so adding a runtime folder updates both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lf.errors import ConfigError

MAX_NODES = 100_000  # bounds the work an alias bomb can cause

# Settings a provider section (`runtime.<provider>` or `provider_config`) may hold, by runtime.
COMMON_SETTINGS: dict[str, dict] = {
    "port": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "port the server listens on"},
    "host": {"type": "string", "minLength": 1, "description": "address to bind; 127.0.0.1 unless you ask"},
    "context_size": {"type": "integer", "minimum": 128, "maximum": 1048576, "description": "context window in tokens"},
}
EXTRA_SETTINGS: dict[str, dict] = {
    "threads": {"type": "integer", "minimum": 1, "maximum": 1024, "description": "CPU threads"},
    "backend": {"type": "string", "description": "engine backend (Lemonade: onnx, llamacpp, transformers)"},
    "checkpoint": {"type": "string", "description": "a local model folder or file (Lemonade: loaded by path)"},
    "recipe": {"type": "string", "description": "Lemonade recipe for a checkpoint, e.g. oga-cpu"},
    "llamacpp_backend": {"type": "string", "enum": ["cpu", "vulkan", "rocm", "metal"], "description": "Lemonade llama.cpp backend"},
}


def provider_settings(runtime) -> dict[str, dict]:
    keys = runtime.config_keys or tuple(COMMON_SETTINGS)
    table = {**COMMON_SETTINGS, **EXTRA_SETTINGS}
    return {k: table[k] for k in keys if k in table}


def schema() -> dict:
    from lf.registry import all_runtimes

    runtimes = all_runtimes()
    providers = sorted(runtimes)
    provider_section = {
        name: {
            "type": "object",
            "description": f"settings for the {name} runtime",
            "properties": provider_settings(rt),
            "additionalProperties": False,
        }
        for name, rt in sorted(runtimes.items())
    }
    any_settings = {**COMMON_SETTINGS, **EXTRA_SETTINGS}
    common_model = {
        "provider": {"type": "string", "enum": providers, "description": "which runtime serves the model"},
        "model": {"type": "string", "minLength": 1, "description": "model name, or a path to a model file or folder"},
        "description": {"type": "string"},
        "base_url": {"type": "string", "pattern": "^https?://", "description": "OpenAI-compatible endpoint (external runtimes)"},
        "api_key": {"type": "string", "description": "a key, or an env reference such as ${OPENAI_API_KEY}; never printed"},
        "model_api_parameters": {"type": "object", "description": "passed through in chat requests (temperature, ...)"},
    }
    # Fields LlamaFarm defines for a model that lf does not use: accepted, kept, ignored.
    llamafarm_passthrough = {
        "instructor_mode": {"type": "string"},
        "extra_body": {"type": "object"},
        "encoder_config": {"type": "object"},
        "prompts": {"type": "array", "items": {"type": "string"}},
        "mcp_servers": {"type": "array", "items": {"type": "string"}},
        "tool_call_strategy": {"type": "string", "enum": ["native_api", "prompt_based"]},
        "tools": {"type": "array"},
        "tools_mode": {"type": "string", "enum": ["config_only", "api_replace", "api_supplement"]},
        "prompts_mode": {"type": "string", "enum": ["config_only", "api_replace", "api_supplement"]},
        "keep_loaded": {"type": "boolean"},
        "prompt_format": {"type": "string"},
    }
    single = {
        "title": "single runtime (seed shape)",
        "type": "object",
        "required": ["provider", "model"],
        "properties": {
            **common_model,
            **llamafarm_passthrough,
            "provider_config": {"type": "object", "properties": any_settings, "additionalProperties": False},
            **provider_section,
        },
        "additionalProperties": False,
    }
    entry = {
        "type": "object",
        "required": ["name", "provider", "model"],
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", "description": "entry name; also the instance name"},
            **common_model,
            **llamafarm_passthrough,
            "default": {"type": "boolean", "description": "mark the default entry (default_model wins when both are set)"},
            "provider_config": {"type": "object", "properties": any_settings, "additionalProperties": False},
        },
        "additionalProperties": False,
    }
    listed = {
        "title": "list of models (LlamaFarm shape)",
        "type": "object",
        "required": ["models"],
        "properties": {
            "default_model": {"type": "string", "description": "name of the entry to use by default (else the first)"},
            "models": {"type": "array", "minItems": 1, "items": entry},
        },
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "llamafarm.yaml (the parts lf reads)",
        "description": "Generated by `python -m lf.config_schema`; do not edit by hand.",
        "type": "object",
        "required": ["version", "name", "namespace", "runtime"],
        "properties": {
            "version": {"type": "string", "enum": ["v1"]},
            "name": {"type": "string", "minLength": 1},
            "namespace": {"type": "string", "minLength": 1},
            "runtime": {"oneOf": [single, listed], "x-lf-discriminator": "models"},
        },
        "additionalProperties": True,  # rag, datasets, prompts, mcp, ...: LlamaFarm's, left alone
    }


def schema_yaml() -> str:
    import yaml

    return yaml.safe_dump(schema(), sort_keys=False, width=110, allow_unicode=True)


# -- parsing with positions ----------------------------------------------------------------------
def parse_yaml(path: Path, text: str):
    """(data, root node). YAML errors become ConfigErrors with the file, line and column."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    if root is None:
        raise ConfigError(f"{path}: the file is empty", hint="start from: lf config init")
    _count_nodes(path, root)
    try:
        data = yaml.SafeLoader(text).construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    except (RecursionError, TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{path}: invalid YAML value: {exc}") from None
    return data, root


def _count_nodes(path: Path, root) -> None:
    """Walk the node graph as a consumer would (aliases expanded) and refuse explosive documents."""
    import yaml

    seen = 0
    stack = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES or depth > 100:
            raise ConfigError(f"{path}: the document is too large or too deeply nested once aliases are expanded")
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))


def node_at(root, path: tuple) -> Any:
    """The YAML node at a field path, or the deepest existing parent."""
    import yaml

    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if getattr(key, "value", None) == part:
                    node = value
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


def key_node_at(root, path: tuple) -> Any:
    """The node of the *key* at the end of a path (so an unknown key points at itself)."""
    import yaml

    parent = node_at(root, path[:-1])
    if isinstance(parent, yaml.MappingNode):
        for key, _value in parent.value:
            if getattr(key, "value", None) == path[-1]:
                return key
    return parent


def line_of(root, path: tuple) -> int | None:
    if root is None:
        return None
    node = node_at(root, path)
    return node.start_mark.line + 1 if node is not None else None


# -- validation ----------------------------------------------------------------------------------
class Problem:
    def __init__(self, path: tuple, message: str, allowed: str | None = None, at_key: bool = False):
        self.path = path
        self.message = message
        self.allowed = allowed
        self.at_key = at_key

    def dotted(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out or "(top level)"


_TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def _type_ok(value, wanted: str) -> bool:
    if wanted in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[wanted])


def _describe(value) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def check(value, rule: dict, path: tuple, problems: list[Problem]) -> None:
    import re

    if "oneOf" in rule:
        key = rule.get("x-lf-discriminator")
        branches = rule["oneOf"]
        branch = branches[1] if isinstance(value, dict) and key in value else branches[0]
        check(value, branch, path, problems)
        return
    wanted = rule.get("type")
    if wanted and not _type_ok(value, wanted):
        problems.append(Problem(path, f"expected {wanted_text(wanted)}, got {_describe(value)}"))
        return
    if "enum" in rule and value not in rule["enum"]:
        from lf.suggest import did_you_mean

        hint = did_you_mean(str(value), [str(v) for v in rule["enum"]]) if isinstance(value, str) else None
        problems.append(Problem(path, f"{value!r} is not allowed" + (f" ({hint})" if hint else ""), "one of: " + ", ".join(map(str, rule["enum"]))))
    if isinstance(value, str):
        if len(value) < rule.get("minLength", 0):
            problems.append(Problem(path, "must not be empty"))
        if "pattern" in rule and not re.search(rule["pattern"], value):
            problems.append(Problem(path, f"{value!r} does not match the pattern {rule['pattern']}"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in rule and value < rule["minimum"]:
            problems.append(Problem(path, f"{value} is below the minimum", f"{rule['minimum']} to {rule.get('maximum', '∞')}"))
        if "maximum" in rule and value > rule["maximum"]:
            problems.append(Problem(path, f"{value} is above the maximum", f"{rule.get('minimum', '-∞')} to {rule['maximum']}"))
    if isinstance(value, list):
        if len(value) < rule.get("minItems", 0):
            problems.append(Problem(path, f"needs at least {rule['minItems']} item(s)"))
        if "items" in rule:
            for i, item in enumerate(value):
                check(item, rule["items"], path + (i,), problems)
    if isinstance(value, dict):
        props = rule.get("properties", {})
        for key in rule.get("required", ()):
            if key not in value:
                problems.append(Problem(path, f"missing required field {key!r}"))
        for key, item in value.items():
            if key in props:
                check(item, props[key], path + (key,), problems)
            elif rule.get("additionalProperties", True) is False:
                from lf.suggest import did_you_mean

                hint = did_you_mean(str(key), props)
                problems.append(
                    Problem(path + (key,), f"unknown field {key!r}" + (f" ({hint})" if hint else ""), ", ".join(props), at_key=True)
                )


def wanted_text(wanted: str) -> str:
    return {"object": "a mapping", "array": "a list", "integer": "an integer"}.get(wanted, f"a {wanted}")


def semantic_checks(data: dict, problems: list[Problem]) -> None:
    """What JSON Schema cannot say: names unique, default_model names an entry, provider sections fit."""
    from lf.registry import all_runtimes
    from lf.suggest import did_you_mean

    runtime = data.get("runtime")
    if not isinstance(runtime, dict):
        return
    runtimes = all_runtimes()
    models = runtime.get("models")
    if isinstance(models, list):
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
            problems.append(Problem(("runtime", "default_model"), f"{default!r} names no model entry" + (f" ({hint})" if hint else ""), f"one of: {listed}"))
        for i, item in enumerate(models):
            if isinstance(item, dict):
                _check_provider_config(item.get("provider"), item.get("provider_config"), ("runtime", "models", i, "provider_config"), runtimes, problems)
                _check_external(item, ("runtime", "models", i), runtimes, problems)
    else:
        provider = runtime.get("provider")
        _check_provider_config(provider, runtime.get("provider_config"), ("runtime", "provider_config"), runtimes, problems)
        _check_external(runtime, ("runtime",), runtimes, problems)
        for name in runtimes:
            if name != provider and name in runtime:
                problems.append(Problem(("runtime", name), f"a {name!r} section, but the provider is {provider!r}", f"a section named after the provider ({provider})", at_key=True))


def _check_provider_config(provider, config, path: tuple, runtimes: dict, problems: list[Problem]) -> None:
    if not isinstance(config, dict) or provider not in runtimes:
        return
    allowed = provider_settings(runtimes[provider])
    from lf.suggest import did_you_mean

    for key in config:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed)
            problems.append(Problem(path + (key,), f"{provider} does not use the setting {key!r}" + (f" ({hint})" if hint else ""), ", ".join(allowed), at_key=True))


def _check_external(entry: dict, path: tuple, runtimes: dict, problems: list[Problem]) -> None:
    provider = entry.get("provider")
    if provider in runtimes and not runtimes[provider].managed and not runtimes[provider].default_port and not entry.get("base_url"):
        problems.append(Problem(path, f"provider {provider!r} needs a base_url", "an http(s):// URL of an OpenAI-compatible API"))


def validate_document(path: Path, data, root) -> None:
    """Raise one ConfigError listing every problem, each with file:line:column and its field path."""
    problems = collect_problems(data)
    if problems:
        raise ConfigError(format_problems(path, root, problems), hint="see the schema with: lf config schema")


def collect_problems(data) -> list[Problem]:
    problems: list[Problem] = []
    if not isinstance(data, dict):
        problems.append(Problem((), f"expected a mapping at the top level, got {_describe(data)}"))
        return problems
    check(data, schema(), (), problems)
    if not problems:
        semantic_checks(data, problems)
    return problems


def locate(root, problem: Problem) -> tuple[int, int] | None:
    if root is None:
        return None
    node = key_node_at(root, problem.path) if problem.at_key and problem.path else node_at(root, problem.path)
    if node is None:
        return None
    return node.start_mark.line + 1, node.start_mark.column + 1


def format_problems(path: Path, root, problems: list[Problem]) -> str:
    lines = [f"{path}: invalid llamafarm.yaml ({len(problems)} problem{'s' if len(problems) != 1 else ''})"]
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
            }
        )
    return out


if __name__ == "__main__":
    print(schema_yaml(), end="")
