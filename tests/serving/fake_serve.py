"""A cluster client that behaves like Ray Serve for the reconciler's tests, where it matters to them:

- applications take a few status reads to deploy; an apply that is not a replicas-only change of a
  running application replaces *every* replica (Serve gives each serve.run a new code version),
  while a replicas-only change keeps the running ones (the external scaler);
- each replica's GPUs are one STRICT_PACK bundle that must fit on one node, and a replica takes
  them only once it is placed — which lags the apply by `place_reads` status reads, as Ray's free
  count lags placement-group creation;
- applies can raise, deployments can fail or never be schedulable, the cluster can be unreachable,
  and any method can hang until released.

It splits as the adapter does: FakeServeControl (Serve control: apps, applies, deploy reads,
placement, lose_node) and FakeNodeTasks (what the nodes answer), and FakeServe, both at once, is what
the fixtures hand out. It stands in for Serve only where the reconciler's logic is under test; the
Ray client itself is tested against a real cluster.
"""
from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Callable
from typing import Any

from serving.cluster import ServeClient
from serving.cluster.connection import ServeUnavailable
from serving.cluster.nodes import NodeAnswer, NodeTasks
from serving.cluster.ray_serve import _differs_only_in_replicas
from serving.cluster.serve import ROUTER_APP, AppStatus, ClusterResources, DeploymentStatus, ServeControl
from serving.llm_config import with_secrets


class FakeCluster:
    """What both fakes share: the machines, and the record of what was asked of them."""

    def __init__(self, gpus: float = 8, *, nodes: dict[str, float] | None = None):
        self.total_gpus = gpus  # one node with this many GPUs, unless `nodes` says otherwise
        self.nodes = nodes
        self.unavailable = False
        self.hang: set[str] = set()  # method names that block until `release` is set
        self.release = threading.Event()
        # Every method called, in order: ServeControl's by name, node tasks by the name of the
        # client method they were before the split (node_gpus, reap_shared_memory, …: see
        # FakeNodeTasks.CANNED).
        self.asked: list[str] = []

    def gpus_by_node(self) -> dict[str, float]:
        return dict(self.nodes) if self.nodes is not None else {"node-1": self.total_gpus}

    def _enter(self, method: str) -> None:
        self.asked.append(method)
        if method in self.hang:
            self.release.wait()
        if self.unavailable:
            raise ServeUnavailable("connection refused (fake)")


class FakeNodeTasks(FakeCluster, NodeTasks):
    """What the nodes answer. Node tasks the tests script are answered from canned readings, by the
    task name the app's function gives (CANNED), in the shape the app's function then returns:

    - gantry-node-gpus (health node_gpus): `gpu_readings`;
    - gantry-node-processes (health node_processes): `process_readings`;
    - gantry-node-readiness (health node_readiness): `readiness_readings`; a reading with an `error`
      is a node that did not answer (read_node_readiness itself never says error): TimeoutError;
    - gantry-node-runtime (gates node_runtimes): `runtimes`, None for a healthy GPU runtime per node;
    - gantry-reap-shared-memory (serving reap_shared_memory): `leaked`, removed once found.

    Any other function runs here, this machine being a one-node cluster; so does the reap on a node
    (health/probes/gpu.py's real reap_process, with a `reap_grace_s` grace), while a segment's removal
    is only recorded in `node_calls`.
    """

    CANNED = {
        "gantry-node-gpus": ("node_gpus", "_gpu_answers"),
        "gantry-node-processes": ("node_processes", "_process_answers"),
        "gantry-node-readiness": ("node_readiness", "_readiness_answers"),
        "gantry-node-runtime": ("node_runtimes", "_runtime_answers"),
        "gantry-reap-shared-memory": ("reap_shared_memory", "_reap_answers"),
    }
    ON_NODE = {"gantry-reap-process": "reap_on_node", "gantry-remove-segment": "remove_segment_on_node"}

    def __init__(self, gpus: float = 8, *, nodes: dict[str, float] | None = None):
        super().__init__(gpus, nodes=nodes)
        # What node_runtimes() reports per node; None: a healthy runtime (GPU nodes with a fitting driver).
        self.runtimes: list[dict] | None = None
        # What node_gpus() reports: one reading per node, as health/node_readings.py gives them.
        self.gpu_readings: list[dict] = []
        # What node_processes(), serve_actors() and node_readiness() report, as the Ray client gives them.
        self.process_readings: list[dict] = []
        self.actors: list[dict] = []
        self.readiness_readings: list[dict] = []
        # What metrics_endpoints() lists: {node_id, address, port} per node (a real HTTP server in tests).
        self.metrics_nodes: list[dict] = []
        self.node_calls: list[tuple] = []  # reap_on_node / remove_segment_on_node, with their arguments
        self.leaked: list[dict] = []  # shared-memory segments the next reap finds and removes
        self.reaps = 0
        self.reap_grace_s = 2.0

    def on_every_node(self, function: Callable[[str], Any], *, name: str, timeout_s: float, ship: tuple = ()) -> list[NodeAnswer]:
        asked, answers = self.CANNED.get(name, (name, None))
        self._enter(asked)
        if answers is not None:
            return getattr(self, answers)()
        node_id = next(iter(self.gpus_by_node()))
        try:
            return [NodeAnswer(node_id, "127.0.0.1", value=function(node_id))]
        except Exception as exc:  # noqa: BLE001 — a node's failure is its answer
            return [NodeAnswer(node_id, "127.0.0.1", error=exc)]

    def on_node(self, node_id: str, function: Callable[..., Any], *args: Any, name: str, timeout_s: float, ship: tuple = ()) -> Any:
        self._enter(self.ON_NODE.get(name, name))
        if name == "gantry-reap-process":
            pid, started, replicas = args
            self.node_calls.append(("reap", node_id, pid, started, dict(replicas)))
            return function(pid, started, replicas, grace_s=self.reap_grace_s)
        if name == "gantry-remove-segment":
            self.node_calls.append(("remove_segment", node_id, *args))
            return []
        return function(*args)

    def serve_actors(self) -> list[dict]:
        self._enter("serve_actors")
        return copy.deepcopy(self.actors)

    def metrics_endpoints(self) -> list[dict]:
        self._enter("metrics_endpoints")
        return [dict(node) for node in self.metrics_nodes]

    def _gpu_answers(self) -> list[NodeAnswer]:
        return [
            NodeAnswer(reading["node_id"], reading.get("address", ""), value={**reading, "gpus": [dict(gpu) for gpu in reading.get("gpus", [])]})
            for reading in self.gpu_readings
        ]

    def _process_answers(self) -> list[NodeAnswer]:
        return [NodeAnswer(reading["node_id"], reading.get("address", ""), value=copy.deepcopy(reading)) for reading in self.process_readings]

    def _readiness_answers(self) -> list[NodeAnswer]:
        return [
            NodeAnswer(reading["node_id"], reading.get("address", ""), error=TimeoutError("no answer (fake)")) if reading.get("error")
            else NodeAnswer(reading["node_id"], reading.get("address", ""), value=copy.deepcopy(reading))
            for reading in self.readiness_readings
        ]

    def _runtime_answers(self) -> list[NodeAnswer]:
        if self.runtimes is not None:
            return [NodeAnswer(r["node_id"], "", value=dict(r)) for r in self.runtimes]
        from gates.preflight.runtime import local_node_runtime

        # By default a healthy GPU cluster: every node has NVIDIA GPUs (at least one, even where the
        # test gives Ray none to schedule) and a driver that runs the CUDA 12.8 build installed there.
        local = local_node_runtime().as_dict()
        return [
            NodeAnswer(node, "", value={**local, "node_id": node, "gpus": max(int(gpus), 1), "driver_version": "570.86", "driver_cuda": "12.8", "torch_cuda": "12.8", "nvml_error": ""})
            for node, gpus in self.gpus_by_node().items()
        ]

    def _reap_answers(self) -> list[NodeAnswer]:
        self.reaps += 1
        found, self.leaked = self.leaked, []
        # One answer per run of a node's segments, so the removed list keeps the order they were leaked in.
        return [
            NodeAnswer(node_id, "", value=[{key: value for key, value in segment.items() if key != "node_id"} for segment in segments])
            for node_id, segments in itertools.groupby(found, key=lambda segment: segment.get("node_id", ""))
        ]


class FakeServeControl(FakeCluster, ServeControl):
    """Serve control: applications, applies, deploy reads, placement on the nodes, lost nodes."""

    def __init__(self, gpus: float = 8, deploy_reads: int = 0, *, nodes: dict[str, float] | None = None, place_reads: int = 0):
        super().__init__(gpus, nodes=nodes)
        self.deploy_reads = deploy_reads
        self.place_reads = place_reads
        self.apps: dict[str, dict] = {ROUTER_APP: self._app({}, 1, "RUNNING", 0)}
        self.apps[ROUTER_APP]["replica_ids"] = ["router#0"]
        self.calls: list[tuple] = []
        self.fail_apply: dict[str, str] = {}
        self.fail_deploy: dict[str, str] = {}
        self.unschedulable: dict[str, str] = {}
        self.causes: dict[str, str] = {}
        self.engine_logs: dict[str, str] = {}  # what a replica "logged" at start, for observe_vram
        self.starts = 0
        self.envs: dict[str, dict] = {}  # model_key -> the env vars its replicas got at the last apply
        self.dead_nodes: list[dict] = []  # lose_node()'s, oldest first, with the apps that had replicas there
        self.undeclared_nodes: list[dict] = []  # lost, not yet declared dead by Ray
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # --- what the tests look at ---------------------------------------------------------------
    def applied(self) -> list[str]:
        return [call[1] for call in self.calls if call[0] == "apply"]

    def deleted(self) -> list[str]:
        return [call[1] for call in self.calls if call[0] == "delete"]

    # --- the ServeControl interface -------------------------------------------------------------
    def ensure_started(self, http_port: int = 8000, *, wait: bool = True) -> None:
        self._enter("ensure_started")
        self.starts += 1

    def apply_model(self, model_key: str, config: dict, previous: dict | None = None, *, secrets: dict[str, str] | None = None) -> None:
        self._enter("apply_model")
        with self._lock:
            self.calls.append(("apply", model_key, config, previous))
            # What the replicas' environment would hold, as Serve would be given it.
            self.envs[model_key] = with_secrets(config, secrets or {})["runtime_env"]["env_vars"]
            if model_key in self.fail_apply:
                raise RuntimeError(self.fail_apply[model_key])
            autoscaling = config["deployment_config"].get("autoscaling_config")
            replicas = autoscaling["initial_replicas"] if autoscaling else config["deployment_config"]["num_replicas"]
            app = self.apps.get(model_key)
            if autoscaling and app is not None and previous is not None and app["status"] == "RUNNING" and _same_code(previous, config):
                # The same code version (Gantry pins it for autoscaled models): a reconfigure, no restart.
                app["config"] = config
                return
            if app is None:
                app = self.apps[model_key] = self._app(config, replicas, "DEPLOYING", self.deploy_reads)
            elif previous is not None and app["status"] != "DELETING" and _differs_only_in_replicas(previous, config):
                kept = app["replica_ids"][:replicas]  # the external scaler stops the surplus, keeps the rest
                app.update(config=config, target=replicas, status="DEPLOYING", reads=self.deploy_reads, replica_ids=kept)
                app["placed"] = {rid: node for rid, node in app["placed"].items() if rid in kept}
            else:
                # serve.run again: a new code version, so Serve replaces every replica.
                app.update(config=config, target=replicas, status="DEPLOYING", reads=self.deploy_reads, replica_ids=[], placed={})
            app["place_in"] = self.place_reads
            while len(app["replica_ids"]) < replicas:
                app["replica_ids"].append(f"{model_key}#{next(self._ids)}")

    def delete_model(self, model_key: str) -> None:
        self._enter("delete_model")
        with self._lock:
            self.calls.append(("delete", model_key))
            if model_key in self.apps:
                self.apps[model_key].update(status="DELETING", reads=1)

    def status(self, *, targets: bool = False) -> dict[str, AppStatus]:
        self._enter("status")
        with self._lock:
            self._advance()
            return {name: self._status(name, app, targets) for name, app in self.apps.items()}

    def cluster_resources(self) -> ClusterResources:
        self._enter("cluster_resources")
        with self._lock:
            free = self.gpus_by_node()
            reserved: dict[str, float] = {}
            for name, app in self.apps.items():
                for node in app["placed"].values():
                    free[node] -= self._gpus_per_replica(app)
                    reserved[name] = reserved.get(name, 0) + self._gpus_per_replica(app)
            total = sum(self.gpus_by_node().values())
            nodes = tuple({"node_id": node, "gpus": gpus, "free_gpus": free[node]} for node, gpus in self.gpus_by_node().items())
            return ClusterResources(total, sum(free.values()), 16, 16, nodes, reserved)

    def failure_cause(self, model_key: str, limit: int = 2000) -> str:
        self._enter("failure_cause")
        return self.causes.get(model_key, "")

    def engine_log(self, model_key: str) -> str:
        self._enter("engine_log")
        return self.engine_logs.get(model_key, "")

    def lost_nodes(self, model_key: str, since: float = 0) -> list[dict]:
        self._enter("lost_nodes")
        return [
            {key: value for key, value in node.items() if key != "apps"}
            for node in reversed(self.dead_nodes)
            if model_key in node["apps"] and node["died_at"] >= since
        ]

    def lose_node(self, node: str, reason: str = "health check failed", *, died_at: float | None = None, unhealthy_reads: int = 1, declared: bool = True) -> None:
        """A machine dies: every replica placed on it goes; a RUNNING application that had one there
        is UNHEALTHY for `unhealthy_reads` status reads, then Serve starts replacements (DEPLOYING,
        placed where there is room, as any new replica). `declared=False`: Ray has not yet declared
        the node dead (its heartbeats are still being missed) until declare_dead()."""
        import time

        with self._lock:
            lost: set[str] = set()
            for name, app in self.apps.items():
                gone = [rid for rid, placed_on in app["placed"].items() if placed_on == node]
                if not gone:
                    continue
                lost.add(name)
                app["replica_ids"] = [rid for rid in app["replica_ids"] if rid not in gone]
                app["placed"] = {rid: n for rid, n in app["placed"].items() if n != node}
                if app["status"] == "RUNNING":
                    app.update(status="UNHEALTHY", reads=unhealthy_reads)
            if self.nodes is not None:
                self.nodes = {n: gpus for n, gpus in self.nodes.items() if n != node}
            (self.dead_nodes if declared else self.undeclared_nodes).append({
                "node_id": node, "node_name": node, "address": "10.0.0.9",
                "died_at": time.time() if died_at is None else died_at, "reason": reason, "apps": lost,
            })

    def declare_dead(self, node: str) -> None:
        with self._lock:
            self.dead_nodes += [n for n in self.undeclared_nodes if n["node_id"] == node]
            self.undeclared_nodes = [n for n in self.undeclared_nodes if n["node_id"] != node]

    def autoscale(self, model_key: str, target: int) -> None:
        """What Serve's autoscaler does on its own: a new target, replicas started or stopped to
        meet it, the application RUNNING throughout (Serve counts autoscaling as healthy)."""
        with self._lock:
            app = self.apps[model_key]
            app["target"] = target
            app["replica_ids"] = app["replica_ids"][:target]
            while len(app["replica_ids"]) < target:
                app["replica_ids"].append(f"{model_key}#{next(self._ids)}")

    # --- how Serve moves on between reads --------------------------------------------------------
    def _app(self, config: dict, replicas: int, status: str, reads: int) -> dict:
        return {"config": config, "target": replicas, "status": status, "reads": reads, "replica_ids": [], "placed": {}, "place_in": 0}

    @staticmethod
    def _gpus_per_replica(app: dict) -> int:
        return len((app["config"] or {}).get("placement_group_config", {}).get("bundles", []))

    def _place(self, app: dict) -> bool:
        """Give each unplaced replica a node with room for all its GPUs; True when all are placed."""
        free = self.gpus_by_node()
        for other in self.apps.values():
            for node in other["placed"].values():
                free[node] -= self._gpus_per_replica(other)
        need = self._gpus_per_replica(app)
        for rid in app["replica_ids"]:
            if rid in app["placed"]:
                continue
            node = next((n for n, room in free.items() if room >= need), None) if need else next(iter(free))
            if node is None:
                return False
            app["placed"][rid] = node
            free[node] -= need
        return True

    def _advance(self) -> None:
        for name, app in list(self.apps.items()):
            if app["status"] == "DELETING":
                app["placed"] = {}  # Serve stops the replicas first, then forgets the application
                if app["reads"] > 0:
                    app["reads"] -= 1
                else:
                    del self.apps[name]
                continue
            if app["status"] == "UNHEALTHY":
                if app["reads"] > 0:
                    app["reads"] -= 1
                    continue
                # Serve replaces the lost replicas: new ones, to be placed like any other.
                while len(app["replica_ids"]) < app["target"]:
                    app["replica_ids"].append(f"{name}#{next(self._ids)}")
                app["status"] = "DEPLOYING"
            if app["status"] != "DEPLOYING":
                continue
            if app["place_in"] > 0:
                app["place_in"] -= 1
            elif name not in self.unschedulable:
                placed = self._place(app)
                if not placed:
                    continue
            if app["reads"] > 0:
                app["reads"] -= 1
            elif name in self.fail_deploy:
                app.update(status="DEPLOY_FAILED", placed={})
            elif name not in self.unschedulable and len(app["placed"]) == len(app["replica_ids"]):
                app["status"] = "RUNNING"

    def _status(self, name: str, app: dict, targets: bool = False) -> AppStatus:
        message = self.fail_deploy.get(name, "") if app["status"] == "DEPLOY_FAILED" else ""
        if app["status"] == "DEPLOYING" and name in self.unschedulable:
            message = self.unschedulable[name]
        elif app["status"] == "DEPLOYING" and app["place_in"] == 0 and len(app["placed"]) < len(app["replica_ids"]):
            message = f"Deployment 'LLMServer' has {len(app['replica_ids']) - len(app['placed'])} replica(s) that cannot be scheduled"
        if app["status"] == "UNHEALTHY":
            message = "The deployment is UNHEALTHY: a replica died unexpectedly"
        running = len(app["replica_ids"]) if app["status"] in ("RUNNING", "UNHEALTHY") else 0
        target = app["target"] if targets else None
        deployment = DeploymentStatus("LLMServer", app["status"], message, {"RUNNING": running} if running else {}, target)
        return AppStatus(name, app["status"], message, (deployment,))


class FakeServe(FakeServeControl, FakeNodeTasks, ServeClient):
    """Both fakes at once, as get_client() hands out both interfaces at once."""


def _same_code(previous: dict, config: dict) -> bool:
    return {**previous, "deployment_config": None} == {**config, "deployment_config": None}


_shared: FakeServe | None = None


def shared_fake() -> FakeServe:
    """What get_client() returns when GANTRY_SERVE_CLIENT points here: one fake per test."""
    global _shared
    if _shared is None:
        _shared = FakeServe()
    return _shared


def reset_shared(fake: FakeServe | None = None) -> FakeServe:
    global _shared
    _shared = fake or FakeServe()
    return _shared
