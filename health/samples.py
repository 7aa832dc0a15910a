"""GPU samples' bounded window: every sample for the last hour, one per five minutes before that,
none older than GANTRY_HEALTH_GPU_SAMPLES_HOURS (beat runs `thin_gpu_samples` every 5 minutes)."""
from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from health.models import GpuSample, HealthCheck

RAW_FOR = timedelta(hours=1)
BUCKET_S = 300


def window_start(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(hours=settings.GANTRY_HEALTH_GPU_SAMPLES_HOURS)


def thin_gpu_samples(now: datetime | None = None) -> dict[str, int]:
    """Delete samples past the window; past the raw hour keep each GPU's first sample of each
    5-minute bucket, and every sample that heard an XID (the panel lists the window's XIDs).
    A GPU check that has had no sample for the whole window, and whose GPU is missing (not merely in
    error), is forgotten."""
    from health.probes.gpu_probe import CLUSTER_CHECK, KIND, check_name

    now = now or timezone.now()
    start = window_start(now)
    expired, _ = GpuSample.objects.filter(at__lt=start).delete()
    older = GpuSample.objects.filter(at__gte=start, at__lt=now - RAW_FOR).order_by("node_id", "gpu_index", "at", "id")
    kept: set[tuple[str, int, int]] = set()
    surplus: list[int] = []
    for pk, node_id, index, at, xids in older.values_list("pk", "node_id", "gpu_index", "at", "xids"):
        bucket = (node_id, index, int(at.timestamp()) // BUCKET_S)
        if bucket not in kept:
            kept.add(bucket)
        elif not xids:
            surplus.append(pk)
    thinned = 0
    for chunk in range(0, len(surplus), 1000):
        thinned += GpuSample.objects.filter(pk__in=surplus[chunk:chunk + 1000]).delete()[0]
    read = {check_name(node_id, index) for node_id, index in GpuSample.objects.filter(at__gte=start).values_list("node_id", "gpu_index").order_by().distinct()}
    # A GPU gone for the whole window (a node taken away on purpose) stops paging; its flips stay. One
    # its node still reports, stuck in error (no sample, no figures), is not gone: forgotten, it would
    # page again as new.
    still_there = Q(last_reading_at__gte=start) & ~Q(findings__has_key="missing")
    gone = HealthCheck.objects.filter(kind=KIND, since__lt=start).exclude(name=CLUSTER_CHECK).exclude(name__in=read).exclude(still_there)
    forgotten, _ = gone.delete()
    return {"expired": expired, "thinned": thinned, "forgotten_checks": forgotten}
