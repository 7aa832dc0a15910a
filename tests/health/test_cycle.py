"""One probe cycle: every check runs in its own thread with its own timeout, so one that hangs does
not hold up the others; each reading records the CPU time its probe spent."""
from __future__ import annotations

import threading
import time

import pytest

from health.choices import Status
from health.models import HealthCheck
from health.cycle import all_probes, run_cycle
from health.probes.base import Probe

pytestmark = pytest.mark.django_db


def burn_cpu() -> tuple[str, str]:
    started = time.thread_time()
    while time.thread_time() - started < 0.05:
        sum(range(1000))
    return Status.OK, "burned 50 ms"


def test_a_hung_probe_times_out_without_holding_up_the_others(settings):
    settings.GANTRY_HEALTH_PROBE_TIMEOUT_S = 1
    release = threading.Event()
    probes = [
        Probe("test:hangs", "test", lambda: (release.wait(10), (Status.OK, "late"))[1]),
        Probe("test:busy", "test", burn_cpu),
        Probe("test:fails", "test", lambda: 1 / 0),
    ]
    started = time.monotonic()
    run_cycle(probes)
    elapsed = time.monotonic() - started
    release.set()
    assert elapsed < 5  # the hung probe would hold the cycle for 10 s; the timeout is 1 s
    checks = {c.name: c for c in HealthCheck.objects.all()}
    assert checks["test:hangs"].detail == "the probe did not answer within 1 s"
    assert checks["test:busy"].status == Status.OK and 45 <= checks["test:busy"].cost_ms < 500
    assert checks["test:fails"].detail == "the probe failed: ZeroDivisionError: division by zero"
    # Past the grace (2 readings) a probe that keeps hanging reads unknown.
    release.clear()
    run_cycle(probes)
    release.set()
    assert HealthCheck.objects.get(name="test:hangs").status == Status.UNKNOWN


def test_the_real_probes_run_in_one_cycle_and_record_their_cost(settings, tmp_path):
    settings.GANTRY_HF_ROOT = tmp_path
    settings.GANTRY_USERS_ROOT = tmp_path
    names = {probe.name for probe in all_probes()}
    assert {"disk:var", "tcp:serve", "progress:reconciler"} <= names
    run_cycle(all_probes())
    assert set(HealthCheck.objects.values_list("name", flat=True)) == names
    assert all(c.last_reading_at is not None and c.cost_ms >= 0 for c in HealthCheck.objects.all())
