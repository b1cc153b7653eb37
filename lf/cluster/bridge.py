"""How lf talks to a Ray cluster without importing Ray: one short-lived driver process (lf.cluster.driver) run
with the cluster environment's Python, a JSON request on its stdin, a JSON answer on its stdout.

The driver finds lf's code where Ray will ship it to the nodes (lf.cluster.package): the same copy is its
PYTHONPATH and the job's `py_modules`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

from lf.cluster import env as cluster_env
from lf.cluster import package
from lf.cluster.nodes import Cluster, ClusterError, parse_address
from lf.errors import ExitStatus

CONNECT_TIMEOUT = 3.0
DEFAULT_TIMEOUT = 120.0
STDERR_TAIL = 30


def reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail at once, and clearly, when nothing listens at the head's address (Ray itself retries for a minute)."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray head at {address}: {exc.strerror or exc}",
            hint="is the cluster up? lf cluster status lists this machine's nodes; start one with: lf cluster start",
            exit_status=ExitStatus.NOT_RUNNING,
        ) from None


def call(cluster: Cluster, command: str, request: dict, *, timeout: float = DEFAULT_TIMEOUT) -> dict:
    """Run `command` of the driver against `cluster`; its answer, or ClusterError with what it said."""
    python = cluster_env.require_python()
    reachable(cluster.address)
    code = package.stage()
    body = {**request, "address": cluster.address}
    if command == "deploy":
        body["code"] = str(code / "lf")
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "RAY_ADDRESS")}
    environment.update(cluster.env)
    environment["PYTHONPATH"] = str(code)
    environment["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        proc = subprocess.run(
            [python, "-m", "lf.cluster.driver", command],
            input=json.dumps(body),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
            cwd=str(code),
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(
            f"the cluster did not answer `{command}` within {timeout:g}s",
            hint=_tail(exc.stderr if isinstance(exc.stderr, str) else (exc.stderr or b"").decode("utf-8", "replace")),
        ) from None
    answer = _answer(proc.stdout)
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        error = answer["error"]
        raise ClusterError(str(error.get("message")), hint=error.get("hint"))
    if proc.returncode != 0 or not isinstance(answer, dict):
        raise ClusterError(
            f"the cluster's driver failed (`{command}`, exit code {proc.returncode})", hint=_tail(proc.stderr)
        )
    return answer


def _answer(stdout: str):
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _tail(stderr: str | None) -> str:
    lines = [line for line in (stderr or "").splitlines() if line.strip()]
    return "its last output:\n" + "\n".join(lines[-STDERR_TAIL:]) if lines else "it printed nothing"
