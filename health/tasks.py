"""Celery tasks of the health app; they run on the `health` queue (CELERY_TASK_ROUTES)."""
from celery import shared_task


@shared_task
def ping() -> str:
    """A no-op a deploy script or a test can send through the broker to see a worker answer."""
    return "pong"
