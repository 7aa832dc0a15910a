"""The eval gate as a run: a candidate (an MLflow run + a semver) is fetched, preflighted, deployed
briefly through Gantry's own serving, asked every row of the baseline's eval set through the OpenAI
API, compared with the baseline, and promoted in the registry as the very last step.

This module is where a run is asked for, signed off or rejected, and sent to the `gates` worker
(`enqueue`, by task name: gates/tasks.py imports this module, never the other way). The worker's
side is gates/gate_run_steps.py (`advance(pk)` runs one step of one run and says when to look
again), held by a lease (gates/gate_run_lease.py) so two workers never run a step at once; beat
re-sends any run whose message was lost. The evaluation's calls to the OpenAI API are in
gates/gate_run_eval.py.
"""
from __future__ import annotations

import re

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from dashboard.models import AuditEntry
from dashboard.queues import task
from gates import baselines
from gates.gate_run_eval import _fraction_text, candidate_document
from gates.gate_run_lease import stalled
from gates.gate_run_signoff import signoff_refusal, signoff_void_reason
from gates.gate_run_steps import advance, candidate_root
from gates.models import EvalSet, GateRun, GateRunState, Step, validate_gate_name
from gates.registry_names import is_dev_semver, validate_semver

# What the API, the pages, the CLI and the tests name as gates.gate_runs', kept where they change.
__all__ = [
    "GateRunRefused", "_fraction_text", "advance", "candidate_document", "candidate_root", "enqueue", "reject", "request",
    "run_json", "sign_off", "signoff_refusal", "signoff_void_reason", "stalled",
]

RUN_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class GateRunRefused(Exception):
    """A request the gate cannot take; the API renders it like a spec error."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


# --- asking for a run ------------------------------------------------------------------------------
def _refused(field: str, message: str) -> GateRunRefused:
    return GateRunRefused(422, "invalid_gate_run", message, field)


def _artifact_path(value) -> str:
    text = value if isinstance(value, str) else ""
    parts = text.split("/")
    if not text or text.startswith("/") or any(p in ("", ".", "..") for p in parts) or len(text) > 255:
        raise _refused("artifact_path", "artifact_path is the folder inside the MLflow run that holds the model (e.g. model): relative, no '..'.")
    return text


def request(user, *, gate, mlflow_run_id, semver, registered_model=None, artifact_path="model") -> GateRun:
    """Validate a candidate and queue its run; 422 with the field for anything the gate cannot take."""
    try:
        validate_gate_name(gate)
    except Exception:
        raise _refused("gate", f"gate must name a baseline family (letters, digits, . _ -); got {str(gate)[:80]!r}.") from None
    registered_model = gate if registered_model in (None, "") else registered_model
    try:
        validate_gate_name(registered_model)
    except Exception:
        raise _refused("registered_model", "registered_model is an MLflow registered model name: letters, digits, . _ -.") from None
    if not isinstance(mlflow_run_id, str) or not RUN_ID_RE.fullmatch(mlflow_run_id):
        raise _refused("mlflow_run_id", "mlflow_run_id is the candidate's MLflow run id (32 hex digits in MLflow's own stores).")
    if not isinstance(semver, str):
        raise _refused("semver", "semver is the version to promote as, e.g. v0.3.1.")
    try:
        semver = validate_semver(semver)
    except ValueError as exc:
        raise _refused("semver", str(exc)) from None
    if is_dev_semver(semver):
        raise _refused("semver", f"{semver} is a dev version: those skip the gate on purpose (manage.py register_dev, outside prod); the gate promotes real versions.")
    artifact_path = _artifact_path(artifact_path)
    baseline = baselines.current_for(gate)
    if baseline is None:
        raise _refused("gate", f"{gate} has no current baseline: propose one and have a reviewer approve it (Gates → Baselines).")
    eval_set = EvalSet.objects.with_dvc_hash(baseline.eval_set_dvc_hash).order_by("created_at").first()
    if eval_set is None:
        raise _refused("gate", f"the eval set of {baseline.label} (eval_set_dvc_hash {baseline.eval_set_dvc_hash}) was never uploaded: upload it under Gates → Eval sets.")
    with transaction.atomic():
        run = GateRun.objects.create(
            gate=gate, registered_model=registered_model, mlflow_run_id=mlflow_run_id, artifact_path=artifact_path,
            semver=semver, baseline=baseline, eval_set=eval_set, requested_by=user,
            requested_by_name=user.username, environment=settings.GANTRY_ENV,
        )
        AuditEntry.record(user, "gate.run", f"gate run {run.pk}", f"{registered_model} {semver} from MLflow run {mlflow_run_id} against {baseline.label}")
        transaction.on_commit(lambda: enqueue(run.pk))
    return run


def enqueue(pk: int, countdown: float = 0) -> None:
    task("gates.tasks.advance_gate_run").apply_async((pk,), countdown=countdown)


# --- sign-off ------------------------------------------------------------------------------------
def sign_off(run: GateRun, user, *, result_sha256: str, note: str) -> GateRun:
    """A reviewer vouches for this exact evidence: the result hash they saw must be the run's."""
    refusal = signoff_refusal(run, user)
    if refusal:
        raise GateRunRefused(403, "not_allowed", refusal)
    if not note or not note.strip():
        raise GateRunRefused(422, "invalid_signoff", "Say why the INCONCLUSIVE buckets are acceptable (the note is kept with the promotion).", "note")
    if result_sha256 != run.result_sha256:
        raise GateRunRefused(409, "evidence_changed", "The result you signed off is not this run's result any more; reload the page and review it again.", "result_sha256")
    run.move_to(GateRunState.RUNNING, also={
        "signed_off_by": user, "signed_off_by_name": user.username, "signed_off_at": timezone.now(),
        "signoff_note": note.strip(), "signoff_evidence": run.evidence, "step": Step.PROMOTE, "lease_token": "", "lease_until": None,
    })
    AuditEntry.record(user, "gate.sign_off", f"gate run {run.pk}", f"{run.registered_model} {run.semver}, result {run.result_sha256}: {note.strip()}")
    transaction.on_commit(lambda: enqueue(run.pk))
    return run


def reject(run: GateRun, user, *, note: str) -> GateRun:
    refusal = signoff_refusal(run, user)
    if refusal:
        raise GateRunRefused(403, "not_allowed", refusal)
    run.move_to(GateRunState.FAILED, also={"failed_step": Step.PROMOTE, "error": f"Rejected by {user.username}: {note.strip() or 'no reason given'}. The registry was not touched."})
    AuditEntry.record(user, "gate.reject", f"gate run {run.pk}", note.strip())
    return run


def run_json(run: GateRun) -> dict:
    return {
        "id": run.pk, "url": run.get_absolute_url(), "gate": run.gate, "registered_model": run.registered_model,
        "mlflow_run_id": run.mlflow_run_id, "artifact_path": run.artifact_path, "semver": run.semver,
        "baseline": {"id": run.baseline_id, "label": run.baseline.label}, "eval_set_dvc_hash": run.baseline.eval_set_dvc_hash,
        "state": run.state, "step": run.step, "verdict": run.verdict or None, "result_sha256": run.result_sha256 or None,
        "comparison": run.comparison or None, "deployment": run.serve_model_key or None,
        "promoted": {"version": run.promoted_version, "alias": run.promoted_alias, "semver": run.semver} if run.promoted_version else None,
        "signed_off_by": run.signed_off_by_name or None, "failed_step": run.failed_step or None, "error": run.error or None,
        "requested_by": run.requested_by_name, "environment": run.environment,
        "created_at": run.created_at.isoformat(), "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "steps": [
            {"name": s.name, "attempt": s.attempt, "status": s.status, "detail": s.detail,
             "started_at": s.started_at.isoformat(), "finished_at": s.finished_at.isoformat() if s.finished_at else None}
            for s in run.steps.all()
        ],
    }
