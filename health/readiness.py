"""What the new-model preview says about multi-node readiness: the readiness checks' last readings
(health/probes/multinode.py), shown when the deploy may span nodes — a replica needs more GPUs than
any one node has, or the cluster has more than one GPU node."""
from __future__ import annotations

from dataclasses import dataclass

from health.choices import Status
from health.models import HealthCheck
from health.probes import multinode


@dataclass(frozen=True)
class DeployReadiness:
    why_shown: str
    checks: list[HealthCheck]

    @property
    def problems(self) -> list[HealthCheck]:
        return [check for check in self.checks if check.status != Status.OK]


def deploy_readiness(gpus_per_replica: int) -> DeployReadiness | None:
    """None when the deploy stays on one node (or the cluster was never read)."""
    from serving.snapshot import cluster_view

    resources = cluster_view().resources
    nodes = [n for n in (resources.nodes if resources else ()) if float(n.get("gpus", 0)) > 0]
    largest = max((float(n["gpus"]) for n in nodes), default=0)
    if gpus_per_replica and largest and gpus_per_replica > largest:
        why = f"one replica needs {gpus_per_replica} GPUs and no node has more than {largest:g}: it spans nodes"
    elif len(nodes) > 1:
        why = f"the cluster has {len(nodes)} GPU nodes: replicas may be placed on any of them"
    else:
        return None
    names = [name for name, _ in multinode.ASSESSMENTS]
    checks = sorted(HealthCheck.objects.filter(name__in=names), key=lambda c: names.index(c.name))
    return DeployReadiness(why, checks)
