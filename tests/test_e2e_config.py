"""End to end: a project declaring two llamacpp models runs two instances on two ports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_lf

pytestmark = pytest.mark.e2e
FIXTURES = Path(__file__).parent / "fixtures" / "configs"


def test_two_models_two_instances_and_chat_reaches_the_right_one(isolated, free_port):
    shutil.copy(FIXTURES / "list_two_llamacpp.yaml", "llamafarm.yaml")
    env = {"LLAMACPP_PORT": str(free_port)}  # the base port; instances count up from it
    try:
        started = run_lf("runtime", "start", "--json", env=env)
        assert started.returncode == 0, started.stderr
        by_name = {s["name"]: s for s in json.loads(started.stdout)["started"]}
        assert set(by_name) == {"alpha", "beta"}
        assert by_name["alpha"]["port"] == free_port
        assert by_name["beta"]["port"] > free_port
        assert by_name["alpha"]["pid"] != by_name["beta"]["pid"]

        status = json.loads(run_lf("runtime", "status", "--json").stdout)
        states = {i["name"]: i["state"] for i in status["instances"]}
        assert states == {"alpha": "running", "beta": "running"}

        beta_log = Path(by_name["beta"]["log_path"])
        before = beta_log.stat().st_size
        run_lf("runtime", "stop", "alpha", check=True)
        chat = run_lf("chat", "--model", "beta", "--no-auto-start", "--max-tokens", "8", "Say hi")
        assert chat.returncode == 0, chat.stderr
        assert chat.stdout.strip()
        assert beta_log.stat().st_size > before  # beta served it

        down = run_lf("chat", "--model", "alpha", "--no-auto-start", "hi")
        assert down.returncode == 3 and "lf runtime start alpha" in down.stderr

        status = run_lf("runtime", "status", "alpha", "--json")
        assert status.returncode == 3
        assert json.loads(status.stdout)["instances"][0]["state"] == "stopped"
        assert run_lf("runtime", "status", "beta").returncode == 0
    finally:
        run_lf("runtime", "stop", "--all")
