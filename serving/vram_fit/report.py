"""An estimate against the GPUs: whether a replica fits each node's free memory, who holds what is
missing (`fit`), and what a running deploy's replicas really hold (`measure`), from the NVML readings
it is handed. The comparison is vLLM's own, explained in serving/vram_fit/estimation.py.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from serving.vram_fit.estimation import KV_BLOCK_TOKENS, Budget, Estimate, gib

# How NVML names the processes of a Serve replica: Ray's actor (its process title), and vLLM's engine
# and workers (vLLM sets their titles). Anything else holding GPU memory is not a replica.
SERVING_PROCESS_PREFIXES = ("ray::ServeReplica", "ray::RayWorkerWrapper", "VLLM::")


# --- Fit against NVML readings --------------------------------------------------------------------------

@dataclass(frozen=True)
class Holder:
    pid: int
    used_bytes: int
    name: str
    is_replica: bool

    def sentence(self) -> str:
        what = "a Serve replica" if self.is_replica else "not a replica"
        name = f" ({self.name})" if self.name else ""
        return f"PID {self.pid}{name} holds {gib(self.used_bytes)} and is {what}"


@dataclass(frozen=True)
class GpuFit:
    """One GPU against the estimate: whether vLLM would start a replica there (its share is free, and
    the share holds the weights, the engine's own memory and one full-length sequence of KV cache)."""

    node: str  # how the report names the node: its address, else the start of its id
    index: int
    name: str
    total_bytes: int = 0
    free_bytes: int = 0
    budget: Budget | None = None
    holders: tuple[Holder, ...] = ()
    error: str = ""  # why this GPU has no memory reading

    @property
    def share_bytes(self) -> int:
        return self.budget.share_bytes if self.budget else 0

    @property
    def need_bytes(self) -> int:
        return self.budget.need_bytes if self.budget else 0

    @property
    def share_is_free(self) -> bool:
        return self.free_bytes >= self.share_bytes

    @property
    def fits(self) -> bool:
        return not self.error and self.budget is not None and self.budget.fits and self.share_is_free

    @property
    def shortfall_bytes(self) -> int:
        """Free memory missing for vLLM's share (0 when the problem is the share's size, not what is free)."""
        return max(0, self.share_bytes - self.free_bytes)

    @property
    def figures(self) -> dict[str, str]:
        """The GiB figures as a page shows them."""
        return {k: gib(getattr(self, f"{k}_bytes")) for k in ("total", "free", "share", "need", "shortfall")}

    def sentence(self) -> str:
        where = f"GPU {self.index} on node {self.node}"
        if self.error or self.budget is None:
            return f"{where} was not read: {self.error}"
        text = f"{where} has {gib(self.free_bytes)} free of {gib(self.total_bytes)}"
        if not self.budget.fits:
            return f"{text}. {self.budget.verdict()}"
        if not self.share_is_free:
            text += (f"; vLLM asks for its share of {gib(self.share_bytes)} at start and refuses with less free: "
                     f"{gib(self.shortfall_bytes)} short")
            held = "; ".join(h.sentence() for h in self.holders)
            return text + (f". {held}." if held else ".")
        return f"{text}; the KV cache would hold {self.budget.kv_tokens:,} tokens ({self.budget.concurrency:.2f} full-length sequences)."


@dataclass(frozen=True)
class NodeFit:
    node_id: str
    node: str
    gpus: tuple[GpuFit, ...]
    gpus_per_replica: int
    error: str = ""

    @property
    def replicas(self) -> int:
        return sum(g.fits for g in self.gpus) // self.gpus_per_replica


# The most advice ever suggests: vLLM's share must leave the CUDA context and other processes room,
# and 1.0 fails at start on any GPU that anything else touches.
HIGHEST_ADVISED_UTILIZATION = 0.95


@dataclass(frozen=True)
class FitReport:
    estimate: Estimate
    nodes: tuple[NodeFit, ...]
    replicas: int
    reason: str = ""  # why nothing was checked ("" when GPUs were read)

    @property
    def checked(self) -> bool:
        return not self.reason

    @property
    def replicas_placeable(self) -> int:
        return sum(n.replicas for n in self.nodes)

    @property
    def fits(self) -> bool:
        return self.checked and self.replicas_placeable >= self.replicas

    @property
    def gpus(self) -> list[GpuFit]:
        return [g for n in self.nodes for g in n.gpus]

    @property
    def short(self) -> list[GpuFit]:
        return [g for g in self.gpus if not g.fits]

    def summary(self) -> str:
        if not self.checked:
            return f"Not checked: {self.reason}."
        wanted = f"{self.replicas} replica(s) of {self.estimate.gpus_per_replica} GPU(s)"
        if self.fits:
            return f"Fits: the GPUs have room for {self.replicas_placeable} replica(s), {wanted} wanted."
        worst = next((g for g in self.short if g.budget is not None and not g.budget.fits), None)
        worst = worst or max(self.short, key=lambda g: g.shortfall_bytes, default=None)
        detail = f" {worst.sentence()}" if worst else ""
        return f"Does not fit: the GPUs have room for {self.replicas_placeable} of {wanted}.{detail}"

    def advice(self) -> str:
        """What would make a GPU that is too small, or too full, fit; "" when nothing would."""
        small = next((g for g in self.gpus if g.budget is not None and not g.budget.fits), None)
        if small:
            return fixes(small.budget)
        crowded = next((g for g in self.gpus if g.budget is not None and not g.share_is_free), None)
        return smaller_share(crowded) if crowded else ""


def smaller_share(gpu: GpuFit) -> str:
    """A GPU whose free memory is below vLLM's share: the share that is free, if the replica starts in it."""
    utilization = math.floor(100 * gpu.free_bytes / gpu.total_bytes) / 100
    smaller = gpu.budget.estimate.with_utilization(utilization).on_gpu(gpu.total_bytes, gpu.name) if utilization > 0 else None
    if smaller is None or not smaller.fits:
        return ""
    return (f"gpu_memory_utilization: {utilization} asks only for what GPU {gpu.index} on node {gpu.node} has free; "
            f"the KV cache would then hold {smaller.kv_tokens:,} tokens.")


def fixes(budget: Budget) -> str:
    """The changes that would make `budget`'s GPU start the replica, each checked with the estimate."""
    e, steps = budget.estimate, []
    if budget.largest_max_model_len >= KV_BLOCK_TOKENS:
        steps.append(f"max_model_len: {budget.largest_max_model_len:,} (or less)")
    if e.kv_dtype_bytes > 1 and e.with_fp8_kv().on_gpu(budget.total_bytes, budget.gpu_name).fits:
        steps.append("kv_cache_dtype: fp8")
    if budget.utilization_that_fits <= HIGHEST_ADVISED_UTILIZATION and budget.utilization_that_fits > e.gpu_memory_utilization:
        steps.append(f"gpu_memory_utilization: {budget.utilization_that_fits}")
    gpus = e.smallest_gpus_per_replica(budget.total_bytes, budget.gpu_name)
    if gpus and gpus > e.gpus_per_replica:
        steps.append(f"gpus_per_replica: {gpus}")
    if not steps:
        return "Nothing in the options makes it fit on this GPU: a larger GPU, or a smaller or quantized model."
    return "Any one of these would make it fit: " + "; ".join(steps) + "."


def on_gpu_figures(estimate: Estimate, name: str, total_bytes: int, free_bytes: int | None = None) -> dict:
    """One replica on a GPU of `total_bytes` (with `free_bytes` free; None: nothing else on it), as the
    command and the API give it: every term, the verdict, and the advice when it does not start."""
    budget = estimate.on_gpu(total_bytes, name)
    free = total_bytes if free_bytes is None else free_bytes
    share_free = free >= budget.share_bytes
    return {
        "gpu": name, "total_bytes": total_bytes, "free_bytes": free,
        "fits": budget.fits, "share_is_free": share_free, "starts": budget.fits and share_free,
        "share_bytes": budget.share_bytes, "weights_bytes": budget.weights_bytes, "non_torch_bytes": budget.non_torch_bytes,
        "activation_bytes": budget.activation_bytes, "cuda_graph_bytes": budget.cuda_graph_bytes,
        "kv_available_bytes": budget.kv_available_bytes, "kv_tokens": budget.kv_tokens, "concurrency": round(budget.concurrency, 2),
        "largest_max_model_len": budget.largest_max_model_len,
        "smallest_gpus_per_replica": estimate.smallest_gpus_per_replica(total_bytes, name),
        "verdict": budget.verdict(), "advice": "" if budget.fits else fixes(budget),
    }


def node_name(node: dict) -> str:
    return str(node.get("address") or str(node.get("node_id", ""))[:12] or "?")


def serving_pids(nodes: Iterable[dict]) -> set[tuple[str, int]]:
    """(node id, PID) of every process NVML shows that a Serve replica runs (SERVING_PROCESS_PREFIXES)."""
    return {
        (str(node.get("node_id", "")), int(process["pid"]))
        for node in nodes
        for gpu in node.get("gpus") or []
        for process in gpu.get("processes") or []
        if str(process.get("name") or "").startswith(SERVING_PROCESS_PREFIXES)
    }


def fit(
    estimate: Estimate, nodes: Iterable[dict], *, replica_pids: Collection[tuple[str, int]] = (), replicas: int = 1, unread: str = ""
) -> FitReport:
    """Whether `replicas` replicas fit the GPUs of `nodes` (health/probes/gpu.py's read_node readings,
    each with its node's address), node by node. `replica_pids` are the (node id, PID) pairs known to be
    Serve replicas, so the report can say which memory holders are not; `unread` says why there are
    no readings, when the caller knows."""
    nodes = list(nodes)
    if not any(node.get("gpus") for node in nodes):
        errors = sorted({str(n["error"]) for n in nodes if n.get("error")})
        reason = unread or "no GPU memory reading exists" + (f" ({'; '.join(errors)[:300]})" if errors else " (no node reported a GPU)")
        return FitReport(estimate, (), replicas, reason)
    known = set(replica_pids)
    fits = tuple(_node_fit(estimate, node, known) for node in nodes if node.get("gpus"))
    return FitReport(estimate, fits, replicas)


def _node_fit(estimate: Estimate, node: dict, replica_pids: set[tuple[str, int]]) -> NodeFit:
    node_id, name = str(node.get("node_id", "")), node_name(node)
    return NodeFit(node_id, name, tuple(_gpu_fit(estimate, node_id, name, gpu, replica_pids) for gpu in node["gpus"]), estimate.gpus_per_replica, str(node.get("error") or ""))


def _gpu_fit(estimate: Estimate, node_id: str, node: str, gpu: dict, replica_pids: set[tuple[str, int]]) -> GpuFit:
    index, label = int(gpu.get("index", 0)), str(gpu.get("name") or "")
    total, used = gpu.get("memory_total_bytes"), gpu.get("memory_used_bytes")
    if gpu.get("error") or not total or used is None:
        return GpuFit(node, index, label, error=str(gpu.get("error") or "NVML reported no memory figures"))
    holders = [
        Holder(int(p["pid"]), int(p["used_bytes"]), str(p.get("name") or ""), (node_id, int(p["pid"])) in replica_pids)
        for p in gpu.get("processes") or []
        if p.get("used_bytes")
    ]
    # Memory no replica holds first: it is what a person can free.
    holders.sort(key=lambda h: (h.is_replica, -h.used_bytes))
    return GpuFit(node, index, label, int(total), max(0, int(total) - int(used)), estimate.on_gpu(int(total), label), tuple(holders))


# --- Estimate vs actual ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Measured:
    """What a replica's processes hold on each GPU they use, from one NVML reading."""

    by_gpu: dict[tuple[str, int], int] = field(default_factory=dict)  # (node id, GPU index) -> bytes
    totals: dict[tuple[str, int], int] = field(default_factory=dict)  # the GPU's total memory
    names: dict[tuple[str, int], str] = field(default_factory=dict)
    unreported: int = 0  # replica processes NVML listed without a figure (a container without PID access)

    @property
    def peak_bytes(self) -> int:
        return max(self.by_gpu.values(), default=0)


def measure(nodes: Iterable[dict], replica_pids: Collection[tuple[str, int]]) -> Measured:
    """Sum, per GPU, the memory NVML says the given (node id, PID) processes hold."""
    wanted = set(replica_pids)
    by_gpu: dict[tuple[str, int], int] = {}
    totals: dict[tuple[str, int], int] = {}
    names: dict[tuple[str, int], str] = {}
    unreported = 0
    for node in nodes:
        node_id = str(node.get("node_id", ""))
        for gpu in node.get("gpus") or []:
            key = (node_id, int(gpu.get("index", 0)))
            for process in gpu.get("processes") or []:
                if (node_id, int(process["pid"])) not in wanted:
                    continue
                if process.get("used_bytes") is None:
                    unreported += 1
                    continue
                by_gpu[key] = by_gpu.get(key, 0) + int(process["used_bytes"])
                totals[key], names[key] = int(gpu.get("memory_total_bytes") or 0), str(gpu.get("name") or "")
    return Measured(by_gpu, totals, names, unreported)


def replica_processes(model_key: str, actors: Iterable[dict], nodes: Iterable[dict]) -> set[tuple[str, int]]:
    """(node id, PID) of the GPU processes of `model_key`'s replicas, for `measure`: the Serve replica
    actors (class ServeReplica:<key>:<deployment>, as Ray's state API lists them: node_id, pid,
    class_name, placement_group_id), every actor in their placement groups (vLLM's tensor-parallel
    workers), and each GPU process one of those started (vLLM's EngineCore), told by the `parents`
    the zombies probe reads beside each process on its node."""
    actors = list(actors)
    replicas = [a for a in actors if str(a.get("class_name", "")).startswith(f"ServeReplica:{model_key}:")]
    groups = {a["placement_group_id"] for a in replicas if a.get("placement_group_id")}
    owned = {(str(a["node_id"]), int(a["pid"])) for a in actors if a in replicas or (a.get("placement_group_id") in groups)}
    found = set()
    for node in nodes:
        node_id = str(node.get("node_id", ""))
        for gpu in node.get("gpus") or []:
            for process in gpu.get("processes") or []:
                lineage = [int(process["pid"]), *map(int, process.get("parents") or [])]
                if any((node_id, pid) in owned for pid in lineage):
                    found.add((node_id, int(process["pid"])))
    return found
