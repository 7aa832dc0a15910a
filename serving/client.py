"""The one door to Ray Serve. Everything Gantry asks of Serve goes through a ServeClient.

`get_client()` returns the configured implementation (settings.GANTRY_SERVE_CLIENT). The Ray-backed
client is the only module that may import ray, and it does so lazily, so the web app, the API and
the reconciler's tests import this file without Ray installed.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

from django.conf import settings
from django.utils.module_loading import import_string

ROUTER_APP = "gantry-router"


class ServeUnavailable(Exception):
    """The Ray cluster or Serve's controller cannot be reached; nothing was changed."""


@dataclass(frozen=True)
class DeploymentStatus:
    name: str
    status: str
    message: str = ""
    replica_states: dict[str, int] = field(default_factory=dict)

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
    def messages(self) -> str:
        """Serve's own words, application first, then each deployment's."""
        parts = [self.message] + [f"{d.name}: {d.message}" for d in self.deployments if d.message]
        return " | ".join(p for p in parts if p)

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "message": self.message,
            "deployments": {
                d.name: {"status": d.status, "message": d.message, "replica_states": dict(d.replica_states)}
                for d in self.deployments
            },
        }


@dataclass(frozen=True)
class ClusterResources:
    total_gpus: float
    free_gpus: float
    total_cpus: float
    free_cpus: float
    nodes: tuple[dict, ...] = ()

    def as_dict(self) -> dict:
        return {
            "total_gpus": self.total_gpus,
            "free_gpus": self.free_gpus,
            "total_cpus": self.total_cpus,
            "free_cpus": self.free_cpus,
            "nodes": list(self.nodes),
        }


class ServeClient(abc.ABC):
    @abc.abstractmethod
    def ensure_started(self, http_port: int = 8000) -> None:
        """Connect to the cluster and make sure Serve and the gantry-router application run."""

    @abc.abstractmethod
    def apply_model(self, model_key: str, config: dict, previous: dict | None = None) -> None:
        """Deploy or change one model's application, touching no other application.

        `previous` is the config last applied, so a replicas-only change can scale in place.
        """

    @abc.abstractmethod
    def delete_model(self, model_key: str) -> None:
        """Remove one model's application; a missing application is not an error."""

    @abc.abstractmethod
    def status(self) -> dict[str, AppStatus]:
        """Every Serve application by name, with per-deployment replica states."""

    @abc.abstractmethod
    def cluster_resources(self) -> ClusterResources:
        """GPUs and CPUs in the cluster, in total and free."""


def get_client() -> ServeClient:
    return import_string(settings.GANTRY_SERVE_CLIENT)()


class RayServeClient(ServeClient):
    """Ray Serve 2.60 behind the ServeClient interface. The data-plane issue fills it in; until then
    every call says plainly that no cluster is wired, and models wait in QUEUED with that event."""

    def _unavailable(self):
        raise ServeUnavailable("the Ray Serve client is not wired into this build yet (data-plane issue)")

    def ensure_started(self, http_port: int = 8000) -> None:
        self._unavailable()

    def apply_model(self, model_key: str, config: dict, previous: dict | None = None) -> None:
        self._unavailable()

    def delete_model(self, model_key: str) -> None:
        self._unavailable()

    def status(self) -> dict[str, AppStatus]:
        self._unavailable()

    def cluster_resources(self) -> ClusterResources:
        self._unavailable()
