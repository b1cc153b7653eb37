"""An instance belongs to its project: two projects with a model entry of the same name never share a
record, a chat, a stop or a port (issue: "two projects with the same entry name share one record").

Real `lf` processes and real (fake) servers; each project is a folder with its own llamafarm.yaml.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import run_lf

from fakes import daemons, free_ports, use_fakes
from fakes.platforms import listening_pid


@pytest.fixture
def state(isolated, monkeypatch):
    use_fakes(monkeypatch)
    return isolated / "state"


def project(root: Path, folder: str, name: str, model: str, port: int, namespace: str = "tests") -> Path:
    path = root / folder
    path.mkdir(parents=True, exist_ok=True)
    (path / "llamafarm.yaml").write_text(
        textwrap.dedent(
            f"""\
            version: v1
            name: {name}
            namespace: {namespace}
            runtime:
              models:
                - {{name: local, provider: fake, model: {model}, provider_config: {{port: {port}}}}}
            """
        )
    )
    return path / "llamafarm.yaml"


def lf(config: Path | None, *args: str, code: int = 0):
    result = run_lf(*args, *(["--config", str(config)] if config else []))
    assert result.returncode == code, (
        f"lf {' '.join(args)}: exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def status(config: Path | None, *args: str) -> list[dict]:
    return json.loads(lf(config, "runtime", "status", "--json", *args, code=0).stdout)["instances"]


def pid_on(port: int) -> int | None:
    return listening_pid(port)


def test_two_projects_with_the_same_entry_name_each_have_their_own_instance(state, isolated):
    port_a, port_b = free_ports(2)
    a = project(isolated, "a", "alpha", "model-of-a", port_a)
    b = project(isolated, "b", "beta", "model-of-b", port_b)

    lf(a, "runtime", "start", "local")
    started = lf(b, "runtime", "start", "local")
    assert "already running" not in started.stderr + started.stdout  # B gets its own, not A's

    (mine,) = status(b)
    assert (mine["project"], mine["model"], mine["port"], mine["state"]) == (
        "tests/beta",
        "model-of-b",
        port_b,
        "running",
    )
    assert pid_on(port_a) is not None and pid_on(port_b) is not None and pid_on(port_a) != pid_on(port_b)

    # each project's chat talks to its own model
    answer_b = json.loads(lf(b, "chat", "hi", "--json").stdout)
    answer_a = json.loads(lf(a, "chat", "hi", "--json").stdout)
    assert (answer_a["model"], answer_b["model"]) == ("model-of-a", "model-of-b")

    # status shows the project; --all-projects lists both, each with its project
    everything = {(i["project"], i["name"]): i for i in status(b, "--all-projects")}
    assert {("tests/alpha", "local"), ("tests/beta", "local")} <= set(everything)
    assert everything["tests/alpha", "local"]["model"] == "model-of-a"
    table = lf(b, "runtime", "status", "--all-projects").stdout
    assert "PROJECT" in table and "tests/alpha" in table and "tests/beta" in table

    # a bare name stops only this project's instance
    lf(b, "runtime", "stop", "local")
    assert pid_on(port_b) is None
    assert pid_on(port_a) is not None, "B's stop touched A's daemon"
    (theirs,) = status(a)
    assert theirs["state"] == "running"

    # stopping it again in B: nothing to stop here, and it says which project runs one and how to stop it
    again = lf(b, "runtime", "stop", "local", "--json")
    (result,) = json.loads(again.stdout)["stopped"]
    assert result["was_running"] is False and result["running_elsewhere"] == ["tests/alpha"]
    said = lf(b, "runtime", "stop", "local").stdout
    assert "tests/alpha" in said and "lf runtime stop local --project tests/alpha" in said
    assert pid_on(port_a) is not None

    # --project reaches another project's instance from anywhere; logs too
    lf(None, "runtime", "logs", "local", "--project", "tests/alpha")
    lf(None, "runtime", "stop", "local", "--project", "tests/alpha")
    assert pid_on(port_a) is None
    assert daemons(state) == []


def test_the_same_entry_in_a_project_and_outside_any_project_are_two_instances(state, isolated):
    """The embedded default (no llamafarm.yaml) has its own instances too."""
    port_a, port_free = free_ports(2)
    a = project(isolated, "a", "alpha", "model-of-a", port_a)
    lf(a, "runtime", "start", "local")
    outside = run_lf("runtime", "stop", "local")  # in the work dir: no llamafarm.yaml, no project
    assert outside.returncode == 0, outside.stderr
    assert "lf runtime stop local --project tests/alpha" in outside.stdout
    assert pid_on(port_a) is not None
    (inst,) = [i for i in status(None, "--all-projects") if i["name"] == "local"]
    assert inst["project"] == "tests/alpha"
    lf(None, "runtime", "stop", "--all-projects")
    assert daemons(state) == []


def test_a_port_held_by_another_projects_instance_names_that_project(state, isolated):
    (port,) = free_ports(1)
    a = project(isolated, "a", "alpha", "model-of-a", port)
    b = project(isolated, "b", "beta", "model-of-b", port)  # the same port written in both files
    lf(a, "runtime", "start", "local")
    taken = lf(b, "runtime", "start", "local", code=7)
    assert "project tests/alpha" in taken.stderr and "lf runtime stop local --project tests/alpha" in taken.stderr
    lf(a, "runtime", "stop", "--all")
    assert daemons(state) == []


def test_names_lf_cannot_use_as_folders_still_make_distinct_projects(state, isolated):
    """namespace and name are free text in llamafarm.yaml: slashes, dots, spaces must not collide or escape."""
    port_a, port_b = free_ports(2)
    a = project(isolated, "a", "'x/y'", "model-of-a", port_a, namespace="'..'")
    b = project(isolated, "b", "'y'", "model-of-b", port_b, namespace="'../x'")
    lf(a, "runtime", "start", "local")
    lf(b, "runtime", "start", "local")
    projects = sorted(i["project"] for i in status(None, "--all-projects") if i["name"] == "local")
    assert projects == ["..%2Fx/y", "../x/y"]  # the first slash separates namespace and name
    # every record stays inside the state dir
    for path in state.rglob("*.json"):
        assert state in path.resolve().parents
    lf(None, "runtime", "stop", "--all-projects")
    assert daemons(state) == []
