"""Celery: workers alive (a control ping), and per queue the depth and the age of the oldest
waiting task (Redis brokers; the age comes from the send time Gantry stamps on every task)."""
from __future__ import annotations

import json
import time
from functools import lru_cache
from urllib.parse import urlsplit

import redis
from django.conf import settings

from health.choices import Status
from health.probes.base import Probe, Reading

PING_TIMEOUT_S = 1
SENT_AT_HEADER = "gantry_sent_at"


def stamp_sent_at(headers: dict | None = None, **kwargs) -> None:
    """Celery's before_task_publish receiver (connected in HealthConfig.ready)."""
    if headers is not None:
        headers.setdefault(SENT_AT_HEADER, time.time())


def is_redis_broker() -> bool:
    return urlsplit(settings.CELERY_BROKER_URL).scheme in ("redis", "rediss")


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def redis_client() -> redis.Redis:
    return _client(settings.CELERY_BROKER_URL)


def read_workers() -> Reading:
    from dashboard.celery import app

    replies = app.control.ping(timeout=PING_TIMEOUT_S)
    names = sorted(name for reply in replies for name in reply)
    if not names:
        return Status.CRITICAL, f"no Celery worker answered a ping within {PING_TIMEOUT_S} s"
    return Status.OK, f"{len(names)} worker(s) answered: {', '.join(names)}"


def read_queue(name: str) -> Reading:
    client = redis_client()
    depth = client.llen(name)
    if not depth:
        return Status.OK, f"{name}: empty"
    # kombu LPUSHes and workers BRPOP: the oldest waiting message is the rightmost.
    raw = client.lindex(name, -1)
    sent_at = json.loads(raw).get("headers", {}).get(SENT_AT_HEADER) if raw else None
    if sent_at is None:
        return Status.OK, f"{name}: {depth} waiting (age unknown: sent without Gantry's timestamp)"
    age = max(0, int(time.time() - float(sent_at)))
    status = (
        Status.CRITICAL if age >= settings.GANTRY_HEALTH_QUEUE_CRITICAL_S
        else Status.WARN if age >= settings.GANTRY_HEALTH_QUEUE_WARN_S
        else Status.OK
    )
    detail = f"{name}: {depth} waiting, oldest {age} s"
    if status != Status.OK:
        detail += " — nothing is taking work from this queue: is a worker for it running?"
    return status, detail


def probes() -> list[Probe]:
    found = [Probe("celery:workers", "celery", read_workers)]
    if is_redis_broker():
        for queue in settings.CELERY_TASK_QUEUES:
            found.append(Probe(f"celery:queue:{queue.name}", "celery", lambda name=queue.name: read_queue(name)))
    return found
