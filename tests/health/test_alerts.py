"""Flips to critical page someone; flips back to ok say so. Sent from the Flip outbox by a real HTTP
POST to a real local receiver, so a failed send stays in the outbox and is sent later."""
from __future__ import annotations

import pytest
from django.core import mail

from health.alerts import deliver_alerts
from health.choices import Status
from health.models import Flip, record_reading

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def grace(settings):
    settings.GANTRY_HEALTH_GRACE_READINGS = 2


def readings(*statuses: str) -> None:
    for status in statuses:
        record_reading("tcp:redis", "tcp", status, f"redis is {status}")
        deliver_alerts()


def test_down_up_down_records_three_flips_and_sends_two_down_alerts_and_one_recovery(receiver):
    readings(Status.OK)
    readings(Status.CRITICAL, Status.CRITICAL, Status.OK, Status.CRITICAL, Status.CRITICAL)
    changes = Flip.objects.filter(check_name="tcp:redis").exclude(from_status=Status.UNKNOWN).order_by("id")
    assert [(f.from_status, f.to_status) for f in changes] == [
        (Status.OK, Status.CRITICAL), (Status.CRITICAL, Status.OK), (Status.OK, Status.CRITICAL),
    ]
    assert receiver.kinds() == ["down", "recovery", "down"]
    first = receiver.received[0]
    assert first["content_type"] == "application/json"
    assert (first["check"], first["status"], first["previous_status"], first["detail"]) == (
        "tcp:redis", "critical", "ok", "redis is critical",
    )
    assert not Flip.objects.filter(processed_at__isnull=True).exists()


def test_a_single_bad_reading_within_the_grace_sends_nothing(receiver):
    readings(Status.OK, Status.CRITICAL, Status.OK)
    assert receiver.received == []
    assert Flip.objects.count() == 1


def test_a_failed_send_stays_in_the_outbox_and_is_sent_on_the_next_pass(receiver):
    readings(Status.OK)
    receiver.fail_next = 1
    readings(Status.CRITICAL, Status.CRITICAL)
    flip = Flip.objects.get(to_status=Status.CRITICAL)
    assert flip.processed_at is None and flip.attempts == 1 and "503" in flip.last_error
    assert receiver.received == []
    deliver_alerts()
    assert receiver.kinds() == ["down"]
    flip.refresh_from_db()
    assert flip.processed_at is not None and flip.attempts == 2


def test_an_unreachable_webhook_fails_within_the_timeout(settings):
    import socket
    import time

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        settings.GANTRY_HEALTH_WEBHOOK_URL = f"http://127.0.0.1:{taken.getsockname()[1]}/hook"
        settings.GANTRY_HEALTH_ALERT_EMAILS = []
        readings(Status.OK, Status.CRITICAL)
        record_reading("tcp:redis", "tcp", Status.CRITICAL, "down")
        started = time.monotonic()
        assert deliver_alerts() == 0
        assert time.monotonic() - started < settings.GANTRY_HEALTH_ALERT_TIMEOUT_S + 1
    assert Flip.objects.get(to_status=Status.CRITICAL).processed_at is None


def test_alerts_go_by_email_to_the_recipients_from_settings(settings):
    settings.GANTRY_HEALTH_WEBHOOK_URL = ""
    settings.GANTRY_HEALTH_ALERT_EMAILS = ["oncall@example.test"]
    readings(Status.OK, Status.CRITICAL, Status.CRITICAL, Status.OK)
    assert [m.to for m in mail.outbox] == [["oncall@example.test"], ["oncall@example.test"]]
    assert "DOWN" in mail.outbox[0].subject and "tcp:redis" in mail.outbox[0].subject
    assert "redis is critical" in mail.outbox[0].body
    assert "RECOVERED" in mail.outbox[1].subject
