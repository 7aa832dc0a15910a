"""VRAM zombies: GPU memory held by a process that has ended, or that lives but is no replica of a
model Gantry knows; and /dev/shm segments no process holds (seed 003: VRAM held by dead processes).

Each node reads its own GPU processes and what only it can tell about their PIDs (alive, start time,
parents) and its orphan segments (health/node_readings.py node_processes: health/probes/gpu.py and
serving/shm.py on the node). Here they are crossed with Ray's alive actors — a Serve replica is an
actor of class ServeReplica:<app>:<deployment>, and the engine's own workers share its placement
group or descend from its PID — and with Gantry's models. One check per node ("zombies:<node id>"),
warn while a zombie holds memory, its findings what the panel offers to reap; a node without NVIDIA's
driver has no GPU memory to hold, and reads ok (only its /dev/shm segments are looked at).
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from health.choices import Status
from health.node_readings import node_processes
from health.probes.base import Probe, Reading, ask_cluster

CLUSTER_CHECK = "zombies:cluster"
KIND = "zombies"
MIB = 1024**2
REPLICA_CLASS = "ServeReplica:"
# How health/probes/gpu.py's NVML reader words a node without NVIDIA's library (LibraryNotFound). Such
# a node cannot hold GPU memory, so it has nothing to look for: ok, not unknown. Every other reason
# (a driver not loaded, no permission, a node that did not answer) leaves the node unread.
NO_DRIVER = "no NVIDIA driver on this machine"


def check_name(node_id: str) -> str:
    return f"zombies:{node_id}"


@dataclass(frozen=True)
class Holder:
    """A Ray actor a GPU process is, or descends from."""

    description: str  # "replica 3x9k of model alice-…-tiny"
    known: bool  # a replica (or an engine worker of one) of a model Gantry knows, or the router


def fetch_processes() -> tuple[str, str, dict]:
    """Off the cycle's thread: every node's GPU processes and segments, and Ray's alive actors."""
    return ask_cluster("no node's processes were read", lambda client: {"nodes": node_processes(client), "actors": client.serve_actors()})


def known_models() -> dict[str, str]:
    """Serve application name (model_key) -> public model id, for every model that may have replicas."""
    from serving.choices import State
    from serving.models import ServeModel

    return dict(ServeModel.objects.exclude(state=State.DELETED).values_list("model_key", "model_id"))


def replica_holders(actors: list[dict], models: dict[str, str]) -> dict[tuple[str, int], Holder]:
    """(node id, PID) -> Holder for every Serve replica's worker and every actor that shares a
    replica's placement group (vLLM's workers for a replica spanning GPUs or nodes)."""
    from serving.cluster.serve import ROUTER_APP

    holders: dict[tuple[str, int], Holder] = {}
    by_group: dict[str, Holder] = {}
    for actor in actors:
        if not actor["class_name"].startswith(REPLICA_CLASS):
            continue
        app = actor["class_name"].split(":")[1]
        # Serve names a replica's actor SERVE_REPLICA::<app>#<deployment>#<replica id>.
        replica = actor["name"].rsplit("#", 1)[-1] if "#" in actor["name"] else actor["actor_id"][:8]
        if app == ROUTER_APP:
            holder = Holder(f"replica {replica} of Gantry's {ROUTER_APP}", True)
        elif app in models:
            holder = Holder(f"replica {replica} of model {models[app]}", True)
        else:
            holder = Holder(f"replica {replica} of Serve application {app}, which Gantry does not manage", False)
        holders[(actor["node_id"], actor["pid"])] = holder
        if actor["placement_group_id"]:
            by_group[actor["placement_group_id"]] = holder
    for actor in actors:
        key = (actor["node_id"], actor["pid"])
        if key not in holders and actor["placement_group_id"] in by_group:
            replica = by_group[actor["placement_group_id"]]
            holders[key] = Holder(f"an engine worker of {replica.description}", replica.known)
    return holders


def replica_pids(node_id: str, holders: dict[tuple[str, int], Holder]) -> dict[int, str]:
    """What reap_process must not kill on that node: PID -> what it is."""
    return {pid: holder.description for (node, pid), holder in holders.items() if node == node_id}


def assess_process(node_id: str, process: dict, holders: dict[tuple[str, int], Holder], actors_by_pid: dict[tuple[str, int], dict]) -> dict | None:
    """A zombie's finding ({pid, why, reapable, …}) or None for a process Gantry knows."""
    if not process.get("alive"):
        why = ("its process has ended but NVML still counts its memory: the driver frees it once the GPU context is torn "
               "down; if it stays, reset the GPU (nvidia-smi --gpu-reset) while no replica uses it")
        return {**_fields(process), "why": why, "reapable": False}
    for pid in (process["pid"], *process.get("parents", [])):
        holder = holders.get((node_id, pid))
        if holder is None:
            continue
        if holder.known:
            return None
        return {**_fields(process), "why": f"it is {holder.description}: delete that application with Serve", "reapable": False}
    actor = next((actors_by_pid[(node_id, pid)] for pid in (process["pid"], *process.get("parents", [])) if (node_id, pid) in actors_by_pid), None)
    if actor is not None:
        why = f"alive, a Ray actor of class {actor['class_name'] or '?'}, not a replica of any model Gantry knows"
    else:
        why = "alive, not a Ray worker of any replica Gantry knows"
    return {**_fields(process), "why": why, "reapable": process.get("started") is not None}


def _fields(process: dict) -> dict:
    return {key: process.get(key) for key in ("pid", "name", "cmdline", "used_bytes", "started", "alive")}


def assess_node(node: dict, holders: dict[tuple[str, int], Holder], actors_by_pid: dict[tuple[str, int], dict]) -> tuple[str, str, dict]:
    node_id = node["node_id"]
    where = f"node {node.get('address') or node_id[:12]}"
    unseen = [p for gpu in node.get("gpus") or [] for p in gpu.get("processes") or [] if p.get("visible") is False]
    if unseen:
        # NVML's PIDs are the host's; a container's /proc has none of them, or other processes under
        # those numbers: "ended" would send someone to reset a GPU a live replica uses.
        return Status.UNKNOWN, (
            f"{where} runs in a PID namespace of its own (a container) and cannot see the host's processes: the "
            f"{len(unseen)} process(es) NVML lists on its GPUs cannot be told apart (replica or zombie). Run the Ray node "
            "with the host's PID namespace (docker --pid=host, Kubernetes hostPID: true) to check them"
        ), {"node_id": node_id, "address": node.get("address", ""), "zombies": [], "segments": list(node.get("segments") or [])}
    zombies = []
    for gpu in node.get("gpus") or []:
        for process in gpu.get("processes") or []:
            finding = assess_process(node_id, process, holders, actors_by_pid)
            if finding is not None:
                zombies.append({**finding, "gpu": gpu["index"], "uuid": gpu.get("uuid", "")})
    segments = list(node.get("segments") or [])
    findings = {"node_id": node_id, "address": node.get("address", ""), "zombies": zombies, "segments": segments}
    no_driver = not node.get("gpus") and node.get("error", "").startswith(NO_DRIVER)
    if node.get("error") and not node.get("gpus") and not no_driver:
        return Status.UNKNOWN, f"{where}: {node['error']}", findings
    parts = [
        f"GPU {z['gpu']} PID {z['pid']} ({z['name'] or z['cmdline'][:40] or '?'}) holds {memory_text(z['used_bytes'])}: {z['why']}"
        for z in zombies
    ]
    if segments:
        held = sum(s["resident_bytes"] for s in segments)
        parts.append(f"{len(segments)} /dev/shm segment(s) no process holds ({memory_text(held)} of RAM): {', '.join(s['name'] for s in segments[:5])}")
    if not parts and no_driver:
        return Status.OK, f"{where}: no NVIDIA driver on this node, so no GPU memory to look for; no orphan /dev/shm segment", findings
    if not parts:
        gpus = len(node.get("gpus") or [])
        return Status.OK, f"{where}: no zombie on its {gpus} GPU(s), no orphan /dev/shm segment", findings
    return Status.WARN, f"{where}: " + "; ".join(parts), findings


def memory_text(used: int | None) -> str:
    return "an unknown amount" if used is None else f"{used / MIB:.0f} MiB"


def record_processes(fetched: dict) -> Reading:
    with transaction.atomic():
        return _record_processes(fetched)


def _record_processes(fetched: dict) -> Reading:
    from health.models import HealthCheck, record_reading

    known = set(HealthCheck.objects.filter(kind=KIND).exclude(name=CLUSTER_CHECK).values_list("name", flat=True))
    nodes = fetched["nodes"]
    if nodes is None:
        for name in sorted(known):
            record_reading(name, KIND, Status.UNKNOWN, fetched["error"], findings={})
        return Status.UNKNOWN, fetched["error"]
    holders = replica_holders(fetched["actors"], known_models())
    actors_by_pid = {(a["node_id"], a["pid"]): a for a in fetched["actors"]}
    seen, zombies, segments = set(), 0, 0
    for node in nodes:
        status, detail, findings = assess_node(node, holders, actors_by_pid)
        name = check_name(node["node_id"])
        seen.add(name)
        zombies += len(findings["zombies"])
        segments += len(findings["segments"])
        record_reading(name, KIND, status, detail, findings=findings)
    for name in sorted(known - seen):
        record_reading(name, KIND, Status.UNKNOWN, "its node is no longer among the cluster's alive nodes", findings={})
    return Status.OK, f"{len(nodes)} node(s): {zombies} zombie process(es), {segments} orphan /dev/shm segment(s)"


def last_findings(node_id: str) -> dict:
    """What the last reading of that node found ({} before any)."""
    from health.models import HealthCheck

    check = HealthCheck.objects.filter(name=check_name(node_id)).first()
    return check.findings if check else {}


def find_zombie(node_id: str, pid: int) -> dict | None:
    return next((z for z in last_findings(node_id).get("zombies", []) if z["pid"] == pid), None)


def find_segment(node_id: str, name: str) -> dict | None:
    return next((s for s in last_findings(node_id).get("segments", []) if s["name"] == name), None)


def probes() -> list[Probe]:
    return [Probe(CLUSTER_CHECK, KIND, fetch_processes, record=record_processes)]
