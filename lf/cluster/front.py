"""`lf serve --cluster`: the project's model entries run on a Ray cluster with Ray Serve (lf.cluster.deploy), and
`lf serve` stays their front door: each deployed entry is served from the gateway as an endpoint at its Ray Serve
URL, behind the gateway's key, metrics, page and name resolution. What the gateway deployed is taken off the
cluster when it stops; an application that was there before it (`lf cluster deploy`) is left as it was. An edit
of llamafarm.yaml is taken to the cluster too (place): an entry added or changed is deployed, one removed is taken
off (when this gateway deployed it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from lf.config.project import Project


class Front:
    """The project's entries deployed for a gateway: `placed` (entry name → OpenAI base URL), and take_off()."""

    def __init__(self, project: Project | None, address: str | None, on_event: Callable[[object], None] | None):
        from lf.cluster.deploy import deploy
        from lf.cluster.status import status

        self.project, self.address, self.on_event = project, address, on_event
        before = {app["entry"] for app in status(project, address).applications if app.get("entry")}
        result = deploy(project, address, on_event=on_event)
        self.placed = {entry.entry: entry.base_url for entry in result.entries}
        self.before = before
        self.ours = [name for name in self.placed if name not in before]
        self._lock = threading.Lock()

    def place(self, project: Project) -> dict[str, str]:
        """Take an edited llamafarm.yaml to the cluster: deploy the managed entries it adds or changes (Ray Serve
        updates an application in place), take off those it removed that this gateway deployed, and answer the
        entries placed now (name → base URL). Raises what the cluster said (lf.errors.LfError), having changed
        nothing the gateway serves."""
        from lf.cluster.deploy import chosen_entries, deploy, undeploy
        from lf.core.events import Notice

        old = {e.name: e for e in self.project.models} if self.project else {}
        wanted = {e.name: e for e in chosen_entries(project, None)[0]}
        todo = [name for name, e in wanted.items() if name not in self.placed or not e.same_as(old.get(name))]
        gone = [name for name in self.placed if name not in wanted]
        placed = {name: url for name, url in self.placed.items() if name in wanted}
        with self._lock:  # before the deploy: what a stop in its middle leaves is taken off too
            self.ours += [name for name in todo if name not in self.ours and name not in self.before]
        if todo:
            result = deploy(project, self.address, todo, on_event=self.on_event)
            placed.update({entry.entry: entry.base_url for entry in result.entries})
        with self._lock:
            ours_gone = [name for name in gone if name in self.ours]
            self.ours = [name for name in self.ours if name not in gone]
        if ours_gone:
            if self.on_event is not None:
                self.on_event(Notice(f"taking {', '.join(ours_gone)} off the cluster (gone from llamafarm.yaml)"))
            undeploy(self.project, self.address, ours_gone)
        self.project, self.placed = project, placed
        return placed

    def view(self) -> dict:
        """Where the project's deployed entries run now, as /health and the page show it: every replica of each
        entry with its node and state, and the cluster's nodes. Asked through Ray's own state (a short-lived
        driver, as `lf cluster status` does); a cluster that cannot be asked is an `error`, never an exception."""
        from lf.cluster.status import status

        report = status(self.project, self.address)
        nodes = {
            n["node_id"]: {
                "node_id": n["node_id"],
                "address": n.get("address"),
                "alive": bool(n.get("alive")),
                "head": bool(n.get("head")),
            }
            for n in report.nodes
        }
        entries = []
        for app in report.applications:
            if app.get("entry") not in self.placed:
                continue
            replicas = [
                {
                    "node_id": r.get("node_id"),
                    "node_address": r.get("node_ip") or nodes.get(str(r.get("node_id")), {}).get("address"),
                    "state": str(r.get("state") or "").lower(),
                }
                for r in app["replicas"]
            ]
            entries.append(
                {
                    "entry": app["entry"],
                    "status": str(app.get("status") or "").lower(),
                    "message": app.get("message") or "",
                    "target_replicas": app.get("target_replicas"),
                    "replicas": replicas,
                    "nodes": len({r["node_id"] for r in replicas if r["node_id"]}),
                }
            )
        return {
            "address": report.address or self.address,
            "checked_at": time.time(),
            "error": report.error,
            "nodes": list(nodes.values()),
            "entries": entries,
        }

    def take_off(self) -> None:
        """Undeploy what this gateway deployed; once, whichever way the gateway stops (its lifespan's end on
        SIGTERM, or the command's own way out)."""
        from lf.cluster.deploy import undeploy
        from lf.core.events import Notice

        with self._lock:
            ours, self.ours = self.ours, []
        if not ours:
            return
        if self.on_event is not None:
            self.on_event(Notice(f"taking {', '.join(ours)} off the cluster (this gateway deployed them)"))
        undeploy(self.project, self.address, ours)
