"""`lf serve --install-service` / `--uninstall-service`: the systemd user unit (checked by systemd's own
`systemd-analyze verify`, and its ExecStart run for real: a gateway that answers and stops its instances on
SIGTERM), the launchd plist (read back with plistlib, its command run by /bin/sh), the environment file that
holds the key (0600, never on a command line nor in the unit), and the CLI with stand-ins for systemctl,
loginctl and launchctl that note what they are asked (this machine has no user systemd)."""

from __future__ import annotations

import getpass
import json
import os
import plistlib
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import run_lf

from fakes import engines, free_ports, use_fakes, wait_until

KEY = "the-key $x \"q\" 'a' \\b"  # what a shell, systemd's quoting and launchd's sh must all keep as it is


@pytest.fixture
def fakes(isolated, monkeypatch):
    use_fakes(monkeypatch)
    return isolated / "state"


@pytest.fixture
def home(isolated, monkeypatch) -> Path:
    home = isolated / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    return home


def project(folder: Path, models: str, gateway: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "llamafarm.yaml"
    path.write_text(
        "version: v1\nname: svc\nnamespace: tests\nruntime:\n"
        + (f"  gateway: {{{gateway}}}\n" if gateway else "")
        + "  models:\n"
        + models
    )
    return path


def load(path: Path):
    from lf.config.project import load_project

    return load_project(path)


def plan_for(path: Path, kind: str, flags=(), environ=None):
    from lf.core import service

    return service.install_plan(
        load(path),
        list(flags),
        kind=kind,
        places=service.Places.default(kind),
        environ=environ if environ is not None else dict(os.environ),
        python=sys.executable,
        user=getpass.getuser(),
        uid=os.getuid(),
    )


class Recorder:
    """A stand-in runner: notes each command, answers as told."""

    def __init__(self, answers: dict | None = None):
        self.ran: list[tuple[str, ...]] = []
        self.answers = answers or {}

    def __call__(self, argv):
        self.ran.append(tuple(argv))
        return self.answers.get(tuple(argv[:3]), (0, ""))


def unit_values(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def exec_argv(exec_start: str) -> list[str]:
    """ExecStart= as systemd splits it (the C-style quoting lf writes; %% and $$ undoubled). A lone % or $
    would be a specifier or a variable systemd replaces: none may be left."""
    words = shlex.split(exec_start)
    for word in words:
        assert not re.search(r"[%$]", re.sub(r"%%|\$\$", "", word)), f"systemd would expand {word!r}"
    return [w.replace("%%", "%").replace("$$", "$") for w in words]


def systemd_env(text: str) -> dict[str, str]:
    """An EnvironmentFile= read as systemd reads a double-quoted value: it ends at the first " not escaped, and
    a backslash escapes only \\, ", ` and $ (any other stays with its backslash). Nothing may follow."""
    env = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, _, rest = line.partition("=")
        assert rest[:1] == '"', line
        value, i = [], 1
        while rest[i] != '"':
            if rest[i] == "\\" and rest[i + 1] in '"\\`$':
                value.append(rest[i + 1])
                i += 2
            else:
                value.append(rest[i])
                i += 1
        assert i == len(rest) - 1, f"systemd would read {name} as {''.join(value)!r} and then more: {line}"
        env[name] = "".join(value)
    return env


# -- the systemd unit --------------------------------------------------------------------------------------
def test_the_unit_runs_lf_serve_for_the_project_restarts_on_failure_and_keeps_the_key_apart(
    tmp_path, home, monkeypatch
):
    from lf.core.service import SYSTEMD, apply

    monkeypatch.setenv("LF_GATEWAY_API_KEY", KEY)
    folder = tmp_path / "my proj %h $HOME"  # a space, a specifier and a variable: all must stay literal
    path = project(folder, "    - {name: chat, provider: llamacpp, model: smollm2-135m}\n")
    plan = plan_for(path, SYSTEMD, ["--idle-ttl", "45"])
    runner = Recorder()
    applied = apply(plan, runner)

    unit = plan.service.definition
    assert unit == home / ".config" / "systemd" / "user" / "lf-serve-tests-svc.service"
    text = unit.read_text()
    values = unit_values(text)
    assert values["WorkingDirectory"] == str(folder).replace("%", "%%")
    argv = exec_argv(values["ExecStart"])
    assert argv == [sys.executable, "-m", "lf", "serve", "--idle-ttl", "45", "--config", str(path)]
    assert values["Restart"] == "on-failure" and values["KillMode"] == "mixed"
    assert values["EnvironmentFile"] == str(plan.service.env_file).replace("%", "%%")
    assert values["WantedBy"] == "default.target"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644

    env_file = plan.service.env_file
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600 and stat.S_IMODE(env_file.parent.stat().st_mode) == 0o700
    assert systemd_env(env_file.read_text())["LF_GATEWAY_API_KEY"] == KEY
    assert "the-key" not in text and all("the-key" not in " ".join(step.argv) for step in plan.steps)

    user = getpass.getuser()
    linger = [("loginctl", "enable-linger", user)] if not Path(f"/var/lib/systemd/linger/{user}").exists() else []
    assert runner.ran == [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", "lf-serve-tests-svc.service"),
        ("systemctl", "--user", "restart", "lf-serve-tests-svc.service"),
        *linger,
    ]
    assert applied.warnings == ()


def test_systemd_analyze_verify_accepts_the_unit(tmp_path, home, monkeypatch):
    from lf.core.service import SYSTEMD, apply

    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # make test installs it (scripts/ensure-systemd-analyze) where it can: as root with apt-get
        pytest.skip("systemd-analyze is not installed: apt-get install systemd (as root) provides it")
    monkeypatch.setenv("LF_GATEWAY_API_KEY", KEY)
    path = project(tmp_path / "a folder %i $USER", "    - {name: chat, provider: llamacpp, model: smollm2-135m}\n")
    plan = plan_for(path, SYSTEMD)
    apply(plan, Recorder())
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir(mode=0o700)
    for mode in ([], ["--user"]):  # --user: as the user manager reads it
        verified = subprocess.run(
            [analyze, *mode, "verify", str(plan.service.definition)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)},
        )
        # no output at all: an unknown key or a bad value is only a warning to systemd, and a failure here
        assert (verified.returncode, verified.stdout + verified.stderr) == (0, ""), mode


def test_the_units_command_is_a_gateway_that_answers_with_the_key_and_stops_its_instances_on_sigterm(
    tmp_path, home, fakes, monkeypatch
):
    """What systemd would run, run here: ExecStart in WorkingDirectory with EnvironmentFile's variables."""
    from lf.core.service import SYSTEMD, apply

    a, port = free_ports(2)
    monkeypatch.setenv("LF_GATEWAY_API_KEY", KEY)
    path = project(
        tmp_path / "proj",
        f"    - {{name: alpha, provider: fake, model: model-a, provider_config: {{port: {a}}}}}\n",
        gateway=f"port: {port}",
    )
    plan = plan_for(path, SYSTEMD)
    apply(plan, Recorder())
    values = unit_values(plan.service.definition.read_text())
    env = systemd_env(plan.service.env_file.read_text())
    # the service's environment: the file's, over what a user manager gives (HOME, and here the fakes' PYTHONPATH)
    base = {"HOME": str(home), "PYTHONPATH": os.environ["PYTHONPATH"], "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        exec_argv(values["ExecStart"]),
        cwd=values["WorkingDirectory"].replace("%%", "%"),
        env={**base, **env, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: _answers(url + "/health/liveness"), timeout=30), proc.stderr
        assert httpx.get(url + "/v1/models").status_code == 401  # the key from the environment file is in force
        asked = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "alpha", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=30,
        )
        assert asked.status_code == 200, asked.text
        assert len(engines(fakes)) == 1
        proc.send_signal(signal.SIGTERM)  # what systemctl stop sends (KillMode=mixed: to lf serve alone)
        proc.wait(60)
        assert wait_until(lambda: engines(fakes) == [], timeout=10)  # the gateway stopped what it started
        assert proc.returncode in (0, -signal.SIGTERM)  # a clean exit for systemd (SIGTERM is a success)
    finally:
        if proc.poll() is None:
            proc.kill()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("kind", ["systemd", "launchd"])
def test_a_definition_of_another_project_or_not_lfs_is_left_alone(tmp_path, home, kind):
    from lf.core.service import Places, apply, uninstall_plan
    from lf.errors import LfError

    path = project(tmp_path / "one", "    - {name: chat, provider: llamacpp, model: smollm2-135m}\n")
    plan = plan_for(path, kind)
    apply(plan, Recorder())
    assert plan_for(path, kind).service == plan.service  # its own: replaced on a second install
    other = project(tmp_path / "two", "    - {name: chat, provider: llamacpp, model: smollm2-135m}\n")  # same name
    with pytest.raises(LfError, match="not for this project"):
        plan_for(other, kind)
    with pytest.raises(LfError, match="not for this project"):
        uninstall_plan(load(other), kind=kind, places=Places.default(kind), uid=os.getuid())
    foreign = (
        "[Service]\nExecStart=/bin/true\n"
        if kind == "systemd"
        else plistlib.dumps({"Label": "lf.serve.tests.svc", "ProgramArguments": ["/bin/true"]}).decode()
    )
    plan.service.definition.write_text(foreign)
    with pytest.raises(LfError, match="not written by lf"):
        plan_for(path, kind)
    assert plan.service.definition.read_text() == foreign


# -- the launchd agent -------------------------------------------------------------------------------------
def test_the_launchd_plist_reads_back_and_its_command_runs_lf_serve_with_the_key_from_the_file(
    tmp_path, home, fakes, monkeypatch
):
    from lf.core.service import LAUNCHD, apply

    a, port = free_ports(2)
    monkeypatch.setenv("LF_GATEWAY_API_KEY", KEY)
    path = project(
        tmp_path / "proj",
        f"    - {{name: alpha, provider: fake, model: model-a, provider_config: {{port: {a}}}}}\n",
        gateway=f"port: {port}",
    )
    plan = plan_for(path, LAUNCHD)
    runner = Recorder()
    apply(plan, runner)
    plist = plan.service.definition
    assert plist == home / "Library" / "LaunchAgents" / "lf.serve.tests.svc.plist"
    agent = plistlib.loads(plist.read_bytes())
    assert agent["Label"] == "lf.serve.tests.svc"
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["WorkingDirectory"] == str(path.parent)
    program = agent["ProgramArguments"]
    assert program[:4] == ["/bin/sh", "-c", 'set -a && . "$0" && exec "$@"', str(plan.service.env_file)]
    assert program[4:] == [sys.executable, "-m", "lf", "serve", "--config", str(path)]
    assert agent["StandardErrorPath"] == str(home / "Library" / "Logs" / "lf" / "lf.serve.tests.svc.log")
    assert "the-key" not in plist.read_text() and stat.S_IMODE(plan.service.env_file.stat().st_mode) == 0o600
    uid = os.getuid()
    assert runner.ran == [
        ("launchctl", "bootout", f"gui/{uid}/lf.serve.tests.svc"),
        ("launchctl", "bootstrap", f"gui/{uid}", str(plist)),
    ]
    # what launchd would run, run here: the shell sources the file (the key as it is), then becomes lf serve
    proc = subprocess.Popen(
        program,
        cwd=agent["WorkingDirectory"],
        env={"HOME": str(home), "PYTHONPATH": os.environ["PYTHONPATH"], **agent["EnvironmentVariables"]},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: _answers(url + "/health/liveness"), timeout=30)
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert psutil_name(proc.pid) != "sh"  # exec: launchd's SIGTERM reaches lf serve itself
    finally:
        proc.terminate()
        proc.wait(60)


def psutil_name(pid: int) -> str:
    import psutil

    return psutil.Process(pid).name()


# -- the command line ----------------------------------------------------------------------------------------
@pytest.fixture
def managers(tmp_path) -> tuple[Path, dict]:
    """systemctl, loginctl and launchctl stand-ins on PATH: each notes its arguments; `is-active` says active."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name in ("systemctl", "loginctl", "launchctl"):
        script = bin_dir / name
        script.write_text(
            f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >> {calls}\ncase "$*" in *is-active*) echo active;; esac\n'
        )
        script.chmod(0o755)
    return calls, {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_install_then_doctor_then_uninstall_from_the_command_line(tmp_path, home, managers):
    calls, env = managers
    project(Path.cwd(), "    - {name: chat, provider: llamacpp, model: smollm2-135m}\n")
    env = {**env, "LF_GATEWAY_API_KEY": KEY}

    dry = run_lf("serve", "--install-service", "--dry-run", "--port", "11777", env=env)
    assert dry.returncode == 0, dry.stderr
    assert not calls.exists() and not (home / ".config").exists()  # nothing run, nothing written
    assert 'LF_GATEWAY_API_KEY="***"' in dry.stdout and "the-key" not in dry.stdout + dry.stderr
    assert "ExecStart=" in dry.stdout and "--port 11777 --config" in dry.stdout
    assert "would run: systemctl --user enable lf-serve-tests-svc.service" in dry.stdout

    installed = run_lf("serve", "--install-service", "--port", "11777", "--json", env=env)
    assert installed.returncode == 0, installed.stderr
    report = json.loads(installed.stdout)
    assert report["name"] == "lf-serve-tests-svc.service" and report["kind"] == "systemd"
    assert report["exec"][-4:] == ["--port", "11777", "--config", str(Path.cwd() / "llamafarm.yaml")]
    assert [r["exit_code"] for r in report["ran"]] == [0] * len(report["ran"])
    unit = Path(report["definition"])
    assert unit.is_file() and "the-key" not in unit.read_text() + calls.read_text()
    assert calls.read_text().splitlines()[:3] == [
        "systemctl --user daemon-reload",
        "systemctl --user enable lf-serve-tests-svc.service",
        "systemctl --user restart lf-serve-tests-svc.service",
    ]

    doctor = json.loads(run_lf("doctor", "--json", env=env, timeout=120).stdout)
    (check,) = [c for c in doctor["checks"] if c["name"] == "service"]
    assert "lf-serve-tests-svc.service installed and running" in check["detail"]
    assert "systemctl --user is-active lf-serve-tests-svc.service" in calls.read_text()

    calls.unlink()
    removed = run_lf("serve", "--uninstall-service", env=env)
    assert removed.returncode == 0 and "removed" in removed.stdout, removed.stderr
    assert not unit.exists() and not Path(report["env_file"]).exists()
    assert calls.read_text().splitlines() == [
        "systemctl --user disable --now lf-serve-tests-svc.service",
        "systemctl --user daemon-reload",
    ]
    again = run_lf("serve", "--uninstall-service", env=env)
    assert again.returncode == 0 and "not installed" in again.stderr
    doctor = json.loads(run_lf("doctor", "--json", env=env, timeout=120).stdout)
    (check,) = [c for c in doctor["checks"] if c["name"] == "service"]
    assert check["status"] == "ok" and check["detail"].startswith("not installed")


def test_without_a_user_manager_install_says_what_was_written_and_what_to_do(tmp_path, home):
    project(Path.cwd(), "    - {name: chat, provider: llamacpp, model: smollm2-135m}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text("#!/bin/sh\necho 'Failed to connect to bus: No medium found' >&2\nexit 1\n")
    (bin_dir / "systemctl").chmod(0o755)
    failed = run_lf("serve", "--install-service", env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "`systemctl --user daemon-reload` failed (exit 1): Failed to connect to bus" in failed.stderr
    assert "lf serve --detach" in failed.stderr and "lf serve --uninstall-service removes them" in failed.stderr


def test_service_flags_are_refused_with_the_ones_they_do_not_go_with():
    for args in (
        ["--dry-run"],
        ["--install-service", "--uninstall-service"],
        ["--install-service", "--detach"],
    ):
        result = run_lf("serve", *args)
        assert result.returncode == 2 and result.stderr.startswith("Error: "), args


def test_a_started_gateway_is_named_when_the_service_could_not_listen(tmp_path, home, managers, fakes):
    """A gateway of the project already on the port (lf serve --detach): the install warns that the service
    cannot listen until it stops."""
    calls, env = managers
    (port,) = free_ports(1)
    project(Path.cwd(), "    - {name: alpha, provider: fake, model: model-a}\n", gateway=f"port: {port}")
    run_lf("serve", "--detach", env=env, check=True)
    try:
        installed = run_lf("serve", "--install-service", env=env)
        assert installed.returncode == 0, installed.stderr
        assert f"a gateway already runs on port {port}" in installed.stderr
        assert f"lf runtime stop lf-serve-{port}" in installed.stderr
    finally:
        run_lf("runtime", "stop", f"lf-serve-{port}", env=env)
        time.sleep(0.1)


def test_the_variable_an_env_reference_names_is_carried_and_never_shown(tmp_path, home):
    """api_key: ${env:GW_PASS} in llamafarm.yaml: the service needs GW_PASS, and --dry-run must not show it."""
    from lf.core.service import SYSTEMD

    path = project(
        tmp_path / "p",
        "    - {name: chat, provider: llamacpp, model: smollm2-135m}\n",
        gateway="api_key: '${env:GW_PASS}'",
    )
    plan = plan_for(path, SYSTEMD, environ={"GW_PASS": "pass-word-5", "LF_STATE_DIR": "/srv/lf", "UNRELATED": "x"})
    (env_file, unit) = plan.write
    assert systemd_env(env_file.text) == {"GW_PASS": "pass-word-5", "LF_STATE_DIR": "/srv/lf"}
    assert "pass-word-5" not in env_file.shown and 'GW_PASS="***"' in env_file.shown
    assert 'LF_STATE_DIR="/srv/lf"' in env_file.shown  # what is no secret is shown as it is
    assert "pass-word-5" not in unit.text + " ".join(plan.argv)
