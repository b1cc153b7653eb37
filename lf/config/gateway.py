"""The settings of `lf serve`, declared once: llamafarm.yaml's `runtime.gateway`, their LF_GATEWAY_* env vars
and the command's flags all follow this table (precedence: flag > env > llamafarm.yaml > default).

LlamaFarm's own schema leaves `runtime` open, so a file with a `gateway:` section stays valid for LlamaFarm.
"""

from __future__ import annotations

from lf.runtimes.settings import Setting

DEFAULT_PORT = 11500

GATEWAY_SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "host",
            "string",
            "address to listen on; anything but loopback needs api_key (or --insecure)",
            default="127.0.0.1",
            min_length=1,
            env="LF_GATEWAY_HOST",
            flag="--host",
        ),
        Setting(
            "port",
            "integer",
            "port to listen on",
            default=DEFAULT_PORT,
            minimum=1,
            maximum=65535,
            env="LF_GATEWAY_PORT",
            flag="--port",
        ),
        Setting(
            "api_key",
            "string",
            "clients must send it as `Authorization: Bearer …` (an env reference such as ${env:LF_KEY} works); never printed",
            min_length=1,
            env="LF_GATEWAY_API_KEY",
        ),
        Setting(
            "insecure",
            "boolean",
            "allow a non-loopback address without api_key",
            default=False,
            env="LF_GATEWAY_INSECURE",
            flag="--insecure",
        ),
        Setting(
            "idle_ttl",
            "number",
            "seconds an instance the gateway started stays loaded after its last response (0: forever; a model's own idle_ttl or keep_loaded wins)",
            default=300,
            minimum=0,
            env="LF_GATEWAY_IDLE_TTL",
            flag="--idle-ttl",
        ),
        Setting(
            "max_loaded",
            "integer",
            "instances the gateway started that stay loaded at once (ones from `lf runtime start` are not counted); the least recently used idle one is stopped to make room (0: no limit)",
            default=3,
            minimum=0,
            maximum=1024,
            env="LF_GATEWAY_MAX_LOADED",
            flag="--max-loaded",
        ),
        Setting(
            "max_queue",
            "integer",
            "requests that may wait for room at once; more get 503 with Retry-After",
            default=64,
            minimum=0,
            maximum=100000,
            env="LF_GATEWAY_MAX_QUEUE",
            flag="--max-queue",
        ),
        Setting(
            "queue_timeout",
            "number",
            "seconds a request may wait for room before a 503",
            default=120,
            minimum=0.1,
            env="LF_GATEWAY_QUEUE_TIMEOUT",
            flag="--queue-timeout",
        ),
        Setting(
            "start_timeout",
            "number",
            "seconds a start on demand may take (default: the runtime's)",
            minimum=0.1,
            env="LF_GATEWAY_START_TIMEOUT",
            flag="--start-timeout",
        ),
        Setting(
            "probe_interval",
            "number",
            "seconds between health probes of every model (/health answers from the last ones)",
            default=5,
            minimum=0.1,
            maximum=3600,
            env="LF_GATEWAY_PROBE_INTERVAL",
            flag="--probe-interval",
        ),
        Setting(
            "pull",
            "boolean",
            "pull a model entry's Hugging Face reference (org/repo:QUANT) that is not in the cache on its first request, which then waits for the download (off: that request gets 503 with the `lf models pull` command)",
            default=False,
            env="LF_GATEWAY_PULL",
            flag="--pull",
        ),
        Setting(
            "max_body",
            "integer",
            "largest request body accepted, in bytes",
            default=10 * 1024 * 1024,
            minimum=1024,
            env="LF_GATEWAY_MAX_BODY",
            flag="--max-body",
        ),
    )
}
