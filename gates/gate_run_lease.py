"""Who holds a gate run: a run is advanced only by the holder of its lease, so two workers never run
a step at once, and a worker that dies mid-step costs the lease's length (GANTRY_GATE_LEASE_S). A
run nobody holds is stalled, and beat sends it again.
"""
from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from gates.models import GateRun, GateRunState

ACTIVE = (GateRunState.QUEUED, GateRunState.RUNNING)


class LeaseLost(Exception):
    """Another worker holds the run now (ours ran out): stop without writing anything more."""


def _lease() -> timedelta:
    return timedelta(seconds=settings.GANTRY_GATE_LEASE_S)


def claim(pk: int) -> tuple[GateRun, str] | None:
    """The run with a lease in our name, or None when it is finished, waiting on a reviewer or
    held by a live worker."""
    token, now = uuid.uuid4().hex, timezone.now()
    claimed = (
        GateRun.objects.filter(pk=pk, state__in=ACTIVE)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_token=token, lease_until=now + _lease())
    )
    if not claimed:
        return None
    return GateRun.objects.select_related("baseline", "eval_set", "requested_by").get(pk=pk), token


def renew(run: GateRun, token: str) -> None:
    if not GateRun.objects.filter(pk=run.pk, lease_token=token, state__in=ACTIVE).update(lease_until=timezone.now() + _lease()):
        raise LeaseLost(f"gate run {run.pk}: the lease passed to another worker")


def release(run: GateRun, token: str, *, step: str, again_s: float | None) -> None:
    fields: dict = {"lease_token": "", "lease_until": None, "step": step}
    if again_s is not None:
        # Held until then, so a duplicate message cannot run the step early; beat re-sends it if lost.
        fields.update(lease_token=token, lease_until=timezone.now() + timedelta(seconds=again_s))
    GateRun.objects.filter(pk=run.pk, lease_token=token).update(**fields)


def stalled(now=None) -> list[int]:
    """Active runs nobody is advancing: the message was lost or its worker died (lease run out)."""
    now = now or timezone.now()
    return list(GateRun.objects.filter(state__in=ACTIVE).filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now)).values_list("pk", flat=True))
