"""A check's status, and the questions views, workers and the command ask about it."""
from django.db import models


class Status(models.TextChoices):
    OK = "ok", "ok"
    WARN = "warn", "warn"
    CRITICAL = "critical", "critical"
    UNKNOWN = "unknown", "unknown"


class Alert(models.TextChoices):
    """What a flip sends (health/models.py next_page decides it; health/alerts.py sends it)."""

    DOWN = "down", "down"
    BLIND = "blind", "blind"
    RECOVERY = "recovery", "recovery"


# Readings that count towards the grace: a probe that cannot tell (timed out, failed) is as
# suspicious as one that saw a problem, but neither pages anyone before N of them in a row.
BAD_STATUSES = frozenset({Status.WARN, Status.CRITICAL, Status.UNKNOWN})
# How bad each status is, for "the worst of" (a disk is as bad as the fuller of bytes and inodes).
SEVERITY = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARN: 2, Status.CRITICAL: 3}
# Readings older than this many probe intervals mean the probes stopped: they vouch for nothing
# (the panel, /metrics and the VRAM fit check all ask it).
STALE_INTERVALS = 3


def worst(*statuses: str) -> str:
    return max(statuses, key=lambda status: SEVERITY[Status(status)])
