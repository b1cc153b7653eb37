"""Prometheus metrics of the gateway (prometheus-client), in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from lf.daemon.health import Health
from lf.gateway.events import Event, QueueChanged, RequestFinished, Routed, Started, StartFailed, Stopped
from lf.gateway.pool import Pool

disable_created_metrics()  # the *_created series only repeat the start time of each label set

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lf_gateway_requests",
            "Requests answered, by model, endpoint and HTTP status",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "lf_gateway_request_duration_seconds",
            "From the request's arrival to the last byte of its answer",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "lf_gateway_time_to_first_token_seconds",
            "From the request's arrival to the first token of a streamed answer",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "lf_gateway_tokens_generated",
            "Tokens generated (streamed events, or usage.completion_tokens)",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge("lf_gateway_requests_in_flight", "Requests being answered", ["model"], registry=r)
        self.cluster_replicas = Gauge(
            "lf_gateway_cluster_replicas",
            "Ray Serve replicas of a model deployed by lf serve --cluster, by node and state (as last asked)",
            ["model", "node", "state"],
            registry=r,
        )
        self.queue = Gauge("lf_gateway_queue_length", "Requests waiting for a loaded model to become idle", registry=r)
        self.loaded = Gauge(
            "lf_gateway_instances_loaded",
            "Instances the gateway started that are loaded (starting, running or stopping)",
            registry=r,
        )
        self.starts = Counter("lf_gateway_instance_starts", "Instances started on demand", ["model"], registry=r)
        self.start_failures = Counter(
            "lf_gateway_instance_start_failures", "Starts on demand that failed", ["model"], registry=r
        )
        self.stops = Counter(
            "lf_gateway_instance_stops",
            "Instances stopped by the gateway, by reason (idle, evicted, shutdown)",
            ["model", "reason"],
            registry=r,
        )
        self.evictions = Counter(
            "lf_gateway_evictions", "Idle instances stopped to make room under max_loaded", ["model"], registry=r
        )
        self.start_seconds = Histogram(
            "lf_gateway_instance_start_seconds",
            "From the start on demand to healthy",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.probe_latency = Histogram(
            "lf_gateway_probe_latency_seconds",
            "Health probe latency, by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_requests = Counter(
            "lf_gateway_upstream_requests",
            "Requests answered, by model, the place that answered (an instance, or a peer) and HTTP status",
            ["model", "upstream", "status"],
            registry=r,
        )
        self.peer_up = Gauge(
            "lf_gateway_peer_up", "1 while a peer answers its probes, 0 while it does not", ["peer"], registry=r
        )
        self.routed = Counter(
            "lf_gateway_routed",
            "Requests a router sent on, by router, route (or default) and target model",
            ["router", "route", "target"],
            registry=r,
        )
        self.route_embedding = Histogram(
            "lf_gateway_route_embedding_seconds",
            "The time a router took to embed a message",
            ["router"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cut = Counter(
            "lf_gateway_answers_cut",
            "Answers lf ended: at the gateway's request_timeout (deadline), or at the max_tokens it set (max_tokens_default)",
            ["model", "reason"],
            registry=r,
        )
        self.budget = Gauge(
            "lf_gateway_memory_budget_bytes", "The memory the gateway's models may take together", registry=r
        )
        self.used = Gauge(
            "lf_gateway_memory_used_bytes", "Memory the loaded models hold (estimated, then measured)", registry=r
        )
        self.probe_failures = Counter(
            "lf_gateway_probe_failures", "Health probes that failed or timed out", ["model"], registry=r
        )

    # -- what the gateway's events move ----------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        if isinstance(event, RequestFinished):
            if not event.endpoint:
                return  # not an OpenAI route
            self.requests.labels(event.model, event.endpoint, str(event.status)).inc()
            if event.upstream:
                self.upstream_requests.labels(event.model, event.upstream, str(event.status)).inc()
            self.duration.labels(event.model).observe(event.seconds)
            if event.tokens:
                self.tokens.labels(event.model).inc(event.tokens)
            if event.ttft is not None:
                self.ttft.labels(event.model).observe(event.ttft)
            if event.cut:
                self.cut.labels(event.model, event.cut).inc()
        elif isinstance(event, Started):
            self.starts.labels(event.model).inc()
            self.start_seconds.labels(event.model).observe(event.seconds)
        elif isinstance(event, StartFailed):
            self.start_failures.labels(event.model).inc()
        elif isinstance(event, Stopped):
            self.stops.labels(event.model, event.reason).inc()
            if event.evicted:
                self.evictions.labels(event.model).inc()
        elif isinstance(event, QueueChanged):
            self.queue.set(event.waiting)
        elif isinstance(event, Routed):
            self.routed.labels(event.router, event.route, event.target).inc()
            self.route_embedding.labels(event.router).observe(event.seconds)

    def peer_probed(self, peer: str, up: bool | None) -> None:
        self.peer_up.labels(peer).set(1 if up else 0)

    def probed(self, model: str, health: Health) -> None:
        if health.latency_ms is not None and health.reachable:
            self.probe_latency.labels(model).observe(health.latency_ms / 1000)
        if not health.healthy:
            self.probe_failures.labels(model).inc()

    def render(self, pool: Pool, cluster: dict | None = None) -> tuple[bytes, str]:
        """The exposition, with the gauges read from the pool as it is now (and the cluster as last asked)."""
        self.loaded.set(pool.loaded_count())
        self.queue.set(pool.waiting)
        self.budget.set(pool.budget.ram)
        self.used.set(pool.used().ram)
        for slot in pool.slots.values():
            self.in_flight.labels(slot.name).set(slot.in_flight)
        if cluster is not None:
            self.cluster_replicas.clear()
            for entry in cluster.get("entries", []):
                counts: dict[tuple[str, str], int] = {}
                for r in entry["replicas"]:
                    key = (str(r["node_id"]), r["state"])
                    counts[key] = counts.get(key, 0) + 1
                for (node, state), n in counts.items():
                    self.cluster_replicas.labels(entry["entry"], node, state).set(n)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
