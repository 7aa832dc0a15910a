"""GateRun: one candidate through the eval gate (fetch → preflight → deploy → evaluate → clean up →
compare → promote), and GateStep, each attempt at a step as it ran.

A run is advanced one step at a time by whichever worker holds its lease (gates/gate_runs.py), so a
worker that dies mid-step costs the lease's length, never the run: the next holder sees the step
that did not finish, says so in that step's row, and runs it again (every step is idempotent).
"""
from __future__ import annotations

from django.conf import settings
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone


class GateRunState(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_SIGNOFF = "awaiting_signoff", "awaiting sign-off"
    PROMOTED = "promoted"
    FAILED = "failed"


ALLOWED_MOVES: dict[str, frozenset[str]] = {
    GateRunState.QUEUED: frozenset({GateRunState.RUNNING, GateRunState.FAILED}),
    GateRunState.RUNNING: frozenset({GateRunState.AWAITING_SIGNOFF, GateRunState.PROMOTED, GateRunState.FAILED}),
    # A reviewer's sign-off sends it on to promotion; a rejection or voided evidence ends it.
    GateRunState.AWAITING_SIGNOFF: frozenset({GateRunState.RUNNING, GateRunState.FAILED}),
    GateRunState.PROMOTED: frozenset(),
    GateRunState.FAILED: frozenset(),
}
FINISHED = frozenset({GateRunState.PROMOTED, GateRunState.FAILED})


class Step(models.TextChoices):
    FETCH = "fetch", "fetch the candidate"
    PREFLIGHT = "preflight"
    DEPLOY = "deploy", "deploy briefly"
    EVALUATE = "evaluate"
    CLEANUP = "cleanup", "remove the deployment"
    COMPARE = "compare", "compare with the baseline"
    PROMOTE = "promote"


# The deployment is removed before the comparison: compare and promote need only the answers.
STEP_ORDER = (Step.FETCH, Step.PREFLIGHT, Step.DEPLOY, Step.EVALUATE, Step.CLEANUP, Step.COMPARE, Step.PROMOTE)


class StepStatus(models.TextChoices):
    RUNNING = "running"
    WAITING = "waiting"  # done its part, waiting on someone else (the reconciler, a reviewer)
    OK = "ok"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # its worker stopped before it finished; the step ran again


class IllegalMove(Exception):
    pass


class RunChanged(Exception):
    """The run's state changed since it was read (a sign-off, a rejection or another worker)."""


class GateRun(models.Model):
    # --- what was asked --------------------------------------------------------------------------
    gate = models.CharField(max_length=100, db_index=True, help_text="The baseline family the candidate is held to.")
    registered_model = models.CharField(max_length=100, help_text="The MLflow registered model it is promoted into.")
    mlflow_run_id = models.CharField(max_length=64)
    artifact_path = models.CharField(max_length=255, default="model")
    semver = models.CharField(max_length=100)
    baseline = models.ForeignKey("gates.Baseline", on_delete=models.PROTECT, related_name="gate_runs")
    eval_set = models.ForeignKey("gates.EvalSet", on_delete=models.PROTECT, related_name="gate_runs")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="gate_runs")
    requested_by_name = models.CharField(max_length=150)
    environment = models.CharField(max_length=8, help_text="GANTRY_ENV when it was asked.")
    # --- where it is -------------------------------------------------------------------------
    state = models.CharField(max_length=16, choices=GateRunState.choices, default=GateRunState.QUEUED, db_index=True)
    step = models.CharField(max_length=12, choices=Step.choices, default=Step.FETCH, help_text="The step it runs next (or is running).")
    lease_token = models.CharField(max_length=32, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # --- what it found -----------------------------------------------------------------------
    candidate_dir = models.TextField(blank=True)
    serve_model = models.ForeignKey("serving.ServeModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    serve_model_key = models.CharField(max_length=200, blank=True)
    preflight_run = models.ForeignKey("gates.PreflightRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    candidate = models.JSONField(default=dict, blank=True, help_text="candidate_eval.json: eval_set_dvc_hash, buckets, items.")
    answers = models.JSONField(default=list, blank=True, help_text="Per row: id, answer, correct (and an error if the call failed).")
    verdict = models.CharField(max_length=12, blank=True)
    comparison = models.JSONField(default=dict, blank=True)
    result_sha256 = models.CharField(max_length=64, blank=True)
    # --- sign-off (INCONCLUSIVE only) ----------------------------------------------------------
    signed_off_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    signed_off_by_name = models.CharField(max_length=150, blank=True)
    signed_off_at = models.DateTimeField(null=True, blank=True)
    signoff_note = models.TextField(blank=True)
    signoff_evidence = models.JSONField(default=dict, blank=True, help_text="The evidence the sign-off is bound to.")
    # --- how it ended ------------------------------------------------------------------------
    promoted_version = models.CharField(max_length=20, blank=True)
    promoted_alias = models.CharField(max_length=100, blank=True)
    failed_step = models.CharField(max_length=12, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "gates"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "lease_until"], name="gates_gaterun_active")]

    def __str__(self) -> str:
        return f"gate run {self.pk}: {self.registered_model} {self.semver} ({self.state})"

    def get_absolute_url(self) -> str:
        return reverse("gates:gate_run", args=[self.pk])

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED

    @property
    def evidence(self) -> dict:
        """What a sign-off vouches for: any change of it voids the sign-off."""
        return {
            "mlflow_run_id": self.mlflow_run_id, "semver": self.semver, "baseline_id": self.baseline_id,
            "baseline_sha": self.baseline.content_sha, "eval_set_dvc_hash": self.eval_set.md5,
            "result_sha256": self.result_sha256,
        }

    def move_to(self, to_state: str, *, also: dict | None = None) -> None:
        """The one place a run's state changes: checked against ALLOWED_MOVES and written only if
        the row is still in the state it was read in (else RunChanged, nothing written)."""
        if to_state not in ALLOWED_MOVES[self.state]:
            raise IllegalMove(f"gate run {self.pk} is {self.state}; it cannot become {to_state}.")
        fields = {"state": to_state, **(also or {})}
        if to_state in FINISHED:
            fields.setdefault("finished_at", timezone.now())
        if to_state in FINISHED or to_state == GateRunState.AWAITING_SIGNOFF:
            fields.update(lease_token="", lease_until=None)  # nobody advances it now
        with transaction.atomic():
            if not GateRun.objects.filter(pk=self.pk, state=self.state).update(**fields):
                raise RunChanged(f"gate run {self.pk} changed meanwhile; reload it.")
        for field, value in fields.items():
            setattr(self, field, value)


class GateStep(models.Model):
    """One attempt at one step. A row is written when the step starts and finished once, by its
    worker or, when that worker died, by the next lease holder (INTERRUPTED, with why)."""

    run = models.ForeignKey(GateRun, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=12, choices=Step.choices)
    attempt = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=12, choices=StepStatus.choices, default=StepStatus.RUNNING)
    detail = models.TextField(blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "gates"
        ordering = ["run", "id"]

    def __str__(self) -> str:
        return f"{self.name} #{self.attempt}: {self.status}"

    @property
    def seconds(self) -> float | None:
        end = self.finished_at or timezone.now()
        return round((end - self.started_at).total_seconds(), 1)
