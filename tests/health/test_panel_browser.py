"""An admin in a real headless Chromium sees the health panel with one critical check, and the
panel picks up a new reading by itself (htmx polling), without a reload."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from health.choices import Status
from health.models import record_reading
from tests.conftest import login_in_browser

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_admin_sees_one_critical_check_and_its_recovery_arrives_by_polling(page, live_server, admin, settings, test_output):
    settings.GANTRY_HEALTH_GRACE_READINGS = 2
    settings.GANTRY_HEALTH_INTERVAL_S = 1  # the panel polls every interval: keep the test short
    record_reading("disk:var", "disk", Status.OK, "/srv/gantry/var: bytes 41 % used (41.0 GiB of 100.0 GiB), inodes 3 % used", cost_ms=0.08)
    record_reading("progress:reconciler", "progress", Status.OK, "the reconciler last ticked 4 s ago", cost_ms=0.9)
    record_reading("tcp:redis", "tcp", Status.OK, "127.0.0.1:6379 accepts connections", cost_ms=0.1)
    for _ in range(2):
        record_reading("tcp:redis", "tcp", Status.CRITICAL, "127.0.0.1:6379 does not accept connections: ConnectionRefusedError: [Errno 111] Connection refused", cost_ms=0.12)

    login_in_browser(page, live_server.url, "admin")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Health").click()
    expect(page.get_by_role("heading", name="Health", exact=True)).to_be_visible()
    redis_row = page.locator("#checks tr", has_text="tcp:redis")
    expect(redis_row.locator(".badge")).to_have_text("critical")
    expect(redis_row).to_contain_text("Connection refused")
    expect(redis_row).to_contain_text("ok → critical")
    expect(page.locator("#health-summary")).to_contain_text("1 critical")
    expect(page.locator("#gpus")).to_contain_text("No GPU has been read in the last 24 h: the GPU probe has not reported yet.")
    expect(page.locator("#probe-costs")).to_contain_text("% of one core")
    page.screenshot(path=test_output / "health-panel-critical.png", full_page=True)

    record_reading("tcp:redis", "tcp", Status.OK, "127.0.0.1:6379 accepts connections", cost_ms=0.1)
    expect(redis_row.locator(".badge")).to_have_text("ok", timeout=10_000)
    expect(redis_row).to_contain_text("critical → ok")
    expect(page.locator("#health-summary")).to_contain_text("3 ok")


def test_an_admin_sees_a_card_per_gpu_with_its_charts(page, live_server, admin, settings, test_output):
    from datetime import timedelta

    from django.utils import timezone

    from health.models import GpuSample
    from health.probes.gpu_probe import record_nodes
    from tests.health.gpu_readings import gpu, node

    settings.GANTRY_HEALTH_GRACE_READINGS = 1
    now = timezone.now()
    for minutes in range(60, 0, -5):
        readings = [gpu(i, utilization_percent=(minutes * (i + 3)) % 100, temperature_c=40 + minutes % 30) for i in range(2)]
        record_nodes({"nodes": [node("a" * 56, readings)], "error": ""}, now - timedelta(minutes=minutes))
    record_nodes({"nodes": [node("a" * 56, [gpu(0, xids=[{"xid": 79, "at": 0.0}]), gpu(1, temperature_c=88)])], "error": ""}, now)
    assert GpuSample.objects.count() == 26

    login_in_browser(page, live_server.url, "admin")
    page.goto(f"{live_server.url}/health/")
    cards = page.locator("#gpus .gpu-card")
    expect(cards).to_have_count(2)
    expect(cards.first.locator(".badge")).to_have_text("critical")
    expect(cards.first).to_contain_text("GPU has fallen off the bus — reboot")
    expect(cards.nth(1).locator(".badge")).to_have_text("warn")
    expect(cards.first.locator("svg path")).to_have_count(3)
    page.screenshot(path=test_output / "health-panel-gpus.png", full_page=True)
