"""Serve control: what Gantry asks of Ray Serve about one model's application (deploy, change,
delete, read its status, say why it failed), and the cluster's resources it is placed on.

The interface (ServeControl) and the values it answers with; serving/cluster/ray_serve.py is the
Ray-backed implementation, tests/serving/fake_serve.py the fake the reconciler's tests use.
"""
from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field

ROUTER_APP = "gantry-router"

# Serve's messages carry the replica's traceback with terminal colour codes; users read them in a browser.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def plain(message: str | None) -> str:
    """`message` without its terminal colour codes."""
    return _ANSI_ESCAPE.sub("", message or "")


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


class ServeControl(abc.ABC):
    """Serve control, and the diagnosis of one model's application."""

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

    def failure_cause(self, model_key: str, limit: int = 2000) -> str:
        """What the engine said when `model_key`'s replicas failed to start, in a few lines of at
        most `limit` characters; "" when this client cannot tell. Never raises."""
        return ""

    def engine_log(self, model_key: str) -> str:
        """The recent log of a running replica of `model_key`, where vLLM says what memory it took at
        start (serving/vram_fit/vllm_log.py reads it); "" when this client cannot tell. Never raises."""
        return ""

    def lost_nodes(self, model_key: str, since: float = 0) -> list[dict]:
        """The Ray nodes that died (at or after `since`, epoch seconds) where `model_key` had
        replicas, newest first: {node_id, node_name, address, died_at (epoch s), reason (Ray's
        words)}. [] when none did or this client cannot tell. Never raises."""
        return []
