"""The Celery app: queues `serve`, `gates` and `health`, configured from Django settings."""
import os
import sys

from celery import Celery

from dashboard.env import ConfigError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

app = Celery("gantry")


@app.on_configure.connect
def _stop_on_a_bad_setting(sender: Celery, **kwargs) -> None:
    """`celery worker`, `beat` and `inspect` load Django's settings here, first of all: a bad one is
    manage.py's sentence and exit status, not a traceback from deep inside Celery's command line."""
    from django.conf import settings

    try:
        settings.INSTALLED_APPS  # noqa: B018 — the first read is what loads dashboard/settings.py
    except ConfigError as exc:
        sys.stderr.write(f"gantry: configuration error: {exc}\n")
        sys.exit(2)


app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
