"""Settings a runtime accepts, as its manifest declares them ([settings.<name>] tables).

A few settings mean the same thing for every runtime that takes them and lf itself acts on them (the
port it checks and records, the host it warns about, the flags of `lf runtime start`): their type and
limits are defined here once, and a manifest only adds its env var, default or description. Any other
setting is the runtime's own and its manifest declares it whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

TYPES = ("integer", "number", "string", "boolean", "array", "size")  # array: of strings; size: bytes, or 6GiB
SETTING_KEYS = ("type", "description", "default", "enum", "minimum", "maximum", "min_length", "env", "extra_body")


@dataclass(frozen=True)
class Setting:
    name: str
    type: str  # integer | number | string | boolean | array (of strings)
    description: str = ""
    default: object = None
    enum: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    env: str | None = None  # the environment variable that sets it (beats llamafarm.yaml)
    flag: str | None = None  # the `lf runtime start` option that sets it (standard settings only)
    extra_body: str | None = None  # the key of a model entry's `extra_body` (LlamaFarm's GGUF parameters) that sets it

    def problem(self, value) -> str | None:
        """Why `value` is not allowed for this setting, or None when it is."""
        if not _type_ok(value, self.type):
            return f"expected {describe_type(self.type)}, got {describe_value(value)}"
        if self.enum and value not in self.enum:
            return f"{value!r} is not allowed"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                return f"{value} is below the minimum"
            if self.maximum is not None and value > self.maximum:
                return f"{value} is above the maximum"
        if isinstance(value, str) and self.min_length and len(value) < self.min_length:
            return "must not be empty"
        return None

    def allowed(self) -> str | None:
        if self.enum:
            return "one of: " + ", ".join(map(str, self.enum))
        if self.minimum is not None or self.maximum is not None:
            low = "-∞" if self.minimum is None else self.minimum
            high = "∞" if self.maximum is None else self.maximum
            return f"{low} to {high}"
        return None

    def parse(self, text: str):
        """The typed value of an environment variable's text; ValueError when it is not one."""
        if self.type == "integer":
            return int(text)
        if self.type == "number":
            return float(text)
        if self.type == "size":
            parse_size(text)
            return text.strip()
        if self.type == "array":
            import shlex

            return shlex.split(text)  # as a shell would split it: `--batch-size 256 --no-warmup`
        if self.type == "boolean":
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"{text!r} is not a boolean")
        return text

    def json_schema(self) -> dict:
        if self.type == "size":
            out: dict = {"type": ["integer", "string"], "pattern": SIZE_PATTERN}
            if self.description:
                out["description"] = self.description
            return out
        out = {"type": self.type}
        if self.type == "array":
            out["items"] = {"type": "string"}
        if self.enum:
            out["enum"] = list(self.enum)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.min_length:
            out["minLength"] = self.min_length
        if self.description:
            out["description"] = self.description
        return out


STANDARD: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("port", "integer", "port the server listens on", minimum=1, maximum=65535, flag="--port"),
        Setting("host", "string", "address to bind; 127.0.0.1 unless you ask", min_length=1, flag="--host"),
        Setting(
            "context_size",
            "integer",
            "context window in tokens",
            default=4096,
            minimum=128,
            maximum=1048576,
            flag="--ctx-size",
        ),
        Setting(
            "threads",
            "integer",
            "CPU threads (default: one per physical core)",
            minimum=1,
            maximum=1024,
            flag="--threads",
        ),
    )
}


def resolve(
    declared: Mapping[str, Setting],
    flags: Mapping[str, object],
    config: Mapping[str, object],
    extra_body: Mapping[str, object] | None = None,
) -> tuple[dict, dict]:
    """(value, where it came from) of every declared setting: a flag, else its env var, else the config
    file (provider_config, or the section named after the provider), else the model entry's `extra_body`
    (LlamaFarm's GGUF parameters, for a setting that declares its key there), else its default. Flag and
    env values are checked against the declaration here; the file's were checked when it was validated."""
    extra_body = extra_body or {}
    from lf.errors import ConfigError, LfError

    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name, setting in declared.items():
        if flags.get(name) is not None:
            value, source = flags[name], "flag"
            problem = setting.problem(value)
            if problem:
                raise LfError(
                    f"{setting.flag or '--set ' + name}: {problem}",
                    hint=f"allowed: {setting.allowed()}" if setting.allowed() else None,
                )
        elif (env_value := _from_env(setting)) is not None:
            value, source = env_value, "env"
            problem = setting.problem(value)
            if problem:
                allowed = setting.allowed()
                raise ConfigError(
                    f"environment variable {setting.env}: {problem}" + (f" (allowed: {allowed})" if allowed else "")
                )
        elif config.get(name) is not None:
            value, source = config[name], "config"
        elif setting.extra_body and extra_body.get(setting.extra_body) is not None:
            value, source = extra_body[setting.extra_body], "extra_body"
        else:
            value, source = setting.default, "default"
        values[name] = value
        sources[name] = source
    return values, sources


def _from_env(setting: Setting):
    import os

    text = os.environ.get(setting.env) if setting.env else None
    if text in (None, ""):
        return None
    try:
        return setting.parse(text)
    except ValueError:
        return text  # reported by the caller as the wrong type


def from_manifest(name: str, table: dict, where: str) -> Setting:
    """A [settings.<name>] table: merged onto the standard setting of that name, or complete on its own."""
    from lf.errors import LfError

    if not isinstance(table, dict):
        raise LfError(f"{where}: [settings.{name}] must be a table")
    unknown = [k for k in table if k not in SETTING_KEYS]
    if unknown:
        raise LfError(
            f"{where}: [settings.{name}] has unknown keys {', '.join(unknown)}",
            hint=f"allowed: {', '.join(SETTING_KEYS)}",
        )
    base = STANDARD.get(name)
    if base is not None and "type" in table and table["type"] != base.type:
        raise LfError(f"{where}: the setting {name!r} is always of type {base.type}")
    kind = table.get("type", base.type if base else None)
    if kind not in TYPES:
        raise LfError(f"{where}: [settings.{name}] needs a type, one of {', '.join(TYPES)}")
    values: dict[str, Any] = {k: (tuple(v) if k == "enum" else v) for k, v in table.items() if k != "type"}
    setting = replace(base, **values) if base else Setting(name, kind, **values)
    if setting.default is not None and setting.problem(setting.default):
        raise LfError(f"{where}: the default of {name!r} is not valid: {setting.problem(setting.default)}")
    return setting


def _type_ok(value, wanted: str) -> bool:
    if wanted in ("integer", "number") and isinstance(value, bool):
        return False
    if wanted == "array":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if wanted == "size":
        try:
            parse_size(value)
        except (ValueError, TypeError):
            return False
        return True
    kinds: dict[str, type | tuple[type, ...]] = {"integer": int, "number": (int, float), "string": str, "boolean": bool}
    return isinstance(value, kinds[wanted])


def describe_type(wanted: str) -> str:
    return {
        "object": "a mapping",
        "array": "a list of strings",
        "integer": "an integer",
        "size": "a size (bytes, or 6GiB, 450MiB, 1.5GB)",
    }.get(wanted, f"a {wanted}")


def describe_value(value) -> str:
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


SIZE_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*([KMGT]i?B?|[kmgt]i?b?|B|b)?\s*$"
UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2}
UNITS.update({"g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4})


def parse_size(text: str | int) -> int:
    """`6GiB`, `450MiB`, `1.5GB`, `2000000000` → bytes; ValueError for anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("a size is not negative")
        return text
    import re

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in UNITS:
        raise ValueError(f"{text!r} is not a size (say 6GiB, 450MiB, 1.5GB or a number of bytes)")
    return int(float(match.group(1)) * UNITS[unit])
