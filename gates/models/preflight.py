"""PreflightRun: one run of the four guards for a model's spec, and what a person decided about it."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from gates.preflight.base import FAIL, GuardResult
from serving.models import config_hash


def spec_digest(resolved_spec: dict) -> str:
    """What a preflight verdict depends on: the spec less its replica count (a scale needs no new run)."""
    return config_hash({k: v for k, v in resolved_spec.items() if k != "num_replicas"})


class PreflightRun(models.Model):
    class Trigger(models.TextChoices):
        DEPLOY = "deploy", "before a deploy"
        PAGE = "page", "from the model's page"
        API = "api", "from the API"
        CLI = "cli", "from the command line"
        GATE = "gate", "by a gate run"

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        OK = "ok"
        WARN = "warn"
        FAIL = "fail"

    DONE = (Status.OK, Status.WARN, Status.FAIL)

    model = models.ForeignKey("serving.ServeModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="preflight_runs")
    model_key = models.CharField(max_length=200, blank=True, db_index=True)
    generation = models.PositiveIntegerField(null=True, blank=True)
    spec_digest = models.CharField(max_length=64, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="preflight_runs")
    owner_name = models.CharField(max_length=150, blank=True)
    trigger = models.CharField(max_length=8, choices=Trigger.choices)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING, db_index=True)
    folder = models.TextField(help_text="The resolved model folder the guards read.")
    resolved_spec = models.JSONField(default=dict)
    config = models.JSONField(default=dict, help_text="The effective preflight settings (spec over installation defaults).")
    results = models.JSONField(default=list, help_text="GuardResult.as_dict() per guard, in order.")
    runtime = models.JSONField(default=dict, help_text="The runtime the versions were compared with (Runtime.as_dict()).")
    engine = models.CharField(max_length=8, blank=True, help_text="'cpu' when the CUDA probe fell back to the CPU engine.")
    forced_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    forced_by_name = models.CharField(max_length=150, blank=True)
    force_reason = models.TextField(blank=True)
    forced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "gates"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["model", "-created_at", "-id"], name="gates_preflight_model_newest")]

    def __str__(self) -> str:
        return f"preflight #{self.pk} of {self.model_key or self.folder}: {self.status}"

    def get_absolute_url(self) -> str:
        return reverse("gates:preflight_report", args=[self.pk])

    @property
    def guard_results(self) -> list[GuardResult]:
        return [GuardResult.from_dict(r) for r in self.results]

    @property
    def is_done(self) -> bool:
        return self.status in self.DONE

    @property
    def failures(self) -> list[GuardResult]:
        return [r for r in self.guard_results if r.status == FAIL]

    @property
    def can_be_forced(self) -> bool:
        """Only a version skew may be signed for: every failing guard must be one a person can force."""
        fails = self.failures
        return self.status == self.Status.FAIL and bool(fails) and all(r.forceable for r in fails)

    @property
    def forced(self) -> bool:
        return self.forced_at is not None

    @property
    def passed(self) -> bool:
        """The model may go to Serve: no fail, or only forceable fails that a person forced."""
        return self.status in (self.Status.OK, self.Status.WARN) or (self.forced and self.can_be_forced)

    def fail_summary(self) -> str:
        return "; ".join(f"{r.title}: {r.summary}" for r in self.failures)


class RuntimeReading(models.Model):
    """The Ray cluster's installed packages and GPU drivers, node by node, as a worker last read them
    (one row). Pages, the API and the CLI compare against it without asking Ray themselves."""

    ONE = "cluster"

    name = models.CharField(max_length=16, primary_key=True, default=ONE)
    runtime = models.JSONField(default=dict, help_text="Runtime.as_dict(), source 'cluster'.")
    node_ids = models.JSONField(default=list, help_text="The alive nodes it was read from: a new node means reading again.")
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "gates"

    def __str__(self) -> str:
        return f"cluster runtime as of {self.read_at}"
