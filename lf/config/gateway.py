"""The settings of `lf serve`, declared once: llamafarm.yaml's `runtime.gateway`, their LF_GATEWAY_* env vars
and the command's flags all follow this table (precedence: flag > env > llamafarm.yaml > default).

LlamaFarm's own schema leaves `runtime` open, so a file with a `gateway:` section stays valid for LlamaFarm.
"""

from __future__ import annotations

from dataclasses import dataclass

from lf.daemon.records import GATEWAY_RUNTIME as RECORD_RUNTIME
from lf.errors import LfError
from lf.net import is_loopback
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
            "an extra cap on instances the gateway started that stay loaded at once, besides the memory budget "
            "(ones from `lf runtime start` are not counted); the least recently used idle one makes room (0: none)",
            default=0,
            minimum=0,
            maximum=1024,
            env="LF_GATEWAY_MAX_LOADED",
            flag="--max-loaded",
        ),
        Setting(
            "memory_budget",
            "size",
            "memory the models it loads may take together, e.g. 6GiB (default: the machine's memory minus 10%, at "
            "least 1 GiB, left to the rest; and each GPU's memory when one is found); a start that does not fit "
            "stops least recently used idle models, one that cannot fit even alone is refused at once",
            env="LF_GATEWAY_MEMORY_BUDGET",
            flag="--memory-budget",
        ),
        Setting(
            "max_tokens_default",
            "integer",
            "max_tokens of a request that sets none (a model entry's own max_tokens_default wins; never more than its "
            "context), so an answer that loops ends",
            default=2048,
            minimum=1,
            env="LF_GATEWAY_MAX_TOKENS_DEFAULT",
            flag="--max-tokens-default",
        ),
        Setting(
            "max_tokens_limit",
            "integer",
            "the most max_tokens a request may ask for; more is lowered to it (a model entry's own wins; default: none)",
            minimum=1,
            env="LF_GATEWAY_MAX_TOKENS_LIMIT",
            flag="--max-tokens-limit",
        ),
        Setting(
            "request_timeout",
            "number",
            "seconds an answer may take from its first byte upstream; a longer stream is ended by lf with "
            "finish_reason length (0: no limit)",
            default=600,
            minimum=0,
            env="LF_GATEWAY_REQUEST_TIMEOUT",
            flag="--request-timeout",
        ),
        Setting(
            "reload",
            "boolean",
            "reload llamafarm.yaml when it changes (and on SIGHUP): new models appear, removed ones drain then stop, "
            "changed ones restart once idle; an invalid edit is logged and the running config kept",
            default=True,
            env="LF_GATEWAY_RELOAD",
            flag="--reload",
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
        Setting(
            "read_timeout",
            "number",
            "seconds a client has to send a request's headers (from when it connects, or gets its last answer), and "
            "the longest pause allowed inside a body (which must also come at 500 bytes a second or more after that "
            "long) and in reading an answer; a slower connection is closed",
            default=10,
            minimum=0.5,
            maximum=3600,
            env="LF_GATEWAY_READ_TIMEOUT",
            flag="--read-timeout",
        ),
        Setting(
            "max_connections",
            "integer",
            "client connections held at once (fewer when the open-file limit is lower); past it, the one idle the "
            "longest is closed for the newcomer",
            default=1000,
            minimum=16,
            maximum=100000,
            env="LF_GATEWAY_MAX_CONNECTIONS",
            flag="--max-connections",
        ),
        Setting(
            "shutdown_grace",
            "number",
            "seconds the answers in flight may take to finish once the gateway is asked to stop (SIGTERM); then each "
            "remaining stream ends with an error event (keep it under what stops it: `lf runtime stop` waits 10 s)",
            default=5,
            minimum=0,
            maximum=3600,
            env="LF_GATEWAY_SHUTDOWN_GRACE",
            flag="--shutdown-grace",
        ),
        Setting(
            "allowed_hosts",
            "array",
            "host names clients may use besides localhost, this machine's name and IP addresses (e.g. the name a "
            "reverse proxy passes on); any other Host is refused, against DNS rebinding",
            env="LF_GATEWAY_ALLOWED_HOSTS",
            flag="--allowed-host",
        ),
        Setting(
            "allowed_origins",
            "array",
            "origins of web apps whose pages may call /v1/* from the browser (CORS), e.g. http://localhost:3000; a "
            "trailing * matches the rest (chrome-extension://*), * alone any page; the dashboard stays same-origin",
            env="LF_GATEWAY_ALLOWED_ORIGINS",
            flag="--allowed-origin",
        ),
    )
}

MIN_KEY = 12  # characters: a shorter key is guessed by anyone who can reach the port


def _default(name: str):
    return GATEWAY_SETTINGS[name].default


@dataclass(frozen=True)
class Peer:
    """Another OpenAI-compatible server the gateway routes to (another lf serve, llama-swap, Ollama, vLLM, …)."""

    name: str
    url: str  # its OpenAI base, /v1 added when the URL has no path
    api_key: str | None = None  # resolved (an env reference read): never printed

    @property
    def shown_url(self) -> str:
        from lf.secrets import redact_url

        return redact_url(self.url) or self.url


@dataclass(frozen=True)
class GatewayConfig:
    """The gateway's settings, resolved once at start (resolve_config); the defaults are the table's."""

    host: str = _default("host")
    port: int = _default("port")
    api_key: str | None = None
    insecure: bool = _default("insecure")
    idle_ttl: float = _default("idle_ttl")
    max_loaded: int = _default("max_loaded")
    memory_budget: int | str | None = None
    max_tokens_default: int = _default("max_tokens_default")
    max_tokens_limit: int | None = None
    request_timeout: float = _default("request_timeout")
    reload: bool = _default("reload")
    peers: tuple[Peer, ...] = ()
    max_queue: int = _default("max_queue")
    queue_timeout: float = _default("queue_timeout")
    start_timeout: float | None = None
    probe_interval: float = _default("probe_interval")
    max_body: int = _default("max_body")
    pull: bool = _default("pull")
    read_timeout: float = _default("read_timeout")
    max_connections: int = _default("max_connections")
    shutdown_grace: float = _default("shutdown_grace")
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def record_name(self) -> str:
        return record_name(self.port)

    def ttl_of(self, entry) -> float | None:
        """Seconds an idle instance of `entry` stays loaded; None: until the gateway stops."""
        if entry.keep_loaded:
            return None
        ttl = entry.idle_ttl if entry.idle_ttl is not None else self.idle_ttl
        return float(ttl) if ttl else None


def record_name(port: int) -> str:
    """The name of the record of the gateway that listens on `port`."""
    return RECORD_RUNTIME if port == DEFAULT_PORT else f"{RECORD_RUNTIME}-{port}"


def resolve_config(project, flags: dict) -> GatewayConfig:
    """The settings from the command line's flags, the environment and the project's runtime.gateway."""
    from lf.config.envref import expand_env_ref
    from lf.runtimes.settings import resolve

    file_values = dict(project.gateway) if project else {}
    values, _sources = resolve(GATEWAY_SETTINGS, {k: v for k, v in flags.items() if v is not None}, file_values)
    values["api_key"] = expand_env_ref(values.get("api_key")) or None
    values["allowed_hosts"] = tuple(values.get("allowed_hosts") or ())
    values["allowed_origins"] = tuple(o.rstrip("/") for o in values.get("allowed_origins") or ())
    config = GatewayConfig(**values, peers=peers_of(file_values.get("peers") or []))
    check_key(config.api_key)
    if not config.loopback and not config.api_key and not config.insecure:
        raise LfError(
            f"the gateway would listen on {config.host} (reachable from other machines) with no API key",
            hint="set one (LF_GATEWAY_API_KEY, or runtime.gateway.api_key: ${env:NAME} in llamafarm.yaml), "
            "or pass --insecure to allow it without",
        )
    return config


def peers_of(items: list) -> tuple[Peer, ...]:
    """runtime.gateway.peers as validated (names unique, URLs http(s)), each URL an OpenAI base."""
    from urllib.parse import urlsplit

    from lf.config.envref import expand_env_ref

    peers = []
    for item in items:
        url = str(item["url"]).rstrip("/")
        if urlsplit(url).path in ("", "/"):
            url += "/v1"
        peers.append(Peer(str(item["name"]), url, expand_env_ref(item.get("api_key")) or None))
    names = [p.name for p in peers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise LfError(
            f"runtime.gateway.peers: the name {twice[0]!r} is given twice", hint="each peer needs its own name"
        )
    return tuple(peers)


def check_key(key: str | None) -> None:
    """A key no client could send (blank, spaces at its ends, control characters) would lock everyone out, and a
    short one is no lock: both are refused before the gateway listens."""
    if key is None:
        return
    how = "set LF_GATEWAY_API_KEY (or runtime.gateway.api_key) to a random value, e.g. from: openssl rand -hex 24"
    if key != key.strip() or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise LfError("the gateway's API key holds spaces or control characters: no client could send it", hint=how)
    if len(key) < MIN_KEY:
        raise LfError(f"the gateway's API key is {len(key)} characters long: at least {MIN_KEY} are needed", hint=how)


def gateway_key(project) -> str | None:
    """The gateway's API key as this process resolves it (LF_GATEWAY_API_KEY, then llamafarm.yaml), None when it
    has none: what `lf chat` sends a gateway of the project."""
    from lf.config.envref import expand_env_ref
    from lf.runtimes.settings import resolve

    file_values = {"api_key": project.gateway["api_key"]} if project and "api_key" in project.gateway else {}
    values, _sources = resolve({"api_key": GATEWAY_SETTINGS["api_key"]}, {}, file_values)
    return expand_env_ref(values.get("api_key")) or None


def serve_flags(values: dict) -> list[str]:
    """The `lf serve` command-line flags that give these settings (the key never: it is not for a command line)."""
    out: list[str] = []
    for name, value in values.items():
        setting = GATEWAY_SETTINGS.get(name)
        if setting is None or setting.flag is None or value is None or name == "api_key":
            continue
        if setting.type == "boolean":
            out.append(setting.flag if value else setting.flag.replace("--", "--no-", 1))
        elif setting.type == "array":
            for item in value:
                out += [setting.flag, str(item)]
        else:
            out += [setting.flag, str(value)]
    return out
