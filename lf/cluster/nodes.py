"""The Ray nodes lf runs on this machine, as lf daemons: `ray start --block` launched by lf's supervisor (own
session, a record, a log, stopped by pid and process group, never with `ray stop`, which ends every Ray process of
the machine), and where lf finds a cluster to talk to.

Security, as Ray 2.60 behaves (measured):
- A head on 127.0.0.1 listens on the loopback interface only. Ray turns a loopback node address into the machine's
  own address unless its `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` switch is 0, which also keeps the cluster to that one
  node: a loopback cluster takes no worker node, not even from this machine.
- A head on any other address (--host) listens on every interface of the machine, whatever address it is given;
  so does every worker node. Ray cannot be bound to one interface then.
- Ray's own authentication (a shared token, RAY_AUTH_MODE=token) is off by default. lf turns it on for every
  cluster it starts, with a random token in a private file of the state dir: without it, whoever reaches a Ray
  port can run any code on every node. The token does not encrypt anything, and Ray Serve's HTTP proxy (the
  endpoint of the models) has no authentication at all: it listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lf.cluster import env as cluster_env
from lf.config.cluster import CLUSTER_SETTINGS, DEFAULT_GCS_PORT, DEFAULT_SERVE_PORT
from lf.daemon import supervisor
from lf.daemon.health import local_url
from lf.daemon.instance import Instance
from lf.daemon.records import RuntimeRecord, StateStore
from lf.daemon.supervisor import Loading, StartResult, StopResult, choose_port
from lf.dirs import ensure_private_dir, state_dir
from lf.errors import ExitStatus, LfError
from lf.files import atomic_write

HEAD = "ray-head"
WORKER = "ray-worker"
RUNTIME = "ray"
OWNER = "cluster"  # what the records of the nodes and of the replicas' engines say started them
START_TIMEOUT = 120.0  # a node is up in 7-14 s on 2 busy cores; its first start on a cold disk takes longer
STOP_TIMEOUT = 30.0  # `ray start --block` drains its node for up to 30 s on SIGTERM; then SIGKILL
LOOPBACK = "127.0.0.1"
HEALTH_PATH = "/api/local_raylet_healthz"  # the node's own agent: 200 "success" while its raylet is healthy
# Ray's switch that keeps a node on the loopback address (it would otherwise use the machine's own address)
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# What every node runs with. On SIGTERM, `ray start --block` first asks the GCS to drain its node, for up to 30 s;
# lf's stop signals every process of the node at once (the GCS too), so that wait only ever ran out (measured:
# 30 s, then SIGKILL). Without it the node is down in seconds.
NODE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "PYTHONUNBUFFERED": "1"}


class ClusterError(LfError):
    """A cluster lf cannot reach, start or use as asked."""


@dataclass(frozen=True)
class Cluster:
    """A cluster to talk to: its address, what a Ray process needs in its environment to be let in, and where
    Ray Serve's HTTP proxy listens."""

    address: str  # HOST:PORT of the head's GCS
    env: dict = field(default_factory=dict)
    serve_host: str = LOOPBACK
    serve_port: int = DEFAULT_SERVE_PORT
    local_head: RuntimeRecord | None = None  # lf's own head on this machine, when that is the one
    source: str = ""  # where the address came from: --address, RAY_ADDRESS, llamafarm.yaml, lf cluster start

    @property
    def serve_url(self) -> str:
        """Ray Serve's HTTP proxy, as a client on the head's machine reaches it."""
        host = self.serve_host
        if host in ("0.0.0.0", "::"):
            host = self.address.rpartition(":")[0] or LOOPBACK
        return local_url(host, self.serve_port)


# -- where things are ------------------------------------------------------------------------------------
def store() -> StateStore:
    """Nodes belong to the machine, not to a project: their records are those of no project."""
    return StateStore()


def cluster_dir() -> Path:
    return ensure_private_dir(state_dir() / "cluster")


def token_path() -> Path:
    return state_dir() / "cluster" / "auth_token"


def temp_dir_path() -> Path:
    """Ray's temp dir for this state dir's nodes: short (Ray's socket paths under it must fit in 107 bytes),
    outside the state dir (which is often long), shared by the nodes of this machine."""
    digest = hashlib.sha256(str(state_dir().resolve()).encode()).hexdigest()[:10]
    base = tempfile.gettempdir()
    if len(base) > 40:
        base = "/tmp"
    return Path(base) / f"lf-ray-{os.getuid()}-{digest}"


def temp_dir() -> Path:
    return ensure_private_dir(temp_dir_path())


def local_nodes() -> list[RuntimeRecord]:
    return [r for r in (store().load_or_none(HEAD), store().load_or_none(WORKER)) if r is not None]


def running_head() -> RuntimeRecord | None:
    record = store().load_or_none(HEAD)
    return record if record is not None and record.process_alive() else None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def auth_env(token_file: Path | str) -> dict[str, str]:
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}


def security_warning(host: str) -> str:
    """What lf says on every start of a node that is not on the loopback address."""
    return (
        f"Warning: Ray on {host} listens on every network interface of this machine (Ray cannot bind one), and "
        "Ray itself checks nobody: whoever reaches its ports can run any code on every node. lf turned on Ray's "
        f"token authentication (RAY_AUTH_MODE=token, key in {token_path()}, mode 0600), which does not encrypt: "
        "keep the nodes on a private network, or firewall their ports to each other."
    )


def _free_ports(count: int) -> list[int]:
    """Ports the kernel hands out (above Ray's worker port range, 10002-19999), all different: each socket stays
    open until every port is chosen (a port closed at once can be handed out again)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# -- start ------------------------------------------------------------------------------------------------
def start_head(
    *,
    host: str = LOOPBACK,
    port: int = DEFAULT_GCS_PORT,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    serve_host: str | None = None,
    serve_port: int | None = None,
    timeout: float | None = None,
    on_wait: Callable[[Loading], None] | None = None,
) -> StartResult:
    """Start the head node of a new cluster on this machine (or find it running) and wait until it is healthy."""
    if host in ("0.0.0.0", "::", ""):
        raise ClusterError(
            f"--host {host!r} is not an address other nodes can reach this one at",
            hint="give this machine's address on the network the nodes share (Ray listens on every interface anyway)",
            exit_status=ExitStatus.USAGE,
        )
    worker = store().load_or_none(WORKER)
    if worker is not None and worker.process_alive() and running_head() is None:
        raise ClusterError(
            f"this machine already runs a worker node of the cluster at {worker.instance.settings.get('address')} "
            f"(pid {worker.pid})",
            hint="stop it first: lf cluster stop",
        )
    python = cluster_env.require_python()
    loopback = is_loopback(host)
    node_ip = LOOPBACK if loopback else host
    chosen_serve_host = serve_host or str(CLUSTER_SETTINGS["serve_host"].default)
    chosen_serve_port = serve_port or DEFAULT_SERVE_PORT

    def plan() -> Instance:
        choose_port(node_ip, port, auto=False, store=store())
        choose_port(chosen_serve_host, chosen_serve_port, auto=False, store=store())
        token = _new_token()
        tmp = temp_dir()
        _forget_old_sessions(tmp)
        agent_port, client_port = _free_ports(2)
        argv = [
            cluster_env.ray_command(),
            "start",
            "--head",
            "--block",
            "--port",
            str(port),
            "--node-ip-address",
            node_ip,
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            "--temp-dir",
            str(tmp),
            "--dashboard-agent-listen-port",
            str(agent_port),
            "--ray-client-server-port",
            str(client_port),
        ]
        argv += _resources(num_cpus, num_gpus)
        environment = {**auth_env(token), **NODE_ENV}
        if loopback:
            environment[LOOPBACK_SWITCH] = "0"
        address = f"{node_ip}:{port}"
        return Instance(
            name=HEAD,
            runtime=RUNTIME,
            engine="ray",
            argv=tuple(argv),
            host=node_ip,
            port=agent_port,  # its agent's HTTP port: where lf probes its health (the GCS speaks gRPC)
            api_base="",
            model=f"Ray head of {address}",
            health_path=HEALTH_PATH,
            start_timeout=START_TIMEOUT,
            env=environment,
            settings={
                "address": address,
                "node_ip": node_ip,
                "loopback": loopback,
                "token_file": str(token),
                "temp_dir": str(tmp),
                "agent_port": agent_port,
                "num_cpus": num_cpus,
                "num_gpus": num_gpus,
                "serve_host": chosen_serve_host,
                "serve_port": chosen_serve_port,
                "python": python,
            },
            owner=OWNER,
            install_hint=f"install the cluster environment with: {cluster_env.INSTALL_COMMAND}",
        )

    return _start_node(HEAD, plan, timeout, on_wait)


def join(
    address: str,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    token_file: str | None = None,
    timeout: float | None = None,
    on_wait: Callable[[Loading], None] | None = None,
) -> StartResult:
    """Start a worker node on this machine that joins the cluster whose head is at `address` (HOST:PORT)."""
    host, port = parse_address(address)
    head = running_head()
    if is_loopback(host):
        raise ClusterError(
            f"the head at {address} is on the loopback address, and Ray keeps such a cluster to its one node",
            hint="start the head on this machine's network address instead: "
            "lf cluster stop; lf cluster start --host ADDRESS",
        )
    token = _token_for(address, token_file, head)
    cluster_env.require_python()

    def plan() -> Instance:
        tmp = temp_dir()
        (agent_port,) = _free_ports(1)
        argv = [
            cluster_env.ray_command(),
            "start",
            "--address",
            f"{host}:{port}",
            "--block",
            "--disable-usage-stats",
            "--temp-dir",
            str(tmp),
            "--dashboard-agent-listen-port",
            str(agent_port),
            *_resources(num_cpus, num_gpus),
        ]
        environment = dict(NODE_ENV)
        if token is not None:
            environment.update(auth_env(token))
        return Instance(
            name=WORKER,
            runtime=RUNTIME,
            engine="ray",
            argv=tuple(argv),
            host=LOOPBACK,  # its agent also answers on loopback: where lf probes its health
            port=agent_port,
            api_base="",
            model=f"Ray worker of {host}:{port}",
            health_path=HEALTH_PATH,
            start_timeout=START_TIMEOUT,
            env=environment,
            settings={
                "address": f"{host}:{port}",
                "token_file": str(token) if token else None,
                "temp_dir": str(tmp),
                "agent_port": agent_port,
                "num_cpus": num_cpus,
                "num_gpus": num_gpus,
            },
            owner=OWNER,
            install_hint=f"install the cluster environment with: {cluster_env.INSTALL_COMMAND}",
        )

    return _start_node(WORKER, plan, timeout, on_wait)


def _start_node(name: str, plan: Callable[[], Instance], timeout, on_wait) -> StartResult:
    """Launch the node as a daemon and wait until its own agent says its raylet is healthy."""
    return supervisor.start(name, store(), plan, timeout=timeout, on_wait=on_wait)


def _resources(num_cpus: int | None, num_gpus: int | None) -> list[str]:
    out: list[str] = []
    if num_cpus is not None:
        out += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        out += ["--num-gpus", str(num_gpus)]
    return out


def parse_address(address: str) -> tuple[str, int]:
    host, colon, port = address.strip().rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(
            f"{address!r} is not a Ray address",
            hint="give the head node's HOST:PORT, as `lf cluster start` printed it (e.g. 10.0.0.5:6379)",
            exit_status=ExitStatus.USAGE,
        )
    return host.strip("[]"), int(port)


def _new_token() -> Path:
    """A fresh random key for a new cluster, in a private file: the nodes and every driver present it."""
    path = token_path()
    cluster_dir()
    atomic_write(path, secrets.token_hex(32))
    return path


def _token_for(address: str, given: str | None, head: RuntimeRecord | None) -> Path | None:
    """The key a worker joining `address` presents: --token-file, else that of lf's own head on this machine,
    else Ray's own variables (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH) are passed on as they are."""
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise ClusterError(f"{path}: no such token file", hint="copy the head's token file to this machine")
        return path.resolve()
    if head is not None and _same_address(address, head.instance.settings.get("address", "")):
        return Path(head.instance.settings["token_file"])
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return None
    raise ClusterError(
        f"no key for the cluster at {address}: lf's clusters check a token",
        hint=f"copy the head machine's {token_path()} here (scp; keep it mode 0600), then: "
        f"lf cluster join {address} --token-file FILE",
    )


def _same_address(a: str, b: str) -> bool:
    try:
        (ha, pa), (hb, pb) = parse_address(a), parse_address(b)
    except LfError:
        return False
    return pa == pb and (ha == hb or (is_loopback(ha) and is_loopback(hb)))


def _forget_old_sessions(tmp: Path) -> None:
    """Ray keeps every session's logs under its temp dir; a new cluster starts with only its own."""
    import shutil

    for entry in tmp.glob("session_*"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_symlink():
            entry.unlink(missing_ok=True)


# -- stop ------------------------------------------------------------------------------------------------
def stop(timeout: float = STOP_TIMEOUT) -> list[StopResult]:
    """Stop the nodes lf runs on this machine (worker first), by pid and process group, and every engine a
    replica of them started; remove the cluster's token and Ray's temp dir once no node is left."""
    results = [supervisor.stop(name, store(), timeout=timeout) for name in (WORKER, HEAD)]
    stop_replica_engines()
    if not any(r.process_alive() for r in local_nodes()):
        import shutil

        token_path().unlink(missing_ok=True)
        # Ray's session files (its sockets, its own logs): lf's logs of the nodes stay in the state dir
        shutil.rmtree(temp_dir_path(), ignore_errors=True)
    return results


def stop_replica_engines(timeout: float = 10.0) -> list[StopResult]:
    """Engines started by replicas on this machine (records owned by the cluster, in any project): stopped, or
    their records cleaned up when their process is gone already (a replica killed with its node)."""
    results = []
    for each in store().every_project():
        for record in each.records():
            if record.instance.owner == OWNER and record.name not in (HEAD, WORKER):
                results.append(supervisor.stop(record.name, each, timeout=timeout))
    return results


# -- which cluster ---------------------------------------------------------------------------------------
def connect(address: str | None = None, project=None, *, serve_port: int | None = None) -> Cluster:
    """The cluster to talk to: --address, RAY_ADDRESS, runtime.cluster.address in llamafarm.yaml, then the head
    lf runs on this machine. Talking to lf's own head uses its key; to another cluster, Ray's own variables
    (RAY_AUTH_MODE, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH) are passed on as they are."""
    configured = dict(project.cluster) if project is not None else {}
    source = "--address"
    if not address:
        address, source = os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"
    if not address and configured.get("address"):
        address, source = str(configured["address"]), f"runtime.cluster.address in {project.path}"
    head = running_head()
    worker = store().load_or_none(WORKER)
    if not address and head is None and worker is not None and worker.process_alive():
        # a machine that only joined: its worker knows the cluster and the key it joined with
        address = str(worker.instance.settings["address"])
        key = auth_env(worker.instance.settings["token_file"]) if worker.instance.settings.get("token_file") else {}
        serve_host = _setting("serve_host", configured, None)
        port = serve_port or int(_setting("serve_port", configured, None))
        return Cluster(address, key, str(serve_host), port, None, "lf cluster join")
    if not address:
        if head is None:
            raise ClusterError(
                "no Ray cluster to talk to",
                hint="start one on this machine: lf cluster start; or name one with --address HOST:PORT, "
                "RAY_ADDRESS or runtime.cluster.address in llamafarm.yaml",
                exit_status=ExitStatus.NOT_RUNNING,
            )
        address, source = str(head.instance.settings["address"]), "lf cluster start"
    parse_address(address)
    own = head if head is not None and _same_address(address, str(head.instance.settings.get("address", ""))) else None
    environment: dict[str, str] = {}
    if own is not None:
        environment.update(auth_env(own.instance.settings["token_file"]))
        if own.instance.settings.get("loopback"):
            environment[LOOPBACK_SWITCH] = "0"
        address = str(own.instance.settings["address"])
    serve_host = _setting("serve_host", configured, own)
    port = serve_port or int(_setting("serve_port", configured, own))
    return Cluster(address, environment, str(serve_host), port, own, source)


def _setting(name: str, configured: dict, head: RuntimeRecord | None):
    """A Serve setting: its env var, then lf's own head (which chose it at start), llamafarm.yaml, the default."""
    setting = CLUSTER_SETTINGS[name]
    if setting.env and os.environ.get(setting.env):
        try:
            return setting.parse(os.environ[setting.env])
        except ValueError:
            raise LfError(
                f"{setting.env}={os.environ[setting.env]!r} is not a valid {name}", hint=setting.description
            ) from None
    if head is not None and head.instance.settings.get(name) is not None:
        return head.instance.settings[name]
    if configured.get(name) is not None:
        return configured[name]
    return setting.default
