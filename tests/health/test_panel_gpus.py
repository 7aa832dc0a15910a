"""The GPU cards on /health/: one per GPU with server-side SVG sparklines and the newest readings;
plain words where no GPU was read; a constant number of queries however many GPUs and samples."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from health.models import GpuSample
from tests.health.gpu_readings import gpu, gpu_cycle as cycle, node

pytestmark = pytest.mark.django_db

NODE = "a" * 56


def card(page: str, node_id: str = NODE, index: int = 0) -> str:
    return page.split(f'id="gpu-{node_id}-{index}"', 1)[1].split("</article>", 1)[0]


def test_each_gpu_has_a_card_with_sparklines_and_its_newest_readings(admin_client, fake):
    fake.gpu_readings = [node(NODE, [gpu(0, utilization_percent=20), gpu(1)])]
    cycle()
    GpuSample.objects.update(at=timezone.now() - timedelta(minutes=10))
    fake.gpu_readings = [node(NODE, [
        gpu(0, utilization_percent=80, ecc_uncorrected=None, pcie_replays=7, throttle_reasons=["sw_power_cap", "hw_slowdown"],
            xids=[{"xid": 79, "at": 1.0}], processes=[{"pid": 4242, "name": "ray::ServeReplica", "used_bytes": 2 * 1024**3, "kind": "compute"}]),
        gpu(1),
    ])]
    cycle()

    page = admin_client.get("/health/").text
    first = card(page)
    assert 'data-state="critical"' in first and "GPU 0 · NVIDIA H100 80GB HBM3" in first
    assert first.count("<svg") == 3 and first.count('<path d="M') == 3
    assert "utilization: 80 %" in first and "min 20 %, max 80 %" in first
    assert "SM 1980 MHz, memory 2619 MHz" in first
    assert "sw_power_cap, hw_slowdown" in first
    assert '<dd class="ecc">n/a</dd>' in first and '<dd class="pcie">7</dd>' in first
    assert "4242 ray::ServeReplica (compute, 2.0\xa0GB)" in first
    assert "XID 79: GPU has fallen off the bus — <strong>reboot</strong>" in first
    assert "570.86.15 (CUDA 12.8)" in first and "10.0.0.1" in first
    assert "no newer reading" not in first
    second = card(page, index=1)
    assert 'data-state="ok"' in second and "XID" not in second and '<dd class="ecc">0</dd>' in second
    assert 'id="no-gpus"' not in page


def test_samples_older_than_the_window_draw_nothing(admin_client, fake, settings):
    fake.gpu_readings = [node(NODE, [gpu(0)])]
    cycle()
    GpuSample.objects.update(at=timezone.now() - timedelta(hours=settings.GANTRY_HEALTH_GPU_SAMPLES_HOURS, minutes=1))
    page = admin_client.get("/health/").text
    assert f'id="gpu-{NODE}-0"' not in page and 'id="no-gpus"' in page


def test_without_a_gpu_the_panel_says_why_plainly(admin_client, fake):
    fake.gpu_readings = [node("c" * 56, [], error="no NVIDIA driver on this machine: NVML's library libnvidia-ml.so.1 was not found")]
    cycle()
    page = admin_client.get("/health/")
    assert page.status_code == 200
    text = page.text.split('id="no-gpus"', 1)[1].split("</p>", 1)[0]
    assert "No GPU has been read in the last 24 h: 1 node(s), 0 GPU(s); 1 node(s) without a GPU reading" in text
    assert "no NVIDIA driver on this machine" in text


def test_the_htmx_partial_carries_the_gpu_cards(admin_client, fake):
    fake.gpu_readings = [node(NODE, [gpu(0)])]
    cycle()
    partial = admin_client.get("/health/", HTTP_HX_REQUEST="true").text
    assert "<html" not in partial and f'id="gpu-{NODE}-0"' in partial


def test_the_queries_do_not_grow_with_gpus_or_samples(admin_client, fake):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get("/health/", HTTP_HX_REQUEST="true").status_code == 200
        return len(captured)

    fake.gpu_readings = [node(NODE, [gpu(0)])]
    cycle()
    one = queries()
    fake.gpu_readings = [node(f"{n}" * 56, [gpu(i) for i in range(4)]) for n in "bc"]
    for _ in range(5):
        cycle()
    assert GpuSample.objects.count() == 41
    assert queries() == one


def test_a_gpu_not_read_lately_says_its_figures_are_the_last_ones(admin_client, fake):
    fake.gpu_readings = [node(NODE, [gpu(0)])]
    cycle()
    GpuSample.objects.update(at=timezone.now() - timedelta(minutes=5))
    assert "no newer reading; the figures below are the last ones read" in card(admin_client.get("/health/").text)
