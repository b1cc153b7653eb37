"""`lf doctor`: can this machine run what the project asks? Each check is ok, warn or fail, with the fix.

Checks only look, with one exception the state dir check says out loud: a state dir of yours that others
can open is made private (0700) as every lf command does before writing there.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from lf.core.ps import GATEWAY_RUNTIME
from lf.errors import ExitStatus

OK, WARN, FAIL = "ok", "warn", "fail"
GIB = 1024**3
LOW_MEMORY = 1 * GIB  # less available than this: a small model may still run, little else will


@dataclass(frozen=True)
class Check:
    # stable: python, lf, cpu, memory, gpus, npus, engine:<runtime>, port:<instance>, port:gateway, memory_budget, state_dir,
    # config, model:<entry>, service
    name: str
    status: str  # ok | warn | fail
    detail: str  # one line: what was found
    fix: str | None = None  # one line: what to do (None when nothing is needed)


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.CHECK_FAILED if any(c.status == FAIL for c in self.checks) else ExitStatus.OK

    def as_json(self) -> dict:
        return {
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail, "fix": c.fix} for c in self.checks],
            "exit_code": int(self.exit_status),
        }


def run(config: str | None = None) -> Report:
    checks: list[Check] = [check_python(), check_lf(), check_cpu(), check_memory()]
    checks += check_accelerators()
    checks.append(check_state_dir())  # before anything else writes there (the config cache does)
    config_check, project = check_config(config)
    needed = _needed_specs(project, config_check)
    checks += check_engines(needed)
    checks += check_ports(needed)
    if config_check.status != FAIL:
        checks.append(check_gateway_port(project))
        checks.append(check_memory_budget(project))
    checks.append(config_check)
    checks += check_models(project, config_check)
    if config_check.status != FAIL:
        checks.append(check_service(project))
    return Report(tuple(checks))


# -- the machine -----------------------------------------------------------------------------------------
def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    return Check("python", OK, f"Python {version} ({sys.executable})")


def check_lf() -> Check:
    from lf import __version__

    return Check("lf", OK, f"lf {__version__} ({os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})")


def check_cpu() -> Check:
    from lf import hardware

    cpu = hardware.cpu_info()
    usable = hardware.usable_cpus()
    extensions = (
        ", ".join(name for name, has in (("AVX2", cpu.avx2), ("AVX-512", cpu.avx512)) if has)
        or "neither AVX2 nor AVX-512"
    )
    cores = f"{cpu.physical} cores, {cpu.logical} threads" + (
        f" ({usable} usable by lf)" if usable != cpu.logical else ""
    )
    detail = (
        f"{cpu.model}: {cores}; {extensions}; "
        f"engines get {hardware.physical_cores()} threads by default ({hardware.threads_rule()})"
    )
    x86 = any(flag in cpu.flags for flag in ("sse2", "sse4_2"))
    if x86 and not cpu.avx2:
        return Check(
            "cpu",
            WARN,
            detail,
            "llama.cpp runs several times slower without AVX2: use a smaller model, or a machine with AVX2",
        )
    return Check("cpu", OK, detail)


def check_memory() -> Check:
    from lf import hardware

    mem = hardware.memory()
    detail = f"{_gib(mem.total)} total, {_gib(mem.available)} available"
    metal = hardware.gpu_memory_limit()
    if metal is not None:
        detail += f"; Metal may hold {_gib(metal.bytes)} of it ({metal.source})"
    if mem.available < LOW_MEMORY:
        return Check(
            "memory",
            WARN,
            detail,
            "free memory (stop other programs or lf instances: lf runtime stop --all), or use a smaller model",
        )
    return Check("memory", OK, detail)


def check_accelerators() -> list[Check]:
    from lf import hardware

    gpus, npus = hardware.gpus(), hardware.npus()
    if gpus:
        listed = "; ".join(_describe(a) for a in gpus)
        gpu = Check(
            "gpus",
            OK,
            f"{listed}: llamacpp and llama-cpp-python offload every layer by default (gpu_layers -1) when their build has {_backends(gpus)}",
        )
    else:
        gpu = Check("gpus", OK, f"none found ({hardware.searched('gpu')}): engines run on the CPU")
    if npus:
        npu = Check(
            "npus",
            OK,
            f"{'; '.join(_describe(a) for a in npus)}: Lemonade's ONNX backend (ryzenai recipes) can use an AMD one; "
            "llama.cpp engines cannot",
        )
    else:
        npu = Check("npus", OK, f"none found ({hardware.searched('npu')})")
    return [gpu, npu]


def _describe(a) -> str:
    memory = f", {_gib(a.memory)}" if a.memory else ""
    return f"{a.vendor.upper() if a.vendor == 'amd' else a.vendor.capitalize()} {a.name}{memory} (via {a.source})"


def _backends(gpus) -> str:
    return " or ".join(sorted({a.backend.upper() if a.backend != "metal" else "Metal" for a in gpus if a.backend}))


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


# -- lf's own files ----------------------------------------------------------------------------------------
def check_state_dir() -> Check:
    """Private and writable: `ensure_private_dir` is what every command runs before writing there (it refuses
    a dir of another user and makes one of yours private); a temp file proves it can be written."""
    import stat
    import tempfile

    from lf.dirs import ensure_private_dir, fix_hint, state_dir
    from lf.envvars import AppEnvVars
    from lf.errors import LfError

    path = state_dir()
    try:
        before = stat.S_IMODE(path.stat().st_mode) if path.is_dir() else None
    except OSError:
        before = None
    try:
        ensure_private_dir(path)
    except LfError as exc:
        return Check("state_dir", FAIL, exc.message, exc.hint)
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("state_dir", FAIL, f"{path} cannot be written: {exc.strerror or exc}", fix_hint(path / "x", exc))
    if before is not None and before & 0o077:
        return Check(
            "state_dir",
            WARN,
            f"{path} was open to other users (mode {before:04o}): lf made it 0700",
            f"nothing more to do; keep it private (whatever set mode {before:04o} may do it again), or point {AppEnvVars.STATE_DIR} elsewhere",
        )
    return Check("state_dir", OK, f"{path}: private (0700) and writable")


def check_config(config: str | None):
    from lf.config.project import load_optional
    from lf.errors import ConfigError

    try:
        project = load_optional(config)
    except ConfigError as exc:
        first = exc.message.splitlines()
        detail = (
            first[0]
            + (f": {first[1].strip()}" if len(first) > 1 else "")
            + (f" (and {len(first) - 2} more)" if len(first) > 2 else "")
        )
        return Check("config", FAIL, detail, "see every problem with: lf config validate"), None
    if project is None:
        return Check("config", OK, "no llamafarm.yaml here: the embedded default (llamacpp with smollm2-135m)"), None
    detail = f"{project.path}: valid ({project.shape} shape, {len(project.models)} model{'s' if len(project.models) != 1 else ''})"
    if project.warnings:
        return Check(
            "config",
            WARN,
            f"{detail}; {len(project.warnings)} warning(s): {project.warnings[0].removeprefix('Warning: ')}",
            "see them all with: lf config validate (keys lf does not use are kept)",
        ), project
    return Check("config", OK, detail), project


def _needed_specs(project, config_check: Check) -> list:
    """The instances `lf runtime start` would start here (without resolving models: that is the model check's)."""
    if config_check.status == FAIL:
        return []
    from lf.config.names import Names
    from lf.core.targets import Overrides, build_spec
    from lf.errors import LfError

    entries = Names(project).to_start(None)
    specs = []
    for entry in entries:
        try:
            specs.append(build_spec(entry, project, Overrides(), single=len(entries) == 1, resolve_model=False))
        except LfError:
            continue  # a setting from the environment that is not valid: the start says so
    return specs


# -- engines and ports -----------------------------------------------------------------------------------
def check_engines(needed) -> list[Check]:
    from lf.runtimes.registry import all_runtimes

    used = {spec.runtime.name for spec in needed}
    checks = []
    for name, runtime in sorted(all_runtimes().items()):
        if not runtime.managed:
            continue
        engine = runtime.find_engine()
        if engine is None:
            if name in used:
                checks.append(
                    Check(
                        f"engine:{name}", FAIL, "no engine installed, and the project needs it", runtime.install_hint()
                    )
                )
            else:
                checks.append(
                    Check(
                        f"engine:{name}", OK, f"not installed (not needed here; when it is: {runtime.install_hint()})"
                    )
                )
            continue
        checks.append(
            Check(
                f"engine:{name}",
                OK,
                f"{engine.engine.name} from {engine.source}; can use: {engine_devices(runtime, engine)}",
            )
        )
    return checks


def engine_devices(runtime, engine) -> str:
    """What an installed engine can run on, as far as it can be asked without starting it."""
    if engine.engine.python_module == "xllamacpp":
        try:
            import xllamacpp

            kinds = [
                f"{d['description'] or d['name']} ({getattr(d['type'], 'name', str(d['type'])).rsplit('_', 1)[-1].lower()})"
                for d in xllamacpp.get_device_info()
            ]
            return ", ".join(kinds) or "CPU"
        except Exception:  # noqa: BLE001 - an engine too old to say: the CPU it always has
            return "CPU"
    if engine.engine.env_module == "llama_cpp":
        from lf.hardware import run_tool

        out = run_tool(
            [engine.python, "-c", "import llama_cpp; print(llama_cpp.llama_supports_gpu_offload())"], timeout=30
        )
        if out is None:
            return "CPU (its GPU support could not be asked)"
        return "CPU and GPU offload" if out.strip() == "True" else "CPU (built without a GPU backend)"
    if runtime.settings.get("gpu_layers") is not None:
        return "CPU, and a GPU when its build has one"
    return "what its own server finds (see its README)"


def check_ports(needed) -> list[Check]:
    """The port each instance the project needs would take (other runtimes' ports are none of its business)."""
    wanted = [(spec.runtime.name, spec.name, spec.host, spec.port, spec.port_auto) for spec in needed]
    recorded = _recorded_ports()
    checks = []
    for runtime, instance, host, port, auto in wanted:
        name = f"port:{instance}"
        record = recorded.get(port)
        if record is not None:
            mine = record.name == instance
            detail = f"{port} is held by lf's instance {record.name!r} (pid {record.pid})"
            checks.append(
                Check(
                    name,
                    OK if mine else WARN,
                    detail + (": the one configured here" if mine else ""),
                    None if mine else f"lf runtime stop {record.name}, or give {instance} another port",
                )
            )
        elif _free(host, port):
            checks.append(Check(name, OK, f"{port} on {host} is free"))
        else:
            owner = _owner(port)
            if auto:
                checks.append(
                    Check(
                        name,
                        WARN,
                        f"{port} on {host} is in use by {owner}: lf will take the next free port",
                        f"stop that process to keep {runtime} on its usual port, or set another port",
                    )
                )
            else:
                checks.append(
                    Check(
                        name,
                        FAIL,
                        f"{port} on {host} is in use by {owner}: lf runtime start would refuse it",
                        f"stop that process, or choose another port for {instance} (provider_config.port, --port, or its env var)",
                    )
                )
    return checks


def check_gateway_port(project) -> Check:
    """The port `lf serve` listens on for this project (LF_GATEWAY_PORT, runtime.gateway.port, or 11500)."""
    from lf.config.gateway import GATEWAY_SETTINGS
    from lf.errors import LfError
    from lf.runtimes.settings import resolve

    try:
        values, sources = resolve(
            {k: GATEWAY_SETTINGS[k] for k in ("host", "port")}, {}, dict(project.gateway) if project else {}
        )
    except LfError as exc:
        return Check("port:gateway", FAIL, exc.message, exc.hint or "fix LF_GATEWAY_PORT / LF_GATEWAY_HOST")
    host, port = str(values["host"]), int(values["port"])
    where = {"env": "LF_GATEWAY_PORT", "config": "runtime.gateway.port", "default": "the default"}[sources["port"]]
    record = _recorded_ports().get(port)
    if record is not None:
        gateway = record.runtime == GATEWAY_RUNTIME
        what = "gateway" if gateway else "instance"
        held = f"{port} ({where}) is held by lf's {what} {record.name!r} (pid {record.pid})"
        fix = f"lf runtime stop {record.name}, or give lf serve another port (LF_GATEWAY_PORT, runtime.gateway.port)"
        return Check("port:gateway", OK if gateway else WARN, held, None if gateway else fix)
    if _free(host, port):
        return Check("port:gateway", OK, f"{port} on {host} ({where}) is free for lf serve")
    return Check(
        "port:gateway",
        WARN,
        f"{port} on {host} ({where}) is in use by {_owner(port)}: lf serve would not start",
        "stop that process, or give lf serve another port (--port, LF_GATEWAY_PORT, runtime.gateway.port)",
    )


def check_memory_budget(project) -> Check:
    """The memory `lf serve` lets this project's models take together (runtime.gateway.memory_budget,
    LF_GATEWAY_MEMORY_BUDGET, or the machine's memory minus a headroom), and whether each model fits in it."""
    from lf.config.gateway import GATEWAY_SETTINGS
    from lf.core.actions import memory_estimate
    from lf.core.targets import Overrides, build_spec
    from lf.errors import LfError
    from lf.models.budget import configured_budget
    from lf.models.gguf_meta import human_bytes
    from lf.runtimes.settings import resolve

    fix = "set runtime.gateway.memory_budget (or LF_GATEWAY_MEMORY_BUDGET), e.g. 6GiB"
    try:
        values, sources = resolve(
            {"memory_budget": GATEWAY_SETTINGS["memory_budget"]}, {}, dict(project.gateway) if project else {}
        )
    except LfError as exc:
        return Check("memory_budget", FAIL, exc.message, exc.hint or fix)
    budget = configured_budget(values.get("memory_budget"))
    where = {"env": "LF_GATEWAY_MEMORY_BUDGET", "config": "runtime.gateway.memory_budget"}.get(
        sources.get("memory_budget", ""), "the machine's memory less what lf leaves to the rest"
    )
    detail = f"lf serve loads models in {budget.describe()} ({where})"
    needs: dict[str, int] = {}
    for entry in project.models if project else []:
        if entry.is_router or not entry.managed:
            continue
        try:
            estimate = memory_estimate(build_spec(entry, project, Overrides(), single=True))
        except Exception:  # noqa: BLE001 - a model that cannot be resolved is the model check's to report
            continue
        if estimate is not None:
            needs[entry.name] = estimate.total
    too_big = [name for name, need in needs.items() if need > budget.ram + (budget.vram or 0)]
    if too_big:
        said = ", ".join(f"{name} needs about {human_bytes(needs[name])}" for name in too_big)
        return Check(
            "memory_budget",
            WARN,
            f"{detail}; {said}: lf serve refuses it",
            "raise runtime.gateway.memory_budget (or LF_GATEWAY_MEMORY_BUDGET), lower the model's context_size, "
            "or use a smaller quantization",
        )
    if needs:
        together = sum(needs.values())
        held = "all fit at once" if together <= budget.ram + (budget.vram or 0) else "idle ones are unloaded for room"
        detail += f"; the project's {len(needs)} model(s) need about {human_bytes(together)} together: {held}"
    return Check("memory_budget", OK, detail)


def _recorded_ports() -> dict:
    from lf.daemon.records import StateStore

    try:
        return {r.port: r for r in StateStore().all_records() if r.process_alive()}
    except Exception:  # noqa: BLE001 - an unreadable state dir is the state_dir check's to report
        return {}


def _free(host: str, port: int) -> bool:
    from lf.daemon.process import port_is_free

    return port_is_free(host, port)


def _owner(port: int) -> str:
    from lf.daemon.process import port_owner

    return port_owner(port)[0]


# -- lf serve as a service -------------------------------------------------------------------------------
def check_service(project, runner=None) -> Check:
    """Whether `lf serve --install-service` installed this project's service, and whether it runs."""
    import getpass

    from lf.core import service
    from lf.errors import LfError

    try:
        kind = service.kind_here()
    except LfError:
        return Check("service", OK, f"lf installs no service on {sys.platform}")
    places = service.Places.default(kind)
    target = service.service_of(project, kind, places)
    user = getpass.getuser()
    found = service.state(target, runner or service.run_command, user, places, os.getuid())
    if not found.installed:
        return Check("service", OK, "not installed (lf serve --install-service runs lf serve at login and boot)")
    systemd = kind == service.SYSTEMD
    if found.running is None:
        ask = (
            f"systemctl --user status {target.name}" if systemd else f"launchctl print gui/{os.getuid()}/{target.name}"
        )
        return Check(
            "service",
            WARN,
            f"{target.name} installed ({target.definition}); {found.detail}",
            f"ask in a login session: {ask}",
        )
    if not found.running:
        log = f"journalctl --user -u {target.name}" if systemd else str(target.log_file)
        start = (
            f"systemctl --user start {target.name}"
            if systemd
            else f"launchctl kickstart gui/{os.getuid()}/{target.name}"
        )
        detail = f"{target.name} installed but not running ({found.detail})"
        return Check("service", WARN, detail, f"{start}; its log: {log}")
    if found.lingering is False:
        return Check(
            "service",
            WARN,
            f"{target.name} installed and running, but only while you are logged in",
            f"loginctl enable-linger {user} (then it starts at boot and outlives your logout)",
        )
    return Check("service", OK, f"{target.name} installed and running")


# -- the project's models ----------------------------------------------------------------------------------
def check_models(project, config_check: Check) -> list[Check]:
    if config_check.status == FAIL:
        return []
    from lf.config.names import Names
    from lf.errors import LfError
    from lf.runtimes.registry import get_runtime

    checks = []
    for entry in Names(project).to_start(None):
        runtime = get_runtime(entry.provider)
        if runtime.model_format != "gguf":
            checks.append(
                Check(
                    f"model:{entry.name}",
                    OK,
                    f"{entry.model}: served by {runtime.name}, which finds it itself (not checked)",
                )
            )
            continue
        from lf.models.catalog import resolve_model_path

        try:
            path = resolve_model_path(entry.model, project.folder if project else None)
        except LfError as exc:
            checks.append(Check(f"model:{entry.name}", FAIL, exc.message, exc.hint))
            continue
        size = path.stat().st_size if path.is_file() else None
        detail = f"{entry.model}: {path}" + (f" ({size / 1024**2:.0f} MiB)" if size else "")
        checks.append(_with_fit(Check(f"model:{entry.name}", OK, detail), path, entry, project))
    return checks


def _with_fit(check: Check, path, entry, project) -> Check:
    """Whether the model fits in available memory, by the estimate `lf runtime start` checks against."""
    from lf import hardware
    from lf.core.actions import memory_estimate
    from lf.core.targets import Overrides, build_spec

    try:
        spec = build_spec(entry, project, Overrides(), single=True)
        needed = memory_estimate(spec)
    except Exception as exc:  # noqa: BLE001 - an estimate that cannot be made is said, never fatal
        return Check(
            check.name, check.status, check.detail + f"; fits: not checked ({type(exc).__name__}: {exc})", check.fix
        )
    if needed is None:
        return Check(
            check.name,
            check.status,
            check.detail + "; fits: not checked (lf cannot estimate this model's memory)",
            check.fix,
        )
    available = hardware.memory().available
    if needed.total > available:
        return Check(
            check.name,
            FAIL,
            check.detail + f"; needs about {_gib(needed.total)}, {_gib(available)} available",
            "free memory, lower context_size (n_ctx), quantize the KV cache (cache_type_k/v: q8_0), or use a smaller quantization",
        )
    metal = hardware.gpu_memory_limit(spec.settings.get("gpu_layers"))
    if metal is not None and needed.total > metal.bytes:
        return Check(
            check.name,
            FAIL,
            check.detail + f"; needs about {_gib(needed.total)}, Metal may hold {_gib(metal.bytes)} ({metal.source})",
            "offload fewer layers (gpu_layers), lower context_size (n_ctx), or raise the limit: "
            "sudo sysctl iogpu.wired_limit_mb=<MiB>",
        )
    return Check(
        check.name,
        check.status,
        check.detail + f"; fits: needs about {_gib(needed.total)} of {_gib(available)} available",
        check.fix,
    )
