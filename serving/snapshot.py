"""The Serve status snapshot: written by the reconciler every tick, read by pages and the API.

A web worker never asks Ray (it would become a Ray driver and wait on Serve's controller with no
bound): it reads what the reconciler last saw, and says how old that is.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from serving.cluster.serve import AppStatus, ClusterResources, DeploymentStatus
from serving.models import AppSnapshot, ClusterSnapshot


def stale_after_s() -> float:
    # Three missed beats: one slow tick is not "stale", a reconciler that stopped is.
    return 3.0 * settings.GANTRY_RECONCILE_INTERVAL_S + 5


# --- writing (the reconciler) ---------------------------------------------------------------------

def record(apps: dict[str, AppStatus], resources: ClusterResources, engine: str, now: datetime) -> None:
    with transaction.atomic():
        ClusterSnapshot.objects.update_or_create(
            name=ClusterSnapshot.ONE,
            defaults={"read_at": now, "attempted_at": now, "error": "", "resources": resources.as_dict(), "engine": engine},
        )
        _write_apps(apps, now)


def _write_apps(apps: dict[str, AppStatus], now: datetime) -> None:
    AppSnapshot.objects.exclude(name__in=list(apps)).delete()
    AppSnapshot.objects.bulk_create(
        [AppSnapshot(name=name, status=app.as_dict(), read_at=now) for name, app in apps.items()],
        update_conflicts=True,
        unique_fields=["name"],
        update_fields=["status", "read_at"],
    )


def record_apps(apps: dict[str, AppStatus], now: datetime) -> None:
    """A follow-up's read: the applications only; the cluster's resources stay as the last full tick read them."""
    with transaction.atomic():
        ClusterSnapshot.objects.update_or_create(name=ClusterSnapshot.ONE, defaults={"read_at": now, "attempted_at": now, "error": ""})
        _write_apps(apps, now)


def record_unavailable(error: str, now: datetime) -> None:
    """Serve did not answer: keep what was last read (with its age) and say why it is not newer."""
    ClusterSnapshot.objects.update_or_create(name=ClusterSnapshot.ONE, defaults={"attempted_at": now, "error": error})


# --- reading (pages, API) -------------------------------------------------------------------------

@dataclass(frozen=True)
class Freshness:
    read_at: datetime | None
    error: str
    age_s: float | None
    stale: bool

    @property
    def available(self) -> bool:
        return self.read_at is not None and not self.stale and not self.error

    def as_of(self) -> str:
        if self.age_s is None:
            return "never read"
        return f"as of {_ago(self.age_s)}"

    def problem(self) -> str:
        """What a reader must know before trusting the status, or ''."""
        if self.read_at is None:
            return f"Serve's status is unavailable: {self.error or 'the reconciler has not read it yet'}."
        if self.error:
            return f"Serve's status is stale ({self.as_of()}): the last attempt to read it failed: {self.error}"
        if self.stale:
            return f"Serve's status is stale ({self.as_of()}): the reconciler has not read it since. Is the Celery worker running?"
        return ""

    def as_dict(self) -> dict:
        return {
            "available": self.available,
            "as_of": self.read_at.isoformat() if self.read_at else None,
            "age_s": None if self.age_s is None else round(self.age_s, 1),
            "stale": self.stale,
            "problem": self.problem(),
        }


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _freshness(cluster: ClusterSnapshot, now: datetime | None = None) -> Freshness:
    now = now or timezone.now()
    age = (now - cluster.read_at).total_seconds() if cluster.read_at else None
    return Freshness(cluster.read_at, cluster.error, age, age is None or age > stale_after_s() or bool(cluster.error))


@dataclass(frozen=True)
class ServeView:
    """What Serve last said about one application, and how far to trust it."""

    app: AppStatus | None
    freshness: Freshness

    @property
    def error(self) -> str:
        return self.freshness.problem()


def app_status_from_dict(name: str, data: dict) -> AppStatus:
    deployments = tuple(
        DeploymentStatus(
            d_name, d.get("status", ""), d.get("message", ""), dict(d.get("replica_states", {})), d.get("target_replicas"), d.get("trigger", "")
        )
        for d_name, d in (data.get("deployments") or {}).items()
    )
    return AppStatus(name, data.get("status", ""), data.get("message", ""), deployments)


def app_view(model_key: str) -> ServeView:
    freshness = _freshness(ClusterSnapshot.current())
    row = AppSnapshot.objects.filter(name=model_key).first()
    return ServeView(app_status_from_dict(model_key, row.status) if row else None, freshness)


@dataclass(frozen=True)
class ClusterView:
    apps: dict[str, AppStatus]
    resources: ClusterResources | None
    engine: str
    freshness: Freshness


def cluster_view() -> ClusterView:
    cluster = ClusterSnapshot.current()
    apps = {row.name: app_status_from_dict(row.name, row.status) for row in AppSnapshot.objects.order_by("name")}
    resources = ClusterResources.from_dict(cluster.resources) if cluster.resources else None
    return ClusterView(apps, resources, cluster.engine, _freshness(cluster))
