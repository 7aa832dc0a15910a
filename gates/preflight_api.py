"""/api/v2/preflight: a spec in, a preflight report out (nothing deployed); a report by id; and
forcing a version skew with a reason. Same auth, roots and errors as the serving API."""
from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from dashboard.api import json_error
from gates import preflights
from gates.models import PreflightRun, spec_digest
from gates.preflight_views import may_decide, visible_runs
from serving.api import _body_text, _json_body, api_errors
from serving.engine import current_engine
from serving.spec.errors import SpecError
from serving.vram_fit import VramEstimateError
from serving.vram_fit.gpus import parse_gpu

_report = preflights.report_json  # its can_be_forced answers "may I POST …/force"


@require_POST
@api_errors
def run_preflight(request: HttpRequest) -> JsonResponse:
    resolved, model = preflights.spec_for_user(request.user, _body_text(request))
    if model is not None and spec_digest(model.resolved_spec) != spec_digest(resolved):
        # A spec the model does not run is a what-if: its report must not stand on the model's
        # page as that model's preflight.
        model = None
    run = preflights.run_on_demand(resolved, owner=request.user, trigger=PreflightRun.Trigger.API, model=model)
    return JsonResponse(_report(run))


@require_POST
@api_errors
def vram_fit(request: HttpRequest) -> JsonResponse:
    """Will this spec's model fit: on the cluster's GPUs and on each ?gpu= asked about. Nothing deployed."""
    resolved, _ = preflights.spec_for_user(request.user, _body_text(request))
    names = request.GET.getlist("gpu")
    if len(names) > MAX_GPUS_ASKED:
        raise SpecError(400, "bad_parameter", f"Ask about at most {MAX_GPUS_ASKED} GPUs at once.", "gpu")
    try:
        asked = [parse_gpu(name) for name in names]
    except VramEstimateError as exc:
        raise SpecError(400, "bad_parameter", str(exc), "gpu") from None
    try:
        return JsonResponse(preflights.vram_fit_json(resolved, current_engine(), asked))
    except VramEstimateError as exc:
        raise SpecError(422, "not_estimable", f"The memory a replica needs cannot be estimated: {exc}", "model_source") from None


MAX_GPUS_ASKED = 16


@require_GET
def preflight_report(request: HttpRequest, pk: int) -> JsonResponse:
    run = visible_runs(request.user).filter(pk=pk).first()
    if run is None:
        return json_error(404, "not_found", "No such preflight run (or it is not yours).")
    return JsonResponse(_report(run))


@require_POST
@api_errors
def force_preflight(request: HttpRequest, pk: int) -> JsonResponse:
    run = visible_runs(request.user).filter(pk=pk).first()
    if run is None:
        return json_error(404, "not_found", "No such preflight run (or it is not yours).")
    if not may_decide(request.user, run):
        return json_error(403, "forbidden", "Only the model's owner or an admin may force its preflight.")
    refusal = preflights.not_forceable_here(run)
    if refusal:
        return json_error(409, "not_forceable", refusal)
    reason = _json_body(request).get("reason", "")
    if not isinstance(reason, str):
        return json_error(422, "invalid_reason", "reason must be text.", "reason")
    try:
        run = preflights.force(run, request.user, reason)
    except preflights.ForceRefused as exc:
        if exc.field == "reason":
            return json_error(422, "invalid_reason", exc.message, "reason")
        return json_error(409, "not_forceable", exc.message)
    return JsonResponse(_report(run))
