"""Work is enqueued by task name, so domain code never imports the tasks module that imports it.

Each app's `tasks.py` imports its domain to run it; if the domain imported `tasks.py` back to
enqueue, every app would be one import cycle (views → tasks → domain → tasks). Celery routes a task
by its name (CELERY_TASK_ROUTES), so a name is all the domain needs.
"""
from __future__ import annotations

from celery import current_app


def task(name: str):
    """The task registered under `name` in this process — the same object a test patches — or,
    where this process has not imported its module (the web process, say), a signature that sends
    it by name. Both answer `.delay(...)` and `.apply_async(...)` alike."""
    registered = current_app.tasks
    return registered[name] if name in registered else current_app.signature(name)
