"""Removing the shared-memory segments stopped replicas left behind, on the cluster's own machines:
serving/shm.py runs there, through the cluster adapter's node tasks (the engine's processes run on
the Ray nodes, not where the reconciler or the health worker runs)."""
from __future__ import annotations

import logging

from serving import shm
from serving.cluster.nodes import NodeTasks, NoNodes

log = logging.getLogger(__name__)

# A node's sweep is a few /proc reads; one that has not answered by then is skipped this time.
REAP_TIMEOUT_S = 30.0


def reap_shared_memory(nodes: NodeTasks) -> list[dict]:
    """Run serving/shm.py's sweep on every alive node at once and return what it removed, one dict
    per segment with its node's id: node_id, name, bytes (apparent), resident_bytes, age_s. A client
    without machines of its own removes nothing.

    A node whose sweep fails or does not finish within REAP_TIMEOUT_S is logged and skipped; the next
    sweep takes it up. ServeUnavailable when the cluster cannot be reached.
    """

    # A closure, so Ray ships it by value with serving/shm.py (Ray's nodes do not have Gantry's code).
    def sweep(node_id: str) -> list[dict]:
        return shm.sweep()

    removed: list[dict] = []
    for answer in nodes.on_every_node(sweep, name="gantry-reap-shared-memory", timeout_s=REAP_TIMEOUT_S, ship=(shm,)):
        if isinstance(answer.error, TimeoutError):
            log.warning("node %s did not finish its shared-memory sweep within %g s; skipped", answer.node_id, REAP_TIMEOUT_S)
        elif answer.error is not None:
            log.warning("the shared-memory sweep failed on node %s: %s: %s", answer.node_id, type(answer.error).__name__, answer.error)
        else:
            removed += [{"node_id": answer.node_id, **segment} for segment in answer.value]
    return removed


def remove_segment_on_node(nodes: NodeTasks, node_id: str, name: str) -> list[dict]:
    """Unlink one orphan /dev/shm segment on that node (serving/shm.py's checks, so one in use
    stays): the segments removed (Segment.as_dict), [] when it was not an orphan (any more) or the
    client has no nodes of its own."""

    def remove(name: str) -> list[dict]:
        # Segment names are psm_ and a fixed-length token: as a prefix, the name is that one segment.
        return [s.as_dict() for s in shm.remove_orphans(prefix=name) if s.name == name]

    try:
        return nodes.on_node(node_id, remove, name, name="gantry-remove-segment", timeout_s=REAP_TIMEOUT_S, ship=(shm,))
    except NoNodes:
        return []
