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
    expect(page.locator("#gpus")).to_contain_text("No GPU readings yet (arrives with the GPU probe)")
    expect(page.locator("#probe-costs")).to_contain_text("% of one core")
    page.screenshot(path=test_output / "health-panel-critical.png", full_page=True)

    record_reading("tcp:redis", "tcp", Status.OK, "127.0.0.1:6379 accepts connections", cost_ms=0.1)
    expect(redis_row.locator(".badge")).to_have_text("ok", timeout=10_000)
    expect(redis_row).to_contain_text("critical → ok")
    expect(page.locator("#health-summary")).to_contain_text("3 ok")
