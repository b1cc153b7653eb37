"""What llamafarm.yaml says about running a project on a Ray cluster, declared once: `runtime.cluster` (which
cluster, where Ray Serve answers) and the fields of a model entry that say how many copies of it run
(`replicas`, or `min_replicas`/`max_replicas` to let Ray Serve scale it) and where (`spread`).

LlamaFarm's own schema leaves `runtime` and its model entries open, so these keys keep a file valid for it.
"""

from __future__ import annotations

from lf.runtimes.settings import Setting

DEFAULT_SERVE_PORT = 11560  # Ray Serve's own default (8000) is also llama-cpp-python's and Lemonade's
DEFAULT_GCS_PORT = 6379  # Ray's own default for the head node

CLUSTER_SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "address",
            "string",
            "HOST:PORT of the Ray head node to deploy to (default: the head `lf cluster start` runs on this machine)",
            min_length=1,
            env="RAY_ADDRESS",
        ),
        Setting(
            "serve_host",
            "string",
            "address Ray Serve's HTTP proxy listens on, on the head node (it has no authentication: keep loopback)",
            default="127.0.0.1",
            min_length=1,
            env="LF_CLUSTER_SERVE_HOST",
        ),
        Setting(
            "serve_port",
            "integer",
            "port of Ray Serve's HTTP proxy on the head node",
            default=DEFAULT_SERVE_PORT,
            minimum=1,
            maximum=65535,
            env="LF_CLUSTER_SERVE_PORT",
        ),
    )
}

# A model entry's fields for the cluster (and for anything else that runs several copies of one model).
REPLICA_FIELDS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("replicas", "integer", "copies of the model that serve it (a fixed number)", minimum=1),
        Setting(
            "min_replicas",
            "integer",
            "fewest copies when Ray Serve scales the model (with max_replicas; default 1, 0: none while idle)",
            minimum=0,
        ),
        Setting(
            "max_replicas",
            "integer",
            "most copies when Ray Serve scales the model: setting it turns scaling on",
            minimum=1,
        ),
        Setting(
            "target_ongoing_requests",
            "number",
            "requests in flight per copy that scaling aims for (Ray Serve's default: 2)",
            minimum=0.001,
        ),
        Setting(
            "scale_up_delay",
            "number",
            "seconds the load must stay above the target before a copy is added (Ray Serve's default: 30)",
            minimum=0,
        ),
        Setting(
            "scale_down_delay",
            "number",
            "seconds the load must stay below the target before a copy is removed (Ray Serve's default: 600)",
            minimum=0,
        ),
        Setting(
            "spread",
            "boolean",
            "at most one copy per node, so losing a node loses one copy (a copy with no free node waits for one)",
            default=False,
        ),
    )
}
SCALING_KEYS = tuple(REPLICA_FIELDS)
