"""HealthCheck (each check's current status), Flip (append-only history of every change, and the
outbox alerts are sent from) and GpuSample (one GPU's reading, kept for a bounded window)."""
from __future__ import annotations

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from health.choices import BAD_STATUSES, Alert, Status
from serving.models import AppendOnly


class HealthCheck(models.Model):
    """One thing a probe watches (a path, an endpoint, a queue), as its readings last left it."""

    name = models.CharField(max_length=120, unique=True, help_text="e.g. disk:var, tcp:redis, celery:queue:serve.")
    kind = models.CharField(max_length=32, db_index=True, help_text="The probe that reads it: disk, tcp, celery, progress.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UNKNOWN)
    detail = models.TextField(blank=True, help_text="What the last reading said, even when it has not flipped the status yet.")
    since = models.DateTimeField(default=timezone.now, help_text="When the status last changed.")
    last_reading_at = models.DateTimeField(null=True, blank=True)
    bad_count = models.PositiveIntegerField(default=0, help_text="Bad readings in a row; the status flips at GANTRY_HEALTH_GRACE_READINGS.")
    unknown_count = models.PositiveIntegerField(default=0, help_text="Unknown readings in a row: past GANTRY_HEALTH_BLIND_CYCLES the check pages as blind.")
    paged = models.CharField(max_length=16, choices=[(Alert.DOWN, "down"), (Alert.BLIND, "blind")], blank=True, default="",
                             help_text="The page still open for this check (down or blind) until a recovery is sent; empty when none.")
    cost_ms = models.FloatField(default=0.0, help_text="CPU time the probe's last reading of this check took.")
    findings = models.JSONField(default=dict, blank=True, help_text="What the last reading found, for the panel to act on: "
                                "the zombies probe's processes and segments, the readiness probe's values per node.")

    class Meta:
        ordering = ["kind", "name"]

    def __str__(self) -> str:
        return f"{self.name}: {self.status}"


class Flip(AppendOnly):
    """A change of a check's status, or a blind page (from and to both unknown: its probe could not
    read it past GANTRY_HEALTH_BLIND_CYCLES). Copies the check's name, so it outlives the check row.

    Also the alert outbox: `event` is what it sends, `processed_at` is set once that went out. Marking it is a
    conditional UPDATE (never save()), so the row itself is never edited by a view.
    """

    health_check = models.ForeignKey(HealthCheck, null=True, blank=True, on_delete=models.SET_NULL, related_name="flips")
    check_name = models.CharField(max_length=120, db_index=True)
    from_status = models.CharField(max_length=16, choices=Status.choices)
    to_status = models.CharField(max_length=16, choices=Status.choices)
    detail = models.TextField(blank=True)
    event = models.CharField(max_length=16, choices=Alert.choices, blank=True, default="",
                             help_text="The alert this flip sends: down, blind, recovery, or none (history only).")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="When a worker took it to send; a claim expires.")
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["created_at"], condition=models.Q(processed_at__isnull=True), name="health_flip_unprocessed"),
        ]

    def __str__(self) -> str:
        return f"{self.check_name}: {self.from_status} → {self.to_status}"


class GpuSample(models.Model):
    """One GPU's reading at one probe cycle. Kept GANTRY_HEALTH_GPU_SAMPLES_HOURS: every one for the
    last hour, then one per five minutes (health/samples.py thins them on beat)."""

    node_id = models.CharField(max_length=64, help_text="The Ray node id.")
    gpu_index = models.PositiveSmallIntegerField()
    uuid = models.CharField(max_length=80, blank=True)
    name = models.CharField(max_length=120, blank=True)
    at = models.DateTimeField(default=timezone.now)
    utilization_percent = models.FloatField(null=True, blank=True)
    memory_used_bytes = models.BigIntegerField(null=True, blank=True)
    memory_total_bytes = models.BigIntegerField(null=True, blank=True)
    temperature_c = models.FloatField(null=True, blank=True)
    power_w = models.FloatField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True, help_text="The rest of the reading: clocks, throttle reasons, ECC, PCIe replays, processes, driver, node address.")
    xids = models.JSONField(default=list, blank=True, help_text="XID events heard during this reading: [{xid, at}].")

    class Meta:
        ordering = ["node_id", "gpu_index", "at"]
        indexes = [
            models.Index(fields=["at"], name="health_gpusample_at"),
            models.Index(fields=["node_id", "gpu_index", "at"], name="health_gpusample_gpu_at"),
        ]

    def __str__(self) -> str:
        return f"{self.node_id[:8]}:{self.gpu_index} at {self.at:%H:%M:%S}"

    @property
    def memory_percent(self) -> float | None:
        if not self.memory_total_bytes or self.memory_used_bytes is None:
            return None
        return round(100 * self.memory_used_bytes / self.memory_total_bytes, 1)


def next_page(paged: str, to_status: str, *, blind: bool) -> tuple[str, str]:
    """What a check's change sends and the page it leaves open: (event or "", page).

    The one rule for alerts. A page opens on critical ("down") or on a blind spell past the limit
    ("blind"), and a good reading (ok or warn) closes it with a "recovery". Unknown closes nothing: the
    probe being blind says nothing about the thing it watches, so critical, unknown, critical is one
    outage paged once, and unknown after a down does not page again as blind.
    """
    if to_status == Status.CRITICAL:
        return ("", paged) if paged == Alert.DOWN else (Alert.DOWN, Alert.DOWN)
    if to_status == Status.UNKNOWN:
        return (Alert.BLIND, Alert.BLIND) if blind and not paged else ("", paged)
    return (Alert.RECOVERY, "") if paged else ("", "")


def record_reading(name: str, kind: str, status: str, detail: str, *, cost_ms: float = 0.0, findings: dict | None = None) -> Flip | None:
    """The one place a check's status changes: records a reading and decides whether it flips.

    A bad reading (warn, critical, unknown) flips the check only when it is the Nth in a row
    (GANTRY_HEALTH_GRACE_READINGS), so one slow probe does not page anyone; once past the grace a
    different bad status flips at once. A good reading flips at once: a recovery needs no grace.
    Unknown readings past GANTRY_HEALTH_BLIND_CYCLES in a row are due whatever the grace, and page
    once as blind (a Flip from unknown to unknown when the check already read unknown).
    Returns the Flip written, or None.
    """
    now = timezone.now()
    status = Status(status)
    with transaction.atomic():
        HealthCheck.objects.get_or_create(name=name, defaults={"kind": kind, "since": now})
        check = HealthCheck.objects.select_for_update().get(name=name)
        check.kind, check.detail, check.last_reading_at, check.cost_ms = kind, detail, now, cost_ms
        if findings is not None:
            check.findings = findings
        check.unknown_count = check.unknown_count + 1 if status == Status.UNKNOWN else 0
        blind = check.unknown_count > settings.GANTRY_HEALTH_BLIND_CYCLES
        if status in BAD_STATUSES:
            check.bad_count += 1
            due = blind or check.bad_count >= settings.GANTRY_HEALTH_GRACE_READINGS
        else:
            check.bad_count = 0
            due = True
        flips = due and status != check.status
        event, flip = "", None
        if flips or blind:
            event, check.paged = next_page(check.paged, status, blind=blind)
        if flips or event:
            said = detail if event != Alert.BLIND else (
                f"could not read {name} for {check.unknown_count} probe cycles in a row; its probe last said: {detail}"
            )
            flip = Flip.objects.create(
                health_check=check, check_name=name, from_status=check.status, to_status=status, detail=said, event=event, created_at=now,
            )
        if flips:
            check.status, check.since = status, now
        check.save()
        return flip
