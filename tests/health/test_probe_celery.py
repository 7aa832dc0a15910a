"""The Celery probe against the real test Redis: a real worker on a test-only queue answers the ping
and drains its queue; once it is stopped, the queue's oldest task ages into warn, then critical."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings as django_settings
from kombu import Queue

from health.choices import Status
from health.probes import celery as celery_probe
from health.tasks import ping
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not django_settings.CELERY_BROKER_URL.startswith("redis://"), reason="needs CELERY_BROKER_URL=redis://… (the test Redis)"),
]


def wait_for(what: str, condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def test_queue(settings):
    name = f"health-test-{uuid.uuid4().hex[:8]}"
    settings.CELERY_TASK_QUEUES = [Queue(name)]
    settings.GANTRY_HEALTH_QUEUE_WARN_S, settings.GANTRY_HEALTH_QUEUE_CRITICAL_S = 1, 3
    yield name
    celery_probe.redis_client().delete(name)


@pytest.fixture
def worker(test_queue, tmp_path):
    log = open(tmp_path / "worker.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "-Q", test_queue, "-n", f"{test_queue}@%h",
         "--pool", "solo", "--without-gossip", "--without-mingle", "-l", "info"],
        cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT,
    )
    yield process
    if process.poll() is None:
        process.terminate()
        process.wait(30)
    log.close()


def test_a_queue_whose_worker_is_stopped_goes_stale(test_queue, worker):
    wait_for("the worker to answer a ping", lambda: celery_probe.read_workers()[0] == Status.OK)
    status, detail = celery_probe.read_workers()
    assert f"{test_queue}@" in detail

    ping.apply_async(queue=test_queue)
    redis = celery_probe.redis_client()
    wait_for("the worker to drain its queue", lambda: redis.llen(test_queue) == 0)
    assert celery_probe.read_queue(test_queue) == (Status.OK, f"{test_queue}: empty")

    worker.terminate()
    worker.wait(30)
    ping.apply_async(queue=test_queue)
    ping.apply_async(queue=test_queue)
    status, detail = celery_probe.read_queue(test_queue)
    assert status == Status.OK and "2 waiting" in detail
    time.sleep(1.5)
    status, detail = celery_probe.read_queue(test_queue)
    assert status == Status.WARN and "2 waiting, oldest 1 s" in detail
    time.sleep(2)
    status, detail = celery_probe.read_queue(test_queue)
    assert status == Status.CRITICAL and "oldest 3 s" in detail
    assert celery_probe.read_workers() == (Status.CRITICAL, "no Celery worker answered a ping within 1 s")


def test_it_watches_every_configured_queue(test_queue):
    assert [probe.name for probe in celery_probe.probes()] == ["celery:workers", f"celery:queue:{test_queue}"]
