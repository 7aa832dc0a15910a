"""The reconciler's lease: one row that says which worker reconciles now, until when.

A conditional UPDATE claims it (two workers never both hold it); the holder renews it before every
Serve call and lets go when its tick ends. The same row paces the follow-up ticks.
"""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError
from django.db.models import Q
from django.utils import timezone

from serving.models import Lease

LEASE_NAME = "serving-reconciler"


def lease_ttl() -> timedelta:
    """The lease is renewed before every Serve call, and each call is bounded: it only has to outlast
    the longest call plus the database work around it, so a worker killed mid-tick blocks the
    others for one TTL at most, and a slow tick never lets a second reconciler in."""
    return timedelta(seconds=2 * settings.GANTRY_SERVE_CALL_TIMEOUT_S + 30)


def claim_lease(holder: str, *, ask_rerun: bool = True) -> bool:
    now = timezone.now()
    try:
        Lease.objects.get_or_create(name=LEASE_NAME)
    except IntegrityError:
        pass  # created by a worker that started at the same moment
    claimed = (
        Lease.objects.filter(name=LEASE_NAME)
        .filter(Q(holder="") | Q(expires_at__lt=now))
        .update(holder=holder, expires_at=now + lease_ttl(), rerun_requested=False)
    )
    if not claimed and ask_rerun:
        # The holder runs once more before it lets go, so this change is not left for the next beat.
        Lease.objects.filter(name=LEASE_NAME).update(rerun_requested=True)
    return bool(claimed)


def renew_lease(holder: str) -> None:
    Lease.objects.filter(name=LEASE_NAME, holder=holder).update(expires_at=timezone.now() + lease_ttl())


def release_lease(holder: str) -> bool:
    """Let go, unless another reconcile asked for a rerun meanwhile: then keep it and say so."""
    if Lease.objects.filter(name=LEASE_NAME, holder=holder, rerun_requested=False).update(holder="", expires_at=None):
        return False
    return bool(
        Lease.objects.filter(name=LEASE_NAME, holder=holder).update(
            rerun_requested=False, expires_at=timezone.now() + lease_ttl()
        )
    )


def claim_followup(delay_s: float) -> bool:
    """One follow-up at a time, however many ticks (beat, changes, follow-ups) ask for one: the
    first to move `followup_at` forward schedules it, the others see it already due."""
    now = timezone.now()
    try:
        Lease.objects.get_or_create(name=LEASE_NAME)
    except IntegrityError:
        pass
    due = now + timedelta(seconds=delay_s)
    pending = Q(followup_at__isnull=True) | Q(followup_at__lte=now)
    return bool(Lease.objects.filter(name=LEASE_NAME).filter(pending).update(followup_at=due))
