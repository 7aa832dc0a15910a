"""Progress: the reconciler's last tick, from the row it writes on every tick (serving's
ClusterSnapshot.attempted_at); a reconciler that stopped ticking leaves every deploy where it is."""
from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from health.choices import Status
from health.probes.base import Probe, Reading
from serving.models import ClusterSnapshot

STALE_INTERVALS = 3


def read_reconciler() -> Reading:
    interval = settings.GANTRY_RECONCILE_INTERVAL_S
    snapshot = ClusterSnapshot.objects.filter(name=ClusterSnapshot.ONE).only("attempted_at").first()
    if snapshot is None or snapshot.attempted_at is None:
        return Status.WARN, f"the reconciler has not ticked yet (beat runs it every {interval} s: are beat and a worker on the serve queue running?)"
    age = int((timezone.now() - snapshot.attempted_at).total_seconds())
    limit = STALE_INTERVALS * interval
    if age > limit:
        return Status.CRITICAL, (
            f"the reconciler last ticked {age} s ago; it should every {interval} s (stale past {limit} s): "
            "check that beat and a worker on the serve queue are running"
        )
    return Status.OK, f"the reconciler last ticked {age} s ago"


def probes() -> list[Probe]:
    return [Probe("progress:reconciler", "progress", read_reconciler)]
