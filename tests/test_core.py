"""The core the CLI and the gateway share: actions callable from several threads at once, the one state
classifier, frozen launch plans."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from fakes import daemons, read_record, use_fakes


@pytest.fixture(autouse=True)
def fakes(isolated, monkeypatch):
    use_fakes(monkeypatch)
    return isolated / "state"


def test_ensure_running_from_eight_threads_makes_one_daemon(fakes, free_port):
    from lf.config.names import default_entry
    from lf.core import actions

    entry = dataclasses.replace(default_entry("fake-loading"), provider_config={"port": free_port})
    endpoints, errors = [], []

    def call() -> None:
        try:
            endpoints.append(actions.ensure_running(entry, None, owner="gateway"))
        except Exception as exc:  # collected: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len({(e.base_url, e.record.pid) for e in endpoints}) == 1  # one instance, the same for all
    assert sum(e.started for e in endpoints) == 1
    assert [p.pid for p in daemons(fakes)] == [read_record(fakes, "fake-loading")["pid"]]
    assert read_record(fakes, "fake-loading")["owner"] == "gateway"
    results = []
    stoppers = [threading.Thread(target=lambda: results.append(actions.stop(["fake-loading"]))) for _ in range(4)]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join(60)
    assert sorted(r[0].was_running for r in results) == [False, False, False, True]
    assert daemons(fakes) == []


def test_the_classifier_and_its_transitions():
    from lf.daemon.health import Health
    from lf.daemon.states import UNREADABLE, InvalidTransition, State, check_transition, classify

    @dataclasses.dataclass
    class Rec:
        started_at: float
        start_timeout: float = 10.0

    now = time.time()
    failing = Health(True, False, False, 1.0, "loading model", 503)
    ok = Health(True, True, True, 1.0, "ok", 200)
    assert classify(None, False) == State.STOPPED
    assert classify(UNREADABLE, False) == State.UNKNOWN
    assert classify(Rec(now), False) == State.CRASHED
    assert classify(Rec(now), True) == State.RUNNING  # alive, not probed
    assert classify(Rec(now), True, ok, now) == State.RUNNING
    assert classify(Rec(now - 1), True, failing, now) == State.STARTING  # young: still loading
    assert classify(Rec(now - 60), True, failing, now) == State.UNHEALTHY  # past its start timeout
    assert check_transition(State.STOPPED, State.STARTING) == State.STARTING
    with pytest.raises(InvalidTransition):
        check_transition(State.STOPPED, State.RUNNING)
    assert classify(None, False, served=True) == State.IDLE  # a running gateway starts it on demand
    from lf.daemon.states import exit_for
    from lf.errors import ExitStatus

    words = ("running", "starting", "stopped", "crashed", "unknown", "idle", "frozen", "stopping")
    assert [exit_for(State(s)) for s in words] == [0, 6, 3, 3, 3, 0, 6, 3]
    assert exit_for(State.EXTERNAL, healthy=False) == ExitStatus.UNHEALTHY


def test_plans_and_specs_are_frozen(free_port):
    from lf.config.names import default_entry
    from lf.core.targets import Overrides, build_spec
    from lf.runtimes.launch import make_plan

    spec = build_spec(default_entry("fake"), None, Overrides(port=free_port), single=True)
    plan = make_plan(spec, spec.port, owner="gateway")
    for frozen, field in ((spec, "port"), (plan, "argv")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(frozen, field, None)
    with pytest.raises(TypeError):
        spec.settings["port"] = 1  # a read-only view, not a dict anyone can edit
    assert plan.owner == "gateway" and plan.port == free_port and dict(plan.overrides) == {"port": free_port}
