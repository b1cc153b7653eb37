"""`lf serve --install-service` / `--uninstall-service` [`--dry-run`]: the gateway as a service of the user
(lf.core.service), rendered for people or as JSON."""

from __future__ import annotations

import shlex

from lf.cli._common import err, out, print_json


def install(project, serve_flags: list[str], gateway_record: str, *, dry_run: bool, json_out: bool) -> None:
    from lf.core import service
    from lf.daemon.records import StateStore

    kind = service.kind_here()
    plan = service.install_plan(project, serve_flags, kind=kind, **_context(kind))
    # a gateway of this project already on that port, and not the service's own: the service cannot listen
    other = StateStore.of(project).load_or_none(gateway_record)
    if other is not None and (not other.process_alive() or list(other.instance.argv)[1:] == list(plan.argv)[1:]):
        other = None
    _show(plan, dry_run, json_out)
    if other is not None and not dry_run:
        err(
            f"Warning: a gateway already runs on port {other.port} (pid {other.pid}): the service cannot listen "
            f"there until it stops (lf runtime stop {other.name}); systemd and launchd keep trying meanwhile"
        )


def uninstall(project, *, dry_run: bool, json_out: bool) -> None:
    from lf.core import service

    kind = service.kind_here()
    context = _context(kind)
    plan = service.uninstall_plan(project, kind=kind, places=context["places"], uid=context["uid"])
    _show(plan, dry_run, json_out)


def _context(kind: str) -> dict:
    import getpass
    import os
    import sys

    from lf.core.service import Places

    return {
        "places": Places.default(kind),
        "environ": dict(os.environ),
        "python": sys.executable,
        "user": getpass.getuser(),
        "uid": os.getuid(),
        "carried": _variables_lf_reads(),
    }


def _variables_lf_reads() -> list[str]:
    """The gateway's LF_GATEWAY_* and every runtime's own variables (LF_* are carried by their prefix)."""
    from lf.config.gateway import GATEWAY_SETTINGS
    from lf.runtimes.registry import all_runtimes

    names = [s.env for s in GATEWAY_SETTINGS.values() if s.env]
    names += sorted({name for runtime in all_runtimes().values() for name in runtime.env.values()})
    return names


def _show(plan, dry_run: bool, json_out: bool) -> None:
    from lf.core.service import apply

    s = plan.service
    if dry_run:
        if json_out:
            print_json({"dry_run": True, **plan.to_dict()})
            return
        for planned in plan.write:
            out(f"# would write {planned.path} (mode {planned.mode:04o}):")
            out(planned.shown.rstrip("\n"))
            out()
        for step in plan.steps:
            out(f"# would run: {shlex.join(step.argv)}" + (f"   ({step.why})" if step.why else ""))
        for path in plan.remove:
            out(f"# would remove {path}")
        for step in plan.then:
            out(f"# would run: {shlex.join(step.argv)}" + (f"   ({step.why})" if step.why else ""))
        for note in plan.notes:
            err(note)
        return
    if plan.action == "uninstall" and not plan.steps and not plan.remove:
        if json_out:
            print_json({"dry_run": False, **plan.to_dict(), "ran": [], "warnings": []})
        err(f"{s.name}: not installed (nothing to remove)")
        return
    applied = apply(plan)
    for warning in applied.warnings:
        err(f"Warning: {warning}")
    if json_out:
        print_json({"dry_run": False, **applied.to_dict()})
        return
    if plan.action == "uninstall":
        out(f"{s.name}: removed")
        return
    out(f"{s.name}: installed and started ({s.kind} user service)")
    out(f"  runs: {shlex.join(plan.argv)}")
    out(f"  in: {plan.workdir}")
    out(f"  environment: {s.env_file} (0600)")
    if s.kind == "systemd":
        out(f"  logs: journalctl --user -u {s.name} -f; status: systemctl --user status {s.name}")
    else:
        out(f"  logs: {s.log_file}; status: launchctl print gui/$(id -u)/{s.name}")
    out("  remove it with: lf serve --uninstall-service")
