"""Reaping what the zombies probe found: a process holding GPU memory, or an orphan /dev/shm segment.

An admin asks on the panel; a worker on the `health` queue carries it out (the web process is never
a Ray driver) by a Ray task on the zombie's own node, which kills only after checking there that the
PID is still the process the probe saw and is no live replica (health/probes/gpu.py reap_process).
Every attempt is audited with its outcome — done, refused, or failed — and the reason.
"""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from dashboard.models import AuditEntry
from dashboard.queues import task
from health.node_readings import reap_on_node
from health.probes.zombies import known_models, replica_holders, replica_pids
from serving.cluster import get_client
from serving.shm_sweep import remove_segment_on_node

REAP_PROCESS = "health.reap_process"
REMOVE_SEGMENT = "health.remove_shm_segment"
ACTIONS = (REAP_PROCESS, REMOVE_SEGMENT)


def request_reap(user, node_id: str, zombie: dict) -> None:
    transaction.on_commit(lambda: task("health.tasks.reap_zombie").delay(node_id, zombie["pid"], zombie["started"], user.pk))


def request_segment_removal(user, node_id: str, segment: dict) -> None:
    transaction.on_commit(lambda: task("health.tasks.remove_segment").delay(node_id, segment["name"], user.pk))


def reap(node_id: str, pid: int, started: int, user_id: int | None) -> AuditEntry:
    """Kill `pid` on `node_id` unless it is (a process of) a live replica or no longer the same
    process; the replicas are read from Ray now, not taken from the probe's older reading."""
    client = get_client()
    try:
        holders = replica_holders(client.serve_actors(), known_models())
        outcome = reap_on_node(client, node_id, pid, started, replica_pids(node_id, holders))
    except Exception as exc:  # noqa: BLE001 — an attempt that could not run is audited too, with why
        outcome = {"outcome": "failed", "reason": f"the node could not be asked: {type(exc).__name__}: {exc}"}
    return _audit(user_id, REAP_PROCESS, f"PID {pid} on node {node_id}", outcome)


def remove_segment(node_id: str, name: str, user_id: int | None) -> AuditEntry:
    try:
        removed = remove_segment_on_node(get_client(), node_id, name)
        outcome = (
            {"outcome": "done", "reason": f"{name} removed ({removed[0]['resident_bytes']} bytes of RAM freed)"}
            if removed
            else {"outcome": "refused", "reason": f"{name} is in use again, younger than the grace period, or gone: it was left alone"}
        )
    except Exception as exc:  # noqa: BLE001 — as in reap
        outcome = {"outcome": "failed", "reason": f"the node could not be asked: {type(exc).__name__}: {exc}"}
    return _audit(user_id, REMOVE_SEGMENT, f"/dev/shm/{name} on node {node_id}", outcome)


def _audit(user_id: int | None, action: str, target: str, outcome: dict) -> AuditEntry:
    user = get_user_model().objects.filter(pk=user_id).first()
    return AuditEntry.record(user, action, target, f"{outcome['outcome']}: {outcome['reason']}")


def recent_reaps(limit: int = 10) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action__in=ACTIONS)[:limit])
