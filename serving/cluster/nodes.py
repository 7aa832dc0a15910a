"""Node tasks: running a small function on the cluster's nodes, each where it has to be read or
done (GPUs, processes, /dev/shm, installed packages).

The functions that run on a node belong to the app that owns them (health's NVML reader, gates'
runtime reader, serving's shared-memory sweep) and are passed in, with the modules Ray must ship
by value; this adapter never imports an app. serving/cluster/ray_nodes.py is the Ray-backed
implementation, tests/serving/fake_serve.py the fake.
"""
from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serving.cluster.connection import ServeUnavailable
from serving.cluster.serve import plain

log = logging.getLogger(__name__)


class NoNodes(ServeUnavailable):
    """This client has no nodes of its own to run a function on."""


@dataclass(frozen=True)
class NodeAnswer:
    """One node's answer to on_every_node."""

    node_id: str
    address: str  # the node's NodeManagerAddress
    value: Any = None  # what the function returned on that node
    error: BaseException | None = None  # why not: what it raised, TimeoutError when late (task cancelled)


class NodeTasks(abc.ABC):
    """Running a function on the cluster's nodes, and reading Ray's own tables of them. A client
    without nodes of its own answers as these defaults do."""

    def on_every_node(self, function: Callable[[str], Any], *, name: str, timeout_s: float, ship: tuple = ()) -> list[NodeAnswer]:
        """`function(node_id)` once on each alive node at once, in ray.nodes() order; [] for a client
        without nodes of its own. `name` names the task (Ray's dashboard shows it); a node that has
        not answered within `timeout_s` is answered with TimeoutError. `ship`: modules Ray must
        pickle by value (nodes lack Gantry's code); they must import only the standard library,
        pynvml and each other."""
        return []

    def on_node(self, node_id: str, function: Callable[..., Any], *args: Any, name: str, timeout_s: float, ship: tuple = ()) -> Any:
        """`function(*args)` on that one node; what it returned, or what it raised is raised here.
        Late, the task is cancelled and TimeoutError is raised (the Ray client reports it, as any
        call the cluster did not answer, as ServeUnavailable). NoNodes for a client without nodes."""
        raise NoNodes(f"this client has no nodes to run {name} on")

    def serve_actors(self) -> list[dict]:
        """Every alive Ray actor: {node_id, pid, actor_id, name, class_name, placement_group_id}, so
        a PID on a GPU can be told to be a Serve replica (class ServeReplica:<app>:<deployment>)."""
        return []

    def metrics_endpoints(self) -> list[dict]:
        """Each alive node's Prometheus export, where its replicas' vLLM metrics come out (and all
        of Ray's own): {node_id, address, port}, read-only. [] when this client has no nodes."""
        return []


def why_unread(node_id: str, exc: BaseException, what: str) -> str:
    """Why a node did not report `what`, in a line (and logged)."""
    if isinstance(exc, TimeoutError):
        why = f"the node did not report its {what} ({exc}); it may be overloaded or unreachable"
    else:
        # A RayTaskError's text is the node's whole traceback; its last line names the failure.
        lines = plain(str(exc)).strip().splitlines()
        why = f"reading the node's {what} failed: {lines[-1] if lines else type(exc).__name__}"
    log.warning("node %s: %s", node_id, why)
    return why
