"""A ServeClient that behaves like Ray Serve for the reconciler's tests: applications take a few
status reads to deploy, replicas keep their ids across scaling, GPUs run out, applies can raise,
deployments can fail or never be schedulable, the cluster can be unreachable.

It stands in for Serve only where the reconciler's logic is under test; the Ray client itself is
tested against a real cluster.
"""
from __future__ import annotations

import itertools
import threading

from serving.client import ROUTER_APP, AppStatus, ClusterResources, DeploymentStatus, ServeClient, ServeUnavailable


class FakeServe(ServeClient):
    def __init__(self, gpus: float = 8, deploy_reads: int = 0):
        self.total_gpus = gpus
        self.deploy_reads = deploy_reads
        self.apps: dict[str, dict] = {ROUTER_APP: self._app({}, 1, "RUNNING", 0)}
        self.calls: list[tuple] = []
        self.fail_apply: dict[str, str] = {}
        self.fail_deploy: dict[str, str] = {}
        self.unschedulable: dict[str, str] = {}
        self.unavailable = False
        self.starts = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _app(self, config: dict, replicas: int, status: str, reads: int) -> dict:
        return {"config": config, "target": replicas, "status": status, "reads": reads, "replica_ids": []}

    def _check(self) -> None:
        if self.unavailable:
            raise ServeUnavailable("connection refused (fake)")

    def ensure_started(self, http_port: int = 8000, *, wait: bool = True) -> None:
        self._check()
        self.starts += 1

    def apply_model(self, model_key: str, config: dict, previous: dict | None = None) -> None:
        with self._lock:
            self._check()
            self.calls.append(("apply", model_key, config, previous))
            if model_key in self.fail_apply:
                raise RuntimeError(self.fail_apply[model_key])
            replicas = config["deployment_config"]["num_replicas"]
            app = self.apps.get(model_key)
            if app is None:
                self.apps[model_key] = self._app(config, replicas, "DEPLOYING", self.deploy_reads)
            else:
                app.update(config=config, target=replicas, status="DEPLOYING", reads=self.deploy_reads)

    def delete_model(self, model_key: str) -> None:
        with self._lock:
            self._check()
            self.calls.append(("delete", model_key))
            if model_key in self.apps:
                self.apps[model_key].update(status="DELETING", reads=1)

    def applied(self) -> list[str]:
        return [call[1] for call in self.calls if call[0] == "apply"]

    def deleted(self) -> list[str]:
        return [call[1] for call in self.calls if call[0] == "delete"]

    def _advance(self) -> None:
        for name, app in list(self.apps.items()):
            if app["reads"] > 0:
                app["reads"] -= 1
                continue
            if app["status"] == "DELETING":
                del self.apps[name]
            elif app["status"] == "DEPLOYING" and name in self.fail_deploy:
                app["status"] = "DEPLOY_FAILED"
            elif app["status"] == "DEPLOYING" and name not in self.unschedulable:
                ids = app["replica_ids"][: app["target"]]
                while len(ids) < app["target"]:
                    ids.append(f"{name}#{next(self._ids)}")
                app.update(status="RUNNING", replica_ids=ids)

    def status(self) -> dict[str, AppStatus]:
        with self._lock:
            self._check()
            self._advance()
            return {name: self._status(name, app) for name, app in self.apps.items()}

    def _status(self, name: str, app: dict) -> AppStatus:
        message = self.fail_deploy.get(name, "") if app["status"] == "DEPLOY_FAILED" else ""
        if app["status"] == "DEPLOYING" and name in self.unschedulable:
            message = self.unschedulable[name]
        running = len(app["replica_ids"]) if app["status"] == "RUNNING" else 0
        deployment = DeploymentStatus("LLMServer", app["status"], message, {"RUNNING": running} if running else {})
        return AppStatus(name, app["status"], message, (deployment,))

    def cluster_resources(self) -> ClusterResources:
        self._check()
        used = sum(
            app["target"] * (0 if not app["config"] else len(app["config"].get("placement_group_config", {}).get("bundles", [])))
            for app in self.apps.values()
            if app["status"] != "DELETING"
        )
        return ClusterResources(self.total_gpus, self.total_gpus - used, 16, 16)


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
