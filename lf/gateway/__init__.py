"""`lf serve`: one OpenAI endpoint for every model of a project. Instances start on demand through
lf.core.actions, stop when idle, are evicted least-recently-used past a loaded-model budget; health with
latency history at /health, Prometheus at /metrics. Nothing here is imported unless `lf serve` runs."""
