"""/metrics in Prometheus' text format: each check's status and the age of the reading it rests on, each
GPU's and each model's engine's newest figures."""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django.utils import timezone
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from health.choices import SEVERITY, Status
from health.models import GpuSample, HealthCheck
from health.choices import STALE_INTERVALS
from serving import engine_gauges

CONTENT_TYPE = CONTENT_TYPE_LATEST


def metrics_text() -> bytes:
    """A fresh registry per scrape: the figures come from the database, not from this process."""
    registry = CollectorRegistry(auto_describe=False)
    status = Gauge(
        "gantry_health_check_status",
        "A health check's status: 0 ok, 1 unknown, 2 warn, 3 critical.",
        ["check", "kind"],
        registry=registry,
    )
    # A status is only as true as its last reading: a probe that stopped leaves its last word behind,
    # and the age lets an alert rule tell that from a check still read every cycle.
    age = Gauge(
        "gantry_health_check_age_seconds",
        "Seconds since a health check's last reading (none before its first).",
        ["check", "kind"],
        registry=registry,
    )
    now = timezone.now()
    for name, kind, value, read_at in HealthCheck.objects.order_by("name").values_list("name", "kind", "status", "last_reading_at"):
        status.labels(check=name, kind=kind).set(SEVERITY[Status(value)])
        if read_at is not None:
            age.labels(check=name, kind=kind).set(round(max(0.0, (now - read_at).total_seconds()), 3))
    gauges = {
        "utilization_percent": Gauge("gantry_gpu_utilization_percent", "GPU utilization (NVML), percent.", ["node", "gpu"], registry=registry),
        "memory_used_bytes": Gauge("gantry_gpu_memory_used_bytes", "GPU memory in use, bytes.", ["node", "gpu"], registry=registry),
        "memory_total_bytes": Gauge("gantry_gpu_memory_total_bytes", "GPU memory in all, bytes.", ["node", "gpu"], registry=registry),
        "temperature_c": Gauge("gantry_gpu_temperature_celsius", "GPU temperature, degrees Celsius.", ["node", "gpu"], registry=registry),
        "power_w": Gauge("gantry_gpu_power_watts", "GPU power draw, watts.", ["node", "gpu"], registry=registry),
    }
    # Only readings the probes still vouch for: a GPU not read lately has no current figure.
    fresh = now - timedelta(seconds=STALE_INTERVALS * settings.GANTRY_HEALTH_INTERVAL_S)
    newest_first = Window(RowNumber(), partition_by=[F("node_id"), F("gpu_index")], order_by=[F("at").desc(), F("id").desc()])
    latest = GpuSample.objects.filter(at__gte=fresh).annotate(rank=newest_first).filter(rank=1).order_by("node_id", "gpu_index")
    for sample in latest.only("node_id", "gpu_index", "at", *gauges):
        for field, gauge in gauges.items():
            value = getattr(sample, field)
            if value is not None:
                gauge.labels(node=sample.node_id, gpu=str(sample.gpu_index)).set(value)
    # Each model's engine figures (TTFT, ITL, tokens/s, queue, KV cache), from serving's samples.
    engine_gauges.add_to_registry(registry)
    return generate_latest(registry)
