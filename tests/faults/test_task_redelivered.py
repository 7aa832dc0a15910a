"""A Celery task delivered twice — as the broker redelivers an unacknowledged message after a
worker crash (CELERY_TASK_ACKS_LATE: a task is acknowledged only when it ends) — applies once.

The reconcile task carries no change of its own: it compares what users asked for (the database)
with what Serve runs, under a lease. So the same message delivered again, at the same moment on
both workers or after the change was applied, finds nothing left to apply.
"""
from __future__ import annotations

import time
import uuid

import pytest
from celery import Celery
from django.conf import settings

from tests.ray_cluster import wait_for

pytestmark = [pytest.mark.slow]


def test_a_reconcile_delivered_twice_applies_the_change_once(topology, model):
    key = model["key"]
    assert settings.CELERY_TASK_ACKS_LATE and settings.CELERY_WORKER_PREFETCH_MULTIPLIER == 1
    print(
        f"acks_late={settings.CELERY_TASK_ACKS_LATE} prefetch={settings.CELERY_WORKER_PREFETCH_MULTIPLIER} "
        f"reject_on_worker_lost={getattr(settings, 'CELERY_TASK_REJECT_ON_WORKER_LOST', False)} "
        f"visibility_timeout={settings.CELERY_BROKER_TRANSPORT_OPTIONS.get('visibility_timeout', 3600)} s (Redis default)"
    )
    broker = Celery(broker=topology.info["env"]["CELERY_BROKER_URL"])
    task_id = str(uuid.uuid4())

    def deliver() -> None:
        # The very message a worker would get again: same task, same id, same queue.
        broker.send_task("serving.tasks.reconcile", task_id=task_id, queue="serve")

    target = 2  # from one replica (the fixture leaves it so)
    generation = topology.scale(key, target)  # its own reconcile goes out on commit
    deliver()
    deliver()
    wait_for("the change to be applied", lambda: topology.applies_per_generation(key).get(generation), 180, 0.5)
    revisions = topology.sql("SELECT count(*) FROM serving_serverevision WHERE model_key = %s", key)[0][0]

    # Delivered again after the change was applied (a redelivery an hour later, say).
    deliver()
    deliver()
    time.sleep(8)  # a worker picks a message up in well under a second; a tick takes a few
    assert topology.sql("SELECT count(*) FROM serving_serverevision WHERE model_key = %s", key)[0][0] == revisions
    counts = topology.count_changes(key, [generation])
    print(f"deliveries: 1 on commit + 2 duplicates at once + 2 duplicates after; revisions of the model: {revisions}")
    assert counts == {"submitted": 1, "applied": 1, "lost": 0, "duplicated": 0}

    back = topology.scale(key, 1)
    topology.settle(key, back, 1)
