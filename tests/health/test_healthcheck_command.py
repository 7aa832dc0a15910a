"""`manage.py healthcheck` for cron: one line per check, exit status 1 when any is critical."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from health.choices import Status
from health.models import HealthCheck, record_reading

pytestmark = pytest.mark.django_db


def test_it_prints_a_mark_per_check_and_exits_0_when_none_is_critical(capsys, settings):
    settings.GANTRY_HEALTH_GRACE_READINGS = 1
    record_reading("disk:var", "disk", Status.OK, "bytes 12 % used")
    record_reading("disk:hf-root", "disk", Status.WARN, "bytes 85 % used")
    call_command("healthcheck")
    out = capsys.readouterr().out
    assert "✔ disk:var" in out and "bytes 12 % used" in out
    assert "! disk:hf-root" in out and "warn" in out


def test_it_exits_1_when_a_check_is_critical(capsys, settings):
    settings.GANTRY_HEALTH_GRACE_READINGS = 1
    record_reading("disk:var", "disk", Status.OK, "fine")
    record_reading("tcp:redis", "tcp", Status.CRITICAL, "refused")
    with pytest.raises(CommandError, match="1 check critical: tcp:redis") as raised:
        call_command("healthcheck")
    assert raised.value.returncode == 1
    assert "✖ tcp:redis" in capsys.readouterr().out


def test_readings_the_probes_stopped_refreshing_count_as_critical(capsys, settings):
    settings.GANTRY_HEALTH_INTERVAL_S = 15
    record_reading("disk:var", "disk", Status.OK, "fine")
    HealthCheck.objects.update(last_reading_at=timezone.now() - timedelta(seconds=120))
    with pytest.raises(CommandError, match="disk:var"):
        call_command("healthcheck")
    out = capsys.readouterr().out
    assert "✖ disk:var" in out and re.search(r"not refreshed for 12\d s", out)


def test_no_readings_at_all_is_a_failure_that_says_why():
    with pytest.raises(CommandError, match="no health readings yet"):
        call_command("healthcheck")
