"""The beat task: every GANTRY_HEALTH_INTERVAL_S on the health queue, it reads every probe and sends
the alerts the flips call for — here a Serve port nobody listens on, to a real local receiver."""
from __future__ import annotations

import socket

import pytest
from django.conf import settings as django_settings

from dashboard.celery import app
from health.models import HealthCheck
from health.tasks import run_probes

pytestmark = pytest.mark.django_db


def test_beat_runs_the_probes_every_interval_on_the_health_queue():
    entry = django_settings.CELERY_BEAT_SCHEDULE["health-probes"]
    assert entry["task"] == "health.tasks.run_probes"
    assert entry["schedule"] == float(django_settings.GANTRY_HEALTH_INTERVAL_S) == 15.0
    assert app.amqp.router.route({}, "health.tasks.run_probes")["queue"].name == "health"


def test_a_cycle_reads_every_probe_and_a_dead_dependency_pages_after_the_grace(settings, tmp_path, receiver):
    settings.GANTRY_HEALTH_GRACE_READINGS = 2
    settings.GANTRY_HF_ROOT = settings.GANTRY_USERS_ROOT = tmp_path
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        settings.GANTRY_SERVE_HOST, settings.GANTRY_SERVE_PORT = "127.0.0.1", unused.getsockname()[1]
    assert run_probes() == HealthCheck.objects.count() >= 8
    assert HealthCheck.objects.get(name="tcp:serve").bad_count == 1 and receiver.received == []
    run_probes()
    assert HealthCheck.objects.get(name="tcp:serve").status == "critical"
    assert ("down", "tcp:serve") in [(alert["event"], alert["check"]) for alert in receiver.received]
