"""Deploy a project's model entries to a Ray cluster as Ray Serve applications, and take them down again.

    deploy(project, address=None) -> DeployResult    # one application per entry; waits until they answer
    undeploy(project, address=None) -> list[str]

This is the function API `lf cluster deploy` drives (and a gateway can: each entry's `base_url` is an
OpenAI-compatible endpoint). Ray Serve does the rest: it places the replicas (spread over nodes), routes each
request to a replica with room, scales between min_replicas and max_replicas, and replaces a replica that
fails its health check or is lost with its node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from lf.cluster import bridge
from lf.cluster.nodes import Cluster, ClusterError, connect
from lf.cluster.placement import (
    DEPLOYMENT_NAME,
    MAX_ONGOING_REQUESTS,
    EntryApp,
    app_prefix,
    entry_app,
    parallel_plan,
    require_gpus,
)
from lf.config.project import ModelEntry, Project
from lf.core.events import Notice
from lf.errors import ConfigError, ExitStatus, UnknownNameError

DEFAULT_TIMEOUT = 600.0  # a replica's start includes its engine's (a vLLM start takes minutes)


@dataclass(frozen=True)
class Replica:
    replica_id: str
    state: str
    node_id: str | None
    pid: int | None


@dataclass(frozen=True)
class DeployedEntry:
    entry: str
    app_name: str
    base_url: str  # OpenAI-compatible: {base_url}/chat/completions, …
    status: str  # Ray Serve's application status: RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY
    message: str
    replicas: tuple[Replica, ...]
    target_replicas: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DeployResult:
    address: str
    serve_url: str
    entries: tuple[DeployedEntry, ...]
    skipped: tuple[str, ...] = ()  # entries that are not lf's to run (external endpoints, routers)
    notes: tuple[str, ...] = field(default_factory=tuple)


def _require_project(project: Project | None) -> Project:
    if project is None:
        raise ConfigError(
            "deploying to a cluster needs a llamafarm.yaml: its entries are what runs there",
            hint="write one with: lf config init   (or point to it with --config)",
        )
    return project


def chosen_entries(project: Project, names: list[str] | None) -> tuple[list[ModelEntry], list[str]]:
    """(the managed entries to deploy, the external ones left out). `names`: entry names (or aliases); None: all."""
    if names:
        picked = []
        for name in names:
            found = next((e for e in project.models if e.name == name or name in e.aliases), None)
            if found is None:
                from lf.suggest import did_you_mean

                known = [e.name for e in project.models]
                raise UnknownNameError(
                    f"no model entry {name!r} in {project.path}",
                    hint=did_you_mean(name, known) or f"entries: {', '.join(known)}",
                )
            picked.append(found)
    else:
        picked = list(project.models)
    return [e for e in picked if e.managed], [e.name for e in picked if not e.managed]


def plan_apps(
    project: Project,
    entries: list[ModelEntry],
    cluster: Cluster,
    *,
    max_ongoing_requests: int = MAX_ONGOING_REQUESTS,
    replica_cpus: float = 1.0,
    cluster_gpus: Callable[[], float] | None = None,
) -> list[tuple[EntryApp, dict]]:
    """Each entry's application and what its replicas are given (the init payload): decided here, run there."""
    from lf.core.targets import resolve_settings
    from lf.runtimes.registry import get_runtime

    planned = []
    for entry in entries:
        app = entry_app(project, entry, max_ongoing_requests=max_ongoing_requests, replica_cpus=replica_cpus)
        values, _sources = resolve_settings(get_runtime(entry.provider), entry, {})
        parallel = parallel_plan(entry, values, cluster.address)
        settings = dict(parallel.settings) if parallel is not None else {}
        if parallel is not None:
            require_gpus(parallel, cluster_gpus() if cluster_gpus is not None else 0)
        init = {
            # no key travels to the cluster: engines lf starts take none
            "entry": {**asdict(entry), "api_key": None},
            "project": {
                "path": str(project.path),
                "name": project.name,
                "namespace": project.namespace,
                "shape": project.shape,
            },
            "route_prefix": app.route_prefix,
            "settings": settings,
        }
        planned.append((app, init))
    return planned


def deploy(
    project: Project | None,
    address: str | None = None,
    entries: list[str] | None = None,
    *,
    serve_port: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_ongoing_requests: int = MAX_ONGOING_REQUESTS,
    replica_cpus: float = 1.0,
    on_event: Callable[[object], None] | None = None,
) -> DeployResult:
    """Run the project's model entries (or the named ones) on the cluster, one Ray Serve application each, and wait
    until every one answers (or failed, or `timeout` passed: ClusterError naming each and why)."""
    project = _require_project(project)
    cluster = connect(address, project, serve_port=serve_port)
    picked, skipped = chosen_entries(project, entries)
    for name in skipped:
        if on_event is not None:
            on_event(Notice(f"{name} is not an engine lf runs (an external endpoint or a router): left out"))
    if not picked:
        raise ConfigError(f"{project.path} has no model entry lf runs", hint="entries with a managed provider deploy")

    alive: list[dict] = []

    def nodes() -> list[dict]:  # asked once, and only when an entry needs to know
        if not alive:
            alive.extend(n for n in bridge.call(cluster, "status", {}).get("nodes", []) if n.get("alive"))
        return alive

    def gpus() -> float:
        return sum(float(n.get("gpus") or 0) for n in nodes())

    planned = plan_apps(
        project,
        picked,
        cluster,
        max_ongoing_requests=max_ongoing_requests,
        replica_cpus=replica_cpus,
        cluster_gpus=gpus,
    )
    for app, _init in planned:
        _require_nodes_for_spread(app, nodes)
    request = {
        "http": {"host": cluster.serve_host, "port": cluster.serve_port},
        "timeout": timeout,
        "apps": [
            {
                "app_name": app.app_name,
                "route_prefix": app.route_prefix,
                "deployment": DEPLOYMENT_NAME,
                "options": dict(app.options),
                "init": init,
            }
            for app, init in planned
        ],
    }
    answer = bridge.call(cluster, "deploy", request, timeout=timeout + 120)
    result = _result(cluster, answer, [app for app, _ in planned], tuple(skipped))
    failed = [e for e in result.entries if e.status != "RUNNING"]
    if failed:
        raise ClusterError(
            "not running on the cluster: "
            + "; ".join(f"{e.entry} ({e.status}{': ' + e.message if e.message else ''})" for e in failed),
            hint="lf cluster status shows each replica and its node; a replica's own log is in its node's state dir "
            "(lf runtime logs ENTRY-REPLICA there)",
            exit_status=ExitStatus.START_FAILED,
        )
    return result


def _require_nodes_for_spread(app: EntryApp, nodes: Callable[[], list[dict]]) -> None:
    """`spread` keeps one replica per node: replicas wanted from the start that no node can take would only wait,
    and the deploy with them, until its timeout. Said at once instead (scaling up later may still wait)."""
    if not app.options.get("max_replicas_per_node"):
        return
    scaling = app.options.get("autoscaling_config") or {}
    wanted = int(scaling.get("min_replicas", 1) if scaling else app.options.get("num_replicas", 1))
    if wanted <= 1:
        return
    count = len(nodes())
    if wanted > count:
        raise ClusterError(
            f"{app.entry}: spread keeps one replica per node, {wanted} are wanted from the start, and the cluster "
            f"has {count} node{'s' if count != 1 else ''}",
            hint="join more nodes (lf cluster join), lower replicas (min_replicas) in llamafarm.yaml, or drop spread",
            exit_status=ExitStatus.START_FAILED,
        )


def _result(cluster: Cluster, answer: dict, apps: list[EntryApp], skipped: tuple[str, ...]) -> DeployResult:
    serve = answer.get("serve") or {}
    serve_url = cluster.serve_url
    if serve.get("port") and int(serve["port"]) != cluster.serve_port:
        # Ray Serve was started on this cluster before, on another port: it keeps its own
        from lf.daemon.health import local_url

        serve_url = local_url(cluster.serve_host, int(serve["port"]))
    by_name = {a["name"]: a for a in answer.get("applications", [])}
    entries = []
    for app in apps:
        details = by_name.get(app.app_name) or {}
        entries.append(_entry_status(app, details, serve_url))
    return DeployResult(cluster.address, serve_url, tuple(entries), skipped)


def _entry_status(app: EntryApp, details: dict, serve_url: str) -> DeployedEntry:
    replicas: list[Replica] = []
    target = None
    for deployment in details.get("deployments", []):
        target = deployment.get("target_replicas")
        replicas += [
            Replica(str(r.get("replica_id")), str(r.get("state")), r.get("node_id"), r.get("pid"))
            for r in deployment.get("replicas", [])
        ]
    message = details.get("message") or "; ".join(
        d.get("message") for d in details.get("deployments", []) if d.get("message")
    )
    return DeployedEntry(
        entry=app.entry,
        app_name=app.app_name,
        base_url=app.base_url(serve_url),
        status=str(details.get("status") or "NOT_STARTED"),
        message=message,
        replicas=tuple(replicas),
        target_replicas=target,
    )


def undeploy(project: Project | None, address: str | None = None, entries: list[str] | None = None) -> list[str]:
    """Delete the project's applications (or those of the named entries) from the cluster; each replica finishes
    its requests and stops its engine. The names deleted; none is a success too."""
    project = _require_project(project)
    cluster = connect(address, project)
    if entries:
        picked, _ = chosen_entries(project, entries)
        request: dict = {"apps": [entry_app(project, e).app_name for e in picked]}
    else:
        request = {"prefix": app_prefix(project)}
    return list(bridge.call(cluster, "undeploy", request).get("deleted", []))
