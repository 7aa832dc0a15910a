"""The progress probe reads the reconciler's last tick from the row it writes every tick."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from health.choices import Status
from health.probes import progress
from serving.models import ClusterSnapshot

pytestmark = pytest.mark.django_db


def test_no_tick_yet_warns():
    status, detail = progress.read_reconciler()
    assert status == Status.WARN and "not ticked yet" in detail


def test_a_recent_tick_is_ok_and_one_older_than_three_intervals_is_critical(settings):
    settings.GANTRY_RECONCILE_INTERVAL_S = 10
    ClusterSnapshot.objects.create(attempted_at=timezone.now() - timedelta(seconds=12))
    status, detail = progress.read_reconciler()
    assert status == Status.OK and "12 s ago" in detail
    ClusterSnapshot.objects.update(attempted_at=timezone.now() - timedelta(seconds=31))
    status, detail = progress.read_reconciler()
    assert status == Status.CRITICAL and "31 s ago" in detail and "30 s" in detail
