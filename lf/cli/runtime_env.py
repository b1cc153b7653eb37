"""`lf runtime install|uninstall NAME`: a runtime's own isolated environment (see lf.runtimes.envs)."""

from __future__ import annotations

from typing import Annotated

import typer

from lf.cli._common import JsonOpt, command, complete_runtimes, err, out, print_json

NameArg = Annotated[str, typer.Argument(help="Runtime name (see lf runtime list).", autocompletion=complete_runtimes)]


@command
def install(
    name: NameArg,
    force: Annotated[bool, typer.Option("--force", help="Rebuild the environment even if it is installed.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create the runtime's isolated environment from the requirements in its folder (pip output on stderr)."""
    from lf.runtimes.envs import install as install_env
    from lf.runtimes.registry import get_runtime

    runtime = get_runtime(name)
    if not (runtime.env_installed() and not force):
        err(f"Installing {name} into {runtime.env_dir} (pip's output follows)…")
    result = install_env(runtime, force=force)
    info = result.info
    if json_out:
        print_json(
            {
                "runtime": result.runtime,
                "env_dir": str(result.env_dir),
                "already_installed": result.already_installed,
                "generation": info.get("generation"),
                "python": info.get("python"),
                "duration_s": info.get("duration_s"),
                "note": result.note,
            }
        )
    else:
        verb = "already installed" if result.already_installed else f"installed in {info.get('duration_s', 0):.0f}s"
        generation = f" ({info['generation']})" if info.get("generation") else ""
        out(f"{name}{generation}: {verb} at {result.env_dir}")
    if result.note:
        err(f"Warning: {result.note}")


@command
def uninstall(name: NameArg, json_out: JsonOpt = False) -> None:
    """Remove the runtime's isolated environment. Removing one that is not installed succeeds."""
    from lf.runtimes.envs import uninstall as uninstall_env
    from lf.runtimes.registry import get_runtime

    runtime = get_runtime(name)
    removed = uninstall_env(runtime)
    if json_out:
        print_json({"runtime": name, "env_dir": str(runtime.env_dir), "removed": removed})
    else:
        out(f"{name}: " + (f"removed {runtime.env_dir}" if removed else "not installed"))
