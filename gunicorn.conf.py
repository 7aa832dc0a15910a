"""gunicorn's settings for Gantry's web process, in one place: `make run`, the image and compose all
start `gunicorn -c gunicorn.conf.py dashboard.wsgi:application` (flags on the command line win).

It lives in the project's root because gunicorn reads ./gunicorn.conf.py by itself: a gunicorn started
by hand there gets the same keep-alive and the same one-sentence configuration errors.
"""
import os

from dashboard.env import load_settings_or_stop

# The image and compose listen on every interface of the container; `make run` passes its loopback bind.
bind = [f"{os.environ.get('GANTRY_BIND', '0.0.0.0')}:{os.environ.get('GANTRY_PORT', '8080')}"]
workers = 4
threads = 4  # more than one thread selects the gthread worker, the one that keeps connections alive
timeout = 60
# An idle kept-alive connection stays open this long. gunicorn's 2 s default closed connections that
# clients polling every 2 s were about to reuse ("connection reset by peer"); 75 s also outlasts a
# load balancer's usual 60 s idle timeout, so the balancer, not gunicorn, closes first.
keepalive = 75
accesslog = "-"
errorlog = "-"


def on_starting(server) -> None:
    """Reads the settings in the master before any worker forks: a bad one stops gunicorn once, with
    manage.py's sentence and exit status, instead of once in every worker that tries to boot."""
    load_settings_or_stop()


def post_worker_init(worker) -> None:
    """Connects each worker to Celery's broker before its first change needs it, off the request path:
    a process's first publish (Celery's app finalize, kombu's connection and channel) took ~0.3 s
    here, paid by whichever change a worker took first. In a thread, so a broker that is down never
    holds up the worker's boot; a change made meanwhile still tries the broker itself, as always."""
    import threading

    def connect() -> None:
        from dashboard.celery import app

        try:
            app.finalize()
            with app.producer_or_acquire():  # back into the pool, connected, for the first change
                pass
        except Exception as exc:  # noqa: BLE001 — a warm-up only; the change's own publish reports
            worker.log.info("broker not reached at boot (%s); the first change connects instead", exc)

    threading.Thread(target=connect, name="broker-warmup", daemon=True).start()
