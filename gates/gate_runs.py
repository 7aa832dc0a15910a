"""The eval gate as a run: a candidate (an MLflow run + a semver) is fetched, preflighted, deployed
briefly through Gantry's own serving, asked every row of the baseline's eval set through the OpenAI
API, compared with the baseline, and promoted in the registry as the very last step.

`advance(pk)` runs one step of one run and says when to look again; the `gates` worker calls it
(gates/tasks.py) and beat re-sends any run whose message was lost. A run is advanced only by the
holder of its lease, so two workers never run a step at once, and a worker that dies mid-step
costs the lease's length: the next holder marks that attempt INTERRUPTED and runs the step again.
Every step is idempotent for that reason (the registry's promote above all: it completes the
version it finds tagged with this run instead of writing a second). A failure at any step before
promote leaves the registry as it was, and the short-lived deployment is removed whatever happens.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from dashboard.models import AuditEntry
from dashboard.roles import is_reviewer
from gates import baselines, registry
from gates.baseline_files import Baseline as BaselineDoc
from gates.baseline_files import BucketScore, Candidate, ItemResult
from gates.compare import FAIL, INCONCLUSIVE, PASS, compare_buckets
from gates.dvc_hash import dvc_md5
from gates.evalsets import EvalRow, path_for, read_rows
from gates.models import Baseline, EvalSet, GateRun, GateRunState, GateStep, PreflightRun, Step, StepStatus, validate_gate_name
from gates.models.gate_runs import STEP_ORDER, RunChanged

log = logging.getLogger(__name__)

ACTIVE = (GateRunState.QUEUED, GateRunState.RUNNING)
RUN_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class GateRunRefused(Exception):
    """A request the gate cannot take; the API renders it like a spec error."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


class StepFailed(Exception):
    """The step cannot succeed as asked: the run fails here, with this reason."""


class LeaseLost(Exception):
    """Another worker holds the run now (ours ran out): stop without writing anything more."""


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
        semver = registry.validate_semver(semver)
    except ValueError as exc:
        raise _refused("semver", str(exc)) from None
    if registry.is_dev_semver(semver):
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
    from gates.tasks import advance_gate_run

    advance_gate_run.apply_async((pk,), countdown=countdown)


# --- the lease ---------------------------------------------------------------------------------
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


def _release(run: GateRun, token: str, *, step: str, again_s: float | None) -> None:
    fields: dict = {"lease_token": "", "lease_until": None, "step": step}
    if again_s is not None:
        # Held until then, so a duplicate message cannot run the step early; beat re-sends it if lost.
        fields.update(lease_token=token, lease_until=timezone.now() + timedelta(seconds=again_s))
    GateRun.objects.filter(pk=run.pk, lease_token=token).update(**fields)


# --- one step ------------------------------------------------------------------------------------
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


@dataclass
class Outcome:
    detail: str
    wait_s: float | None = None  # not done yet: look again after this long (the step stays WAITING)
    next_step: str | None = None  # default: the step after this one in STEP_ORDER
    finish: str | None = None  # a final or reviewer state to move the run to


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
        _release(run, token, step=run.step, again_s=outcome.wait_s)
        return outcome.wait_s
    attempt.status, attempt.finished_at = StepStatus.OK, timezone.now()
    attempt.save(update_fields=["status", "finished_at", "detail"])
    following = outcome.next_step or _following(run.step)
    if outcome.finish:
        run.move_to(outcome.finish, also={"step": following or run.step})
        return None
    _release(run, token, step=following, again_s=None)
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


# --- the steps ---------------------------------------------------------------------------------
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


# --- evaluation through the data plane ---------------------------------------------------------------
def ask_every_row(model_id: str, rows: tuple[EvalRow, ...], *, renew) -> list[dict]:
    """Each row asked once through the router's OpenAI API, greedy; a few rows at a time."""
    from serving.serializers import openai_base_url

    url = openai_base_url() + "/chat/completions"

    def ask(row: EvalRow) -> dict:
        messages = list(row.messages) if row.messages else [{"role": "user", "content": row.prompt}]
        body = {"model": model_id, "messages": messages, "temperature": 0, "max_tokens": settings.GANTRY_GATE_MAX_TOKENS}
        try:
            answer = _post_json(url, body)["choices"][0]["message"]["content"] or ""
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            return {"id": row.id, "error": _call_error(exc)}
        return {"id": row.id, "answer": answer, "correct": row.is_correct(answer)}

    answers: list[dict] = []
    with ThreadPoolExecutor(max_workers=settings.GANTRY_GATE_EVAL_CONCURRENCY) as pool:
        for answer in pool.map(ask, rows):
            answers.append(answer)
            if len(answers) % 16 == 0:
                renew()  # a long eval keeps its lease; a lost lease stops it here
    renew()
    return answers


def _post_json(url: str, body: dict) -> dict:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=settings.GANTRY_GATE_CALL_TIMEOUT_S) as response:  # noqa: S310 — our own router
        return json.loads(response.read())


def _call_error(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        try:
            text = exc.read()[:300].decode("utf-8", "replace")
        except OSError:
            text = ""
        return f"HTTP {exc.code}: {text}"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def candidate_document(eval_set_dvc_hash: str, rows: tuple[EvalRow, ...], answers: list[dict]) -> dict:
    """candidate_eval.json: per bucket the exact fraction right (as decimal text) and n, and the
    per-item results (so a baseline that carries items gets the paired test)."""
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    items = []
    for row, answer in zip(rows, answers, strict=True):
        for bucket in row.buckets:
            total[bucket] = total.get(bucket, 0) + 1
            right[bucket] = right.get(bucket, 0) + bool(answer["correct"])
            items.append({"id": row.id, "bucket": bucket, "correct": bool(answer["correct"])})
    buckets = {name: {"accuracy": _fraction_text(right[name], n), "n": n} for name, n in total.items()}
    return {"eval_set_dvc_hash": eval_set_dvc_hash, "buckets": buckets, "items": items}


def _fraction_text(right: int, n: int) -> str:
    # Twelve places: round(accuracy × n) gives back `right` for any n a bucket can have.
    return format((Decimal(right) / Decimal(n)).quantize(Decimal("1e-12")).normalize(), "f")


def candidate_from(doc: dict) -> Candidate:
    return Candidate(
        eval_set_dvc_hash=doc["eval_set_dvc_hash"],
        buckets={name: BucketScore(Decimal(b["accuracy"]), int(b["n"])) for name, b in doc["buckets"].items()},
        items=tuple(ItemResult(i["id"], i["bucket"], bool(i["correct"])) for i in doc.get("items", [])) or None,
    )


def baseline_document(baseline: Baseline) -> BaselineDoc:
    return BaselineDoc(
        eval_set_dvc_hash=baseline.eval_set_dvc_hash, baseline_sha=baseline.baseline_sha,
        tolerance_pp=Decimal(baseline.tolerance_pp), previous_baseline_sha=baseline.previous_baseline_sha,
        buckets={name: BucketScore(acc, n) for name, (acc, n) in baseline.bucket_scores.items()},
    )


# --- sign-off ------------------------------------------------------------------------------------
def signoff_refusal(run: GateRun, user) -> str:
    """Why `user` may not sign `run` off, or '' when they may."""
    if run.state != GateRunState.AWAITING_SIGNOFF:
        return f"Gate run {run.pk} is {run.get_state_display()}: only an INCONCLUSIVE run waits for a sign-off."
    if run.requested_by_id == user.pk:
        return "You asked for this run: a reviewer other than you must sign it off."
    if not is_reviewer(user):
        return "Only a reviewer (permission gates.approve_baseline, group “reviewers”) may sign off a gate run."
    return ""


def signoff_void_reason(run: GateRun) -> str:
    if not run.signed_off_at:
        return f"Gate run {run.pk} is {run.verdict} and nobody signed it off."
    if run.signoff_evidence != run.evidence:
        changed = sorted(k for k, v in run.evidence.items() if run.signoff_evidence.get(k) != v)
        return f"The sign-off by {run.signed_off_by_name} is void: {', '.join(changed)} changed since it was given."
    return ""


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


# --- beat --------------------------------------------------------------------------------------
def stalled(now=None) -> list[int]:
    """Active runs nobody is advancing: the message was lost or its worker died (lease run out)."""
    now = now or timezone.now()
    return list(GateRun.objects.filter(state__in=ACTIVE).filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now)).values_list("pk", flat=True))


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
