"""How a model entry runs on a Ray cluster, decided before anything runs: its Ray Serve application (name, route),
the options of its deployment (Ray Serve's own num_replicas, autoscaling_config, max_replicas_per_node) and, for
vLLM across GPUs, the engine flags and the Ray Serve LLM config. Pure functions of the entry: tested without Ray.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from lf.config.project import ModelEntry, Project
from lf.errors import ConfigError

# Requests one replica takes at once. The engine queues what its slots cannot serve yet (llama.cpp's `parallel`),
# and Ray Serve's autoscaler counts them as ongoing; a low limit would queue them in the proxy instead.
MAX_ONGOING_REQUESTS = 64
HEALTH_CHECK_PERIOD_S = 5.0  # check_health probes the engine this often
HEALTH_CHECK_TIMEOUT_S = 10.0
GRACEFUL_SHUTDOWN_TIMEOUT_S = 20.0  # a replica being removed finishes its requests, then stops its engine
DEPLOYMENT_NAME = "engine"  # each entry's application holds one deployment


@dataclass(frozen=True)
class EntryApp:
    """One model entry as a Ray Serve application: one deployment whose replicas each run the entry's engine."""

    entry: str
    app_name: str  # Ray Serve's application name: the project's key and the entry's name
    route_prefix: str  # where Ray Serve's HTTP proxy answers for it
    options: Mapping = field(default_factory=dict)  # keyword arguments of Ray Serve's Deployment.options()
    runtime: str = ""

    def base_url(self, serve_url: str) -> str:
        """The OpenAI base URL of the entry behind Ray Serve's proxy at `serve_url` (http://host:port)."""
        return serve_url.rstrip("/") + self.route_prefix + "/v1"


def app_prefix(project: Project) -> str:
    """What every application of the project is named with: its key (namespace/name) and a slash."""
    return project.key + "/"


def app_name(project: Project, entry: ModelEntry) -> str:
    return app_prefix(project) + entry.name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "-"


def route_prefix(project: Project, entry: ModelEntry) -> str:
    """/NAMESPACE/NAME/ENTRY: two projects with an entry of the same name never share a route."""
    namespace, _, name = project.key.partition("/")
    return f"/{_slug(namespace)}/{_slug(name)}/{entry.name}"


def serve_options(
    entry: ModelEntry, *, max_ongoing_requests: int = MAX_ONGOING_REQUESTS, replica_cpus: float = 1.0
) -> dict:
    """The entry's scaling fields as Ray Serve's deployment options (lf.config.cluster.REPLICA_FIELDS):

    - `replicas: N` → `num_replicas: N`
    - `max_replicas` (with `min_replicas`, `target_ongoing_requests`, `scale_up_delay`, `scale_down_delay`) →
      `autoscaling_config` (min_replicas, max_replicas, target_ongoing_requests, upscale_delay_s, downscale_delay_s)
    - `spread: true` → `max_replicas_per_node: 1` (Ray Serve's scheduler spreads replicas over nodes anyway, as best
      it can; this makes it a rule)

    Each replica reserves `replica_cpus` of Ray's logical CPUs on its node: its engine's share of the node."""
    scaling = entry.scaling
    options: dict = {
        "max_ongoing_requests": max_ongoing_requests,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_TIMEOUT_S,
        "ray_actor_options": {"num_cpus": replica_cpus},
    }
    if scaling.get("max_replicas") is not None:
        autoscaling = {
            "min_replicas": scaling.get("min_replicas", 1),
            "max_replicas": scaling["max_replicas"],
        }
        for ours, theirs in (
            ("target_ongoing_requests", "target_ongoing_requests"),
            ("scale_up_delay", "upscale_delay_s"),
            ("scale_down_delay", "downscale_delay_s"),
        ):
            if scaling.get(ours) is not None:
                autoscaling[theirs] = scaling[ours]
        if autoscaling["min_replicas"] > autoscaling["max_replicas"]:
            raise ConfigError(
                f"{entry.name}: min_replicas ({autoscaling['min_replicas']}) is above "
                f"max_replicas ({autoscaling['max_replicas']})",
                hint="lower min_replicas or raise max_replicas in llamafarm.yaml",
            )
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = scaling.get("replicas", 1)
    if scaling.get("spread"):
        options["max_replicas_per_node"] = 1
    return options


def entry_app(project: Project, entry: ModelEntry, **option_args) -> EntryApp:
    return EntryApp(
        entry=entry.name,
        app_name=app_name(project, entry),
        route_prefix=route_prefix(project, entry),
        options=serve_options(entry, **option_args),
        runtime=entry.provider,
    )


# -- vLLM across GPUs and nodes --------------------------------------------------------------------------
CPU_REFUSES_RAY = (
    "vLLM's CPU build refuses Ray's executor (\"current platform cpu does not support ray\"): tensor and pipeline "
    "parallel across nodes need GPUs; on CPU, vLLM's own mp executor runs on one node"
)


@dataclass(frozen=True)
class ParallelPlan:
    """How one vLLM entry spans several GPUs (tensor parallel) and nodes (pipeline parallel) of the cluster."""

    tensor_parallel_size: int
    pipeline_parallel_size: int
    settings: Mapping  # vLLM settings the replica starts the engine with (lf's own launch plan renders them)
    bundles: tuple  # one Ray resource bundle per GPU worker
    strategy: str  # how Ray places those bundles: PACK (one node) or SPREAD (stages over nodes)

    @property
    def gpus(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


def parallel_plan(entry: ModelEntry, settings: Mapping, address: str) -> ParallelPlan | None:
    """For a vLLM entry whose settings ask for more than one GPU worker: the settings that make vLLM run its
    workers on the Ray cluster at `address` (`--distributed-executor-backend ray`, RAY_ADDRESS), and the bundles
    its workers take. None when the entry runs in one process (then nothing changes)."""
    if entry.provider != "vllm":
        return None
    tp = int(settings.get("tensor_parallel_size") or 1)
    pp = int(settings.get("pipeline_parallel_size") or 1)
    backend = settings.get("distributed_executor_backend")
    if tp * pp == 1 and backend != "ray":
        return None
    if backend not in (None, "ray"):
        raise ConfigError(
            f"{entry.name}: distributed_executor_backend is {backend!r}, "
            f"but on a Ray cluster its {tp * pp} GPU workers run through Ray",
            hint="set distributed_executor_backend: ray (or leave it unset) in the entry's provider_config",
        )
    return ParallelPlan(
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        settings={
            "tensor_parallel_size": tp,
            "pipeline_parallel_size": pp,
            "distributed_executor_backend": "ray",
            "ray_address": address,
        },
        bundles=tuple({"GPU": 1, "CPU": 1} for _ in range(tp * pp)),
        # a pipeline stage per node; one stage's tensor-parallel workers are best on one node
        strategy="PACK" if pp == 1 else "SPREAD",
    )


def require_gpus(plan: ParallelPlan, cluster_gpus: float) -> None:
    """A plan needs GPUs the cluster has: on CPU, say what vLLM itself would say, before any replica tries."""
    if cluster_gpus <= 0:
        raise ConfigError(
            f"{CPU_REFUSES_RAY}; this cluster has no GPU",
            hint="remove tensor_parallel_size/pipeline_parallel_size/distributed_executor_backend from the entry, "
            "and scale it with replicas instead",
        )
    if cluster_gpus < plan.gpus:
        raise ConfigError(
            f"the entry needs {plan.gpus} GPUs (tensor_parallel_size {plan.tensor_parallel_size} × "
            f"pipeline_parallel_size {plan.pipeline_parallel_size}), and the cluster has {cluster_gpus:g}",
            hint="join nodes with GPUs (lf cluster join), or lower the parallel sizes",
        )


def serve_llm_config(entry: ModelEntry, model_source: str, settings: Mapping, plan: ParallelPlan | None) -> dict:
    """The same entry as Ray Serve LLM's own LLMConfig (ray.serve.llm, with `ray[llm]` and vLLM on GPU nodes):
    for a cluster that serves it with Ray's LLM stack rather than lf's replicas."""
    engine_kwargs: dict = {}
    for ours, theirs in (
        ("context_size", "max_model_len"),
        ("dtype", "dtype"),
        ("gpu_memory_utilization", "gpu_memory_utilization"),
        ("enforce_eager", "enforce_eager"),
    ):
        if settings.get(ours) is not None:
            engine_kwargs[theirs] = settings[ours]
    config: dict = {
        "model_loading_config": {"model_id": entry.name, "model_source": model_source},
        "engine_kwargs": engine_kwargs,
    }
    if plan is not None:
        engine_kwargs.update(
            tensor_parallel_size=plan.tensor_parallel_size,
            pipeline_parallel_size=plan.pipeline_parallel_size,
            distributed_executor_backend="ray",
        )
        config["placement_group_config"] = {"bundle_per_worker": {"GPU": 1, "CPU": 1}, "strategy": plan.strategy}
    options = serve_options(entry)
    kept = ("num_replicas", "autoscaling_config", "max_replicas_per_node")
    config["deployment_config"] = {k: options[k] for k in kept if k in options}
    return config
