"""Celery tasks of the gates app; they run on the `gates` queue (CELERY_TASK_ROUTES).

This module imports the domain to run it; the domain enqueues these by name (dashboard/queues.py)
and never imports this module back."""
from celery import shared_task
from django.conf import settings

from dashboard.queues import task
from gates.preflight.config import MAX_SECRET_TIMEOUT_S


@shared_task(
    # The secrets guard may wait up to secret_timeout (an hour at most) for a secret being provisioned.
    soft_time_limit=MAX_SECRET_TIMEOUT_S + settings.GANTRY_SERVE_CALL_TIMEOUT_S + 60,
    time_limit=MAX_SECRET_TIMEOUT_S + settings.GANTRY_SERVE_CALL_TIMEOUT_S + 120,
)
def preflight_for_deploy(run_id: int) -> dict:
    """Run a deploy's preflight, then wake the reconciler: it applies the model or says why not."""
    from gates.preflights import run_for_deploy
    from serving.cluster import get_client

    run = run_for_deploy(run_id, get_client())
    if run is not None:
        task("serving.tasks.reconcile").delay()
    return {"run": run_id, "status": run.status if run else "taken by another worker"}


@shared_task(soft_time_limit=3600, time_limit=3660)
def advance_gate_run(run_id: int) -> dict:
    """One step of a gate run; sends itself again for the next one (or when the step is waiting)."""
    from gates import gate_runs
    from gates.gate_run_steps import advance

    again = advance(run_id)
    if again is not None:
        gate_runs.enqueue(run_id, countdown=again)
    return {"run": run_id, "again_s": again}


@shared_task
def resend_stalled_gate_runs() -> dict:
    from gates import gate_runs
    from gates.gate_run_lease import stalled

    runs = stalled()
    for run_id in runs:
        gate_runs.enqueue(run_id)
    return {"resent": runs}
