"""A check flips only after N consecutive bad readings; a recovery flips at the first good one."""
from __future__ import annotations

import pytest

from health.choices import Status
from health.models import Flip, HealthCheck, record_reading

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def grace(settings):
    settings.GANTRY_HEALTH_GRACE_READINGS = 2


def test_the_first_reading_creates_the_check_and_a_flip_from_unknown():
    flip = record_reading("tcp:redis", "tcp", Status.OK, "127.0.0.1:6379 accepts connections", cost_ms=0.4)
    check = HealthCheck.objects.get(name="tcp:redis")
    assert (check.kind, check.status, check.bad_count, check.cost_ms) == ("tcp", Status.OK, 0, 0.4)
    assert check.last_reading_at is not None and check.since == flip.created_at
    assert (flip.from_status, flip.to_status, flip.check_name) == (Status.UNKNOWN, Status.OK, "tcp:redis")


def test_one_bad_reading_within_the_grace_does_not_flip():
    record_reading("tcp:redis", "tcp", Status.OK, "up")
    assert record_reading("tcp:redis", "tcp", Status.CRITICAL, "refused") is None
    check = HealthCheck.objects.get(name="tcp:redis")
    assert (check.status, check.bad_count) == (Status.OK, 1)
    # The status stays ok, but the panel still shows what the last reading said.
    assert check.detail == "refused"
    assert record_reading("tcp:redis", "tcp", Status.OK, "up") is None
    assert HealthCheck.objects.get(name="tcp:redis").bad_count == 0
    assert Flip.objects.count() == 1


def test_the_nth_bad_reading_flips_and_the_first_good_one_recovers():
    record_reading("tcp:redis", "tcp", Status.OK, "up")
    record_reading("tcp:redis", "tcp", Status.CRITICAL, "refused")
    down = record_reading("tcp:redis", "tcp", Status.CRITICAL, "refused again")
    assert (down.from_status, down.to_status, down.detail) == (Status.OK, Status.CRITICAL, "refused again")
    assert HealthCheck.objects.get(name="tcp:redis").since == down.created_at
    up = record_reading("tcp:redis", "tcp", Status.OK, "up")
    assert (up.from_status, up.to_status) == (Status.CRITICAL, Status.OK)
    assert list(Flip.objects.filter(check_name="tcp:redis").order_by("id").values_list("to_status", flat=True)) == [
        Status.OK, Status.CRITICAL, Status.OK,
    ]


def test_a_worse_bad_reading_past_the_grace_flips_at_once():
    record_reading("disk:var", "disk", Status.OK, "10 %")
    record_reading("disk:var", "disk", Status.WARN, "81 %")
    assert record_reading("disk:var", "disk", Status.WARN, "82 %").to_status == Status.WARN
    flip = record_reading("disk:var", "disk", Status.CRITICAL, "96 %")
    assert (flip.from_status, flip.to_status) == (Status.WARN, Status.CRITICAL)


def test_the_grace_is_a_setting(settings):
    settings.GANTRY_HEALTH_GRACE_READINGS = 1
    record_reading("tcp:redis", "tcp", Status.OK, "up")
    assert record_reading("tcp:redis", "tcp", Status.CRITICAL, "refused").to_status == Status.CRITICAL


def test_flips_are_append_only():
    flip = record_reading("tcp:redis", "tcp", Status.OK, "up")
    with pytest.raises(ValueError, match="append-only"):
        flip.save()
    with pytest.raises(ValueError, match="append-only"):
        flip.delete()


def test_a_long_blind_spell_is_recorded_once_in_the_history_as_a_blind_page(settings):
    settings.GANTRY_HEALTH_BLIND_CYCLES = 2
    for status in (Status.OK, Status.UNKNOWN, Status.UNKNOWN, Status.UNKNOWN, Status.UNKNOWN):
        record_reading("tcp:redis", "tcp", status, f"{status}")
    history = Flip.objects.filter(check_name="tcp:redis").order_by("id")
    assert [(f.from_status, f.to_status, f.event) for f in history] == [
        (Status.UNKNOWN, Status.OK, ""), (Status.OK, Status.UNKNOWN, ""), (Status.UNKNOWN, Status.UNKNOWN, "blind"),
    ]
    check = HealthCheck.objects.get(name="tcp:redis")
    assert (check.status, check.unknown_count, check.paged) == (Status.UNKNOWN, 4, "blind")


def test_the_blind_limit_flips_a_check_to_unknown_even_within_a_longer_grace(settings):
    settings.GANTRY_HEALTH_GRACE_READINGS = 10
    settings.GANTRY_HEALTH_BLIND_CYCLES = 2
    record_reading("tcp:redis", "tcp", Status.OK, "up")
    assert record_reading("tcp:redis", "tcp", Status.UNKNOWN, "timed out") is None
    assert record_reading("tcp:redis", "tcp", Status.UNKNOWN, "timed out") is None
    flip = record_reading("tcp:redis", "tcp", Status.UNKNOWN, "timed out")
    assert (flip.from_status, flip.to_status, flip.event) == (Status.OK, Status.UNKNOWN, "blind")
