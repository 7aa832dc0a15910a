"""GPU: every GPU of every alive node, read on its node (health/node_readings.py node_gpus, which runs
health/probes/gpu.py there), as one check per GPU ("gpu:<node id>:<index>") and one GpuSample per
GPU per cycle. It runs in the worker, never in the web process.

The probe's own check, gpu:cluster, says whether the nodes could be read at all; each GPU's check
says how that GPU is: critical at an XID that takes it out of service, when NVML says it is lost
(off the bus), or when it is missing (a node that had it answered without it), unknown while its node
does not answer in time, warn at WARN_TEMPERATURE_C, an uncorrected ECC error, a
hardware slowdown or an XID that calls for draining it.
"""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from health import xid
from health.choices import Status, worst
from health.node_readings import node_gpus
from health.probes.base import Probe, Reading, ask_cluster

CLUSTER_CHECK = "gpu:cluster"
KIND = "gpu"
WARN_TEMPERATURE_C = 85
# Throttle reasons that mean the GPU protects itself (heat, power brake), not a setting or idleness.
SLOWDOWNS = frozenset({"hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "sw_thermal_slowdown"})
GIB = 1024**3


def check_name(node_id: str, index: int) -> str:
    return f"gpu:{node_id}:{index}"


def fetch_nodes() -> tuple[str, str, dict]:
    """Off the cycle's thread: ask every node for its GPUs (the slow part, over Ray)."""
    return ask_cluster("no GPU was read", lambda client: {"nodes": node_gpus(client)})


def assess_gpu(gpu: dict) -> Reading:
    """One GPU's reading as a status and words."""
    if gpu.get("lost"):
        # NVML's GPU_IS_LOST is what XID 79 leaves behind; the kernel log names the XID.
        fallen = xid.describe(79)
        return Status.CRITICAL, f"{fallen.meaning} (NVML: GPU is lost, as after XID {fallen.code}): drain the node, then {fallen.action} it"
    if "error" in gpu:
        return Status.CRITICAL, f"{gpu['error']}: drain the node and check the GPU (nvidia-smi -q)"
    status, problems = Status.OK, []
    for event in gpu.get("xids") or []:
        known = xid.describe(event["xid"])
        status = worst(status, Status.CRITICAL if known.takes_the_gpu_out else Status.WARN)
        problems.append(f"XID {known.code} ({known.meaning}): {known.action}")
    temperature = gpu.get("temperature_c")
    if temperature is not None and temperature >= WARN_TEMPERATURE_C:
        status = worst(status, Status.WARN)
        problems.append(f"{temperature} °C (warn from {WARN_TEMPERATURE_C} °C): check the cooling")
    if gpu.get("ecc_uncorrected"):
        status = worst(status, Status.WARN)
        problems.append(f"{gpu['ecc_uncorrected']} uncorrected ECC error(s) since the driver loaded: drain and reset the GPU")
    slowdowns = sorted(SLOWDOWNS & set(gpu.get("throttle_reasons") or []))
    if slowdowns:
        status = worst(status, Status.WARN)
        problems.append(f"clocks held down by {', '.join(slowdowns)}")
    return status, "; ".join([figures(gpu), *problems])


def figures(gpu: dict) -> str:
    parts = [gpu.get("name") or f"GPU {gpu.get('index')}"]
    if gpu.get("utilization_percent") is not None:
        parts.append(f"{gpu['utilization_percent']} % busy")
    if gpu.get("memory_total_bytes"):
        parts.append(f"{(gpu.get('memory_used_bytes') or 0) / GIB:.1f} of {gpu['memory_total_bytes'] / GIB:.1f} GiB")
    if gpu.get("temperature_c") is not None:
        parts.append(f"{gpu['temperature_c']} °C")
    if gpu.get("power_w") is not None:
        parts.append(f"{gpu['power_w']} W")
    return ", ".join(parts)


def record_nodes(fetched: dict, now=None) -> Reading:
    """In the cycle's thread: one reading per GPU check (known GPUs that were not reported are
    missing), one GpuSample per GPU read, and the probe's own reading. All or nothing: a failure
    halfway leaves no GPU half-recorded (the probe's own check then says why)."""
    with transaction.atomic():
        return _record_nodes(fetched, now or timezone.now())


def _record_nodes(fetched: dict, now) -> Reading:
    from health.models import GpuSample, HealthCheck, record_reading

    known = set(HealthCheck.objects.filter(kind=KIND).exclude(name=CLUSTER_CHECK).values_list("name", flat=True))
    nodes = fetched["nodes"]
    if nodes is None:
        for name in sorted(known):
            record_reading(name, KIND, Status.UNKNOWN, fetched["error"])
        return Status.UNKNOWN, fetched["error"]
    seen: set[str] = set()
    samples: list[GpuSample] = []
    without_gpus: list[str] = []
    node_errors: dict[str, str] = {}
    # Nodes that did not answer (late, or their task failed): nothing is known of their GPUs.
    unanswered = {node["node_id"]: node for node in nodes if node.get("answered") is False}
    counts: dict[str, int] = {}
    for node in nodes:
        node_id = node["node_id"]
        if node.get("error"):
            node_errors[node_id] = node["error"]
        if not node.get("gpus"):
            without_gpus.append(node_id)
        for gpu in node.get("gpus") or []:
            name = check_name(node_id, gpu["index"])
            seen.add(name)
            status, detail = assess_gpu(gpu)
            counts[status] = counts.get(status, 0) + 1
            # Read, if only as an error: a GPU stuck in error writes no sample but is still there.
            record_reading(name, KIND, status, detail, findings={})
            if "error" not in gpu:
                samples.append(_sample(node, gpu, now))
    for name in sorted(known - seen):
        node_id = name.split(":")[1]
        if node_id in unanswered:
            counts[Status.UNKNOWN] = counts.get(Status.UNKNOWN, 0) + 1
            record_reading(name, KIND, Status.UNKNOWN, not_answered(unanswered[node_id]))
            continue
        why = node_errors.get(node_id) or "its node is no longer among the cluster's alive nodes"
        counts[Status.CRITICAL] = counts.get(Status.CRITICAL, 0) + 1
        record_reading(name, KIND, Status.CRITICAL, f"the GPU is missing: it was read before but not now ({why}); check the node and its driver",
                       findings={"missing": True})
    GpuSample.objects.bulk_create(samples)
    gpus = sum(counts.values())
    detail = f"{len(nodes)} node(s), {gpus} GPU(s)"
    if counts:
        detail += ": " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    if without_gpus:
        detail += f"; {len(without_gpus)} node(s) without a GPU reading"
        reasons = sorted({node_errors[n] for n in without_gpus if n in node_errors})
        if reasons:
            detail += f" ({'; '.join(reasons)})"
    return Status.OK, detail


def not_answered(node: dict) -> str:
    """Why a GPU of a node that did not answer is unknown: its node's silence says nothing of the GPU."""
    if node.get("late_after_s"):
        why = f"node {node['node_id'][:12]} did not answer within {node['late_after_s']:g} s (overloaded or unreachable?)"
    else:
        why = f"node {node['node_id'][:12]} did not answer: {node.get('error') or 'no reason given'}"
    return f"not read this cycle: {why}; nothing is known of this GPU until the node answers: check the node if this lasts"


def _sample(node: dict, gpu: dict, now):
    from health.models import GpuSample

    details = {
        key: gpu.get(key)
        for key in ("sm_clock_mhz", "memory_clock_mhz", "throttle_reasons", "ecc_uncorrected", "pcie_replays", "processes")
    }
    details.update(address=node.get("address", ""), driver_version=node.get("driver_version", ""), driver_cuda=node.get("driver_cuda", ""))
    return GpuSample(
        node_id=node["node_id"],
        gpu_index=gpu["index"],
        uuid=gpu.get("uuid") or "",
        name=gpu.get("name") or "",
        at=now,
        utilization_percent=gpu.get("utilization_percent"),
        memory_used_bytes=gpu.get("memory_used_bytes"),
        memory_total_bytes=gpu.get("memory_total_bytes"),
        temperature_c=gpu.get("temperature_c"),
        power_w=gpu.get("power_w"),
        details=details,
        xids=list(gpu.get("xids") or []),
    )


def probes() -> list[Probe]:
    return [Probe(CLUSTER_CHECK, KIND, fetch_nodes, record=record_nodes)]
