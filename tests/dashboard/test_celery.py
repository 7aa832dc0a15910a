"""Tasks go through the real broker, to their app's queue, and only once the transaction commits."""
import pytest
from django.db import transaction

from dashboard.celery import app
from health.tasks import ping


def test_the_app_declares_the_three_queues():
    assert {queue.name for queue in app.conf.task_queues} == {"serve", "gates", "health"}


def test_each_apps_tasks_route_to_its_queue():
    routes = app.conf.task_routes
    assert routes["serving.tasks.*"]["queue"] == "serve"
    assert routes["gates.tasks.*"]["queue"] == "gates"
    assert routes["health.tasks.*"]["queue"] == "health"


@pytest.mark.django_db(transaction=True)
def test_delay_on_commit_sends_nothing_until_the_commit(broker):
    with transaction.atomic():
        ping.delay_on_commit()
        assert broker.llen("health") == 0
    assert broker.llen("health") == 1


@pytest.mark.django_db(transaction=True)
def test_delay_on_commit_sends_nothing_when_the_transaction_rolls_back(broker):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            ping.delay_on_commit()
            raise RuntimeError("rolled back")
    assert broker.llen("health") == 0


def test_beat_reconciles_on_a_timer_to_repair_drift(settings):
    entry = app.conf.beat_schedule["serving-reconcile"]
    assert entry["task"] == "serving.tasks.reconcile"
    assert entry["schedule"] == float(settings.GANTRY_RECONCILE_INTERVAL_S)
