"""`lf serve` as a service of the user: a systemd user unit on Linux, a launchd agent on macOS (no CLI here).

A plan says what installing or removing the service writes, removes and runs; `apply` carries it out, running
systemctl, loginctl or launchctl through a `Runner` (tests pass one that records). The service runs
`python -m lf serve --config <the project's llamafarm.yaml>` from the project's folder, restarts it when it
fails, and stops it with SIGTERM alone (systemd's KillMode=mixed), so the gateway stops the instances it
started itself before it exits. What lf reads from the environment (LF_*, LF_GATEWAY_* with the API key, the
runtimes' variables, PATH, the Hugging Face cache) is copied, as this shell has it, into an environment file
of mode 0600 in a private folder: the key is never on a command line nor in the unit.
"""

from __future__ import annotations

import os
import plistlib
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lf.errors import ExitStatus, LfError

SYSTEMD, LAUNCHD = "systemd", "launchd"
RESTART_SECONDS = 5
STOP_SECONDS = 60  # the gateway stops its instances (each SIGTERM, then SIGKILL after 10 s) before it exits
MARK = "Written by `lf serve --install-service`"  # the first line of what lf writes: it replaces only its own
MARK_XML = "Written by lf serve, with its option install-service"  # an XML comment cannot hold "--"
# variables whose value is a secret: shown as *** by --dry-run (the file itself has them, 0600)
SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
# more variables lf's engines and model downloads read (besides LF_*, the gateway's and the runtimes' own)
CARRIED = ("PATH", "HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES")

Runner = Callable[[Sequence[str]], "tuple[int, str]"]  # argv → (exit code, what it printed)


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """The real runner: the command as a list (never a shell), its output, a missing program as exit 127."""
    import subprocess

    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return 127, f"{argv[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]} did not finish in 60 s"
    return done.returncode, (done.stdout + done.stderr).strip()


@dataclass(frozen=True)
class Places:
    """Where a service's files go (from HOME, XDG_CONFIG_HOME and lf's data dir)."""

    definitions: Path  # ~/.config/systemd/user, or ~/Library/LaunchAgents
    env_dir: Path  # lf's data dir/services: private (0700)
    logs: Path | None  # launchd's stdout/stderr files (systemd has the journal)
    linger: Path = Path("/var/lib/systemd/linger")  # a file per user whose services run without a login

    @classmethod
    def default(cls, kind: str, environ: Mapping[str, str] | None = None) -> Places:
        from lf.dirs import data_dir

        environ = os.environ if environ is None else environ
        home = Path(environ.get("HOME") or Path.home())
        env_dir = data_dir() / "services"
        if kind == LAUNCHD:
            return cls(home / "Library" / "LaunchAgents", env_dir, home / "Library" / "Logs" / "lf")
        config = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
        return cls(config / "systemd" / "user", env_dir, None)


@dataclass(frozen=True)
class Service:
    """One project's service: its name, and the files that make it."""

    kind: str
    name: str  # the unit's name (lf-serve-NS-NAME.service) or the agent's label (lf.serve.NS.NAME)
    project: str | None  # "namespace/name"; None: the embedded default of a folder without llamafarm.yaml
    definition: Path  # the unit file or the plist
    env_file: Path
    log_file: Path | None

    def installed(self) -> bool:
        return self.definition.is_file()


@dataclass(frozen=True)
class PlannedFile:
    path: Path
    text: str
    mode: int
    shown: str  # what --dry-run prints: the text, with secret values as ***


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    required: bool = True  # a failure stops there (else it is reported as a warning)
    why: str = ""


@dataclass(frozen=True)
class ServicePlan:
    action: str  # install | uninstall
    service: Service
    argv: tuple[str, ...]  # what the service runs (install)
    workdir: Path | None
    # carried out in this order: write, steps, remove, then
    write: tuple[PlannedFile, ...] = ()
    steps: tuple[Step, ...] = ()
    remove: tuple[Path, ...] = ()
    then: tuple[Step, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        s = self.service
        return {
            "action": self.action,
            "kind": s.kind,
            "name": s.name,
            "project": s.project,
            "definition": str(s.definition),
            "env_file": str(s.env_file),
            "log_file": str(s.log_file) if s.log_file else None,
            "exec": list(self.argv),
            "workdir": str(self.workdir) if self.workdir else None,
            "write": [{"path": str(f.path), "mode": f"{f.mode:04o}"} for f in self.write],
            "remove": [str(p) for p in self.remove],
            "commands": [list(step.argv) for step in (*self.steps, *self.then)],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class StepResult:
    argv: tuple[str, ...]
    code: int
    output: str


@dataclass(frozen=True)
class Applied:
    plan: ServicePlan
    results: tuple[StepResult, ...]
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            **self.plan.to_dict(),
            "ran": [{"argv": list(r.argv), "exit_code": r.code} for r in self.results],
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class ServiceState:
    service: Service
    installed: bool
    running: bool | None  # None: the service manager could not be asked
    detail: str
    lingering: bool | None = None  # systemd: whether it runs without a login (None: not known / not systemd)


# -- which service, where -----------------------------------------------------------------------------------
def kind_here(platform: str | None = None) -> str:
    platform = platform or sys.platform
    if platform.startswith("linux"):
        return SYSTEMD
    if platform == "darwin":
        return LAUNCHD
    raise LfError(
        f"lf cannot install a service on {platform}: it knows systemd (Linux) and launchd (macOS)",
        hint="run lf serve --detach from your system's own start-up mechanism instead",
        exit_status=ExitStatus.USAGE,
    )


def service_of(project, kind: str, places: Places) -> Service:
    key = project.key if project is not None else None
    parts = [_word(part) for part in key.split("/", 1)] if key else []
    if kind == LAUNCHD:
        name = ".".join(["lf", "serve", *parts])
        definition = places.definitions / f"{name}.plist"
        log = places.logs / f"{name}.log" if places.logs else None
    else:
        name = "-".join(["lf", "serve", *parts]) + ".service"
        definition = places.definitions / name
        log = None
    env_file = places.env_dir / f"{name.removesuffix('.service')}.env"
    return Service(kind, name, key, definition, env_file, log)


def _word(text: str) -> str:
    """A part of a unit name or label: letters, digits, _ and - (anything else as _)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


# -- plans ------------------------------------------------------------------------------------------------
def install_plan(
    project,
    serve_flags: Sequence[str],
    *,
    kind: str,
    places: Places,
    environ: Mapping[str, str],
    python: str,
    user: str,
    uid: int,
    carried: Sequence[str] = (),
) -> ServicePlan:
    """What installing the service for `project` writes and runs. `serve_flags` are the flags of `lf serve`
    given with --install-service (they go on its command line); `carried` are the names of the environment
    variables lf reads (LF_*, the gateway's, the runtimes'), copied from `environ` when set."""
    service = service_of(project, kind, places)
    _refuse_anothers(service, project)
    workdir = project.folder.resolve() if project is not None else Path.cwd().resolve()
    argv = (python, "-m", "lf", "serve", *serve_flags)
    if project is not None:
        argv += ("--config", str(project.path.resolve()))
    for part in (*argv, str(workdir)):
        if "\n" in part or "\r" in part:
            raise LfError(f"{part!r}: a path or flag with a line break cannot go into a service definition")
    env, secrets = _environment(project, environ, carried)
    header = f"{MARK} for {_what(service, project)}; remove it with `lf serve --uninstall-service`."
    if kind == LAUNCHD:
        definition = render_plist(service, argv, workdir)
        env_text = render_env_sh(env, header)
    else:
        definition = render_unit(service, argv, workdir, header)
        env_text = render_env_systemd(env, header)
    env_shown = (render_env_sh if kind == LAUNCHD else render_env_systemd)(_masked(env, secrets), header)
    write = (
        PlannedFile(service.env_file, env_text, 0o600, env_shown),
        PlannedFile(service.definition, definition, 0o644, definition),
    )
    steps: tuple[Step, ...]
    if kind == LAUNCHD:
        domain = f"gui/{uid}"
        steps = (
            Step(("launchctl", "bootout", f"{domain}/{service.name}"), required=False, why="unload an older copy"),
            Step(("launchctl", "bootstrap", domain, str(service.definition)), why="load it, and start it now"),
        )
    else:
        steps = (
            Step(("systemctl", "--user", "daemon-reload"), why="read the new unit"),
            Step(("systemctl", "--user", "enable", service.name), why="start it at each login"),
            Step(("systemctl", "--user", "restart", service.name), why="start it now, or restart it"),
        )
        if not (places.linger / user).exists():
            steps += (
                Step(
                    ("loginctl", "enable-linger", user),
                    required=False,
                    why="start it at boot and keep it running after you log out",
                ),
            )
    return ServicePlan("install", service, argv, workdir, write, steps)


def uninstall_plan(project, *, kind: str, places: Places, uid: int) -> ServicePlan:
    service = service_of(project, kind, places)
    _refuse_anothers(service, project)
    remove = tuple(p for p in (service.definition, service.env_file) if p.exists())
    if not service.installed():
        return ServicePlan("uninstall", service, (), None, remove=remove, notes=("not installed: nothing to remove",))
    if kind == LAUNCHD:
        steps: tuple[Step, ...] = (
            Step(("launchctl", "bootout", f"gui/{uid}/{service.name}"), required=False, why="stop and unload it"),
        )
    else:
        steps = (Step(("systemctl", "--user", "disable", "--now", service.name), required=False, why="stop it"),)
    # systemd forgets the unit only once its file is gone: the reload comes after the removal
    then = (Step(("systemctl", "--user", "daemon-reload"), required=False, why="forget it"),) if kind == SYSTEMD else ()
    return ServicePlan("uninstall", service, (), None, steps=steps, remove=remove, then=then)


def _refuse_anothers(service: Service, project) -> None:
    """A unit or plist of that name lf did not write, or wrote for another project, is left alone."""
    if not service.definition.is_file():
        return
    try:
        data = service.definition.read_bytes()
    except OSError as exc:
        raise LfError(f"cannot read {service.definition}: {exc.strerror or exc}") from exc
    ours, config = _written_for(service.kind, data)
    if not ours:
        raise LfError(
            f"{service.definition} exists and was not written by lf",
            hint="move it away first if lf may replace it",
        )
    wanted = str(project.path.resolve()) if project is not None else None
    if config != wanted:
        raise LfError(
            f"{service.definition} runs lf serve for {config or 'the embedded default model'}, not for this project",
            hint="remove that one first: lf serve --uninstall-service, in its folder",
        )


def _written_for(kind: str, data: bytes) -> tuple[bool, str | None]:
    """(written by lf?, the llamafarm.yaml its lf serve is given: None for none) of a unit or plist."""
    argv: list[str] = []
    if kind == LAUNCHD:
        try:
            agent = plistlib.loads(data)
            argv = [str(a) for a in agent.get("ProgramArguments", [])]
        except Exception:  # noqa: BLE001 - not a plist lf could have written
            return False, None
        ours = MARK_XML in data.decode(errors="replace")
    else:
        text = data.decode(errors="replace")
        ours = text.startswith(f"# {MARK}")
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                argv = [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line.partition("=")[2])]
    config = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    return ours, config


def _what(service: Service, project) -> str:
    if project is None:
        return "the embedded default model"
    return f"project {project.key} ({project.path.resolve()})"


def _environment(project, environ: Mapping[str, str], carried: Sequence[str]) -> tuple[dict[str, str], set[str]]:
    """The variables lf reads, as set in `environ`, and the one an `${env:NAME}` API key names; and the names
    of those that hold a secret."""
    names = list(dict.fromkeys([*sorted(n for n in environ if n.startswith("LF_")), *carried, *CARRIED]))
    secrets = {name for name in names if SECRET.search(name)}
    key = (project.gateway or {}).get("api_key") if project is not None else None
    if isinstance(key, str):
        from lf.config.envref import env_ref_name

        if (name := env_ref_name(key)) is not None:
            names.append(name)
            secrets.add(name)
    out = {}
    for name in names:
        value = environ.get(name)
        if value:
            if "\n" in value or "\r" in value or "\0" in value:
                raise LfError(f"the environment variable {name} holds a line break: it cannot go into a service file")
            out[name] = value
    out.pop("LF_DEBUG", None)
    return out, secrets


def _masked(env: Mapping[str, str], secrets: set[str]) -> dict[str, str]:
    return {name: ("***" if name in secrets else value) for name, value in env.items()}


# -- rendering --------------------------------------------------------------------------------------------
def render_unit(service: Service, argv: Sequence[str], workdir: Path, header: str) -> str:
    return "\n".join(
        [
            f"# {header}",
            "[Unit]",
            f"Description=lf serve: the OpenAI endpoint of {_unit_text(_label(service.project))}",
            "",
            "[Service]",
            "Type=simple",
            f"WorkingDirectory={_unit_text(str(workdir))}",
            f"EnvironmentFile={_unit_text(str(service.env_file))}",
            "Environment=PYTHONUNBUFFERED=1",
            "ExecStart=" + " ".join(_exec_word(a) for a in argv),
            "Restart=on-failure",
            f"RestartSec={RESTART_SECONDS}",
            "# SIGTERM to lf serve alone: it stops the instances it started, then exits; SIGKILL for what is left",
            "KillMode=mixed",
            f"TimeoutStopSec={STOP_SECONDS}",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )


def _label(project: str | None) -> str:
    return f"project {project}" if project else "the embedded default model"


def _unit_text(text: str) -> str:
    return text.replace("%", "%%")  # % starts a specifier everywhere in a unit


def _exec_word(word: str) -> str:
    """One argument of ExecStart=: % and $ doubled (specifiers, variables), quoted when it needs to be."""
    text = word.replace("%", "%%").replace("$", "$$")
    if text and not re.search(r"[\s\"'\\;]", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_env_systemd(env: Mapping[str, str], header: str) -> str:
    lines = [f"# {header}", "# The environment lf serve runs with (mode 0600: it may hold the API key)."]
    for name, value in env.items():
        escaped = re.sub(r'(["\\`$])', r"\\\1", value)  # in double quotes, systemd unescapes exactly these
        lines.append(f'{name}="{escaped}"')
    return "\n".join(lines) + "\n"


def render_env_sh(env: Mapping[str, str], header: str) -> str:
    lines = [f"# {header}", "# The environment lf serve runs with (mode 0600: it may hold the API key)."]
    lines += [f"{name}={shlex.quote(value)}" for name, value in env.items()]
    return "\n".join(lines) + "\n"


def render_plist(service: Service, argv: Sequence[str], workdir: Path) -> str:
    # launchd reads no environment file: a shell sources it, then becomes lf serve (the key stays off argv)
    program = ["/bin/sh", "-c", 'set -a && . "$0" && exec "$@"', str(service.env_file), *argv]
    agent = {
        "Label": service.name,
        "ProgramArguments": program,
        "WorkingDirectory": str(workdir),
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1"},
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restarted when it fails, as Restart=on-failure
        "ThrottleInterval": RESTART_SECONDS,
        "ExitTimeOut": STOP_SECONDS,
        "ProcessType": "Background",
    }
    if service.log_file is not None:
        agent["StandardOutPath"] = agent["StandardErrorPath"] = str(service.log_file)
    text = plistlib.dumps(agent, sort_keys=False).decode()
    declaration, _, rest = text.partition("\n")
    return f"{declaration}\n<!-- {MARK_XML}; uninstall-service removes it -->\n{rest}"


# -- carrying a plan out ----------------------------------------------------------------------------------
def apply(plan: ServicePlan, runner: Runner = run_command) -> Applied:
    """Write and remove the plan's files, then run its commands in order; a required command that fails
    raises (what was written stays, and the error says what to run by hand)."""
    from lf.dirs import ensure_private_dir
    from lf.files import atomic_write

    for planned in plan.write:
        folder = planned.path.parent
        if planned.mode & 0o077 == 0:
            ensure_private_dir(folder)
        else:
            folder.mkdir(parents=True, exist_ok=True)
        atomic_write(planned.path, planned.text)  # 0600 from its first byte
        if planned.mode != 0o600:
            planned.path.chmod(planned.mode)
    warnings: list[str] = []
    results = _run(plan.steps, runner, warnings, plan)
    for path in plan.remove:
        path.unlink(missing_ok=True)
    results += _run(plan.then, runner, warnings, plan)
    return Applied(plan, tuple(results), tuple(warnings))


def _run(steps: Sequence[Step], runner: Runner, warnings: list[str], plan: ServicePlan) -> list[StepResult]:
    results = []
    for step in steps:
        code, output = runner(step.argv)
        results.append(StepResult(step.argv, code, output))
        if code == 0:
            continue
        said = f"`{shlex.join(step.argv)}` failed (exit {code}): {output.splitlines()[0] if output else 'no message'}"
        if step.required:
            wrote = " and ".join(str(f.path) for f in plan.write)
            hint = _no_manager_hint(plan.service.kind, output)
            if wrote:
                hint += f"\n{wrote} are written (lf serve --uninstall-service removes them)"
            raise LfError(said, hint=hint)
        warnings.append(said + (f" ({step.why})" if step.why else ""))
    return results


def _no_manager_hint(kind: str, output: str) -> str:
    if kind == SYSTEMD:
        if "bus" in output.lower() or "not found" in output or "XDG_RUNTIME_DIR" in output:
            return (
                "this session has no systemd user manager (a container, or no login session): "
                "run `lf serve --detach` instead, or log in with a session and try again"
            )
        return "see `systemctl --user status` and `journalctl --user -xe`"
    return "see `launchctl print gui/$(id -u)`"


# -- is it there, does it run? ----------------------------------------------------------------------------
def state(service: Service, runner: Runner, user: str, places: Places, uid: int) -> ServiceState:
    if not service.installed():
        return ServiceState(service, False, None, "not installed")
    if service.kind == LAUNCHD:
        code, output = runner(("launchctl", "print", f"gui/{uid}/{service.name}"))
        if code != 0:
            return ServiceState(service, True, False, "installed, not loaded")
        running = re.search(r"^\s*state = running", output, re.MULTILINE) is not None
        return ServiceState(service, True, running, "running" if running else "loaded, not running")
    code, output = runner(("systemctl", "--user", "is-active", service.name))
    word = output.strip().splitlines()[-1] if output.strip() else ""
    lingering = (places.linger / user).exists()
    if word in ("active", "inactive", "failed", "activating", "deactivating", "reloading"):
        return ServiceState(service, True, word == "active", word, lingering)
    return ServiceState(service, True, None, f"systemctl could not say ({word or f'exit {code}'})", lingering)
