"""Whether a model's replicas fit the cluster's free GPUs, node by node.

Each replica's GPUs are one STRICT_PACK placement group: they must all be on one node, so eight
free GPUs spread 2+2+2+2 do not hold one 4-GPU replica. Ray's free-resource view also lags the
placement groups Serve is about to create, so GPUs the reconciler has promised to applies that
Serve has not placed yet are taken first. Pure: no Ray, no database.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GpuLedger:
    free_by_node: dict[str, float]
    total: float = 0.0
    promised: float = 0.0
    unplaced: list[int] = field(default_factory=list)  # promised replicas no node can hold now

    @classmethod
    def from_nodes(cls, nodes: list[dict], total: float, promised_replicas: list[int] = ()) -> "GpuLedger":
        """`nodes`: [{"node_id", "free_gpus", …}]; `promised_replicas`: GPUs per replica, one entry per
        replica already promised to an apply Serve has not placed."""
        ledger = cls({str(n.get("node_id") or f"node-{i}"): float(n.get("free_gpus", 0)) for i, n in enumerate(nodes)}, total)
        for gpus in sorted(promised_replicas, reverse=True):  # the largest first: what first-fit packs best
            ledger.promised += gpus
            if not ledger._place(gpus):
                ledger.unplaced.append(gpus)
        return ledger

    @property
    def free(self) -> float:
        return sum(self.free_by_node.values())

    def _node_for(self, gpus: int, free: dict[str, float]) -> str | None:
        # Best fit: the fullest node that still holds the replica, so big holes stay for big replicas.
        fitting = [(room, node) for node, room in free.items() if room >= gpus]
        return min(fitting)[1] if fitting else None

    def _place(self, gpus: int) -> bool:
        node = self._node_for(gpus, self.free_by_node)
        if node is None:
            return False
        self.free_by_node[node] -= gpus
        return True

    def fits(self, replicas: int, gpus_per_replica: int) -> bool:
        if replicas <= 0 or gpus_per_replica <= 0:
            return True
        free = dict(self.free_by_node)
        for _ in range(replicas):
            node = self._node_for(gpus_per_replica, free)
            if node is None:
                return False
            free[node] -= gpus_per_replica
        return True

    def take(self, replicas: int, gpus_per_replica: int) -> None:
        """Promise these replicas' GPUs (after an apply), so later models in this tick see them gone."""
        for _ in range(max(replicas, 0) if gpus_per_replica > 0 else 0):
            self.promised += gpus_per_replica
            if not self._place(gpus_per_replica):
                self.unplaced.append(gpus_per_replica)

    def describe(self) -> str:
        nodes = ", ".join(f"{node[:12]}: {room:g}" for node, room in sorted(self.free_by_node.items())) or "no nodes"
        promised = f", after {self.promised:g} promised to deploys Serve has not placed yet" if self.promised else ""
        return f"the cluster has {self.free:g} free of {self.total:g}{promised} (free per node: {nodes})"
