"""A process that holds GPU memory and dies, on a real Ray node: the agent reads each PID's liveness,
start time and parents on the node (health/probes/gpu.py, shipped by RayServeClient.node_processes),
the probe crosses them with Ray's real actors, and a reap runs as a Ray task on that node.

The session's private head runs a real Serve application for a model Gantry knows; its replica
starts a child process, as vLLM's engine core is one, that the stand-in NVML says holds memory.
This machine has no GPU, so NVML is the one stand-in (tests/health/test_gpu_nvml.py's StandInNvml,
shipped to the node with the agent); the processes, Ray, Serve and the kill are real.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from types import SimpleNamespace

import pytest

from dashboard.models import AuditEntry
from health.models import HealthCheck
from health.cycle import run_cycle
from health.probes import gpu, zombies
from health.reaping import reap
from tests.health import test_gpu_nvml
from tests.serving.factories import bulk_models

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

APP = "alice-m0"  # the model_key tests/serving/factories.bulk_models gives alice's first model
MIB = 1024**2


@pytest.fixture(scope="module")
def replica(ray_head):
    """A Serve application named like Gantry's model, whose replica runs an engine child process:
    (replica worker PID, engine PID)."""
    import ray
    from ray import serve

    from serving.cluster import RayServeClient

    RayServeClient()._connect()
    serve.start(http_options={"host": "127.0.0.1", "port": ray_head.serve_port})

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Engine:
        def __init__(self) -> None:
            self.core = subprocess.Popen(["sleep", "900"])

        def pids(self) -> tuple[int, int]:
            return os.getpid(), self.core.pid

    handle = serve.run(Engine.bind(), name=APP, route_prefix=None)
    worker_pid, core_pid = handle.pids.remote().result(timeout_s=120)
    yield SimpleNamespace(worker_pid=worker_pid, core_pid=core_pid, node_id=ray.get_runtime_context().get_node_id())
    serve.delete(APP)
    try:
        os.kill(core_pid, signal.SIGKILL)  # orphaned by its replica's end, as a real engine core can be
    except ProcessLookupError:
        pass


@pytest.fixture
def gantry(replica, alice, admin, settings):
    settings.GANTRY_SERVE_CLIENT = "serving.cluster.RayServeClient"
    settings.GANTRY_HEALTH_GRACE_READINGS = 1
    bulk_models(alice, 1, states=("RUNNING",))
    return replica


@pytest.fixture
def stranger(child):
    """A live process no replica started."""
    return child


@pytest.fixture
def nvml_lists(monkeypatch):
    """Make the agent on the node read NVML through the stand-in, listing these PIDs as holding memory."""
    import ray

    ray.cloudpickle.register_pickle_by_value(test_gpu_nvml)
    listed: list[int] = []
    real = gpu.read_node_processes
    # Named here, not through their module: by value, Ray ships the two, not the test module.
    stand_in, h100 = test_gpu_nvml.StandInNvml, test_gpu_nvml.h100

    def through_stand_in(node_id: str, nvml=None) -> dict:
        device = {**h100(), "compute": [SimpleNamespace(pid=pid, usedGpuMemory=900 * MIB) for pid in listed], "graphics": []}
        return real(node_id, stand_in(devices=[device]))

    monkeypatch.setattr(gpu, "read_node_processes", through_stand_in)
    yield listed
    ray.cloudpickle.unregister_pickle_by_value(test_gpu_nvml)


def node_zombies(node_id: str) -> list[dict]:
    started = time.monotonic()
    (result,) = run_cycle(zombies.probes())
    print(f"zombies probe: {result.cost_ms:.1f} ms CPU in the cycle, {time.monotonic() - started:.2f} s wall: {result.detail}")
    return HealthCheck.objects.get(name=zombies.check_name(node_id)).findings["zombies"]


def test_the_replicas_engine_is_known_and_an_unknown_process_is_a_zombie(gantry, stranger, nvml_lists):
    nvml_lists += [gantry.core_pid, stranger.pid]

    (zombie,) = node_zombies(gantry.node_id)

    assert zombie["pid"] == stranger.pid and zombie["alive"] and zombie["reapable"]
    assert zombie["why"] == "alive, not a Ray worker of any replica Gantry knows"
    assert zombie["cmdline"] == "sleep 300" and zombie["used_bytes"] == 900 * MIB


def test_once_the_model_is_deleted_its_replicas_engine_is_a_zombie_the_panel_does_not_offer_to_reap(gantry, nvml_lists):
    from serving.models import ServeModel

    ServeModel.objects.filter(model_key=APP).update(state="DELETED")
    nvml_lists.append(gantry.core_pid)

    (zombie,) = node_zombies(gantry.node_id)

    assert zombie["pid"] == gantry.core_pid and not zombie["reapable"]
    assert f"of Serve application {APP}, which Gantry does not manage" in zombie["why"]


def test_a_process_that_holds_memory_and_dies_is_reported_dead(gantry, stranger, nvml_lists):
    nvml_lists.append(stranger.pid)
    assert node_zombies(gantry.node_id)[0]["alive"] is True
    stranger.kill()
    stranger.wait()

    (zombie,) = node_zombies(gantry.node_id)

    assert zombie["pid"] == stranger.pid and zombie["alive"] is False and not zombie["reapable"]
    assert "its process has ended but NVML still counts its memory" in zombie["why"]


@pytest.fixture
def worker_task(django_capture_on_commit_callbacks):
    """The health worker's task, run in this process once the view's transaction commits."""
    from dashboard.celery import app

    app.conf.task_always_eager = True
    try:
        yield lambda: django_capture_on_commit_callbacks(execute=True)
    finally:
        app.conf.task_always_eager = False


def test_a_confirmed_reap_kills_the_process_on_its_node_and_is_audited(gantry, stranger, nvml_lists, admin_client, worker_task):
    nvml_lists.append(stranger.pid)
    node_zombies(gantry.node_id)
    with worker_task():
        response = admin_client.post(f"/health/zombies/{gantry.node_id}/{stranger.pid}/reap/")

    assert response.status_code == 303
    assert stranger.wait(timeout=5) == -signal.SIGTERM
    entry = AuditEntry.objects.get(action="health.reap_process")
    assert entry.target == f"PID {stranger.pid} on node {gantry.node_id}"
    assert entry.detail == f"done: PID {stranger.pid} ended after SIGTERM"


def test_reaping_a_live_replicas_pid_or_its_engine_is_refused_on_the_node(gantry, admin):
    core = gpu.process_facts(gantry.core_pid)
    worker = gpu.process_facts(gantry.worker_pid)

    engine = reap(gantry.node_id, gantry.core_pid, core["started"], admin.pk)
    own = reap(gantry.node_id, gantry.worker_pid, worker["started"], admin.pk)

    assert engine.detail.startswith(f"refused: PID {gantry.core_pid} is a process of replica ")
    assert engine.detail.endswith(f" of model {APP} (PID {gantry.worker_pid}); scale or delete the model instead")
    assert own.detail.startswith(f"refused: PID {gantry.worker_pid} is replica ")
    assert own.detail.endswith(f" of model {APP}; scale or delete the model instead")
    assert gpu.process_facts(gantry.core_pid)["alive"] and gpu.process_facts(gantry.worker_pid)["alive"]


@pytest.fixture
def orphan_segment():
    """A /dev/shm segment as a stopped engine leaves it: nobody holds it, older than the grace."""
    import secrets

    path = f"/dev/shm/psm_{secrets.token_hex(4)}"
    with open(path, "wb") as segment:
        segment.write(b"\0" * 65536)
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    yield os.path.basename(path)
    if os.path.exists(path):
        os.unlink(path)


def test_an_orphan_segment_is_found_on_its_node_and_removed_after_confirmation(gantry, nvml_lists, orphan_segment, admin_client, worker_task):
    run_cycle(zombies.probes())
    findings = HealthCheck.objects.get(name=zombies.check_name(gantry.node_id)).findings
    assert orphan_segment in [segment["name"] for segment in findings["segments"]]
    with worker_task():
        response = admin_client.post(f"/health/zombies/{gantry.node_id}/shm/{orphan_segment}/remove/")

    assert response.status_code == 303 and not os.path.exists(f"/dev/shm/{orphan_segment}")
    entry = AuditEntry.objects.get(action="health.remove_shm_segment")
    assert entry.detail == f"done: {orphan_segment} removed (65536 bytes of RAM freed)"
