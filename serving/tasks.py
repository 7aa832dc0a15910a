"""Celery tasks of the serving app; they run on the `serve` queue (CELERY_TASK_ROUTES)."""
