"""RayServeClient.node_gpus() against the session's real private Ray head: each alive node reads its
own GPUs (health/probes/gpu.py, shipped by value) in a Ray task placed on it, with its address; a
node that fails or does not answer is still listed with the reason. This machine has no GPU, so
the reading says so plainly; on a GPU machine it has the GPUs."""
from __future__ import annotations

import time

import pytest

from health.node_readings import node_gpus
from health.probes import gpu
from serving.cluster import RayServeClient
from serving.engine import _nvidia_gpu_present

pytestmark = pytest.mark.slow


@pytest.fixture
def client(ray_head) -> RayServeClient:
    return RayServeClient()


def alive_nodes() -> dict[str, str]:
    import ray

    return {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}


def test_every_alive_node_reports_its_gpus_with_its_address(client, ray_head):
    readings = node_gpus(client)
    print("node_gpus():", readings)

    assert {r["node_id"]: r["address"] for r in readings} == alive_nodes()
    for reading in readings:
        assert set(reading) >= {"driver_version", "driver_cuda", "gpus", "error"}
        if _nvidia_gpu_present():
            assert reading["error"] == "" and reading["gpus"] and all("xids" in g for g in reading["gpus"])
        else:
            assert reading["gpus"] == [] and "NVIDIA driver" in reading["error"], reading


def test_a_node_whose_reading_fails_is_listed_with_the_reason(client, ray_head, monkeypatch):
    def read_node(node_id: str) -> dict:
        raise RuntimeError(f"NVML exploded on {node_id[:8]}")

    monkeypatch.setattr(gpu, "read_node", read_node)

    (reading,) = node_gpus(client)

    assert reading["error"].startswith("reading the node's GPUs failed: RuntimeError: NVML exploded on")
    assert reading["gpus"] == [] and reading["address"] == next(iter(alive_nodes().values()))


def test_a_node_that_does_not_answer_in_time_is_listed_and_not_waited_for(client, ray_head, monkeypatch, settings):
    def read_node(node_id: str) -> dict:
        import time

        time.sleep(60)
        return {}

    monkeypatch.setattr(gpu, "read_node", read_node)
    settings.GANTRY_HEALTH_PROBE_TIMEOUT_S = 2  # node_gpus waits 80 % of it

    started = time.monotonic()
    (reading,) = node_gpus(client)

    assert time.monotonic() - started < 20
    assert reading["error"] == "the node did not report its GPUs (no answer within 1.6 s); it may be overloaded or unreachable"
