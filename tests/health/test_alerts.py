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


# --- What each flip sends: a page opens on critical (or a long blind spell) and closes on a good reading

def test_critical_then_warn_then_ok_sends_the_recovery_when_it_leaves_critical(receiver):
    readings(Status.OK, Status.CRITICAL, Status.CRITICAL, Status.WARN, Status.WARN)
    assert receiver.kinds() == ["down", "recovery"]
    assert (receiver.received[1]["previous_status"], receiver.received[1]["status"]) == ("critical", "warn")
    readings(Status.OK)
    assert receiver.kinds() == ["down", "recovery"]


def test_an_unknown_gap_in_an_outage_is_no_recovery_and_critical_after_it_does_not_page_again(receiver):
    readings(Status.OK, Status.CRITICAL, Status.CRITICAL, Status.UNKNOWN, Status.UNKNOWN, Status.CRITICAL, Status.CRITICAL)
    assert receiver.kinds() == ["down"]
    readings(Status.OK)
    assert receiver.kinds() == ["down", "recovery"]


def test_an_outage_that_went_blind_recovers_when_it_reads_ok(receiver):
    readings(Status.OK, Status.CRITICAL, Status.CRITICAL, Status.UNKNOWN, Status.UNKNOWN, Status.OK)
    assert receiver.kinds() == ["down", "recovery"]
    assert receiver.received[1]["previous_status"] == "unknown"


def test_a_check_unknown_for_more_than_the_blind_cycles_pages_once_and_recovers_when_it_reads_again(receiver, settings):
    assert settings.GANTRY_HEALTH_BLIND_CYCLES == 4
    readings(Status.OK, Status.UNKNOWN, Status.UNKNOWN, Status.UNKNOWN, Status.UNKNOWN)
    assert receiver.received == []  # unknown for 4 cycles: within the limit
    readings(Status.UNKNOWN)
    assert receiver.kinds() == ["blind"]
    assert (receiver.received[0]["check"], receiver.received[0]["status"]) == ("tcp:redis", "unknown")
    readings(Status.UNKNOWN, Status.UNKNOWN, Status.UNKNOWN, Status.UNKNOWN, Status.UNKNOWN)
    assert receiver.kinds() == ["blind"]
    readings(Status.WARN, Status.WARN)
    assert receiver.kinds() == ["blind", "recovery"]


def test_a_warning_between_unknown_readings_starts_the_blind_count_again(receiver, settings):
    settings.GANTRY_HEALTH_BLIND_CYCLES = 2
    readings(Status.OK, Status.UNKNOWN, Status.UNKNOWN, Status.WARN, Status.UNKNOWN, Status.UNKNOWN)
    assert receiver.received == []
    readings(Status.UNKNOWN)
    assert receiver.kinds() == ["blind"]


def test_a_blind_outage_is_not_paged_again_as_blind(receiver, settings):
    settings.GANTRY_HEALTH_BLIND_CYCLES = 2
    readings(Status.OK, Status.CRITICAL, Status.CRITICAL, *[Status.UNKNOWN] * 5, Status.CRITICAL, Status.CRITICAL)
    assert receiver.kinds() == ["down"]


def test_critical_after_a_blind_page_pages_down(receiver, settings):
    settings.GANTRY_HEALTH_BLIND_CYCLES = 2
    readings(Status.OK, Status.UNKNOWN, Status.UNKNOWN, Status.UNKNOWN, Status.CRITICAL, Status.CRITICAL, Status.OK)
    assert receiver.kinds() == ["blind", "down", "recovery"]


def test_a_blind_check_is_mailed_as_blind_with_how_long(settings):
    settings.GANTRY_HEALTH_WEBHOOK_URL = ""
    settings.GANTRY_HEALTH_ALERT_EMAILS = ["oncall@example.test"]
    settings.GANTRY_HEALTH_BLIND_CYCLES = 2
    readings(Status.OK, Status.UNKNOWN, Status.UNKNOWN, Status.UNKNOWN)
    (blind,) = mail.outbox
    assert blind.subject == "[Gantry] BLIND: tcp:redis cannot be read"
    assert "could not read tcp:redis for 3 probe cycles in a row" in blind.body and "redis is unknown" in blind.body
