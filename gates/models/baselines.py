"""Baseline: one version of a gate's eval_baseline.json, and BaselineEvent, its append-only history.

A baseline's numbers never change once written, and nothing is deleted: a change is a new version
that a reviewer approves. Its status moves only through Baseline.move_to (ALLOWED_MOVES).
"""
from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from gates.models.evals import validate_gate_name
from serving.models import AppendOnly


class BaselineStatus(models.TextChoices):
    PROPOSED = "proposed"
    CURRENT = "current"
    SUPERSEDED = "superseded"
    REJECTED = "rejected"


# A proposal is decided once; the current one only ever gives way to the next approved one.
ALLOWED_MOVES: dict[str, frozenset[str]] = {
    BaselineStatus.PROPOSED: frozenset({BaselineStatus.CURRENT, BaselineStatus.REJECTED}),
    BaselineStatus.CURRENT: frozenset({BaselineStatus.SUPERSEDED}),
    BaselineStatus.SUPERSEDED: frozenset(),
    BaselineStatus.REJECTED: frozenset(),
}
DECIDED_STATES = frozenset({BaselineStatus.CURRENT, BaselineStatus.SUPERSEDED, BaselineStatus.REJECTED})


class EventKind(models.TextChoices):
    PROPOSED = "proposed"
    APPROVED = "approved"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"


class IllegalMove(Exception):
    def __init__(self, baseline: "Baseline", to_status: str):
        self.from_status, self.to_status = baseline.status, to_status
        super().__init__(f"{baseline.label} is {baseline.status}; it cannot become {to_status}.")


class BaselineChanged(Exception):
    """The row's status changed since it was read (another reviewer decided first)."""


class BaselineQuerySet(models.QuerySet):
    def delete(self):  # type: ignore[override]
        raise ValueError("Baselines are never deleted: the history of a gate's floor is kept whole.")


class Baseline(models.Model):
    """The seed's eval_baseline.json fields, plus previous_baseline_sha, as one version of `name`."""

    name = models.CharField(max_length=100, validators=[validate_gate_name], help_text="The gate / model family, e.g. grammar-tutor.")
    version = models.PositiveIntegerField()
    status = models.CharField(max_length=12, choices=BaselineStatus.choices, default=BaselineStatus.PROPOSED, db_index=True)
    # --- the eval_baseline.json document -------------------------------------------------------
    eval_set_dvc_hash = models.CharField(max_length=32)
    baseline_sha = models.CharField(max_length=128)
    previous_baseline_sha = models.CharField(max_length=128, null=True, blank=True)
    tolerance_pp = models.DecimalField(max_digits=7, decimal_places=6, help_text="A fraction: 0.02 is 2 percentage points.")
    # Accuracies kept as their decimal text ("0.81"): JSON floats would turn 0.81 − 0.02 inexact.
    buckets = models.JSONField(help_text='{name: {"accuracy": "0.81", "n": 240}}')
    content_sha = models.CharField(max_length=64, db_index=True, help_text="sha256 of its canonical eval_baseline.json export.")
    # --- the proposal and its decision ---------------------------------------------------------
    justification_url = models.URLField(max_length=2000)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    author_name = models.CharField(max_length=150)
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    reviewer_name = models.CharField(max_length=150, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.TextField(blank=True)
    # Set when approved: the version it replaced, so the chain of floors is read, not inferred.
    supersedes = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    objects = BaselineQuerySet.as_manager()

    class Meta:
        app_label = "gates"
        ordering = ["name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="unique_baseline_version"),
            # Two reviewers approving at once cannot leave a gate with two floors.
            models.UniqueConstraint(fields=["name"], condition=Q(status="current"), name="one_current_baseline_per_name"),
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.status})"

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def get_absolute_url(self) -> str:
        return reverse("gates:baseline_detail", args=[self.pk])

    @property
    def bucket_scores(self) -> dict[str, tuple[Decimal, int]]:
        return {name: (Decimal(b["accuracy"]), int(b["n"])) for name, b in sorted(self.buckets.items())}

    @property
    def tolerance_text(self) -> str:
        """0.02, not the column's 0.020000."""
        return format(self.tolerance_pp.normalize(), "f")

    @property
    def is_open(self) -> bool:
        return self.status == BaselineStatus.PROPOSED

    def save(self, *args, **kwargs):
        # Written once; a status moves by move_to's UPDATE, and the numbers never move.
        if self.pk is not None and not kwargs.get("force_insert"):
            raise ValueError("A baseline is never edited: propose a new version instead.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Baselines are never deleted: the history of a gate's floor is kept whole.")

    def move_to(self, to_status: str, kind: str, *, actor=None, note: str = "", also: dict | None = None) -> "BaselineEvent":
        """The one place a baseline's status changes: checks the move, writes it if the row is still
        as read (else BaselineChanged, nothing written) and records the event, in one transaction."""
        if to_status not in ALLOWED_MOVES[self.status]:
            raise IllegalMove(self, to_status)
        fields = {"status": to_status, **(also or {})}
        with transaction.atomic():
            if not Baseline.objects.filter(pk=self.pk, status=self.status).update(**fields):
                raise BaselineChanged(f"{self.label} was decided meanwhile; reload it to see how.")
            from_status = self.status
            for field, value in fields.items():
                setattr(self, field, value)
            return BaselineEvent.record(self, kind, actor=actor, note=note, from_status=from_status, to_status=to_status)


class BaselineEvent(AppendOnly):
    """Who proposed, approved, rejected or superseded which version, and when. Copies the names."""

    baseline = models.ForeignKey(Baseline, on_delete=models.PROTECT, related_name="events")
    name = models.CharField(max_length=100, db_index=True)
    version = models.PositiveIntegerField()
    kind = models.CharField(max_length=12, choices=EventKind.choices)
    from_status = models.CharField(max_length=12, blank=True)
    to_status = models.CharField(max_length=12)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_name = models.CharField(max_length=150)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        app_label = "gates"
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} v{self.version} {self.kind} by {self.actor_name}"

    @property
    def message(self) -> str:
        """The line the shared event list shows (templates/partials/event_list.html)."""
        text = f"{self.name} v{self.version} {self.kind}"
        return f"{text}: {self.note}" if self.note else text

    @classmethod
    def record(cls, baseline: Baseline, kind: str, *, actor=None, note: str = "", from_status: str = "", to_status: str = "") -> "BaselineEvent":
        return cls.objects.create(
            baseline=baseline,
            name=baseline.name,
            version=baseline.version,
            kind=kind,
            from_status=from_status,
            to_status=to_status or baseline.status,
            actor=actor if getattr(actor, "pk", None) else None,
            actor_name=getattr(actor, "username", "") or "system",
            note=note,
        )
