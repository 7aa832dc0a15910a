"""The Celery app: queues `serve`, `gates` and `health`, configured from Django settings."""
import os

from celery import Celery

from dashboard.env import load_settings_or_stop

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

app = Celery("gantry")


@app.on_configure.connect
def _stop_on_a_bad_setting(sender: Celery, **kwargs) -> None:
    """`celery worker`, `beat` and `inspect` load Django's settings here, first of all: a bad one is
    manage.py's sentence and exit status, not a traceback from deep inside Celery's command line."""
    load_settings_or_stop()


app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
