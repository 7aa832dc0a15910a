"""/api/v2/gates/evalsets and /api/v2/gates/baselines: upload and list eval sets; propose, list,
read, approve, reject and export baselines. Auth is the project's (token or session); errors are
dashboard.api.json_error's shape, with `field` naming the key at fault."""
from __future__ import annotations

from functools import wraps

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from dashboard.api import json_error
from gates import baselines as service
from gates import evalsets
from gates.baseline_views import export_response
from gates.models import Baseline, BaselineStatus, EvalSet

MAX_DECISION_BODY = 16 * 1024


def api_errors(view):
    """The services' refusals as JSON errors, in one place."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except service.BaselineRefused as exc:
            return json_error(exc.status, exc.code, exc.message, exc.field)
        except evalsets.EvalSetError as exc:
            # json_error's shape plus every bad line, for a script to print them all.
            error = {"status": exc.status, "code": exc.code, "message": exc.message, "field": exc.field, "problems": exc.errors}
            return JsonResponse({"error": error}, status=exc.status)
        except Baseline.DoesNotExist:
            return json_error(404, "not_found", "No such baseline.")

    return wrapper


def _body(request: HttpRequest, limit: int) -> str:
    # request.read, not request.body: the body's cap is ours, not DATA_UPLOAD_MAX_MEMORY_SIZE's.
    data = request.read(limit + 1)
    if len(data) > limit:
        raise service.BaselineRefused(413, "too_large", f"The body is larger than {limit // 1024} KiB.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise service.BaselineRefused(400, "bad_json", "The body is not UTF-8 text.") from None


def _object(text: str) -> dict:
    data = service.loads(text or "{}")
    if not isinstance(data, dict):
        raise service.BaselineRefused(400, "bad_json", "The body must be a JSON object.")
    return data


# --- eval sets -------------------------------------------------------------------------------------
@require_http_methods(["GET", "POST"])
@api_errors
def evalsets_collection(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        rows = EvalSet.objects.all()
        if request.GET.get("name"):
            rows = rows.filter(name=request.GET["name"])
        return JsonResponse({"items": [evalsets.eval_set_json(e) for e in rows]})
    data = request.read(evalsets.MAX_EVALSET_BYTES + 1)
    eval_set, created = evalsets.upload(request.GET.get("name", ""), data, request.user)
    return JsonResponse({**evalsets.eval_set_json(eval_set), "created": created}, status=201 if created else 200)


# --- baselines -------------------------------------------------------------------------------------
def _list_filter(request: HttpRequest):
    rows = Baseline.objects.order_by("name", "-version")
    name, status = request.GET.get("name"), request.GET.get("status")
    if name:
        rows = rows.filter(name=name)
    if status is not None:
        if status not in BaselineStatus.values:
            raise service.BaselineRefused(400, "bad_parameter", f"status must be one of {', '.join(BaselineStatus.values)}.", "status")
        rows = rows.filter(status=status)
    return rows


@require_http_methods(["GET", "POST"])
@api_errors
def baselines_collection(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        return JsonResponse({"items": [service.baseline_json(b) for b in _list_filter(request)]})
    data = _object(_body(request, service.MAX_DOCUMENT_BYTES))
    # The body is eval_baseline.json with two more keys: `jq '. + {name, justification_url}'` in CI.
    name, url = data.pop("name", ""), data.pop("justification_url", "")
    if not isinstance(name, str):
        raise service.BaselineRefused(422, "invalid_name", "name must be text.", "name")
    baseline = service.propose(name, service.document_from_data(data), url, request.user)
    return JsonResponse(service.baseline_json(baseline), status=201)


@require_GET
@api_errors
def baseline_item(request: HttpRequest, pk: int) -> JsonResponse:
    baseline = Baseline.objects.get(pk=pk)
    against = service.compared_with(baseline)
    diff = [
        {
            "bucket": c.name, "change": c.kind,
            "old_accuracy": None if c.old_accuracy is None else float(c.old_accuracy),
            "new_accuracy": None if c.new_accuracy is None else float(c.new_accuracy),
            "delta_pp": None if c.delta_pp is None else float(c.delta_pp),
            "old_n": c.old_n, "new_n": c.new_n,
        }
        for c in service.bucket_diff(against, baseline)
    ]
    refusal = service.decision_refusal(request.user, baseline)
    return JsonResponse({
        **service.baseline_json(baseline),
        "compared_with": against.pk if against else None,
        "diff": diff,
        "may_decide": not refusal,
        "why_not": refusal or None,
    })


def _decision(request: HttpRequest, pk: int, decide) -> JsonResponse:
    baseline = Baseline.objects.get(pk=pk)
    note = _object(_body(request, MAX_DECISION_BODY)).get("note", "")
    return JsonResponse(service.baseline_json(decide(baseline, request.user, note)))


@require_POST
@api_errors
def approve(request: HttpRequest, pk: int) -> JsonResponse:
    return _decision(request, pk, service.approve)


@require_POST
@api_errors
def reject(request: HttpRequest, pk: int) -> JsonResponse:
    return _decision(request, pk, service.reject)


@require_GET
@api_errors
def export(request: HttpRequest, pk: int) -> HttpResponse:
    return export_response(Baseline.objects.get(pk=pk))
