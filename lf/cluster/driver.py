"""The Ray side of lf's cluster commands: a short-lived Ray driver, run with the cluster environment's Python
(lf.cluster.bridge starts it; lf's own process never imports Ray).

    python -m lf.cluster.driver status|deploy|undeploy   < request.json   > answer.json

It connects to the cluster the request names, does one thing through Ray's own APIs (ray.nodes, serve.run,
serve.status, serve.delete, and the Serve controller's instance details, the data Ray's dashboard shows), and
prints one JSON object. Ray's own output goes to stderr, whatever it prints. A failure the user can act on is
`{"error": {"message", "hint"}}` with exit code 1.
"""

from __future__ import annotations

import json
import os
import sys
import time

NAMESPACE = "lf"  # the driver's Ray namespace (Serve keeps its controller in its own)


class Refusal(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


def main(argv: list[str]) -> int:
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything Ray prints lands on stderr; stdout carries the one answer
    command = argv[1] if len(argv) > 1 else ""
    handler = COMMANDS.get(command)
    if handler is None:
        out.write(json.dumps({"error": {"message": f"unknown command {command!r}", "hint": None}}) + "\n")
        return 2
    request = json.loads(sys.stdin.read() or "{}")
    try:
        _connect(request)
        answer = handler(request)
    except Refusal as exc:
        out.write(json.dumps({"error": {"message": exc.message, "hint": exc.hint}}) + "\n")
        return 1
    out.write(json.dumps(answer) + "\n")
    out.flush()
    return 0


def _connect(request: dict) -> None:
    import logging

    import ray

    runtime_env = {"py_modules": [request["code"]]} if request.get("code") else None
    try:
        ray.init(
            address=request["address"],
            namespace=NAMESPACE,
            runtime_env=runtime_env,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds here; each means "not connected"
        hint = "check the address, and that this machine has the cluster's token (lf cluster join --token-file)"
        if "auth" in str(exc).lower() or "token" in str(exc).lower():
            hint = "the cluster checks a token: give this machine the head's token file (RAY_AUTH_TOKEN_PATH)"
        raise Refusal(f"cannot connect to the Ray cluster at {request['address']}: {exc}", hint) from None


# -- status --------------------------------------------------------------------------------------------
def status(_request: dict) -> dict:
    return {"nodes": _nodes(), **_serve()}


def _nodes() -> list[dict]:
    import ray

    nodes = []
    for node in ray.nodes():
        resources = node.get("Resources") or {}
        nodes.append(
            {
                "node_id": node["NodeID"],
                "address": node.get("NodeManagerAddress"),
                "alive": bool(node.get("Alive")),
                "head": "node:__internal_head__" in resources,
                "cpus": resources.get("CPU", 0),
                "gpus": resources.get("GPU", 0),
                "memory_bytes": int(resources.get("memory", 0)),
                "death_reason": node.get("DeathReasonMessage") or None,
            }
        )
    return nodes


def _serve() -> dict:
    """Ray Serve's applications with their deployments and each replica's node, and its HTTP proxy settings."""
    from ray import serve
    from ray.serve.context import _get_global_client

    if not serve.status().applications and not serve.status().proxies:
        return {"serve": None, "applications": []}
    client = _get_global_client()
    details = client.get_serve_details()  # what Ray's dashboard shows for Serve (ray.serve.schema)
    http = details.get("http_options") or {}
    apps = []
    for name, app in (details.get("applications") or {}).items():
        deployments = []
        for dep_name, dep in (app.get("deployments") or {}).items():
            deployments.append(
                {
                    "name": dep_name,
                    "status": dep.get("status"),
                    "message": dep.get("message") or "",
                    "target_replicas": (dep.get("target_num_replicas")),
                    "replicas": [
                        {
                            "replica_id": r.get("replica_id"),
                            "state": r.get("state"),
                            "node_id": r.get("node_id"),
                            "node_ip": r.get("node_ip"),
                            "pid": r.get("pid"),
                        }
                        for r in dep.get("replicas") or []
                    ],
                }
            )
        apps.append(
            {
                "name": name,
                "status": app.get("status"),
                "message": app.get("message") or "",
                "route_prefix": app.get("route_prefix"),
                "deployments": deployments,
            }
        )
    return {
        "serve": {"host": http.get("host"), "port": http.get("port"), "proxy_location": details.get("proxy_location")},
        "applications": apps,
    }


# -- deploy --------------------------------------------------------------------------------------------
def deploy(request: dict) -> dict:
    """Start Serve (HTTP proxy on the head node only, where lf asked), run one application per entry, and wait
    until each is RUNNING, has failed, or the time is up."""
    from ray import serve

    from lf.cluster.replica import ENTRY_DEPLOYMENT

    http = request["http"]
    serve.start(proxy_location="HeadOnly", http_options={"host": http["host"], "port": http["port"]})
    for app in request["apps"]:
        deployment = ENTRY_DEPLOYMENT.options(name=app["deployment"], **app["options"])
        # not blocking: every entry's replicas start at once, then this waits for all of them
        serve._run(
            deployment.bind(app["init"]), _blocking=False, name=app["app_name"], route_prefix=app["route_prefix"]
        )
    names = [app["app_name"] for app in request["apps"]]
    deadline = time.monotonic() + float(request.get("timeout", 600))
    while True:
        apps = {a["name"]: a for a in _serve()["applications"] if a["name"] in names}
        states = {name: (apps.get(name) or {}).get("status") for name in names}
        failed = [name for name, state in states.items() if state == "DEPLOY_FAILED"]
        if failed or all(state == "RUNNING" for state in states.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    answer = _serve()
    answer["nodes"] = _nodes()
    answer["deployed"] = names
    answer["timed_out"] = not failed and any(state != "RUNNING" for state in states.values())
    return answer


def undeploy(request: dict) -> dict:
    from ray import serve

    wanted = set(request.get("apps") or [])
    prefix = request.get("prefix")
    present = [a["name"] for a in _serve()["applications"]]
    doomed = [name for name in present if name in wanted or (prefix and name.startswith(prefix))]
    for name in doomed:
        serve.delete(name)  # graceful: each replica finishes its requests and stops its engine
    return {"deleted": doomed}


COMMANDS = {"status": status, "deploy": deploy, "undeploy": undeploy}


if __name__ == "__main__":
    sys.exit(main(sys.argv))
