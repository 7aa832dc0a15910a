"""The home page's health summary for admins: checks by status and GPUs by status, linking to /health/."""
from __future__ import annotations

import pytest

from health.choices import Status
from health.models import record_reading

pytestmark = pytest.mark.django_db


def summary(page: str) -> str:
    return page.split('id="health-summary"', 1)[1].split("</p>", 1)[0]


def test_an_admin_sees_checks_and_gpus_counted_by_status(admin_client, settings):
    settings.GANTRY_HEALTH_GRACE_READINGS = 1
    record_reading("disk:var", "disk", Status.OK, "")
    record_reading("tcp:redis", "tcp", Status.CRITICAL, "")
    record_reading("gpu:cluster", "gpu", Status.OK, "")
    record_reading("gpu:n1:0", "gpu", Status.OK, "")
    record_reading("gpu:n1:1", "gpu", Status.WARN, "")
    text = summary(admin_client.get("/").text)
    assert 'href="/health/"' in text
    assert "Checks: 3 ok, 1 warn, 1 critical." in text
    assert "GPUs: 1 ok, 1 warn." in text  # the probe's own gpu:cluster check is no GPU


def test_before_any_reading_it_says_so(admin_client):
    text = summary(admin_client.get("/").text)
    assert "Checks: none reported yet." in text and "GPUs: none read." in text


def test_a_user_sees_no_health_summary(alice_client):
    assert 'id="health-summary"' not in alice_client.get("/").text
