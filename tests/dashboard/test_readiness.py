"""/readyz answers 200 when the database and the broker answer and 503 when either does not."""
import pytest
from django.core.cache import cache

pytestmark = pytest.mark.django_db


def test_ready_with_the_real_database_and_broker(client, settings):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]


def test_an_unreachable_broker_makes_readyz_503_and_says_which(admin_client, settings):
    # The reason is for staff only (tests/security/test_readyz_details.py).
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 1}
    response = admin_client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["broker"]["ok"] is False
    assert "127.0.0.1:1" in body["checks"]["broker"]["detail"]
    assert body["checks"]["database"]["ok"] is True


def test_an_unreachable_ray_is_reported_but_does_not_fail_readiness(client, settings):
    settings.RAY_ADDRESS = "127.0.0.1:1"
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["optional"]["ray"]["ok"] is False


def test_pages_still_serve_and_say_so_when_ray_is_unreachable(alice_client, settings):
    cache.clear()
    settings.RAY_ADDRESS = "127.0.0.1:1"
    response = alice_client.get("/")
    assert response.status_code == 200
    assert "Ray cluster unreachable at" in response.text and "127.0.0.1:1" in response.text


def test_a_malformed_ray_address_is_said_plainly(alice_client, settings):
    cache.clear()
    settings.RAY_ADDRESS = "not an address"
    response = alice_client.get("/")
    assert "is not host:port or ray://host:port" in response.text


def test_doctor_exits_non_zero_when_the_broker_is_unreachable(settings, capsys):
    from django.core.management import call_command

    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    with pytest.raises(SystemExit) as exit_info:
        call_command("doctor")
    assert exit_info.value.code == 1
    out = capsys.readouterr()
    assert "✖ broker" in out.out and "cannot start: broker unreachable" in out.err
