"""Celery tasks of the serving app; they run on the `serve` queue (CELERY_TASK_ROUTES)."""
import logging

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task
def reconcile() -> dict:
    """One reconcile tick. Beat runs it on a timer; every change enqueues it on commit."""
    from serving.client import get_client
    from serving.reconciler import reconcile as run

    report = run(get_client())
    if report.reason:
        log.info("reconcile: %s", report.reason)
    return {"ran": report.ran, "applied": report.applied, "deleted": report.deleted, "unknown": report.unknown_apps}
