"""Alerts for flips: a JSON webhook and/or e-mail, sent from the Flip outbox.

What a flip sends was decided when it was written (health/models.py next_page, beside the status
change itself): "down" into critical, "blind" for a check its probe could not read past
GANTRY_HEALTH_BLIND_CYCLES, "recovery" when either reads ok or warn again; other flips are history
only. Each flip is claimed with a conditional UPDATE, so two workers never send the same one; a send
that fails releases the claim and the flip is sent on a later pass, so an alert is never lost (it
may, rarely, arrive twice: a webhook that answered but whose e-mail failed is sent again with it).
"""
from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import Q
from django.utils import timezone

from health.choices import Alert
from health.models import Flip

log = logging.getLogger(__name__)


def alert_payload(flip: Flip) -> dict:
    return {
        "event": flip.event,
        "check": flip.check_name,
        "status": flip.to_status,
        "previous_status": flip.from_status,
        "detail": flip.detail,
        "at": flip.created_at.isoformat(),
    }


def post_webhook(url: str, payload: dict) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.GANTRY_HEALTH_ALERT_TIMEOUT_S) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"the webhook answered HTTP {exc.code}") from None


def send_alert_email(recipients: list[str], payload: dict) -> None:
    if payload["event"] == Alert.BLIND:
        subject = f"[Gantry] BLIND: {payload['check']} cannot be read"
        body = f"Gantry {payload['detail']}\n\nAt {payload['at']}. A recovery follows when it reads again.\n"
    else:
        word = "DOWN" if payload["event"] == Alert.DOWN else "RECOVERED"
        subject = f"[Gantry] {word}: {payload['check']} is {payload['status']}"
        body = f"{payload['check']} went from {payload['previous_status']} to {payload['status']} at {payload['at']}.\n\n{payload['detail']}\n"
    send_mail(subject, body, None, recipients)


def claim_next_flip() -> Flip | None:
    """Take the oldest unsent flip, unless another worker holds it (a claim expires after a while)."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.GANTRY_HEALTH_ALERT_TIMEOUT_S * 4 + 30)
    waiting = Flip.objects.filter(processed_at__isnull=True).filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=stale))
    for pk in waiting.order_by("created_at", "id").values_list("pk", flat=True)[:5]:
        if waiting.filter(pk=pk).update(claimed_at=now):
            return Flip.objects.get(pk=pk)
    return None


def send_flip_alerts(flip: Flip) -> None:
    """Send the flip's alerts and mark it processed; on failure release it for a later pass."""
    try:
        if flip.event:
            payload = alert_payload(flip)
            if settings.GANTRY_HEALTH_WEBHOOK_URL:
                post_webhook(settings.GANTRY_HEALTH_WEBHOOK_URL, payload)
            if settings.GANTRY_HEALTH_ALERT_EMAILS:
                send_alert_email(list(settings.GANTRY_HEALTH_ALERT_EMAILS), payload)
    except Exception as exc:  # noqa: BLE001 — any failure to send leaves the flip in the outbox
        log.warning("alert for %s not sent (will retry): %s", flip, exc)
        Flip.objects.filter(pk=flip.pk).update(claimed_at=None, attempts=flip.attempts + 1, last_error=f"{type(exc).__name__}: {exc}")
        raise
    Flip.objects.filter(pk=flip.pk).update(processed_at=timezone.now(), claimed_at=None, attempts=flip.attempts + 1, last_error="")


def deliver_alerts() -> int:
    """Send what is in the outbox, oldest first; stops at the first failure (the receiver is likely
    down: the rest waits for the next pass, in order). Returns how many flips were processed."""
    done = 0
    while (flip := claim_next_flip()) is not None:
        try:
            send_flip_alerts(flip)
        except Exception:  # noqa: BLE001 — logged and recorded on the flip by send_flip_alerts
            return done
        done += 1
    return done
