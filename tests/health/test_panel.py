"""The /health/ panel: admins only; the checks with their status, detail, since when and last flips;
what each probe cost; a partial for htmx polling; and plain words where there is no GPU reading."""
from __future__ import annotations

import pytest
from django.test import Client

from health.choices import Status
from health.models import record_reading

pytestmark = pytest.mark.django_db


@pytest.fixture
def readings(settings):
    settings.GANTRY_HEALTH_GRACE_READINGS = 2
    record_reading("disk:var", "disk", Status.OK, "/srv/var: bytes 12 % used", cost_ms=0.25)
    record_reading("tcp:redis", "tcp", Status.OK, "up", cost_ms=0.5)
    record_reading("tcp:redis", "tcp", Status.CRITICAL, "127.0.0.1:6379 does not accept connections", cost_ms=0.75)
    record_reading("tcp:redis", "tcp", Status.CRITICAL, "127.0.0.1:6379 does not accept connections", cost_ms=1.5)


def test_others_get_403_and_anonymous_users_the_login_page(alice_client):
    response = alice_client.get("/health/")
    assert response.status_code == 403 and "for administrators" in response.text
    assert Client().get("/health/").status_code == 302


def test_an_admin_sees_each_check_with_its_status_detail_since_and_last_flips(admin_client, readings):
    page = admin_client.get("/health/")
    assert page.status_code == 200
    row = page.text.split('id="check-tcp:redis"', 1)[1].split("</tr>", 1)[0]
    assert 'data-state="critical"' in row
    assert "127.0.0.1:6379 does not accept connections" in row
    assert "ok → critical" in row and "unknown → ok" in row
    assert "since" in row and "1.5 ms" in row
    assert 'data-state="ok"' in page.text.split('id="check-disk:var"', 1)[1].split("</tr>", 1)[0]
    assert "1 critical" in page.text


def test_it_says_what_each_probe_cost_in_its_last_cycle(admin_client, readings, settings):
    settings.GANTRY_HEALTH_INTERVAL_S = 15
    costs = admin_client.get("/health/").text.split('id="probe-costs"', 1)[1].split("</table>", 1)[0]
    assert "disk" in costs and "0.25 ms" in costs and "tcp" in costs and "1.5 ms" in costs
    # 1.75 ms of CPU every 15 s is about 0.012 % of one core.
    assert "1.75 ms" in costs and "0.012 %" in costs


def test_htmx_polls_the_live_part_only(admin_client, readings):
    full = admin_client.get("/health/")
    assert 'hx-trigger="every 15s"' in full.text and "<html" in full.text
    partial = admin_client.get("/health/", HTTP_HX_REQUEST="true")
    assert "<html" not in partial.text and 'id="health-live"' in partial.text
    assert 'hx-trigger="every 15s"' in partial.text and "tcp:redis" in partial.text
    assert "HX-Request" in partial["Vary"]


def test_it_works_before_any_reading_and_without_a_gpu(admin_client):
    page = admin_client.get("/health/")
    assert page.status_code == 200
    assert "No GPU has been read in the last 24 h: the GPU probe has not reported yet." in page.text
    assert "No probe has reported yet" in page.text


def test_each_check_shows_its_own_newest_flips_however_often_another_flipped(admin_client, settings):
    settings.GANTRY_HEALTH_GRACE_READINGS = 1
    record_reading("disk:var", "disk", Status.WARN, "81 %")
    for _ in range(20):
        record_reading("tcp:redis", "tcp", Status.CRITICAL, "down")
        record_reading("tcp:redis", "tcp", Status.OK, "up")
    page = admin_client.get("/health/").text
    assert "unknown → warn" in page.split('id="check-disk:var"', 1)[1].split("</tr>", 1)[0]
    assert page.split('id="check-tcp:redis"', 1)[1].split("</tr>", 1)[0].count("<li>") == 3


def test_a_checks_flips_say_which_alert_each_sent_and_a_blind_page_reads_as_still_unknown(admin_client, settings):
    settings.GANTRY_HEALTH_GRACE_READINGS = 1
    settings.GANTRY_HEALTH_BLIND_CYCLES = 1
    for status in (Status.OK, Status.CRITICAL, Status.UNKNOWN, Status.UNKNOWN, Status.OK):
        record_reading("tcp:redis", "tcp", status, "redis")
    record_reading("tcp:serve", "tcp", Status.UNKNOWN, "no answer")
    record_reading("tcp:serve", "tcp", Status.UNKNOWN, "no answer")
    page = admin_client.get("/health/").text
    redis = page.split('id="check-tcp:redis"', 1)[1].split("</tr>", 1)[0]
    assert "ok → critical (down alert)" in redis and "unknown → ok (recovery alert)" in redis
    assert "critical → unknown</li>" in redis  # a gap in an outage sends nothing
    serve = page.split('id="check-tcp:serve"', 1)[1].split("</tr>", 1)[0]
    assert "still unknown (blind alert)" in serve
