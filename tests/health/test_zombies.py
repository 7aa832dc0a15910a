"""VRAM zombies, crossed and reaped: the probe's rules (which GPU process is a replica Gantry knows) and
the panel's reap (confirmation, admins only, refusals, audit), with FakeServe reporting what the Ray
client would. The processes are real children of this test: reap_process checks and kills them for
real on this machine, the fake cluster's one node. tests/health/test_zombies_on_ray.py runs the same
through the agent on a real Ray node."""
from __future__ import annotations


import pynvml
import pytest
from django.test import Client

from dashboard.models import AuditEntry
from health.choices import Status
from health.models import HealthCheck
from health.cycle import run_cycle
from health.probes import gpu, zombies
from health.reaping import reap
from serving.models import ServeModel
from tests.serving.factories import bulk_models

pytestmark = pytest.mark.django_db

NODE = "b" * 56
MIB = 1024**2


def gpu_process(pid: int, used_mib: int = 512) -> dict:
    """One process as read_node_processes reports it: NVML's fields, and its facts read on the node."""
    return {"pid": pid, "name": "python3", "used_bytes": used_mib * MIB, "kind": "compute", **gpu.process_facts(pid)}


def node_reading(*processes: dict, segments: list[dict] | None = None) -> dict:
    return {"node_id": NODE, "address": "10.0.0.7", "gpus": [{"index": 0, "uuid": "GPU-0", "processes": list(processes)}], "segments": segments or [], "error": ""}


def replica_actor(pid: int, app: str, group: str = "pg1") -> dict:
    return {"node_id": NODE, "pid": pid, "actor_id": "a1" * 8, "name": f"SERVE_REPLICA::{app}#LLMServer#r7x2", "class_name": f"ServeReplica:{app}:LLMServer", "placement_group_id": group}


def probe_cycle():
    return run_cycle(zombies.probes())


def node_check() -> HealthCheck:
    return HealthCheck.objects.get(name=zombies.check_name(NODE))


@pytest.fixture
def model(alice) -> ServeModel:
    (made,) = bulk_models(alice, 1, states=("RUNNING",))
    return made


def test_an_unknown_live_process_holding_memory_is_a_zombie_named_with_node_gpu_pid_and_mib(fake, child):
    fake.process_readings = [node_reading(gpu_process(child.pid, 512))]

    probe_cycle()

    check = node_check()
    assert check.status == Status.WARN
    assert check.detail.startswith("node 10.0.0.7: GPU 0 PID ")
    assert f"PID {child.pid}" in check.detail and "512 MiB" in check.detail and "not a Ray worker of any replica Gantry knows" in check.detail
    (zombie,) = check.findings["zombies"]
    assert zombie["pid"] == child.pid and zombie["reapable"] and zombie["started"] == gpu.process_facts(child.pid)["started"]


def test_a_replica_of_a_known_model_and_its_engine_processes_are_no_zombies(fake, child, model):
    # The child stands for vLLM's engine core: a child process of the replica's worker holds the memory.
    replica_pid = gpu.process_facts(child.pid)["parents"][0]  # this test process, as the replica's worker
    worker = {**replica_actor(4_000_001, "x"), "class_name": "RayWorkerWrapper", "name": "", "pid": 4_000_001}
    fake.actors = [replica_actor(replica_pid, model.model_key), worker]
    fake.process_readings = [node_reading(gpu_process(child.pid), {**gpu_process(replica_pid), "pid": replica_pid})]

    probe_cycle()

    assert node_check().status == Status.OK
    assert node_check().findings["zombies"] == []
    assert zombies.replica_holders(fake.actors, {model.model_key: model.model_id})[(NODE, 4_000_001)].description == (
        f"an engine worker of replica r7x2 of model {model.model_id}"
    )


def test_a_replica_of_an_application_gantry_does_not_manage_is_reported_but_not_reapable(fake, child):
    fake.actors = [replica_actor(child.pid, "someone-elses-app")]
    fake.process_readings = [node_reading(gpu_process(child.pid))]

    probe_cycle()

    (zombie,) = node_check().findings["zombies"]
    assert not zombie["reapable"] and "replica r7x2 of Serve application someone-elses-app, which Gantry does not manage" in zombie["why"]


def test_a_process_that_holds_memory_and_dies_is_reported_as_ended(fake, child):
    reading = gpu_process(child.pid)
    child.kill()
    child.wait()
    # NVML may list a PID whose process is gone while the driver still holds its context.
    fake.process_readings = [node_reading({**reading, **gpu.process_facts(child.pid)})]

    probe_cycle()

    (zombie,) = node_check().findings["zombies"]
    assert zombie["alive"] is False and not zombie["reapable"]
    assert "its process has ended but NVML still counts its memory" in node_check().detail


def test_orphan_segments_warn_and_no_zombie_is_ok(fake):
    fake.process_readings = [node_reading()]
    probe_cycle()
    assert node_check().status == Status.OK and "no zombie on its 1 GPU(s)" in node_check().detail

    fake.process_readings = [node_reading(segments=[{"name": "psm_0a1b2c3d", "bytes": 4 * MIB, "resident_bytes": MIB, "age_s": 600.0}])]
    probe_cycle()
    assert node_check().status == Status.WARN and "1 /dev/shm segment(s) no process holds (1 MiB of RAM): psm_0a1b2c3d" in node_check().detail


def test_an_unreachable_cluster_reads_unknown(fake):
    fake.unavailable = True
    (result,) = probe_cycle()
    assert result.status == Status.UNKNOWN and "could not be reached" in result.detail


class NoDriverNvml:
    """pynvml on a machine without NVIDIA's driver: nvmlInit raises LibraryNotFound (libnvidia-ml.so.1
    is absent), which is how the real module answers on this repository's CPU-only machines."""

    NVMLError = pynvml.NVMLError
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound

    def nvmlInit(self) -> None:  # noqa: N802 — pynvml's name
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)


def without_driver(segments: list[dict] | None = None) -> dict:
    """What node_processes returns for a node without the driver, read by the real NVML reader."""
    return {**gpu.read_node_processes(NODE, NoDriverNvml()), "address": "10.0.0.7", "segments": segments or []}


def test_a_node_without_an_nvidia_driver_has_nothing_to_look_for_and_reads_ok(fake):
    fake.process_readings = [without_driver()]
    probe_cycle()
    check = node_check()
    assert check.status == Status.OK
    assert check.detail == "node 10.0.0.7: no NVIDIA driver on this node, so no GPU memory to look for; no orphan /dev/shm segment"


def test_a_node_without_a_driver_still_warns_of_orphan_segments(fake):
    fake.process_readings = [without_driver([{"name": "nccl-1a2b", "bytes": 4 * MIB, "resident_bytes": MIB, "age_s": 600.0}])]
    probe_cycle()
    assert node_check().status == Status.WARN and "1 /dev/shm segment(s) no process holds (1 MiB of RAM): nccl-1a2b" in node_check().detail


def test_a_node_whose_driver_is_there_but_unreadable_stays_unknown(fake):
    fake.process_readings = [{"node_id": NODE, "address": "10.0.0.7", "gpus": [], "segments": [],
                              "error": "the NVIDIA driver is installed but not loaded (is the GPU visible to this machine or container?)"}]
    probe_cycle()
    assert node_check().status == Status.UNKNOWN and "installed but not loaded" in node_check().detail


# --- Reaping from the panel -----------------------------------------------------------------------

@pytest.fixture
def found(fake, child):
    fake.process_readings = [node_reading(gpu_process(child.pid, 700))]
    probe_cycle()
    return node_check().findings["zombies"][0]


def reap_url(pid: int) -> str:
    return f"/health/zombies/{NODE}/{pid}/reap/"


def test_the_panel_offers_reap_for_each_zombie(admin_client, found):
    page = admin_client.get("/health/")
    assert f'href="{reap_url(found["pid"])}"' in page.text and "700.0\xa0MB" in page.text


def test_reap_asks_for_confirmation_naming_pid_node_and_memory(admin_client, found):
    page = admin_client.get(reap_url(found["pid"]))
    assert page.status_code == 200
    assert f"Kill PID {found['pid']} on node {NODE[:12]}?" in page.text
    assert "holds 700 MiB of GPU memory on GPU 0" in page.text and 'method="post"' in page.text and "csrfmiddlewaretoken" in page.text


def test_a_confirmed_reap_kills_the_live_unknown_process_and_audits_it(admin_client, admin, found, child, django_capture_on_commit_callbacks, monkeypatch):
    from health import tasks

    sent = []
    monkeypatch.setattr(tasks.reap_zombie, "delay", lambda *args: sent.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reap_url(found["pid"]))
    assert response.status_code == 303 and response["Location"] == "/health/#zombies"
    assert sent == [(NODE, child.pid, found["started"], admin.pk)]

    # What the health worker runs for that task.
    entry = reap(*sent[0])

    assert child.wait(timeout=5) == -15  # ended by SIGTERM
    assert (entry.action, entry.actor_name, entry.target) == ("health.reap_process", "admin", f"PID {child.pid} on node {NODE}")
    assert entry.detail == f"done: PID {child.pid} ended after SIGTERM"
    assert entry.detail in admin_client.get("/health/").text


def test_reaping_a_replicas_pid_is_refused_and_audited(fake, admin, found, child, model):
    # Since the probe's reading the PID became a replica's worker: the fresh actors decide.
    fake.actors = [replica_actor(child.pid, model.model_key)]

    entry = reap(NODE, child.pid, found["started"], admin.pk)

    assert child.poll() is None
    assert entry.detail == f"refused: PID {child.pid} is replica r7x2 of model {model.model_id}; scale or delete the model instead"
    assert AuditEntry.objects.filter(action="health.reap_process").count() == 1


def test_a_pid_that_is_now_another_process_is_not_killed(fake, admin, found, child):
    entry = reap(NODE, child.pid, found["started"] - 1, admin.pk)
    assert child.poll() is None and entry.detail.startswith(f"refused: PID {child.pid} is now another process")


def test_only_admins_may_reap_checked_on_the_server(alice_client, found, child):
    assert alice_client.get(reap_url(found["pid"])).status_code == 403
    assert alice_client.post(reap_url(found["pid"])).status_code == 403
    assert child.poll() is None and not AuditEntry.objects.exists()


def test_the_post_needs_the_csrf_token(admin, found):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin)
    assert browser.post(reap_url(found["pid"])).status_code == 403


def test_a_pid_the_probe_did_not_report_is_404(admin_client, found):
    assert admin_client.get(reap_url(found["pid"] + 100_000)).status_code == 404
    assert admin_client.get(f"/health/zombies/{'c' * 56}/{found['pid']}/reap/").status_code == 404


def test_a_zombie_that_cannot_be_reaped_says_why_with_409(admin_client, fake, child):
    fake.actors = [replica_actor(child.pid, "someone-elses-app")]
    fake.process_readings = [node_reading(gpu_process(child.pid))]
    probe_cycle()

    response = admin_client.post(reap_url(child.pid))

    assert response.status_code == 409 and "delete that application with Serve" in response.text
    assert child.poll() is None


def test_an_orphan_segment_is_removed_after_confirmation_and_audited(admin_client, admin, fake, django_capture_on_commit_callbacks, monkeypatch):
    from health import reaping, tasks

    fake.process_readings = [node_reading(segments=[{"name": "psm_0a1b2c3d", "bytes": 4 * MIB, "resident_bytes": MIB, "age_s": 600.0}])]
    probe_cycle()
    url = f"/health/zombies/{NODE}/shm/psm_0a1b2c3d/remove/"
    assert "Remove /dev/shm/psm_0a1b2c3d" in admin_client.get(url).text
    sent = []
    monkeypatch.setattr(tasks.remove_segment, "delay", lambda *args: sent.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        assert admin_client.post(url).status_code == 303

    entry = reaping.remove_segment(*sent[0])

    assert fake.node_calls == [("remove_segment", NODE, "psm_0a1b2c3d")]
    assert entry.action == "health.remove_shm_segment" and entry.detail.startswith("refused: psm_0a1b2c3d is in use again")
