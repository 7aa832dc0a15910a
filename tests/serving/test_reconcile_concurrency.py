"""Two reconciles started at the same moment on PostgreSQL apply each change exactly once."""
import threading
import time

import pytest
from django.db import connection

from serving.models import Lease, ServeRevision
from serving.reconciler import LEASE_NAME, claim_lease, reconcile, release_lease
from tests.serving.factories import create_model
from tests.serving.fake_serve import FakeServe

pytestmark = pytest.mark.usefixtures("roots", "gpu_engine")


class SlowServe(FakeServe):
    """Applies take a moment, so the two reconciles really overlap."""

    def apply_model(self, *args, **kwargs):
        time.sleep(0.3)
        super().apply_model(*args, **kwargs)


def run_together(target, count: int = 2) -> list:
    barrier = threading.Barrier(count)
    results, errors = [], []

    def worker():
        try:
            barrier.wait()
            results.append(target())
        except Exception as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


@pytest.mark.django_db(transaction=True)
def test_two_reconciles_at_once_apply_each_change_once(alice, bob):
    if connection.vendor != "postgresql":
        pytest.skip("the race that matters is PostgreSQL's; make test runs on it")
    models = [create_model(alice, "one"), create_model(alice, "two"), create_model(bob, "three")]
    serve = SlowServe(gpus=8)

    reports = run_together(lambda: reconcile(serve))

    assert sorted(serve.applied()) == sorted(m.model_key for m in models)
    assert ServeRevision.objects.count() == 3
    assert sorted(report.ran for report in reports) == [False, True]
    # The loser asked for a rerun instead of waiting for the next beat, and the winner honoured it.
    lease = Lease.objects.get(name=LEASE_NAME)
    assert (lease.holder, lease.rerun_requested) == ("", False)


@pytest.mark.django_db(transaction=True)
def test_a_claim_races_to_exactly_one_winner():
    results = run_together(lambda: claim_lease(f"worker-{threading.get_ident()}"), count=8)
    assert results.count(True) == 1


@pytest.mark.django_db
def test_a_release_reports_a_requested_rerun_and_keeps_the_lease():
    assert claim_lease("a")
    assert not claim_lease("b")  # b asks for a rerun
    assert release_lease("a") is True
    assert Lease.objects.get(name=LEASE_NAME).holder == "a"
    assert release_lease("a") is False
    assert claim_lease("b")


@pytest.mark.django_db
def test_an_expired_lease_can_be_taken_over():
    from datetime import timedelta

    from django.utils import timezone

    assert claim_lease("dead-worker")
    Lease.objects.filter(name=LEASE_NAME).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert claim_lease("live-worker")
