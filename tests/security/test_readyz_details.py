"""/readyz is public (load balancers ask it), so why a check failed — the exception text, which names
hosts, ports and drivers — is for staff only; anyone else gets the status code and, per component,
its name and whether it is up."""
from __future__ import annotations

import pytest
from django.test import Client

from dashboard.models import ApiToken

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker_down(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 1}


def test_an_anonymous_caller_learns_the_status_and_the_components_only(client, broker_down):
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"] == {"database": {"ok": True}, "broker": {"ok": False}}
    assert list(body["optional"]) == ["ray"] and list(body["optional"]["ray"]) == ["ok"]
    assert "127.0.0.1:1" not in response.text and "Error" not in response.text


def test_a_logged_in_non_admin_is_told_no_more(alice_client, broker_down):
    assert "detail" not in alice_client.get("/readyz").text


def test_staff_see_what_failed_and_the_exception_text(admin_client, broker_down):
    body = admin_client.get("/readyz").json()
    assert body["checks"]["broker"]["ok"] is False and "127.0.0.1:1" in body["checks"]["broker"]["detail"]
    assert body["checks"]["database"]["detail"] == "postgresql reachable"


def test_an_admins_token_shows_the_details_too(admin, broker_down):
    _, raw = ApiToken.issue(admin, "monitoring")
    body = Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/readyz").json()
    assert "127.0.0.1:1" in body["checks"]["broker"]["detail"]
