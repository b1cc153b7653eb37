"""What the cluster is and what of the project runs where: this machine's nodes (lf's records), and, through Ray's
own state (ray.nodes, the Serve controller's details, asked by lf.cluster.driver), every node of the cluster and
every replica of every Ray Serve application with its node."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from lf.cluster import bridge
from lf.cluster.nodes import HEAD, WORKER, Cluster, ClusterError, connect, is_loopback, local_nodes
from lf.cluster.placement import app_prefix
from lf.config.project import Project
from lf.core.doctor import Check
from lf.daemon.health import local_url
from lf.daemon.states import classify


@dataclass(frozen=True)
class LocalNode:
    """A node lf runs on this machine (its daemon)."""

    name: str  # ray-head or ray-worker
    state: str  # lf's instance states: running, crashed, …
    pid: int
    address: str  # the cluster it belongs to
    log_path: str


@dataclass
class ClusterStatus:
    address: str | None = None
    source: str | None = None  # where the address came from
    auth: str | None = None  # "token (lf's key)" for lf's clusters; else Ray's own settings decide
    local_nodes: list[LocalNode] = field(default_factory=list)
    nodes: list[dict] = field(default_factory=list)
    serve: dict | None = None
    applications: list[dict] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)  # what protects the cluster, as `lf doctor` says it
    error: str | None = None  # why the cluster could not be asked (its local nodes are still listed)

    def to_dict(self) -> dict:
        return asdict(self)


def local_node_states() -> list[LocalNode]:
    out = []
    for record in local_nodes():
        alive = record.process_alive()
        out.append(
            LocalNode(
                name=record.name,
                state=classify(record, alive).value,
                pid=record.pid,
                address=str(record.instance.settings.get("address") or ""),
                log_path=record.log_path,
            )
        )
    order = {HEAD: 0, WORKER: 1}
    return sorted(out, key=lambda n: order.get(n.name, 2))


def status(project: Project | None = None, address: str | None = None) -> ClusterStatus:
    report = ClusterStatus(local_nodes=local_node_states())
    try:
        cluster = connect(address, project)
    except ClusterError as exc:
        report.error = exc.message
        return report
    report.address, report.source = cluster.address, cluster.source
    report.auth = "token (lf's key)" if cluster.local_head is not None else "Ray's own settings (RAY_AUTH_*)"
    report.checks = security_checks(cluster)
    try:
        answer = bridge.call(cluster, "status", {})
    except ClusterError as exc:
        report.error = exc.message + (f" ({exc.hint})" if exc.hint and "\n" not in exc.hint else "")
        return report
    report.nodes = answer.get("nodes", [])
    serve = answer.get("serve")
    if serve and serve.get("port"):
        host = str(serve.get("host") or "127.0.0.1")
        url_host = cluster.address.rpartition(":")[0] if host in ("0.0.0.0", "::") else host
        report.serve = {**serve, "url": local_url(url_host, int(serve["port"]))}
        report.checks.append(serve_check(host, int(serve["port"])))
    prefix = app_prefix(project) if project is not None else None
    for app in answer.get("applications", []):
        replicas = [r for d in app.get("deployments", []) for r in d.get("replicas", [])]
        route = app.get("route_prefix")
        report.applications.append(
            {
                "name": app["name"],
                "entry": app["name"][len(prefix) :] if prefix and app["name"].startswith(prefix) else None,
                "status": app.get("status"),
                "message": app.get("message") or "",
                "base_url": f"{report.serve['url']}{route}/v1" if report.serve and route else None,
                "target_replicas": next(
                    (d.get("target_replicas") for d in app.get("deployments", []) if d.get("target_replicas")), None
                ),
                "replicas": replicas,
            }
        )
    return report


def security_checks(cluster: Cluster) -> list[Check]:
    """Where Ray listens and who it lets in, each an ok or a warning with its fix."""
    head = cluster.local_head
    host = cluster.address.rpartition(":")[0]
    if head is not None and head.instance.settings.get("loopback"):
        bind = Check("ray:bind", "ok", f"Ray listens on loopback only ({cluster.address}); no other node can join")
    elif head is not None:
        bind = Check(
            "ray:bind",
            "warn",
            f"Ray on {host} listens on every network interface of this machine, as on every node (Ray cannot bind one)",
            "keep the nodes on a private network, or firewall their ports to each other",
        )
    else:
        bind = Check(
            "ray:bind", "ok", f"a cluster lf did not start ({cluster.address}): its nodes decide where they listen"
        )
    if head is not None:
        key = head.instance.settings.get("token_file")
        auth = Check("ray:auth", "ok", f"token authentication on, with lf's key ({key}, 0600)")
    elif os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        auth = Check(
            "ray:auth", "ok", "token authentication on (RAY_AUTH_MODE=token and this machine's RAY_AUTH_TOKEN*)"
        )
    else:
        auth = Check(
            "ray:auth",
            "warn",
            "Ray itself checks nobody unless its token authentication is on, and RAY_AUTH_MODE is not token here",
            "start the cluster's nodes with RAY_AUTH_MODE=token and a key (lf cluster start does), then set both here",
        )
    return [bind, auth]


def serve_check(host: str, port: int) -> Check:
    if is_loopback(host):
        return Check("serve:http", "ok", f"Ray Serve's HTTP proxy (no authentication) listens on {host}:{port} only")
    return Check(
        "serve:http",
        "warn",
        f"Ray Serve's HTTP proxy listens on {host}:{port}: whoever reaches it uses the models, with no key",
        "serve_host: 127.0.0.1 in runtime.cluster (a new cluster), and a gateway with a key in front",
    )
