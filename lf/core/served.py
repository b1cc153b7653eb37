"""One front door: while an `lf serve` serves the project, `lf chat` and `lf runtime start` go through it, so the
answer counts in its metrics, the instance counts in its memory and its idle timer, and no second daemon appears
beside the one it would start. `--direct` goes around it, as before there was a gateway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from lf.daemon.records import GATEWAY_RUNTIME, RuntimeRecord, StateStore
from lf.errors import ExitStatus, LfError
from lf.net import local_url

ACTION_PATH = "/ui/action"  # the dashboard's actions: the same checks and the same pool for every caller
ACTION_HEADER = "x-lf-action"


@dataclass(frozen=True)
class ServingGateway:
    """A running `lf serve` of the project, found by its record."""

    record: RuntimeRecord
    api_key: str | None  # what this process would send it (LF_GATEWAY_API_KEY or llamafarm.yaml's)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def serves(self) -> tuple[str, ...]:
        """The model entries it routes (as its record says)."""
        return tuple(self.record.instance.settings.get("serves") or ())

    @property
    def base_url(self) -> str:
        return self.record.base_url

    @property
    def origin(self) -> str:
        return local_url(self.record.instance.host, self.record.port)

    def describe(self) -> str:
        return f"lf serve ({self.name}, pid {self.record.pid}) at {self.origin}"


def gateway_records(store: StateStore) -> list[RuntimeRecord]:
    """The records of this project's gateways whose process is alive."""
    return [r for r in store.records() if r.runtime == GATEWAY_RUNTIME and r.process_alive()]


def serving_gateway(project, store: StateStore, entry: str | None = None) -> ServingGateway | None:
    """The project's running gateway (that serves `entry`, when one is named), or None."""
    records = gateway_records(store)
    if not records:
        return None  # the common case: the gateway's settings table is not even loaded
    from lf.config.gateway import gateway_key

    for record in records:
        found = ServingGateway(record, gateway_key(project))
        if entry is None or entry in found.serves:
            return found
    return None


def act(
    gateway: ServingGateway,
    action: str,
    name: str,
    timeout: float,
    on_wait: Callable[[float], None] | None = None,
) -> dict:
    """Ask the gateway to start, stop, restart or unload one of its models, and wait for its answer (the start
    happens in the gateway, which then owns the instance). LfError with the gateway's own words if it refuses."""
    import threading

    import httpx

    headers = {ACTION_HEADER: "1", "content-type": "application/json"}
    if gateway.api_key:
        headers["authorization"] = f"Bearer {gateway.api_key}"
    outcome: dict = {}

    def send() -> None:
        try:
            outcome["response"] = httpx.post(
                gateway.origin + ACTION_PATH,
                json={"action": action, "model": name},
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=5.0),
                trust_env=False,
            )
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    started = time.monotonic()
    worker = threading.Thread(target=send, name=f"gateway-{action}", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
        if on_wait is not None:
            on_wait(time.monotonic() - started)
    if "error" in outcome:
        raise LfError(
            f"{gateway.describe()} did not answer: {outcome['error']}",
            hint=f"lf runtime status {gateway.name} shows whether it runs; --direct starts {name} without it",
            exit_status=ExitStatus.START_FAILED,
        )
    response = outcome["response"]
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code == 401:
        raise LfError(
            f"{gateway.describe()} has an API key, and this command does not have it",
            hint="set LF_GATEWAY_API_KEY to the gateway's key, or pass --direct to go around the gateway",
            exit_status=ExitStatus.START_FAILED,
        )
    if response.status_code >= 400:
        message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
        raise LfError(
            f"{gateway.describe()} could not {action} {name}: {message or f'HTTP {response.status_code}'}",
            hint=f"its log: lf runtime logs {name}",
            exit_status=ExitStatus.START_FAILED,
        )
    return body if isinstance(body, dict) else {}
