"""Reading YAML with positions: every failure names the file, line and column; nodes locate fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lf.errors import ConfigError

MAX_CONFIG_BYTES = 1024 * 1024
MAX_NODES = 100_000  # bounds the work an alias bomb can cause


def read_yaml(path: Path):
    """(data, root node) of a YAML file; every failure becomes a ConfigError naming the file."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a llamafarm.yaml file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file", hint="give the path of a llamafarm.yaml, or create one with: lf config init"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot be read: {exc.strerror or exc}", hint="check the file's permissions"
        ) from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; not a llamafarm.yaml")
    if b"\x00" in raw:
        raise ConfigError(f"{path}: is a binary file, not YAML")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not valid UTF-8 text (byte {exc.start})", hint="save the file as UTF-8"
        ) from None
    return parse_yaml(path, text)


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
