"""NodeTasks on a Ray cluster: a function runs as a Ray task pinned to each node (or one), and
Ray's node and actor tables are read through its GCS and state API."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from django.conf import settings

from serving.cluster.connection import Driver, _cluster_errors, call_with_timeout
from serving.cluster.nodes import NodeAnswer, NodeTasks


class RayNodeTasks(Driver, NodeTasks):
    """Every method connects this process to the cluster first and raises ServeUnavailable when it
    cannot be reached."""

    def on_every_node(self, function: Callable[[str], Any], *, name: str, timeout_s: float, ship: tuple = ()) -> list[NodeAnswer]:
        self._connect()
        _ship(ship)
        with _cluster_errors():
            addresses = _alive_addresses()
            answers = _on_every_node(function, name, timeout_s, list(addresses))
        return [
            NodeAnswer(node_id, addresses.get(node_id, ""), error=answer) if isinstance(answer, BaseException)
            else NodeAnswer(node_id, addresses.get(node_id, ""), value=answer)
            for node_id, answer in answers.items()
        ]

    def on_node(self, node_id: str, function: Callable[..., Any], *args: Any, name: str, timeout_s: float, ship: tuple = ()) -> Any:
        self._connect()
        _ship(ship)
        with _cluster_errors():
            return _on_node(node_id, function, name, timeout_s, *args)

    def serve_actors(self) -> list[dict]:
        self._connect()
        from ray.util.state import list_actors

        with _cluster_errors():
            actors = list_actors(
                address=settings.RAY_DASHBOARD_URL, filters=[("state", "=", "ALIVE")], detail=True,
                limit=10_000, timeout=self.STATE_API_TIMEOUT_S, raise_on_missing_output=False,
            )
        return [
            {"node_id": a.node_id, "pid": a.pid, "actor_id": a.actor_id, "name": a.name or "", "class_name": a.class_name or "", "placement_group_id": a.placement_group_id or ""}
            for a in actors
        ]

    def metrics_endpoints(self) -> list[dict]:
        """Every alive node's metrics export port as Ray's GCS knows it (`ray start
        --metrics-export-port`, or the one Ray picked), with the node's address. ServeUnavailable
        when the cluster cannot be reached."""
        self._connect()
        import ray

        with _cluster_errors():
            nodes = call_with_timeout(ray.nodes, timeout_s=settings.GANTRY_SERVE_CALL_TIMEOUT_S, what="ray.nodes")
        return [
            {"node_id": node["NodeID"], "address": node.get("NodeManagerAddress", ""), "port": int(node["MetricsExportPort"])}
            for node in nodes
            if node.get("Alive") and node.get("MetricsExportPort")
        ]


def _ship(modules: tuple) -> None:
    """Ship these modules by value, as the router is: Ray's nodes (a KubeRay image, say) need not
    have Gantry's code."""
    import ray.cloudpickle

    for module in modules:
        ray.cloudpickle.register_pickle_by_value(module)


def _alive_addresses() -> dict[str, str]:
    import ray

    return {node["NodeID"]: node.get("NodeManagerAddress", "") for node in ray.nodes() if node.get("Alive")}


def _on_every_node(function: Any, name: str, timeout_s: float, nodes: list[str]) -> dict[str, Any]:
    """Run `function(node_id)` once on each of these alive Ray nodes at once (read from ray.nodes()
    once, by the caller, with their addresses); per node id, in that order, what it returned, or the
    exception why not (TimeoutError for a node that had not finished within `timeout_s`: its task is
    cancelled). Call it inside _cluster_errors() on a connected driver.

    num_cpus=0 so a node whose CPUs are all held by replicas still runs it; no retries: a node that
    fails now is reported now, and the next call asks again.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(function)
    pending = {
        task.options(name=name, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(node_id): node_id
        for node_id in nodes
    }
    if not pending:
        return {}
    done, late = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
    outcome: dict[str, Any] = {}
    for ref in done:
        try:
            outcome[pending[ref]] = ray.get(ref, timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 — one node's failure must not hide the others' answers
            outcome[pending[ref]] = exc
    for ref in late:
        outcome[pending[ref]] = TimeoutError(f"no answer within {timeout_s:g} s")
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
    return {node_id: outcome[node_id] for node_id in nodes}


def _on_node(node_id: str, function: Any, name: str, timeout_s: float, *args: Any) -> Any:
    """Run `function(*args)` on that one node and return what it returned; what it raised is
    raised here, and TimeoutError when it did not finish within `timeout_s` (it is cancelled)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(function)
    ref = task.options(name=name, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(*args)
    done, _ = ray.wait([ref], timeout=timeout_s)
    if not done:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
        raise TimeoutError(f"node {node_id[:12]} did not answer within {timeout_s:g} s")
    return ray.get(ref, timeout=timeout_s)
