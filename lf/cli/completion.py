"""Shell completion: the names it offers (from folder names, manifests, state records and llamafarm.yaml;
never the network), and installing the completion script for the shell asked for."""

from __future__ import annotations


def instance_names() -> list[str]:
    """This project's instances (what a bare name reaches) and its configured entries."""
    from lf.daemon.records import StateStore

    project = _project()
    names = set(StateStore.of(project).names())
    names.update(_entry_names(project))
    return sorted(names)


def runtime_and_instance_names() -> list[str]:
    from lf.runtimes.folders import runtime_names

    return sorted(set(runtime_names()) | set(instance_names()))


def startable_names() -> list[str]:
    """What `lf runtime start` accepts: runtimes lf runs (not external ones) and configured entries it runs."""
    from lf.runtimes.registry import all_runtimes

    runtimes = [name for name, rt in all_runtimes().items() if rt.managed]
    return sorted(set(runtimes) | set(_configured_names(managed_only=True)))


def model_names() -> list[str]:
    from lf.models.catalog import CATALOG

    return sorted(set(_configured_names()) | set(CATALOG))


def setting_names(target: str | None, incomplete: str = "") -> list[str]:
    """What `--set` of `lf runtime start [TARGET]` completes: NAME= for each setting the target's runtime
    declares (the project's runtimes without a target), and NAME=VALUE for a setting with a list of values.
    From the manifests and llamafarm.yaml only."""
    from lf.runtimes.registry import get_runtime

    name, equals, _ = incomplete.partition("=")
    offered: list[str] = []
    for runtime_name in _runtimes_of(target):
        try:
            settings = get_runtime(runtime_name).settings
        except Exception:  # an unknown name or a broken manifest: nothing to offer, never an error in the shell
            continue
        if not equals:
            offered += [f"{each}=" for each in settings]
        elif name in settings:
            setting = settings[name]
            values = setting.enum or (("true", "false") if setting.type == "boolean" else ())
            offered += [f"{name}={value}" for value in values]
    return sorted(set(offered))


def _runtimes_of(target: str | None) -> list[str]:
    from lf.runtimes.folders import DEFAULT_RUNTIME, runtime_names

    if target is not None and target in runtime_names():
        return [target]
    project = _project()
    entries = [m for m in project.models if m.managed] if project else []
    if target is not None:
        entries = [m for m in entries if m.name == target]
    return sorted({m.provider for m in entries}) or ([DEFAULT_RUNTIME] if target is None or not project else [])


def _project():
    try:
        from lf.config.project import load_optional

        return load_optional()
    except Exception:  # a broken config must not break the user's shell
        return None


def _entry_names(project, managed_only: bool = False) -> list[str]:
    return [m.name for m in project.models if m.managed or not managed_only] if project else []


def _configured_names(managed_only: bool = False) -> list[str]:
    return _entry_names(_project(), managed_only)


SHELLS = ("bash", "zsh", "fish")


def detect_shell() -> str:
    import os

    name = os.path.basename(os.environ.get("SHELL", ""))
    return name if name in SHELLS else "bash"


def script(shell: str) -> str:
    """The committed completion script (generated from the app by `make completions`, checked by a test)."""
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent
    folder = here / "completions"  # inside an installed wheel
    if not folder.is_dir():
        folder = here.parent / "completions"  # a source checkout
    return (folder / f"lf.{shell}").read_text()


def install(shell: str | None) -> list[str]:
    """Install the completion script for `shell` (the login shell's when None); what was written."""
    from pathlib import Path

    from lf.errors import ExitStatus, LfError

    shell = shell or detect_shell()
    if shell not in SHELLS:
        raise LfError(
            f"cannot install completion for {shell!r}",
            hint=f"shells: {', '.join(SHELLS)}",
            exit_status=ExitStatus.USAGE,
        )
    home = Path.home()
    if shell == "bash":
        target, rc, lines = home / ".bash_completions" / "lf.sh", home / ".bashrc", ["source ~/.bash_completions/lf.sh"]
    elif shell == "zsh":
        target, rc, lines = (
            home / ".zfunc" / "_lf",
            home / ".zshrc",
            ["fpath+=~/.zfunc", "autoload -Uz compinit && compinit"],
        )
    else:
        target, rc, lines = home / ".config" / "fish" / "completions" / "lf.fish", None, []
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(script(shell))
    written = [str(target)]
    if rc is not None:
        existing = rc.read_text() if rc.exists() else ""
        missing = [line for line in lines if line not in existing.splitlines()]
        if missing:
            with open(rc, "a") as fh:
                fh.write(("\n" if existing and not existing.endswith("\n") else "") + "\n".join(missing) + "\n")
            written.append(str(rc))
    return written
