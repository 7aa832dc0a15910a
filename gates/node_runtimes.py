"""What each alive node of the cluster has installed, read on the node itself for the preflight
guards, through the cluster adapter's node tasks (gates/preflight/runtime.py runs there)."""
from __future__ import annotations

from gates.preflight import base, runtime
from gates.preflight.base import NodeRuntime
from health.probes import gpu
from serving.cluster.nodes import NodeTasks, why_unread

# A node's reading is a few package-metadata reads and one NVML init (milliseconds); the bound
# is for starting a worker process on a busy node (seconds on 2 cores).
NODE_RUNTIME_TIMEOUT_S = 30.0


def node_runtimes(nodes: NodeTasks) -> list[dict]:
    """Read gates/preflight/runtime.py's local_node_runtime on every alive node at once: one
    NodeRuntime.as_dict() per node, in ray.nodes() order, its node_id the Ray node id.

    [] when the client cannot tell (it has no nodes of its own); the caller then falls back to this
    machine's runtime and says so. A node whose reading fails or does not finish within
    NODE_RUNTIME_TIMEOUT_S is still listed, with packages {} and the reason in both `error` and
    `nvml_error` (so NodeRuntime.from_dict keeps it). ServeUnavailable when the cluster cannot be
    reached.
    """
    # Shipped by value, like the router and the shared-memory sweep: Ray's nodes (a KubeRay image,
    # say) need not have Gantry's code. These modules import only the standard library and pynvml,
    # which every node has (requirements.txt).
    answers = nodes.on_every_node(runtime.read_node, name="gantry-node-runtime", timeout_s=NODE_RUNTIME_TIMEOUT_S, ship=(base, gpu, runtime))
    return [answer.value if answer.error is None else _unread_node(answer.node_id, answer.error) for answer in answers]


def _unread_node(node_id: str, exc: BaseException) -> dict:
    """A node whose runtime could not be read, in NodeRuntime's shape plus the reason in `error`."""
    why = why_unread(node_id, exc, "runtime")
    return NodeRuntime(node_id, packages={}, nvml_error=why, error=why).as_dict()
