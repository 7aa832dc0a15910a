"""Alert e-mail through a real SMTP server: a check that goes down and comes back up sends a down mail
and a recovery mail, over SMTP (Django's SMTP backend, configured by the EMAIL_* settings), to a
local aiosmtpd server that keeps what it received."""
from __future__ import annotations

import email
import os
import subprocess
import sys

import pytest
from aiosmtpd.controller import Controller

from health.alerts import deliver_alerts
from health.choices import Status
from health.models import Flip, record_reading
from tests.ray_cluster import free_port

pytestmark = pytest.mark.django_db


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.Message]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 — aiosmtpd's name
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp(settings):
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.DEFAULT_FROM_EMAIL = "gantry@ops.example.test"
    settings.GANTRY_HEALTH_WEBHOOK_URL = ""
    settings.GANTRY_HEALTH_ALERT_EMAILS = ["oncall@example.test", "lead@example.test"]
    settings.GANTRY_HEALTH_GRACE_READINGS = 1
    yield inbox
    controller.stop()


def test_a_flip_to_down_and_back_up_sends_a_down_and_a_recovery_mail_over_smtp(smtp):
    for status, detail in ((Status.OK, "up"), (Status.CRITICAL, "127.0.0.1:6379 does not accept connections"), (Status.OK, "up again")):
        record_reading("tcp:redis", "tcp", status, detail)
        deliver_alerts()

    assert [rcpt for rcpt, _ in smtp.messages] == [["oncall@example.test", "lead@example.test"]] * 2
    down, recovery = (message for _, message in smtp.messages)
    assert down["Subject"] == "[Gantry] DOWN: tcp:redis is critical"
    assert down["From"] == "gantry@ops.example.test"
    assert "127.0.0.1:6379 does not accept connections" in down.get_payload()
    assert recovery["Subject"] == "[Gantry] RECOVERED: tcp:redis is ok"
    assert not Flip.objects.filter(processed_at__isnull=True).exists()


def test_a_mail_server_that_is_down_keeps_the_alert_in_the_outbox(smtp, settings):
    settings.EMAIL_PORT = free_port()  # nothing listens there
    record_reading("tcp:redis", "tcp", Status.CRITICAL, "down")

    assert deliver_alerts() == 0

    flip = Flip.objects.get(to_status=Status.CRITICAL)
    assert flip.processed_at is None and "Connection refused" in flip.last_error
    assert smtp.messages == []


def settings_in_a_fresh_process(**env: str) -> dict:
    code = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "print(json.dumps({k: getattr(s, k) for k in ('EMAIL_BACKEND', 'EMAIL_HOST', 'EMAIL_PORT', 'EMAIL_HOST_PASSWORD', 'EMAIL_USE_TLS', 'DEFAULT_FROM_EMAIL', 'EMAIL_TIMEOUT')}))"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("EMAIL_")}
    done = subprocess.run([sys.executable, "-c", code], env={**base, "DJANGO_SETTINGS_MODULE": "dashboard.settings", **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_email_settings_come_from_the_environment_and_default_to_the_console(tmp_path):
    assert settings_in_a_fresh_process()["EMAIL_BACKEND"] == "django.core.mail.backends.console.EmailBackend"
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret\n")

    configured = settings_in_a_fresh_process(
        EMAIL_HOST="smtp.example.test", EMAIL_PORT="587", EMAIL_USE_TLS="true",
        EMAIL_HOST_PASSWORD_FILE=str(secret), DEFAULT_FROM_EMAIL="gantry@example.test", GANTRY_HEALTH_ALERT_TIMEOUT_S="7",
    )

    assert configured == {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend", "EMAIL_HOST": "smtp.example.test", "EMAIL_PORT": 587,
        "EMAIL_HOST_PASSWORD": "s3cret", "EMAIL_USE_TLS": True, "DEFAULT_FROM_EMAIL": "gantry@example.test", "EMAIL_TIMEOUT": 7,
    }
