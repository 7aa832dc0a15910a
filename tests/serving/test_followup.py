"""While a model is DEPLOYING or DELETING the reconcile task looks again within about a second
instead of waiting for beat — one follow-up at a time, however many ticks ask — and stops once
everything has settled. Checked on the real Redis broker the product uses."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import pytest
import redis
from django.utils import timezone

from serving.choices import State
from serving.models import ServeModel
from serving.tasks import reconcile as reconcile_task
from tests.serving.factories import create_model

pytestmark = [pytest.mark.usefixtures("roots", "gpu_engine")]


@pytest.fixture
def broker(settings):
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("reads the Redis broker's lists; make test runs against Redis")
    connection = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    connection.delete("serve")
    yield connection
    connection.delete("serve")


def queued(broker) -> list[dict]:
    """The reconcile messages waiting on the serve queue, as the worker will receive them."""
    messages = [json.loads(raw) for raw in broker.lrange("serve", 0, -1)]
    return [m["headers"] for m in messages if m["headers"]["task"] == "serving.tasks.reconcile"]


@pytest.mark.django_db(transaction=True)
def test_a_deploying_model_gets_one_followup_within_a_second_and_none_once_settled(alice, broker, fake_serve, settings):
    settings.GANTRY_RECONCILE_FOLLOWUP_MS = 500
    fake_serve.deploy_reads = 2
    model = create_model(alice)
    broker.delete("serve")  # the on-commit reconcile of the create; the tasks below run in-process

    reconcile_task.run()
    assert ServeModel.objects.get(pk=model.pk).state == State.DEPLOYING
    (followup,) = queued(broker)
    due = datetime.fromisoformat(followup["eta"]) - timezone.now()
    assert timedelta(0) < due <= timedelta(seconds=1)

    reconcile_task.run()  # beat, or another change, ticks meanwhile: still one follow-up
    reconcile_task.run()
    assert len(queued(broker)) == 1

    time.sleep(0.6)
    reconcile_task.run()  # the follow-up itself: Serve now says RUNNING
    assert ServeModel.objects.get(pk=model.pk).state == State.RUNNING
    time.sleep(0.6)
    reconcile_task.run()
    assert len(queued(broker)) == 1, "nothing moves any more: no new follow-up"


@pytest.mark.django_db(transaction=True)
def test_no_followups_while_serve_is_unreachable(alice, broker, fake_serve):
    create_model(alice)
    broker.delete("serve")
    reconcile_task.run()  # DEPLOYING
    broker.delete("serve")
    fake_serve.unavailable = True
    time.sleep(0.6)
    reconcile_task.run()
    assert queued(broker) == []  # beat's period is the pace for retrying a dead cluster


@pytest.mark.django_db(transaction=True)
def test_a_model_waiting_for_gpus_is_left_to_beat(alice, broker, fake_serve):
    from tests.serving.test_reconciler_hardening import occupy

    fake_serve.total_gpus = 1
    model = create_model(alice)
    reconcile_task.run()
    time.sleep(0.6)
    reconcile_task.run()
    assert ServeModel.objects.get(pk=model.pk).state == State.RUNNING
    del fake_serve.apps[model.model_key]  # Serve lost it, and its GPU went elsewhere
    occupy(fake_serve, 1)
    broker.delete("serve")
    time.sleep(0.6)
    reconcile_task.run()
    assert ServeModel.objects.get(pk=model.pk).state == State.DEPLOYING  # waiting to be re-applied
    assert queued(broker) == []  # GPUs free up on the cluster's schedule: no 0.5 s loop meanwhile


@pytest.mark.django_db(transaction=True)
def test_a_followup_that_finds_a_tick_running_neither_chains_a_rerun_nor_schedules_another(alice, broker, fake_serve):
    from serving.models import Lease
    from serving.reconciler import LEASE_NAME, claim_lease

    create_model(alice)
    reconcile_task.run()  # DEPLOYING: follow-ups are due
    broker.delete("serve")
    assert claim_lease("a tick running elsewhere")
    time.sleep(0.6)
    reconcile_task.run(followup=True)
    assert Lease.objects.get(name=LEASE_NAME).rerun_requested is False  # no back-to-back ticks
    assert queued(broker) == []  # the running tick schedules the next one when it ends
    reconcile_task.run()  # a user's change, though, asks the running tick to look once more
    assert Lease.objects.get(name=LEASE_NAME).rerun_requested is True


@pytest.mark.django_db(transaction=True)
def test_a_followup_only_reads_serves_status_and_steps_the_moving_models(alice, broker, fake_serve):
    model = create_model(alice)
    reconcile_task.run()  # a full tick: starts Serve, reads resources, applies
    assert ServeModel.objects.get(pk=model.pk).state == State.DEPLOYING
    fake_serve.asked.clear()
    time.sleep(0.6)
    reconcile_task.run(followup=True)
    assert ServeModel.objects.get(pk=model.pk).state == State.RUNNING
    # No start-up check, no cluster resources or placement groups, no periodic shm sweep: one read.
    assert fake_serve.asked == ["status"]


@pytest.mark.django_db(transaction=True)
def test_a_followup_leaves_an_apply_to_a_full_tick_and_enqueues_one(alice, broker, fake_serve):
    from serving import deployments

    fake_serve.deploy_reads = 5
    model = create_model(alice)
    reconcile_task.run()
    deployments.scale(ServeModel.objects.get(pk=model.pk), 2, alice)  # changed mid-deploy
    broker.delete("serve")
    applies = len(fake_serve.applied())
    time.sleep(0.6)
    reconcile_task.run(followup=True)
    assert len(fake_serve.applied()) == applies, "a follow-up has no GPU ledger: it must not apply"
    full = [h for h in queued(broker) if "followup" not in (h.get("kwargsrepr") or "")]
    assert full and full[0]["eta"] is None, "the apply is not left waiting for beat"
    reconcile_task.run()
    assert len(fake_serve.applied()) == applies + 1
