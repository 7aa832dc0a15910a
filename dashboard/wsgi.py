"""The WSGI entry point; gunicorn's settings are in gunicorn.conf.py."""
import os

from django.core.wsgi import get_wsgi_application

from dashboard.env import ConfigError, stop_for

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
try:
    application = get_wsgi_application()
except ConfigError as exc:
    # A bad setting is the operator's to fix: manage.py's sentence, not a traceback. With gunicorn.conf.py
    # gunicorn's master says it before any worker starts; for a server started without it, status 4 is
    # gunicorn's "app failed to load", which stops the master instead of forking another worker to fail.
    stop_for(exc, status=4)
