"""The shape of the code, checked: imports run one way, from the CLI down to the base modules.

    lf.cli ─▶ lf.gateway ─▶ lf.cluster ─▶ lf.core ─▶ lf.config, lf.models ─▶ lf.runtimes ─▶ lf.daemon ─▶ base
                                                         (base: lf.errors, lf.dirs, lf.files, lf.envvars, lf.suggest)

Every import counts, the ones inside functions too. The README's "Architecture" section says the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

LF = Path(__file__).resolve().parent.parent / "lf"
RANKS = {
    "base": 0,
    "lf.daemon": 1,
    "lf.runtimes": 2,
    "lf.config": 3,
    "lf.models": 3,
    "lf.core": 4,
    "lf.cluster": 5,
    "lf.gateway": 6,
    "lf.cli": 7,
}
NEVER_OUTSIDE_CLI = ("typer", "rich", "click", "lf.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(LF.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    for name in RANKS:
        if module == name or module.startswith(name + "."):
            return name
    return "base"


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names if node.module == "lf"]
    return found


def sources() -> list[Path]:
    return sorted(p for p in LF.rglob("*.py") if "engines" not in p.parts)  # engines run in the daemon, not in lf


def test_only_the_cli_knows_typer_rich_and_the_cli():
    offences = []
    for path in sources():
        if layer(module_name(path)) == "lf.cli" or path.name == "__main__.py":
            continue
        for line, name in imports(path):
            if any(name == bad or name.startswith(bad + ".") for bad in NEVER_OUTSIDE_CLI):
                offences.append(f"{path.relative_to(LF.parent)}:{line} imports {name}")
    assert offences == []


def test_imports_run_one_way_down_the_layers():
    offences = []
    for path in sources():
        here = module_name(path)
        mine = layer(here)
        if path.name == "__main__.py":
            continue
        for line, name in imports(path):
            if not (name == "lf" or name.startswith("lf.")):
                continue
            theirs = layer(name)
            if theirs == mine:
                continue
            if RANKS[theirs] >= RANKS[mine]:
                offences.append(
                    f"{path.relative_to(LF.parent)}:{line}: {mine} imports {name} ({theirs}), which is not below it"
                )
    assert offences == []


def test_no_module_cycles():
    graph: dict[str, set[str]] = {}
    names = {module_name(p) for p in sources()}
    for path in sources():
        graph[module_name(path)] = {n for _, n in imports(path) if n in names and n != module_name(path)}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            cycles.append(" -> ".join(stack[stack.index(node) :] + [node]))
            return
        for nxt in sorted(graph.get(node, ())):
            if nxt not in done:
                visit(nxt, stack + [node])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        visit(start, [])
    # a package importing its own submodules (lf.cli -> lf.cli.runtime) is the one allowed "cycle" shape
    real = [c for c in cycles if not all(part.startswith(c.split(" -> ")[0]) for part in c.split(" -> "))]
    assert real == []
