"""The TCP probe connects for real: a listener opened reads ok, the same port closed reads critical."""
from __future__ import annotations

import socket

from health.choices import Status
from health.probes import tcp


def test_a_listener_is_ok_and_the_same_port_closed_is_critical():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    status, detail = tcp.read_endpoint("127.0.0.1", port)
    assert status == Status.OK and f"127.0.0.1:{port}" in detail
    listener.close()
    status, detail = tcp.read_endpoint("127.0.0.1", port)
    assert status == Status.CRITICAL and "refused" in detail.lower()


def test_it_checks_the_dependencies_settings_name(settings):
    settings.CELERY_BROKER_URL = "redis://cache.internal:6390/0"
    settings.RAY_ADDRESS = "ray://head.internal:10001"
    settings.GANTRY_SERVE_HOST, settings.GANTRY_SERVE_PORT = "serve.internal", 8000
    settings.MLFLOW_TRACKING_URI = "http://mlflow.internal:5000"
    targets = {name: endpoint for name, endpoint in tcp.endpoints() if name != "tcp:postgresql"}
    assert targets == {
        "tcp:redis": ("cache.internal", 6390),
        "tcp:ray-gcs": ("head.internal", 10001),
        "tcp:serve": ("serve.internal", 8000),
        "tcp:mlflow": ("mlflow.internal", 5000),
    }


def test_postgresql_is_reached_where_databases_says_and_sqlite_or_a_socket_is_not():
    assert tcp.database_endpoint({"ENGINE": "django.db.backends.postgresql", "HOST": "db.internal", "PORT": ""}) == ("db.internal", 5432)
    assert tcp.database_endpoint({"ENGINE": "django.db.backends.postgresql", "HOST": "db", "PORT": "6432"}) == ("db", 6432)
    assert tcp.database_endpoint({"ENGINE": "django.db.backends.postgresql", "HOST": "/var/run/postgresql"}) is None
    assert tcp.database_endpoint({"ENGINE": "django.db.backends.sqlite3", "NAME": "x.sqlite3"}) is None


def test_embedded_defaults_have_nothing_to_connect_to_but_ray_and_serve(settings):
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.MLFLOW_TRACKING_URI = "sqlite:///var/mlflow.db"
    names = {name for name, _ in tcp.endpoints()}
    assert names - {"tcp:postgresql"} == {"tcp:ray-gcs", "tcp:serve"}
