"""What health reads on every node, and the reaping it does there, through the cluster adapter's
node tasks: health/probes/gpu.py (the NVML reader) and serving/shm.py run on the node itself, where
the GPUs, the processes and /dev/shm are, and come back as plain dicts with the node's address.

Both modules are shipped by value: Ray's nodes (a KubeRay image, say) need not have Gantry's code,
and these import only the standard library and pynvml, which every node has (requirements.txt).
A node that fails or does not answer in time is still listed, with the reason in `error`.
"""
from __future__ import annotations

from django.conf import settings

from health.probes import gpu
from serving import shm
from serving.cluster.nodes import NodeTasks, NoNodes, why_unread

# A node's reading is a few /proc reads; killing waits out the process' grace first.
NODE_PROCESSES_TIMEOUT_S = 30.0
REAP_ON_NODE_TIMEOUT_S = 60.0


def _probe_timeout_s() -> float:
    """Under the probe's own timeout, so a slow node leaves the others' readings in."""
    return max(1.0, settings.GANTRY_HEALTH_PROBE_TIMEOUT_S * 0.8)


def node_gpus(nodes: NodeTasks) -> list[dict]:
    """Each alive node's GPUs, read on the node itself by health/probes/gpu.py's read_node (a 50 ms
    listen for XID events included), in ray.nodes() order: {node_id, address, driver_version,
    driver_cuda, gpus (read_gpus' list), error}. [] when the client has no nodes of its own; a node
    whose reading fails or is late has gpus [], the reason in `error`, answered False (its GPUs are
    unknown, not gone) and, when late, late_after_s (how long it was waited for). ServeUnavailable
    when the cluster cannot be reached."""
    timeout_s = _probe_timeout_s()
    return [
        {**answer.value, "node_id": answer.node_id, "address": answer.address} if answer.error is None
        else {
            "node_id": answer.node_id, "address": answer.address, "driver_version": "", "driver_cuda": "", "gpus": [],
            "error": why_unread(answer.node_id, answer.error, "GPUs"),
            "answered": False, "late_after_s": timeout_s if isinstance(answer.error, TimeoutError) else None,
        }
        for answer in nodes.on_every_node(gpu.read_node, name="gantry-node-gpus", timeout_s=timeout_s, ship=(gpu,))
    ]


def node_processes(nodes: NodeTasks) -> list[dict]:
    """Each alive node's GPU processes and orphan shared memory, read on the node for the zombies
    probe: {node_id, address, gpus (health/probes/gpu.py read_node_processes'), segments
    (serving/shm.py's orphans: name, bytes, resident_bytes, age_s), error}. [] without nodes; a node
    that fails or is late has gpus [] and the reason in `error`."""

    # A closure, so Ray ships it by value with the two modules it reads.
    def read(node_id: str) -> dict:
        return {**gpu.read_node_processes(node_id), "segments": [s.as_dict() for s in shm.find_orphan_segments()]}

    timeout_s = min(NODE_PROCESSES_TIMEOUT_S, _probe_timeout_s())
    return [
        {**answer.value, "address": answer.address} if answer.error is None
        else {
            "node_id": answer.node_id, "address": answer.address, "gpus": [], "segments": [],
            "error": why_unread(answer.node_id, answer.error, "GPU processes"),
        }
        for answer in nodes.on_every_node(read, name="gantry-node-processes", timeout_s=timeout_s, ship=(gpu, shm))
    ]


def node_readiness(nodes: NodeTasks) -> list[dict]:
    """Each alive node's multi-node readiness, read on the node (health/probes/gpu.py
    read_node_readiness) with its address; a node that did not answer has an `error`."""
    return [
        {**answer.value, "address": answer.address, "error": ""} if answer.error is None
        else {"node_id": answer.node_id, "address": answer.address, "error": why_unread(answer.node_id, answer.error, "multi-node readiness")}
        for answer in nodes.on_every_node(gpu.read_node_readiness, name="gantry-node-readiness", timeout_s=_probe_timeout_s(), ship=(gpu,))
    ]


def reap_on_node(nodes: NodeTasks, node_id: str, pid: int, started: int, replicas: dict[int, str]) -> dict:
    """health/probes/gpu.py's reap_process on that node: {outcome: done | refused, reason, signal}."""
    try:
        return nodes.on_node(node_id, gpu.reap_process, pid, started, replicas, name="gantry-reap-process", timeout_s=REAP_ON_NODE_TIMEOUT_S, ship=(gpu,))
    except NoNodes:
        return {"outcome": "refused", "signal": "", "reason": "this client has no nodes to reap on"}
