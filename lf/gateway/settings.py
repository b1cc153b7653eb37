"""The gateway's settings, resolved once at start: flag > LF_GATEWAY_* env > llamafarm.yaml > default."""

from __future__ import annotations

from dataclasses import dataclass

from lf.config.gateway import DEFAULT_PORT, GATEWAY_SETTINGS
from lf.config.project import Project, expand_env_ref
from lf.errors import LfError
from lf.runtimes.settings import resolve

LOOPBACK = ("127.0.0.1", "::1", "localhost")
RECORD_RUNTIME = "lf-serve"  # the gateway's record says runtime "lf-serve": `lf runtime stop lf-serve` stops it


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    insecure: bool = False
    idle_ttl: float = 300.0
    max_loaded: int = 3
    max_queue: int = 64
    queue_timeout: float = 120.0
    start_timeout: float | None = None
    probe_interval: float = 5.0
    max_body: int = 10 * 1024 * 1024
    pull: bool = False

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK or self.host.startswith("127.")

    @property
    def record_name(self) -> str:
        return RECORD_RUNTIME if self.port == DEFAULT_PORT else f"{RECORD_RUNTIME}-{self.port}"

    def ttl_of(self, entry) -> float | None:
        """Seconds an idle instance of `entry` stays loaded; None: until the gateway stops."""
        if entry.keep_loaded:
            return None
        ttl = entry.idle_ttl if entry.idle_ttl is not None else self.idle_ttl
        return float(ttl) if ttl else None


def resolve_config(project: Project | None, flags: dict) -> GatewayConfig:
    """The settings from the command line's flags, the environment and the project's runtime.gateway."""
    file_values = dict(project.gateway) if project else {}
    values, _sources = resolve(GATEWAY_SETTINGS, {k: v for k, v in flags.items() if v is not None}, file_values)
    values["api_key"] = expand_env_ref(values.get("api_key")) or None
    config = GatewayConfig(**values)
    if not config.loopback and not config.api_key and not config.insecure:
        raise LfError(
            f"the gateway would listen on {config.host} (reachable from other machines) with no API key",
            hint="set one (LF_GATEWAY_API_KEY, or runtime.gateway.api_key: ${env:NAME} in llamafarm.yaml), or pass --insecure to allow it without",
        )
    return config
