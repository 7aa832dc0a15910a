"""Celery tasks of the gates app; they run on the `gates` queue (CELERY_TASK_ROUTES)."""
