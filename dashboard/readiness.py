"""Is each dependency reachable? Used by /readyz, the layout's banner and `manage.py doctor`."""
from __future__ import annotations

import hashlib
import socket
import time
from dataclasses import asdict, dataclass

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from kombu import Connection

from serving.cluster.address import ray_gcs_endpoint


@dataclass(frozen=True)
class Reachability:
    name: str
    ok: bool
    detail: str
    elapsed_ms: float

    def as_dict(self) -> dict:
        return asdict(self)


def _timed(name: str, probe) -> Reachability:
    started = time.monotonic()
    try:
        detail = probe()
        ok = True
    except Exception as exc:  # noqa: BLE001 — any failure to reach a dependency is a "no", with its reason
        ok, detail = False, f"{type(exc).__name__}: {exc}".strip()
    return Reachability(name, ok, detail, round((time.monotonic() - started) * 1000, 1))


def check_database() -> Reachability:
    def probe() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return f"{connection.vendor} reachable"

    return _timed("database", probe)


def check_broker() -> Reachability:
    url = settings.CELERY_BROKER_URL

    def probe() -> str:
        with Connection(url, transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS, connect_timeout=settings.GANTRY_DEPENDENCY_TIMEOUT) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=settings.GANTRY_DEPENDENCY_TIMEOUT * 2)
            return f"{conn.transport_cls} broker reachable"

    return _timed("broker", probe)


def check_tcp(name: str, host: str, port: int) -> Reachability:
    def probe() -> str:
        with socket.create_connection((host, port), timeout=settings.GANTRY_DEPENDENCY_TIMEOUT):
            return f"{host}:{port} accepts connections"

    return _timed(name, probe)


def check_ray() -> Reachability:
    endpoint = ray_gcs_endpoint(settings.RAY_ADDRESS)
    if endpoint is None:
        return Reachability("ray", False, f"RAY_ADDRESS={settings.RAY_ADDRESS!r} is not host:port or ray://host:port", 0.0)
    return check_tcp("ray", *endpoint)


def ray_status_cached(ttl: int = 15) -> Reachability:
    """The Ray check for page renders: a dead cluster must not slow every page by a connect timeout."""
    key = "gantry:ray-reachability:" + hashlib.sha1(settings.RAY_ADDRESS.encode()).hexdigest()
    cached = cache.get(key)
    if cached is None:
        cached = check_ray()
        cache.set(key, cached, ttl)
    return cached
