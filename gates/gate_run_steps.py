"""A gate run's steps — fetch, preflight, deploy, evaluate, cleanup, compare, promote — and
`advance(pk)`, which runs the run's next one and says when to look again.

A worker that dies mid-step costs the lease's length (gates/gate_run_lease.py): the next holder
marks that attempt INTERRUPTED and runs the step again. Every step is idempotent for that reason
(the registry's promote above all: it completes the version it finds tagged with this run instead
of writing a second). A failure at any step before promote leaves the registry as it was, and the
short-lived deployment is removed whatever happens.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from dashboard.models import AuditEntry
from gates import baselines, registry
from gates.compare import FAIL, INCONCLUSIVE, PASS, compare_buckets
from gates.dvc_hash import dvc_md5
from gates.evalsets import path_for, read_rows
from gates.gate_run_eval import ask_every_row, baseline_document, candidate_document, candidate_from
from gates.gate_run_lease import LeaseLost, claim, release, renew
from gates.gate_run_signoff import signoff_void_reason
from gates.models import GateRun, GateRunState, GateStep, PreflightRun, Step, StepStatus
from gates.models.gate_runs import STEP_ORDER, RunChanged

log = logging.getLogger(__name__)


class StepFailed(Exception):
    """The step cannot succeed as asked: the run fails here, with this reason."""


@dataclass
class Outcome:
    detail: str
    wait_s: float | None = None  # not done yet: look again after this long (the step stays WAITING)
    next_step: str | None = None  # default: the step after this one in STEP_ORDER
    finish: str | None = None  # a final or reviewer state to move the run to


def advance(pk: int) -> float | None:
    """Run the run's next step. Returns the seconds after which to call again, or None (finished,
    waiting on a reviewer, or another worker holds it)."""
    claimed = claim(pk)
    if claimed is None:
        return None
    run, token = claimed
    if run.state == GateRunState.QUEUED:
        run.move_to(GateRunState.RUNNING, also={"started_at": timezone.now()})
    attempt = _begin(run)
    try:
        outcome = STEPS[run.step](run, token, attempt)
    except LeaseLost:
        log.warning("gate run %s lost its lease during %s; the new holder runs it again", run.pk, run.step)
        return None
    except (StepFailed, registry.RegistryError) as exc:
        _fail(run, token, attempt, str(exc), undo_promotion=isinstance(exc, registry.RegistryError) and run.step == Step.PROMOTE)
        return None
    except Exception as exc:  # noqa: BLE001 — a bug in a step fails the run with its reason, never silently
        log.exception("gate run %s: step %s crashed", run.pk, run.step)
        _fail(run, token, attempt, f"Gantry's bug: {type(exc).__name__}: {exc}")
        return None
    return _after(run, token, attempt, outcome)


def _begin(run: GateRun) -> GateStep:
    """This step's attempt row: the one that is WAITING carries on; one left RUNNING by a worker
    that stopped is closed as INTERRUPTED and the step starts over."""
    last = run.steps.filter(name=run.step).order_by("-id").first()
    if last is not None and last.status == StepStatus.WAITING:
        return last
    if last is not None and last.status == StepStatus.RUNNING:
        last.status, last.finished_at = StepStatus.INTERRUPTED, timezone.now()
        last.detail = (f"The worker running this step stopped before it finished (its lease ran out); "
                       f"attempt {last.attempt + 1} runs it again. " + last.detail).strip()
        last.save(update_fields=["status", "finished_at", "detail"])
    return GateStep.objects.create(run=run, name=run.step, attempt=(last.attempt + 1) if last else 1)


def _after(run: GateRun, token: str, attempt: GateStep, outcome: Outcome) -> float | None:
    attempt.detail = outcome.detail
    if outcome.wait_s is not None:
        attempt.status = StepStatus.WAITING
        attempt.save(update_fields=["status", "detail"])
        release(run, token, step=run.step, again_s=outcome.wait_s)
        return outcome.wait_s
    attempt.status, attempt.finished_at = StepStatus.OK, timezone.now()
    attempt.save(update_fields=["status", "finished_at", "detail"])
    following = outcome.next_step or _following(run.step)
    if outcome.finish:
        run.move_to(outcome.finish, also={"step": following or run.step})
        return None
    release(run, token, step=following, again_s=None)
    return 0.0


def _following(step: str) -> str | None:
    index = STEP_ORDER.index(step)
    return STEP_ORDER[index + 1] if index + 1 < len(STEP_ORDER) else None


def _fail(run: GateRun, token: str, attempt: GateStep, reason: str, *, undo_promotion: bool = False) -> None:
    attempt.status, attempt.finished_at, attempt.detail = StepStatus.FAILED, timezone.now(), reason
    attempt.save(update_fields=["status", "finished_at", "detail"])
    cleanup_note = _remove_deployment(run)
    if undo_promotion:
        # A promotion that failed half-way (registered, alias not moved) is undone: as it was.
        try:
            cleanup_note += " Registry: " + registry.undo_partial_promotion(run.registered_model, run.pk) + "."
        except registry.RegistryError as exc:
            cleanup_note += f" Registry: the undo of a half-made version failed ({exc}); look for versions tagged gantry.gate_run={run.pk}."
    try:
        run.move_to(GateRunState.FAILED, also={"failed_step": run.step, "error": reason + cleanup_note})
    except RunChanged:
        pass  # rejected or voided meanwhile: it is finished either way


def candidate_root(run: GateRun) -> Path:
    from serving.deployments import managed_root

    return managed_root() / f"gate-run-{run.pk}"


def step_fetch(run: GateRun, token: str, attempt: GateStep) -> Outcome:
    found = registry.describe_run(run.mlflow_run_id)
    if found.status != "FINISHED":
        raise StepFailed(f"MLflow run {run.mlflow_run_id} is {found.status}: only a FINISHED run is a candidate (its artifacts may still be changing).")
    root = candidate_root(run)
    target = root / "model"
    if not (target / "config.json").is_file():
        # A half download from a worker that died is thrown away, never read.
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        folder = registry.download_candidate(run.mlflow_run_id, run.artifact_path, root / "download")
        os.replace(folder, target)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    GateRun.objects.filter(pk=run.pk).update(candidate_dir=str(target))
    run.candidate_dir = str(target)
    return Outcome(f"Downloaded {run.artifact_path}/ of MLflow run {run.mlflow_run_id} ({size / 2**20:.1f} MiB) to {target}.")


def deployment_spec(run: GateRun):
    """The short-lived deployment: one replica of the candidate, named for the run."""
    from serving.engine import current_engine
    from serving.spec import validate_spec

    return validate_spec({"model_id": f"gate-{run.pk}", "model_source": run.candidate_dir, "num_replicas": 1}, engine=current_engine())


def step_preflight(run: GateRun, token: str, attempt: GateStep) -> Outcome:
    from gates import preflights
    from serving.deployments import resolved_for_gantry

    resolved = resolved_for_gantry(run.requested_by, deployment_spec(run))
    report = preflights.run_on_demand(resolved.as_dict(), owner=run.requested_by, trigger=PreflightRun.Trigger.GATE)
    GateRun.objects.filter(pk=run.pk).update(preflight_run=report)
    failed = [r for r in report.guard_results if r.status == "fail"]
    if failed:
        raise StepFailed("Preflight failed: " + "; ".join(f"{r.guard}: {r.summary}" for r in failed) + f" (report #{report.pk}).")
    warned = [r.guard for r in report.guard_results if r.status == "warn"]
    return Outcome(f"Preflight #{report.pk}: {report.status}" + (f" (warnings: {', '.join(warned)})" if warned else "") + ".")


def step_deploy(run: GateRun, token: str, attempt: GateStep) -> Outcome:
    from serving.choices import State
    from serving.deployments import submit_for_gantry
    from serving.models import ServeModel

    model = ServeModel.objects.filter(pk=run.serve_model_id).first() if run.serve_model_id else None
    if model is None:
        model = submit_for_gantry(run.requested_by, deployment_spec(run), note=f"the short-lived deployment of gate run {run.pk}")
        GateRun.objects.filter(pk=run.pk).update(serve_model=model, serve_model_key=model.model_key)
        run.serve_model, run.serve_model_key = model, model.model_key
    if model.state == State.RUNNING and model.is_settled:
        return Outcome(f"{model.model_id} is RUNNING (1 replica).")
    if model.state in (State.FAILED, State.DELETING, State.DELETED):
        raise StepFailed(f"The deployment {model.model_id} is {model.state}: {model.error_summary or 'see its events'}.")
    return Outcome(f"{model.model_id} is {model.state}; waiting for it to be RUNNING.", wait_s=settings.GANTRY_GATE_POLL_S)


def step_evaluate(run: GateRun, token: str, attempt: GateStep) -> Outcome:
    model = run.serve_model
    path = path_for(run.eval_set.md5)
    # The file is read-only and content-addressed, and checked again all the same: the answers are
    # graded against the bytes the baseline's hash names or not at all.
    legacy = run.baseline.eval_set_dvc_hash != run.eval_set.md5
    if dvc_md5(path, legacy=legacy) != run.baseline.eval_set_dvc_hash:
        raise StepFailed(f"The stored eval set {path} no longer hashes to {run.baseline.eval_set_dvc_hash}: it was changed on disk.")
    rows = read_rows(run.eval_set).rows
    answers = ask_every_row(model.model_id, rows, renew=lambda: renew(run, token))
    errors = [a for a in answers if "error" in a]
    if errors:
        raise StepFailed(f"{len(errors)} of {len(rows)} calls to {model.model_id} failed; the first: row {errors[0]['id']}: {errors[0]['error']}")
    candidate = candidate_document(run.baseline.eval_set_dvc_hash, rows, answers)
    GateRun.objects.filter(pk=run.pk, lease_token=token).update(answers=answers, candidate=candidate)
    run.answers, run.candidate = answers, candidate
    right = sum(a["correct"] for a in answers)
    return Outcome(f"{len(rows)} rows asked through the OpenAI API ({right} right); " +
                   ", ".join(f"{name} {b['accuracy']} of {b['n']}" for name, b in sorted(candidate["buckets"].items())) + ".")


def step_cleanup(run: GateRun, token: str, attempt: GateStep) -> Outcome:
    return Outcome(_remove_deployment(run).strip() or "There was no deployment to remove.")


def step_compare(run: GateRun, token: str, attempt: GateStep) -> Outcome:
    comparison = compare_buckets(baseline_document(run.baseline), candidate_from(run.candidate))
    doc = comparison.as_json()
    GateRun.objects.filter(pk=run.pk, lease_token=token).update(verdict=comparison.verdict, comparison=doc, result_sha256=comparison.result_sha256)
    run.verdict, run.comparison, run.result_sha256 = comparison.verdict, doc, comparison.result_sha256
    detail = f"{comparison.verdict} against {run.baseline.label} (tolerance {run.baseline.tolerance_text}); result sha256 {comparison.result_sha256[:12]}…"
    if comparison.verdict == PASS:
        return Outcome(detail + " Promoting.")
    if comparison.verdict == INCONCLUSIVE:
        return Outcome(detail + " A reviewer other than the requester may sign off to promote: " + "; ".join(comparison.reasons),
                       next_step=Step.PROMOTE, finish=GateRunState.AWAITING_SIGNOFF)
    raise StepFailed(f"{FAIL} against {run.baseline.label}: " + "; ".join(comparison.reasons) + ". The registry was not touched.")


def step_promote(run: GateRun, token: str, attempt: GateStep) -> Outcome:
    current = baselines.current_for(run.gate)
    if current is None or current.pk != run.baseline_id:
        raise StepFailed(f"{run.baseline.label} is no longer {run.gate}'s current baseline "
                         f"({current.label if current else 'none'} is): the comparison is void; start a new run. The registry was not touched.")
    if run.verdict != PASS:
        refusal = signoff_void_reason(run)
        if refusal:
            raise StepFailed(refusal + " The registry was not touched.")
    done = registry.promote(run.registered_model, run.mlflow_run_id, run.artifact_path, run.semver, gate_run_id=run.pk, evidence=run.evidence)
    signed = f", signed off by {run.signed_off_by_name}" if run.signed_off_by_name else ""
    AuditEntry.record(run.requested_by, "gate.promote", f"{done.name} version {done.version}",
                      f"{done.semver} as @{done.alias} by gate run {run.pk} ({run.verdict}{signed})")
    GateRun.objects.filter(pk=run.pk).update(promoted_version=str(done.version), promoted_alias=done.alias)
    return Outcome(f"Registered {done.name} version {done.version}, tagged {done.semver}, alias @{done.alias}.",
                   next_step=Step.PROMOTE, finish=GateRunState.PROMOTED)


STEPS = {
    Step.FETCH: step_fetch, Step.PREFLIGHT: step_preflight, Step.DEPLOY: step_deploy, Step.EVALUATE: step_evaluate,
    Step.CLEANUP: step_cleanup, Step.COMPARE: step_compare, Step.PROMOTE: step_promote,
}


def _remove_deployment(run: GateRun) -> str:
    from serving.choices import State
    from serving.deployments import ChangeRefused, request_delete
    from serving.models import ServeModel

    model = ServeModel.objects.filter(pk=run.serve_model_id).first() if run.serve_model_id else None
    if model is None or model.state in (State.DELETING, State.DELETED):
        return f" The deployment {model.model_id} is {model.state}." if model else ""
    try:
        request_delete(model, actor=None)
    except ChangeRefused:
        pass
    return f" The deployment {model.model_id} is being removed."
