"""Failed logins are rate-limited per username and address (django-axes, its tables in the real
database): the Nth failure locks that pair out for the cool-off, the login page says so and for how
long, and the right password does not get through meanwhile. API tokens never go through the login."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.test import Client

from dashboard.models import ApiToken
from tests.conftest import PASSWORD, ROOT

pytestmark = pytest.mark.django_db


def log_in(username: str, password: str, address: str = "10.0.0.1", **headers):
    client = Client(REMOTE_ADDR=address, **headers)
    return client, client.post("/login/", {"username": username, "password": password})


def fail(times: int, username: str = "alice", address: str = "10.0.0.1", **headers) -> list:
    return [log_in(username, "wrong", address, **headers)[1] for _ in range(times)]


def logged_in(client: Client) -> bool:
    return client.get("/").status_code == 200


def test_failures_below_the_limit_only_say_the_password_is_wrong(alice):
    for response in fail(settings.GANTRY_LOGIN_FAILURE_LIMIT - 1):
        assert response.status_code == 200 and "enter a correct username and password" in response.text
    client, response = log_in("alice", PASSWORD)
    assert response.status_code == 302 and logged_in(client)


def test_the_limit_locks_the_username_out_and_the_page_says_for_how_long(alice):
    *_, last = fail(settings.GANTRY_LOGIN_FAILURE_LIMIT)
    assert last.status_code == 429
    assert f"blocked for {settings.GANTRY_LOGIN_COOLOFF_MINUTES} minutes" in last.text
    assert "Too many failed log-ins for “alice”" in last.text and 'name="password"' in last.text
    client, response = log_in("alice", PASSWORD)
    assert response.status_code == 429 and not logged_in(client), "the right password waits for the cool-off too"
    assert AccessAttempt.objects.get(username="alice").failures_since_start >= settings.GANTRY_LOGIN_FAILURE_LIMIT


def test_the_lock_is_per_username_and_address(alice, bob):
    fail(settings.GANTRY_LOGIN_FAILURE_LIMIT)
    assert logged_in(log_in("alice", PASSWORD, address="10.0.0.2")[0]), "alice from another address"
    assert logged_in(log_in("bob", PASSWORD)[0]), "another user from the same address"


def test_a_forged_forwarded_for_header_does_not_escape_the_lock(alice):
    for n in range(settings.GANTRY_LOGIN_FAILURE_LIMIT):
        fail(1, HTTP_X_FORWARDED_FOR=f"81.2.69.{n + 1}")
    client, response = log_in("alice", PASSWORD, HTTP_X_FORWARDED_FOR="81.2.69.200")
    assert response.status_code == 429 and not logged_in(client)


def test_the_lock_lifts_after_the_cool_off(alice):
    fail(settings.GANTRY_LOGIN_FAILURE_LIMIT)
    past = timedelta(minutes=settings.GANTRY_LOGIN_COOLOFF_MINUTES, seconds=1)
    for attempt in AccessAttempt.objects.filter(username="alice"):
        AccessAttempt.objects.filter(pk=attempt.pk).update(attempt_time=attempt.attempt_time - past)
    assert logged_in(log_in("alice", PASSWORD)[0])


def test_api_tokens_work_while_the_login_is_locked(alice):
    fail(settings.GANTRY_LOGIN_FAILURE_LIMIT)
    _, raw = ApiToken.issue(alice, "ci")
    response = Client(REMOTE_ADDR="10.0.0.1", HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v2/me")
    assert response.status_code == 200 and response.json()["username"] == "alice"


def test_a_login_without_a_request_is_not_counted_or_refused(alice):
    # The shell and management commands: nothing there can be repeated from the network.
    from django.contrib.auth import authenticate

    fail(settings.GANTRY_LOGIN_FAILURE_LIMIT)
    assert authenticate(username="alice", password=PASSWORD) == alice
    assert authenticate(username="alice", password="wrong") is None


def settings_in_a_fresh_process(**env: str) -> subprocess.CompletedProcess:
    code = "import django; django.setup(); from django.conf import settings as s; print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME)"
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "dashboard.settings", **env}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)


def test_the_limit_and_cool_off_come_from_the_environment_and_a_bad_one_stops_start_up():
    assert settings_in_a_fresh_process(GANTRY_LOGIN_FAILURE_LIMIT="3", GANTRY_LOGIN_COOLOFF_MINUTES="2").stdout.split() == ["3", "0:02:00"]
    refused = settings_in_a_fresh_process(GANTRY_LOGIN_FAILURE_LIMIT="0")
    assert refused.returncode != 0 and "GANTRY_LOGIN_FAILURE_LIMIT=0 is below the minimum of 1" in refused.stderr
    refused = settings_in_a_fresh_process(GANTRY_LOGIN_COOLOFF_MINUTES="soon")
    assert refused.returncode != 0 and "GANTRY_LOGIN_COOLOFF_MINUTES='soon' is not a whole number" in refused.stderr
