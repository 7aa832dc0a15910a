"""RayServeClient.node_runtimes() against the session's real private Ray head: each alive node reads
its own runtime in a Ray task placed on it, and a node that fails or does not answer is still listed
with the reason. No model is deployed: these take seconds."""
from __future__ import annotations

import time

import pytest

from gates import node_runtimes as node_runtimes_module
from gates.node_runtimes import node_runtimes
from gates.preflight import runtime
from gates.preflight.base import NodeRuntime
from serving.cluster import RayServeClient
from tests.ray_cluster import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def client(ray_head) -> RayServeClient:
    return RayServeClient()


def alive_nodes() -> list[str]:
    import ray

    return [node["NodeID"] for node in ray.nodes() if node.get("Alive")]


def test_every_alive_node_reports_what_it_has_installed(client, ray_head):
    readings = node_runtimes(client)
    print("node_runtimes():", readings)

    assert [r["node_id"] for r in readings] == alive_nodes()
    # The head runs on this machine from the same virtual environment: the same reading as here.
    here = runtime.local_node_runtime().as_dict()
    for reading in readings:
        assert not reading["error"], reading
        assert {k: v for k, v in reading.items() if k != "node_id"} == {k: v for k, v in here.items() if k != "node_id"}
        assert NodeRuntime.from_dict(reading).packages["ray"] == here["packages"]["ray"] != ""


def test_the_reading_is_taken_by_a_task_on_each_node(client, ray_head):
    from ray.util.state import list_tasks

    node_runtimes(client)

    def finished_on() -> set[str]:
        tasks = list_tasks(address=ray_head.dashboard_url, filters=[("name", "=", "gantry-node-runtime")], detail=True, raise_on_missing_output=False)
        return {task.node_id for task in tasks if task.state == "FINISHED"}

    # Task events reach the state API a second or so after the task ends.
    assert wait_for("the node-runtime tasks in Ray's state API", lambda: finished_on() >= set(alive_nodes()), 30, 0.5)


def test_a_node_whose_reading_fails_is_listed_with_the_reason(client, ray_head, monkeypatch):
    def read_node(node_id: str) -> dict:
        raise RuntimeError(f"no package metadata on {node_id[:8]}")

    monkeypatch.setattr(runtime, "read_node", read_node)

    (reading,) = node_runtimes(client)

    assert reading["error"].startswith("reading the node's runtime failed: RuntimeError: no package metadata on")
    assert reading["packages"] == {} and reading["nvml_error"] == reading["error"]
    assert NodeRuntime.from_dict(reading).node_id == alive_nodes()[0]


def test_a_node_that_does_not_answer_in_time_is_listed_and_not_waited_for(client, ray_head, monkeypatch):
    def read_node(node_id: str) -> dict:
        import time

        time.sleep(60)
        return {}

    monkeypatch.setattr(runtime, "read_node", read_node)
    monkeypatch.setattr(node_runtimes_module, "NODE_RUNTIME_TIMEOUT_S", 2.0)

    started = time.monotonic()
    (reading,) = node_runtimes(client)

    assert time.monotonic() - started < 20
    assert reading["error"] == "the node did not report its runtime (no answer within 2 s); it may be overloaded or unreachable"
    assert reading["packages"] == {}


def test_the_nodes_need_none_of_gantrys_code(ray_head, tmp_path):
    """Another driver, started outside the repo (Ray puts the driver's directory on its workers'
    path), so the workers cannot import Gantry, as on a KubeRay image: the reading still arrives,
    because node_runtimes() ships runtime.py and gpu.py by value."""
    import json
    import os
    import subprocess
    import sys
    import textwrap

    from tests.conftest import ROOT

    code = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})  # this driver's own path only
        import django
        django.setup()
        import ray
        from django.conf import settings
        from gates.node_runtimes import node_runtimes
        from serving.cluster import RayServeClient

        settings.RAY_ADDRESS = {ray_head.address!r}
        readings = node_runtimes(RayServeClient())

        @ray.remote(num_cpus=0)
        def worker_can_import_gantry():
            import importlib.util
            return importlib.util.find_spec("gates") is not None

        print(json.dumps({{"readings": readings, "worker_can_import_gantry": ray.get(worker_can_import_gantry.remote(), timeout=60)}}))
        """
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])

    assert found["worker_can_import_gantry"] is False
    (reading,) = found["readings"]
    assert not reading["error"], reading
    assert reading["packages"] == runtime.local_node_runtime().packages
