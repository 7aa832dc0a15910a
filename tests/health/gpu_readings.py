"""Node GPU readings in the shape RayServeClient.node_gpus returns (health/probes/gpu.py's
read_node on each node, plus its address), for the probe, panel, metrics tests and the bench."""
from __future__ import annotations

GIB = 1024**3


def gpu(index: int = 0, **changes) -> dict:
    reading = {
        "index": index,
        "uuid": f"GPU-{index:04d}-6f1c",
        "name": "NVIDIA H100 80GB HBM3",
        "memory_total_bytes": 80 * GIB,
        "memory_used_bytes": 20 * GIB,
        "utilization_percent": 37,
        "temperature_c": 54,
        "power_w": 312.5,
        "sm_clock_mhz": 1980,
        "memory_clock_mhz": 2619,
        "throttle_reasons": ["gpu_idle"],
        "ecc_uncorrected": 0,
        "pcie_replays": 0,
        "processes": [{"pid": 4242, "name": "ray::ServeReplica", "used_bytes": 20 * GIB, "kind": "compute"}],
        "xids": [],
    }
    reading.update(changes)
    return reading


def lost_gpu(index: int = 0) -> dict:
    """A GPU that answered NVML_ERROR_GPU_IS_LOST, as read_node lists it: off the bus (XID 79)."""
    return {"index": index, "error": f"NVML could not read GPU {index}: GPU is lost", "lost": True}


def node(node_id: str = "a" * 56, gpus: list[dict] | None = None, *, address: str = "10.0.0.1", error: str = "") -> dict:
    return {
        "node_id": node_id,
        "address": address,
        "driver_version": "570.86.15",
        "driver_cuda": "12.8",
        "gpus": [gpu(0)] if gpus is None else gpus,
        "error": error,
    }


def gpu_cycle():
    """One probe cycle of the GPU probe alone, as beat runs it."""
    from health.cycle import all_probes, run_cycle

    return run_cycle([probe for probe in all_probes() if probe.kind == "gpu"])
