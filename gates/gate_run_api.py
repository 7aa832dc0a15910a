"""/api/v2/gates/runs: start a gate run (202), list and read runs with their steps, and sign off or
reject an INCONCLUSIVE one. Gate runs are team-wide, like the baselines they are held to."""
from __future__ import annotations

from functools import wraps

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from dashboard.api import json_error
from gates import gate_runs as service
from gates.baseline_api import _body, _object
from gates.baselines import BaselineRefused
from gates.models import GATE_NAME, GATE_NAME_RULE, GateRun, GateRunState
from gates.models.gate_runs import RunChanged

MAX_BODY = 16 * 1024
LIST_LIMIT = 100
FIELDS = ("gate", "mlflow_run_id", "semver", "registered_model", "artifact_path")


def api_errors(view):
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except (service.GateRunRefused, BaselineRefused) as exc:
            return json_error(exc.status, exc.code, exc.message, exc.field)
        except RunChanged as exc:
            return json_error(409, "changed", str(exc))
        except GateRun.DoesNotExist:
            return json_error(404, "not_found", "No such gate run.")

    return wrapper


def _runs():
    return GateRun.objects.select_related("baseline").prefetch_related("steps")


@require_http_methods(["GET", "POST"])
@api_errors
def runs_collection(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        rows = _runs()
        state = request.GET.get("state")
        if state is not None:
            if state not in GateRunState.values:
                return json_error(400, "bad_parameter", f"state must be one of {', '.join(GateRunState.values)}.", "state")
            rows = rows.filter(state=state)
        gate = request.GET.get("gate")
        if gate is not None:
            if not GATE_NAME.fullmatch(gate):
                return json_error(400, "bad_parameter", f"gate must be a gate's name: {GATE_NAME_RULE}", "gate")
            rows = rows.filter(gate=gate)
        return JsonResponse({"items": [service.run_json(r) for r in rows[:LIST_LIMIT]]})
    data = _object(_body(request, MAX_BODY))
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        return json_error(422, "invalid_gate_run", f"Unknown key(s) {', '.join(map(repr, unknown))}; a gate run takes {', '.join(FIELDS)}.", unknown[0])
    fields = {k: data[k] for k in FIELDS if k in data}
    run = service.request(request.user, gate=fields.pop("gate", None), mlflow_run_id=fields.pop("mlflow_run_id", None),
                          semver=fields.pop("semver", None), **fields)
    return JsonResponse(service.run_json(_runs().get(pk=run.pk)), status=202)


@require_GET
@api_errors
def run_item(request: HttpRequest, pk: int) -> JsonResponse:
    run = _runs().get(pk=pk)
    refusal = service.signoff_refusal(run, request.user)
    return JsonResponse({**service.run_json(run), "may_sign_off": not refusal, "why_not": refusal or None})


@require_POST
@api_errors
def sign_off(request: HttpRequest, pk: int) -> JsonResponse:
    run = _runs().get(pk=pk)
    data = _object(_body(request, MAX_BODY))
    service.sign_off(run, request.user, result_sha256=data.get("result_sha256"), note=str(data.get("note", "")))
    return JsonResponse(service.run_json(_runs().get(pk=pk)), status=202)


@require_POST
@api_errors
def reject(request: HttpRequest, pk: int) -> JsonResponse:
    run = _runs().get(pk=pk)
    service.reject(run, request.user, note=str(_object(_body(request, MAX_BODY)).get("note", "")))
    return JsonResponse(service.run_json(_runs().get(pk=pk)))
