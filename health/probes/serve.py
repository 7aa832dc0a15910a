"""Serve: applications and replicas that are not healthy, from the status snapshot the reconciler
writes every tick (serving/snapshot.py) — the health worker never asks Ray itself, and a stale
snapshot is said as such rather than read as health."""
from __future__ import annotations

from health.choices import Status
from health.probes.base import Probe, Reading
from serving.cluster.serve import ROUTER_APP
from serving.snapshot import cluster_view

BAD_APP_STATES = ("DEPLOY_FAILED", "UNHEALTHY")
MOVING_APP_STATES = ("DEPLOYING", "DELETING", "NOT_STARTED")
NAMED = 5


def _names(names: list[str]) -> str:
    return ", ".join(names[:NAMED]) + (f" and {len(names) - NAMED} more" if len(names) > NAMED else "")


def read_serve() -> Reading:
    view = cluster_view()
    problem = view.freshness.problem()
    if problem:
        return Status.UNKNOWN, problem
    router = view.apps.get(ROUTER_APP)
    if router is None or router.status != "RUNNING":
        state = router.status if router else "not running"
        return Status.CRITICAL, f"the {ROUTER_APP} application is {state}: every OpenAI call to :8000 fails ({view.freshness.as_of()})"
    models = {name: app for name, app in view.apps.items() if name != ROUTER_APP}
    bad = sorted(f"{name} ({app.status})" for name, app in models.items() if app.status in BAD_APP_STATES)
    if bad:
        return Status.CRITICAL, f"{len(bad)} application(s) Serve reports unhealthy: {_names(bad)} ({view.freshness.as_of()})"
    degraded = sorted(
        f"{name} ({', '.join(f'{state} {n}' for state, n in sorted(counts.items()))})"
        for name, app in models.items()
        if app.status == "RUNNING" and (counts := _not_running_replicas(app))
    )
    moving = sum(1 for app in models.values() if app.status in MOVING_APP_STATES)
    changing = f"; {moving} changing" if moving else ""
    if degraded:
        return Status.WARN, f"replicas not running in {len(degraded)} application(s): {_names(degraded)}{changing} ({view.freshness.as_of()})"
    return Status.OK, f"router and {len(models)} model application(s) healthy{changing} ({view.freshness.as_of()})"


def _not_running_replicas(app) -> dict[str, int]:
    counts: dict[str, int] = {}
    for deployment in app.deployments:
        for state, n in deployment.replica_states.items():
            if state != "RUNNING" and n:
                counts[state] = counts.get(state, 0) + n
    return counts


def probes() -> list[Probe]:
    return [Probe("serve:applications", "serve", read_serve)]
