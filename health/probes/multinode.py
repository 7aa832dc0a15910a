"""Multi-node readiness (seed 003 MN1-MN4): what must hold on every node before one replica's NCCL
group spans several, each read on its node by the agent (health/node_readings.py node_readiness:
health/probes/gpu.py read_node_readiness) and compared here.

- multinode:fabric-manager — on NVSwitch machines nv-fabricmanager runs and matches the driver (MN1:
  one node without it hangs every rank at NCCL init); elsewhere it is not needed.
- multinode:nccl — the NCCL settings are the same on every node (MN2 interface and IB adapters, MN3
  timeouts and error handling), as the raylet's environment has them.
- multinode:mtu — the data-plane interfaces' MTU is the same on every node (MN4: jumbo frames
  dropped at a mismatched hop hang large collectives only).

A difference is a warn naming the setting and each node's value; one node has nothing to compare.
"""
from __future__ import annotations

from django.db import transaction

from health.choices import Status, worst
from health.node_readings import node_readiness
from health.probes.base import Probe, Reading, ask_cluster

KIND = "multinode"
CLUSTER_CHECK = "multinode:cluster"
FABRIC_CHECK, NCCL_CHECK, MTU_CHECK = "multinode:fabric-manager", "multinode:nccl", "multinode:mtu"
UNSET = "(unset)"


def fetch_readiness() -> tuple[str, str, dict]:
    return ask_cluster("no node's readiness was read", lambda client: {"nodes": node_readiness(client)})


def node_label(node: dict) -> str:
    return f"{node.get('address') or '?'} ({node['node_id'][:8]})"


def compare(nodes: list[dict], rows: dict[str, list[str]], what: str, remedy: str) -> tuple[str, str, dict]:
    """One check's reading from `rows` (setting -> each node's value, in `nodes` order): warn
    naming every setting whose values differ, with each node's value."""
    labels = [node_label(n) for n in nodes]
    table = [{"setting": setting, "values": values, "differs": len(set(values)) > 1} for setting, values in rows.items()]
    findings = {"nodes": labels, "rows": table}
    differing = [row for row in table if row["differs"]]
    if len(nodes) < 2:
        return Status.OK, f"one node: no other to compare its {what} with", findings
    if not differing:
        return Status.OK, f"{what} the same on all {len(nodes)} nodes", findings
    said = "; ".join(f"{row['setting']} differs: " + ", ".join(f"{label} {value}" for label, value in zip(labels, row["values"])) for row in differing)
    return Status.WARN, f"{said}. {remedy}", findings


def assess_nccl(nodes: list[dict]) -> tuple[str, str, dict]:
    settings = sorted({name for node in nodes for name in node["nccl"]})
    rows = {name: [node["nccl"].get(name) or UNSET for node in nodes] for name in settings}
    return compare(nodes, rows, "NCCL settings", "Set them identically on every node, in the environment `ray start` runs with (MN2, MN3).")


def assess_mtu(nodes: list[dict]) -> tuple[str, str, dict]:
    # Interface names differ between machines (eth0, ens5): what must match is the MTU they carry.
    rows = {
        "data-plane MTU": [" / ".join(str(m) for m in sorted(set(node["mtu"].values()))) or "no interface" for node in nodes],
        "interfaces": [", ".join(f"{name} {mtu}" for name, mtu in node["mtu"].items()) or "none" for node in nodes],
    }
    status, detail, findings = compare(nodes, {"data-plane MTU": rows["data-plane MTU"]}, "data-plane MTU", "Set the same MTU end to end on every node and its switch ports (MN4); check with ping -M do -s <MTU-28>.")
    findings["rows"].append({"setting": "interfaces", "values": rows["interfaces"], "differs": False})
    return status, detail, findings


def fabric_manager_text(state: dict) -> str:
    if not state["needed"]:
        return "not needed (no NVSwitch)"
    if not state["running"]:
        return "NOT running"
    if state["version"] and state["driver_version"] and state["version"] != state["driver_version"]:
        return f"{state['version']}, driver {state['driver_version']}: MISMATCH"
    return f"running {state['version'] or '(version unknown)'}"


def assess_fabric_manager(nodes: list[dict]) -> tuple[str, str, dict]:
    labels = [node_label(n) for n in nodes]
    values = [fabric_manager_text(node["fabric_manager"]) for node in nodes]
    findings = {"nodes": labels, "rows": [{"setting": "fabric manager", "values": values, "differs": False}]}
    status, problems = Status.OK, []
    for label, node, value in zip(labels, nodes, values):
        state = node["fabric_manager"]
        if state["needed"] and not state["running"]:
            status = worst(status, Status.CRITICAL)
            problems.append(f"{label}: NVSwitch but nv-fabricmanager is not running: every multi-node job hangs at NCCL init; systemctl restart nvidia-fabricmanager (MN1)")
        elif "MISMATCH" in value:
            status = worst(status, Status.WARN)
            problems.append(f"{label}: nv-fabricmanager {state['version']} does not match driver {state['driver_version']}: install the matching one (MN1)")
    findings["rows"][0]["differs"] = status != Status.OK
    if problems:
        return status, "; ".join(problems), findings
    needed = sum(1 for node in nodes if node["fabric_manager"]["needed"])
    return Status.OK, f"running and matching the driver on {needed} NVSwitch node(s)" if needed else "not needed: no node has NVSwitch", findings


ASSESSMENTS = ((FABRIC_CHECK, assess_fabric_manager), (NCCL_CHECK, assess_nccl), (MTU_CHECK, assess_mtu))


def record_readiness(fetched: dict) -> Reading:
    from health.models import HealthCheck, record_reading

    nodes = fetched["nodes"]
    with transaction.atomic():
        if nodes is None:
            # Checks read before go unknown; none is made up before the first real reading.
            for name in HealthCheck.objects.filter(name__in=[n for n, _ in ASSESSMENTS]).values_list("name", flat=True):
                record_reading(name, KIND, Status.UNKNOWN, fetched["error"], findings={})
            return Status.UNKNOWN, fetched["error"]
        read = [node for node in nodes if not node.get("error")]
        for name, assess in ASSESSMENTS:
            status, detail, findings = assess(read)
            record_reading(name, KIND, status, detail, findings=findings)
    unread = [f"{node_label(n)}: {n['error']}" for n in nodes if n.get("error")]
    if unread:
        return Status.WARN, f"{len(read)} of {len(nodes)} node(s) read; not read: {'; '.join(unread)}"
    return Status.OK, f"{len(nodes)} node(s) read"


def probes() -> list[Probe]:
    return [Probe(CLUSTER_CHECK, KIND, fetch_readiness, record=record_readiness)]
