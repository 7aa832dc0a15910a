"""GPU samples' window (health/samples.py), with the clock given: every sample for the last hour,
one per GPU per five minutes before that, none past GANTRY_HEALTH_GPU_SAMPLES_HOURS."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.conf import settings as django_settings

from health.choices import Status
from health.models import Flip, GpuSample, HealthCheck, record_reading
from health.samples import thin_gpu_samples
from health.tasks import thin_gpu_samples as thin_task

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def samples_every(seconds: int, hours: float, *, node: str = "n1", index: int = 0) -> None:
    count = int(hours * 3600 / seconds)
    GpuSample.objects.bulk_create(
        [GpuSample(node_id=node, gpu_index=index, at=NOW - timedelta(seconds=seconds * k), utilization_percent=k % 100) for k in range(count)]
    )


def test_the_setting_defaults_to_24_hours_and_beat_thins_every_five_minutes():
    assert django_settings.GANTRY_HEALTH_GPU_SAMPLES_HOURS == 24
    entry = django_settings.CELERY_BEAT_SCHEDULE["health-gpu-samples"]
    assert entry["task"] == "health.tasks.thin_gpu_samples" and entry["schedule"] == 300.0


def test_raw_for_the_last_hour_then_one_per_five_minutes_then_nothing(settings):
    settings.GANTRY_HEALTH_GPU_SAMPLES_HOURS = 3
    samples_every(15, 4)  # 960 samples over 4 h, one per probe cycle
    done = thin_gpu_samples(NOW)
    ats = sorted(GpuSample.objects.values_list("at", flat=True))
    raw = [at for at in ats if at >= NOW - timedelta(hours=1)]
    older = [at for at in ats if at < NOW - timedelta(hours=1)]
    assert len(raw) == 241  # every 15 s sample of the last hour, both ends included
    assert min(ats) >= NOW - timedelta(hours=3)
    buckets = [int(at.timestamp()) // 300 for at in older]
    assert len(buckets) == len(set(buckets)) and len(older) in (24, 25)  # 2 h at one per 5 min
    # Samples k = 0…959 at NOW - 15k s: past 3 h (k > 720) expired; the rest thinned to what is kept.
    assert done["expired"] == 239 and done["thinned"] + len(ats) == 721


def test_thinning_again_changes_nothing_and_each_gpu_keeps_its_own(settings):
    samples_every(60, 3, node="n1")
    samples_every(60, 3, node="n2", index=3)
    thin_gpu_samples(NOW)
    kept = GpuSample.objects.count()
    assert thin_gpu_samples(NOW) == {"expired": 0, "thinned": 0, "forgotten_checks": 0}
    assert GpuSample.objects.count() == kept
    assert GpuSample.objects.filter(node_id="n1").count() == GpuSample.objects.filter(node_id="n2", gpu_index=3).count()


def test_a_sample_that_heard_an_xid_is_kept_whatever_its_bucket():
    samples_every(15, 2)
    GpuSample.objects.filter(at=NOW - timedelta(seconds=15 * 400)).update(xids=[{"xid": 79, "at": 0}])
    thin_gpu_samples(NOW)
    assert GpuSample.objects.exclude(xids=[]).count() == 1


def test_a_gpu_gone_for_the_whole_window_is_forgotten_but_its_flips_stay(settings):
    settings.GANTRY_HEALTH_GRACE_READINGS = 1
    record_reading("gpu:gone:0", "gpu", Status.CRITICAL, "the GPU is missing", findings={"missing": True})  # as the probe says it
    record_reading("gpu:here:0", "gpu", Status.OK, "fine")
    record_reading("gpu:cluster", "gpu", Status.OK, "1 node(s)")
    HealthCheck.objects.update(since=NOW - timedelta(hours=30))
    GpuSample.objects.create(node_id="here", gpu_index=0, at=NOW - timedelta(minutes=1))
    done = thin_gpu_samples(NOW)
    assert done["forgotten_checks"] == 1
    assert set(HealthCheck.objects.values_list("name", flat=True)) == {"gpu:here:0", "gpu:cluster"}
    assert Flip.objects.filter(check_name="gpu:gone:0").exists()


def test_a_gpu_stuck_in_error_for_the_whole_window_is_not_forgotten(settings):
    """Its node reports it every cycle, as an error: no sample, but not gone; forgotten, its check would
    page again as a new GPU."""
    from health.probes.gpu_probe import _record_nodes
    from tests.health.gpu_readings import gpu, node

    settings.GANTRY_HEALTH_GRACE_READINGS = 1
    broken = {"index": 1, "error": "NVML could not read GPU 1: Unknown Error"}
    _record_nodes({"nodes": [node("n1", gpus=[gpu(0), broken])], "error": ""}, datetime.now(timezone.utc))
    HealthCheck.objects.update(since=datetime.now(timezone.utc) - timedelta(hours=30))
    GpuSample.objects.update(at=datetime.now(timezone.utc) - timedelta(minutes=1))

    assert thin_gpu_samples()["forgotten_checks"] == 0
    assert HealthCheck.objects.get(name="gpu:n1:1").status == Status.CRITICAL


def test_the_task_runs_the_thinning(settings):
    GpuSample.objects.create(node_id="n", gpu_index=0, at=datetime.now(timezone.utc) - timedelta(hours=25))
    assert thin_task()["expired"] == 1 and not GpuSample.objects.exists()
