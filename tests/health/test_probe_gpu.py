"""The GPU probe: every node's GPUs through the ServeClient (here FakeServe, whose node_gpus
returns readings as RayServeClient's does), one check per GPU, one GpuSample per GPU per cycle."""
from __future__ import annotations

import re

import pytest

from health.choices import Status
from health.models import GpuSample, HealthCheck
from health.cycle import all_probes
from health.probes import gpu_probe
from serving.cluster.nodes import NodeAnswer
from tests.health.gpu_readings import gpu, gpu_cycle as cycle, lost_gpu, node

pytestmark = pytest.mark.django_db

NODE = "a" * 56


def check(index: int = 0, node_id: str = NODE) -> HealthCheck:
    return HealthCheck.objects.get(name=f"gpu:{node_id}:{index}")


def test_the_gpu_probe_is_one_of_the_cycles_probes():
    assert [p.name for p in all_probes() if p.kind == "gpu"] == ["gpu:cluster"]


def test_it_records_a_check_and_a_sample_per_gpu(fake):
    fake.gpu_readings = [node(NODE, [gpu(0), gpu(1, utilization_percent=90)]), node("b" * 56, [gpu(0)], address="10.0.0.2")]

    (result,) = cycle()

    assert result.status == Status.OK and "2 node(s), 3 GPU(s): 3 ok" in result.detail
    assert check(0).status == Status.OK and check(0).kind == "gpu"
    assert "NVIDIA H100 80GB HBM3, 37 % busy, 20.0 of 80.0 GiB, 54 °C, 312.5 W" == check(0).detail
    assert check(0, "b" * 56).status == Status.OK
    samples = list(GpuSample.objects.order_by("node_id", "gpu_index"))
    assert [(s.node_id, s.gpu_index, s.utilization_percent) for s in samples] == [(NODE, 0, 37), (NODE, 1, 90), ("b" * 56, 0, 37)]
    first = samples[0]
    assert (first.uuid, first.memory_used_bytes, first.temperature_c, first.power_w) == ("GPU-0000-6f1c", 20 * 1024**3, 54, 312.5)
    assert first.details["address"] == "10.0.0.1" and first.details["driver_version"] == "570.86.15"
    assert first.details["processes"][0]["pid"] == 4242 and first.details["sm_clock_mhz"] == 1980
    assert "node_gpus" in fake.asked
    cycle()
    assert GpuSample.objects.count() == 6


@pytest.mark.parametrize(
    "changes, status, words",
    [
        ({"temperature_c": 85}, Status.WARN, "85 °C (warn from 85 °C)"),
        ({"temperature_c": 84}, Status.OK, "84 °C"),
        ({"ecc_uncorrected": 2}, Status.WARN, "2 uncorrected ECC error(s)"),
        ({"ecc_uncorrected": None}, Status.OK, "37 % busy"),
        ({"throttle_reasons": ["hw_slowdown"]}, Status.WARN, "clocks held down by hw_slowdown"),
        ({"throttle_reasons": ["sw_power_cap", "gpu_idle"]}, Status.OK, "37 % busy"),
        ({"xids": [{"xid": 79, "at": 1.0}]}, Status.CRITICAL, "XID 79 (GPU has fallen off the bus): reboot"),
        ({"xids": [{"xid": 48, "at": 1.0}]}, Status.CRITICAL, "reset GPU"),
        ({"xids": [{"xid": 13, "at": 1.0}]}, Status.WARN, "XID 13"),
        ({"xids": [{"xid": 94, "at": 1.0}]}, Status.WARN, "drain"),
    ],
)
def test_each_gpu_problem_sets_its_status(fake, changes, status, words):
    fake.gpu_readings = [node(NODE, [gpu(0, **changes)])]
    cycle()
    assert check(0).status == status and words in check(0).detail


def test_an_xid_is_kept_in_the_sample(fake):
    fake.gpu_readings = [node(NODE, [gpu(0, xids=[{"xid": 79, "at": 1.0}])])]
    cycle()
    assert GpuSample.objects.get().xids == [{"xid": 79, "at": 1.0}]


def test_a_gpu_that_disappears_is_critical_with_its_nodes_reason(fake):
    fake.gpu_readings = [node(NODE, [gpu(0), gpu(1)])]
    cycle()
    fake.gpu_readings = [node(NODE, [gpu(0)])]
    cycle()
    assert check(0).status == Status.OK
    assert check(1).status == Status.CRITICAL and "the GPU is missing" in check(1).detail
    fake.gpu_readings = [node(NODE, [], error="the NVIDIA driver is installed but not loaded")]
    (result,) = cycle()
    assert check(0).status == Status.CRITICAL and "driver is installed but not loaded" in check(0).detail
    assert result.status == Status.OK and "1 node(s) without a GPU reading" in result.detail
    fake.gpu_readings = []
    cycle()
    assert "no longer among the cluster's alive nodes" in check(0).detail


def test_a_gpu_nvml_cannot_read_is_critical_and_has_no_sample(fake):
    fake.gpu_readings = [node(NODE, [gpu(0), {"index": 1, "error": "NVML could not read GPU 1: GPU is lost"}])]
    cycle()
    assert check(1).status == Status.CRITICAL and "GPU is lost" in check(1).detail
    assert list(GpuSample.objects.values_list("gpu_index", flat=True)) == [0]


def test_a_lost_gpu_reads_critical_as_fallen_off_the_bus(fake):
    fake.gpu_readings = [node(NODE, [gpu(0), lost_gpu(1)])]
    cycle()
    assert check(1).status == Status.CRITICAL
    assert "GPU has fallen off the bus" in check(1).detail and "XID 79" in check(1).detail and "reboot" in check(1).detail
    assert check(0).status == Status.OK


SLOW = "b" * 56


def answers_late(fake, monkeypatch, node_id: str, error: BaseException) -> None:
    """From now on `node_id` does not answer its GPU task: the answer the cluster adapter gives then."""
    canned = fake._gpu_answers
    monkeypatch.setattr(fake, "_gpu_answers", lambda: [
        NodeAnswer(answer.node_id, answer.address, error=error) if answer.node_id == node_id else answer for answer in canned()
    ])


def test_a_slow_nodes_gpus_read_unknown_with_why_not_missing(fake, monkeypatch):
    fake.gpu_readings = [node(NODE, [gpu(0)]), node(SLOW, [gpu(0), gpu(1)], address="10.0.0.2")]
    cycle()
    answers_late(fake, monkeypatch, SLOW, TimeoutError("no answer within 9.6 s"))

    (result,) = cycle()

    for index in (0, 1):
        assert check(index, SLOW).status == Status.UNKNOWN, check(index, SLOW).detail
        assert re.search(rf"node {SLOW[:12]} did not answer within \d+(\.\d+)? s", check(index, SLOW).detail)
        assert "missing" not in check(index, SLOW).detail
    assert check(0).status == Status.OK
    assert result.status == Status.OK and "2 unknown" in result.detail and "no answer within" in result.detail
    assert GpuSample.objects.filter(node_id=SLOW).count() == 2  # the first cycle's; none made up for the late one


def test_a_node_whose_gpu_task_failed_reads_unknown_too(fake, monkeypatch):
    fake.gpu_readings = [node(SLOW, [gpu(0)], address="10.0.0.2")]
    cycle()
    answers_late(fake, monkeypatch, SLOW, RuntimeError("ray worker died\nWorkerCrashedError: the worker died unexpectedly"))

    cycle()

    assert check(0, SLOW).status == Status.UNKNOWN and "the worker died unexpectedly" in check(0, SLOW).detail


def test_a_cpu_only_node_is_no_problem(fake):
    fake.gpu_readings = [node(NODE, [gpu(0)]), node("c" * 56, [], error="no NVIDIA driver on this machine")]
    (result,) = cycle()
    assert result.status == Status.OK and "no NVIDIA driver on this machine" in result.detail
    assert HealthCheck.objects.filter(kind="gpu").count() == 2  # gpu:cluster and the one GPU


def test_an_unreachable_cluster_reads_unknown_and_marks_no_gpu_missing(fake):
    fake.gpu_readings = [node(NODE, [gpu(0)])]
    cycle()
    fake.unavailable = True
    (result,) = cycle()
    assert result.status == Status.UNKNOWN and "could not be reached" in result.detail
    assert check(0).status == Status.UNKNOWN and "missing" not in check(0).detail
    assert HealthCheck.objects.get(name="gpu:cluster").status == Status.UNKNOWN
    assert GpuSample.objects.count() == 1


def test_no_gpu_anywhere_records_only_the_probes_own_check(fake):
    (result,) = cycle()
    assert result.status == Status.OK and result.detail == "0 node(s), 0 GPU(s)"
    assert list(HealthCheck.objects.values_list("name", flat=True)) == ["gpu:cluster"]


def test_the_probe_cost_includes_recording_in_the_cycles_thread(fake):
    fake.gpu_readings = [node(NODE, [gpu(i) for i in range(8)])]
    (result,) = cycle()
    assert result.cost_ms > 0
    assert HealthCheck.objects.get(name="gpu:cluster").cost_ms == result.cost_ms


def test_assess_gpu_is_pure_and_names_the_worst():
    status, detail = gpu_probe.assess_gpu(gpu(0, temperature_c=90, xids=[{"xid": 79, "at": 0}]))
    assert status == Status.CRITICAL and "90 °C" in detail and "XID 79" in detail


def test_a_recording_that_fails_halfway_records_no_gpu_and_says_why(fake, monkeypatch):
    from health import models

    fake.gpu_readings = [node(NODE, [gpu(0), gpu(1)])]
    real = models.record_reading
    calls = []

    def fails_on_the_second(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise RuntimeError("database went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "record_reading", fails_on_the_second)
    (result,) = cycle()
    assert result.status == "unknown" and "recording the probe's reading failed: RuntimeError: database went away" in result.detail
    assert not HealthCheck.objects.filter(name__startswith=f"gpu:{NODE}").exists() and not GpuSample.objects.exists()
