"""What the cluster is and what of the project runs where: this machine's nodes (lf's records), and, through Ray's
own state (ray.nodes, the Serve controller's details, asked by lf.cluster.driver), every node of the cluster and
every replica of every Ray Serve application with its node."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lf.cluster import bridge
from lf.cluster.nodes import HEAD, WORKER, ClusterError, connect, is_loopback, local_nodes
from lf.cluster.placement import app_prefix
from lf.config.project import Project
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
    warnings: list[str] = field(default_factory=list)
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
                address=str(record.settings.get("address") or ""),
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
    if cluster.local_head is not None and not cluster.local_head.settings.get("loopback"):
        host = cluster.address.rpartition(":")[0]
        report.warnings.append(
            f"Ray on {host} listens on every network interface of this machine; its ports are protected by lf's "
            "token only, unencrypted: keep the nodes on a private network or firewall them"
        )
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
        if not is_loopback(host):
            report.warnings.append(
                f"Ray Serve's HTTP proxy listens on {host}: anyone who reaches it can use the models (it has no "
                "authentication)"
            )
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
