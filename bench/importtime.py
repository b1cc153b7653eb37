"""Where a command's start-up goes: `python -X importtime` profiles, which module imported each package first,
the import part of a missed target's reason and the "Import profiles" section of RESULTS.md.
"""

from __future__ import annotations

import json

from harness import PY, Bench, Sandbox, run

HEAVY = ("httpx", "pydantic", "rich", "psutil")
COMMANDS = {
    "status": "lf runtime status --json",
    "help": "lf --help",
    "chat": "lf chat … --max-tokens 64",
    "start": "lf runtime start llamacpp",
}


def profile(bench: Bench, box: Sandbox, args: list[str], after=None) -> list:
    """-X importtime of the command, three times (the run with the median total is kept), then once more
    under an import hook that records where each top-level package was first imported from."""
    runs = []
    for _ in range(3):
        r = run([PY, "-X", "importtime", "-m", "lf", *args], box.env, box.work)
        runs.append(parse_importtime(r.stderr))
        if after is not None:
            after()
    runs.sort(key=lambda entries: sum(e[0] for e in entries))
    report = box.root / "first-imports.json"
    run([PY, "-c", IMPORT_SITES, str(report), *args], box.env, box.work)
    if after is not None:
        after()
    try:
        bench.import_sites[id(runs[1])] = json.loads(report.read_text())
    except (OSError, ValueError):
        pass
    return runs[1]


def floor_profile(bench: Bench) -> list:
    runs = [
        parse_importtime(run([PY, "-X", "importtime", "-c", "import typer"], bench.base_env, bench.root).stderr)
        for _ in range(3)
    ]
    runs.sort(key=lambda entries: sum(e[0] for e in entries))
    return runs[1]


def parse_importtime(stderr: str) -> list[tuple[int, int, int, str]]:
    """(self µs, cumulative µs, depth, module) per line of -X importtime output, in output order."""
    entries = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        try:
            self_us, cum_us, name = line[len("import time:") :].split("|")
        except ValueError:
            continue
        stripped = name.lstrip(" ")
        depth = (len(name) - len(stripped) - 1) // 2
        entries.append((int(self_us), int(cum_us), depth, stripped.strip()))
    return entries


def by_package(entries) -> dict[str, dict]:
    """Import cost per top-level package: summed self time and module count."""
    packages: dict[str, dict] = {}
    for self_us, _, _, name in entries:
        info = packages.setdefault(name.split(".")[0], {"self_us": 0, "modules": 0})
        info["self_us"] += self_us
        info["modules"] += 1
    return packages


def imported_via(entries, top: str) -> str | None:
    """The first module outside `top` that imported it (-X importtime prints children before parents)."""
    for i, (_, _, depth, name) in enumerate(entries):
        if name.split(".")[0] != top:
            continue
        for _, _, d, parent in entries[i + 1 :]:
            if d < depth:
                if parent.split(".")[0] != top:
                    return parent
                depth = d
        return "(a run-time import)" if depth == 0 else "(the command itself)"
    return None


def import_site(bench: Bench, entries, top: str) -> str:
    return bench.import_sites.get(id(entries), {}).get(top) or imported_via(entries, top) or "-"


# Runs `lf ARGS…` like `python -m lf` under an import hook: for each top-level package, the module, line and
# function that imported it first (a lazy import inside a function shows up as a top-level line in -X importtime).
IMPORT_SITES = """
import builtins, json, runpy, sys
report = sys.argv[1]
sys.argv = ["lf", *sys.argv[2:]]
first = {}
original = builtins.__import__
def hook(name, globals=None, locals=None, fromlist=(), level=0):
    top = name.partition(".")[0]
    if level == 0 and top not in first and top not in sys.modules:
        frame = sys._getframe(1)
        first[top] = f"{frame.f_globals.get('__name__')}:{frame.f_lineno} {frame.f_code.co_name}()"
    return original(name, globals, locals, fromlist, level)
builtins.__import__ = hook
try:
    runpy.run_module("lf", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
with open(report, "w") as fh:
    json.dump(first, fh)
"""


# -- reasons ----------------------------------------------------------------------------------------
REMEDIES = {
    "pydantic": "typer ≥ 0.29 validates every non-bool parameter through a pydantic TypeAdapter, built when the command's "
    "arguments are parsed (typer/_coercion.py `build_runtime_param` → typer/_adapters.py), and pydantic's plugin loader "
    "scans entry points via importlib.metadata. typer 0.28 vendors click the same way but has no pydantic. Needed: pin "
    "`typer>=0.26,<0.29`, or parse this command without typer (a hand-written argv fast path in `lf.cli.main` that hands "
    "everything else, --help and errors to typer).",
    "pydantic_core": "comes with pydantic (see pydantic).",
    "rich": "typer renders help and usage errors with rich when `rich_markup_mode` is 'rich' (its default when rich is "
    "installed): typer/rich_utils.py imports rich.console, rich.markdown (markdown_it), rich.syntax, rich.traceback. "
    "Needed: `typer.Typer(rich_markup_mode=None)` on `lf` and on every sub-app (plain click help), or keep rich for a TTY only.",
    "markdown_it": "pulled in by rich.markdown from typer's rich help (see rich).",
    "httpx": "lf.core.client imports httpx (plus httpcore, h11, anyio, ssl, certifi) for one streamed POST. Needed: speak "
    "HTTP/1.1 to the local runtime with http.client (stdlib, already loaded by other paths) as lf.daemon.health does, keeping httpx "
    "only for https/remote endpoints if at all.",
    "yaml": "llamafarm.yaml is read with PyYAML (and validated by lf.config.schema). Needed: only if it dominates — "
    "use yaml.CSafeLoader, and skip schema validation on read-only paths such as status (validate in `lf config check`).",
    "psutil": "psutil is imported on this path. Needed: read /proc as lf.daemon.process does, or import it only when stopping.",
    "importlib": "importlib.metadata is imported (pydantic's plugin loader scans entry points). Goes away with pydantic.",
    "h11": "comes with httpx (see httpx).",
    "httpcore": "comes with httpx (see httpx).",
    "anyio": "comes with httpx (see httpx).",
    "attr": "comes with rich's pretty-printer, imported by typer's rich help (see rich).",
    "pygments": "comes with rich.syntax, imported by typer's rich help (see rich).",
    "tomllib": "every runtime manifest is parsed (lf.runtimes.registry.all_runtimes) to resolve the providers named in llamafarm.yaml. "
    "Small; needed only if it shows: parse just the manifests the config names.",
    "typer": "typer itself: its import is the floor, but building the click command tree for every sub-app and command "
    "(`typer.main.get_command`) happens on every invocation.",
    "lf": "lf's own modules.",
}


def reasons(bench: Bench, key: str) -> list[str]:
    """For a missed target: what the command `key` imports beyond the floor, who imported it and what would remove it."""
    if key not in bench.profiles:
        return []
    floor = by_package(bench.floor_imports)
    entries = bench.profiles[key]
    packages = by_package(entries)
    extra = sorted(((t, i) for t, i in packages.items() if t not in floor), key=lambda kv: -kv[1]["self_us"])
    extra_ms = sum(i["self_us"] for _, i in extra) / 1000
    lines = [
        f"Imports beyond the floor's packages: {extra_ms:.0f} ms of import self time (under -X importtime), led by "
        + ", ".join(f"{t} {i['self_us'] / 1000:.0f} ms (via {import_site(bench, entries, t)})" for t, i in extra[:6])
        + "."
    ]
    seen = set()
    for top, _ in extra[:8]:
        remedy = REMEDIES.get(top)
        if remedy and remedy not in seen and top not in ("lf",):
            seen.add(remedy)
            lines.append(f"- {top}: {remedy}")
    lf_modules = sorted((e for e in entries if e[3].startswith("lf.") or e[3] == "lf"), key=lambda e: -e[0])[:5]
    if lf_modules:
        lines.append(
            "- lf's own modules, slowest first (self ms): "
            + ", ".join(f"{n} {u / 1000:.1f}" for u, _, _, n in lf_modules)
            + " — module bodies that build dataclasses, compile regexes or parse files at import time."
        )
    return lines


# -- the "Import profiles" section of RESULTS.md ----------------------------------------------------------
def section(bench: Bench) -> list[str]:
    if not bench.profiles:
        return []
    floor = by_package(bench.floor_imports)
    floor_total = sum(e[0] for e in bench.floor_imports) / 1000
    lines = [
        f"`python -X importtime` (median of 3 runs), self time summed per top-level package; `python -c 'import typer'` "
        f"imports {len(bench.floor_imports)} modules in {floor_total:.0f} ms under importtime.",
        "",
    ]
    for key, entries in bench.profiles.items():
        packages = by_package(entries)
        total = sum(e[0] for e in entries) / 1000
        heavy = [h for h in HEAVY if h in packages]
        lines.append(
            f"**`{COMMANDS[key]}`**: {len(entries)} modules, {total:.0f} ms of imports "
            f"({total - floor_total:+.0f} ms over the floor); of httpx/pydantic/rich/psutil it imports: {', '.join(heavy) or 'none'}"
        )
        lines.append("")
        lines.append("| package | self ms (sum) | modules | imported via | in floor |")
        lines.append("|---|---|---|---|---|")
        ranked = sorted(packages.items(), key=lambda kv: -kv[1]["self_us"])[:14]
        for top, info in ranked:
            via = import_site(bench, entries, top)
            lines.append(
                f"| {top} | {info['self_us'] / 1000:.1f} | {info['modules']} | {via} | {'yes' if top in floor else 'no'} |"
            )
        lines.append("")
        slowest = sorted(entries, key=lambda e: -e[0])[:10]
        lines.append(
            "Slowest modules (self ms): " + ", ".join(f"{name} {self_us / 1000:.1f}" for self_us, _, _, name in slowest)
        )
        lines.append("")
    return lines
