"""/metrics: Prometheus' text format with each check's status and each GPU's newest figures, for an
admin's session or an admin's API token only."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from dashboard.models import ApiToken
from health.choices import Status
from health.models import GpuSample, HealthCheck, record_reading

pytestmark = pytest.mark.django_db


@pytest.fixture
def readings(settings):
    settings.GANTRY_HEALTH_GRACE_READINGS = 1
    record_reading("disk:var", "disk", Status.OK, "12 %")
    record_reading("tcp:redis", "tcp", Status.CRITICAL, "refused")
    record_reading("gpu:n1:0", "gpu", Status.WARN, "86 °C")
    now = timezone.now()
    GpuSample.objects.create(node_id="n1", gpu_index=0, at=now - timedelta(seconds=30), utilization_percent=10, temperature_c=50)
    GpuSample.objects.create(
        node_id="n1", gpu_index=0, at=now, utilization_percent=93, memory_used_bytes=2**34, memory_total_bytes=2**36,
        temperature_c=86, power_w=650.5,
    )
    GpuSample.objects.create(node_id="n1", gpu_index=1, at=now, utilization_percent=5, power_w=None)
    GpuSample.objects.create(node_id="gone", gpu_index=0, at=now - timedelta(hours=2), utilization_percent=99)


def samples(response) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_an_admin_gets_check_statuses_and_the_newest_gpu_figures(admin_client, readings):
    response = admin_client.get("/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=")
    got = samples(response)
    assert got[("gantry_health_check_status", (("check", "disk:var"), ("kind", "disk")))] == 0
    assert got[("gantry_health_check_status", (("check", "tcp:redis"), ("kind", "tcp")))] == 3
    assert got[("gantry_health_check_status", (("check", "gpu:n1:0"), ("kind", "gpu")))] == 2
    gpu0 = (("gpu", "0"), ("node", "n1"))
    assert got[("gantry_gpu_utilization_percent", gpu0)] == 93
    assert got[("gantry_gpu_memory_used_bytes", gpu0)] == 2**34 and got[("gantry_gpu_memory_total_bytes", gpu0)] == 2**36
    assert got[("gantry_gpu_temperature_celsius", gpu0)] == 86 and got[("gantry_gpu_power_watts", gpu0)] == 650.5
    assert got[("gantry_gpu_utilization_percent", (("gpu", "1"), ("node", "n1")))] == 5
    assert ("gantry_gpu_power_watts", (("gpu", "1"), ("node", "n1"))) not in got  # not reported: no figure
    assert not any(dict(labels).get("node") == "gone" for _, labels in got)  # not read lately: no figure
    assert "# HELP gantry_health_check_status" in response.text


def test_an_admins_api_token_scrapes_without_a_session(admin, readings):
    _, raw = ApiToken.issue(admin, "prometheus")
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 200 and "gantry_gpu_utilization_percent" in response.text


def test_anonymous_gets_401_not_the_login_page_and_a_user_403(alice, readings):
    anonymous = Client().get("/metrics")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == 'Bearer realm="gantry"'
    assert "gantry_" not in anonymous.text
    _, raw = ApiToken.issue(alice, "mine")
    user = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert user.status_code == 403 and "gantry_" not in user.text
    client = Client()
    client.force_login(alice)
    assert client.get("/metrics").status_code == 403
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer not-a-token").status_code == 401


def test_it_answers_before_any_reading(admin_client):
    response = admin_client.get("/metrics")
    assert response.status_code == 200 and "# TYPE gantry_gpu_utilization_percent gauge" in response.text


def test_only_get_is_answered(admin_client):
    assert admin_client.post("/metrics").status_code == 405


def test_each_check_carries_the_age_of_its_last_reading_beside_its_status(admin_client, readings):
    HealthCheck.objects.filter(name="tcp:redis").update(last_reading_at=timezone.now() - timedelta(seconds=90))
    HealthCheck.objects.create(name="serve:never-read", kind="serve")
    response = admin_client.get("/metrics")
    got = samples(response)
    assert "# TYPE gantry_health_check_age_seconds gauge" in response.text
    assert 90 <= got[("gantry_health_check_age_seconds", (("check", "tcp:redis"), ("kind", "tcp")))] < 150
    assert 0 <= got[("gantry_health_check_age_seconds", (("check", "disk:var"), ("kind", "disk")))] < 60
    # Never read: a status (unknown) but no age, rather than an age that means nothing.
    assert got[("gantry_health_check_status", (("check", "serve:never-read"), ("kind", "serve")))] == 1
    assert ("gantry_health_check_age_seconds", (("check", "serve:never-read"), ("kind", "serve"))) not in got
