"""The serving JSON API, /api/v2/serve/… (token or session auth; errors as JSON a person can act on)."""
from __future__ import annotations

import json
from functools import wraps

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from dashboard.api import json_error
from dashboard.roles import is_admin
from serving import deployments
from serving.choices import State
from serving.client import ServeUnavailable, get_client
from serving.models import IllegalTransition, ServeEvent, ServeModel
from serving.serializers import event_json, model_json, openai_base_url, resolved_spec_yaml, revision_json
from serving.spec import SpecError

EVENTS_PAGE = 50
MAX_BODY = 64 * 1024


def api_errors(view):
    """Turns the domain's refusals into the API's JSON errors, in one place."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except SpecError as exc:
            return json_error(exc.status, exc.code, exc.message, exc.field)
        except (deployments.ChangeRefused, IllegalTransition) as exc:
            return json_error(409, "conflict", str(exc))
        except ServeModel.DoesNotExist:
            return json_error(404, "not_found", "No such model (or it is not yours).")

    return wrapper


def _owned(request: HttpRequest, model_key: str) -> ServeModel:
    # Another user's model is a 404, never a 403: its existence is not theirs to learn.
    return ServeModel.objects.visible_to(request.user).select_related("owner").get(model_key=model_key)


def _body_text(request: HttpRequest) -> str:
    if len(request.body) > MAX_BODY:
        raise SpecError(400, "bad_request", f"The body is larger than {MAX_BODY // 1024} KiB.")
    try:
        return request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(400, "bad_yaml", "The body is not UTF-8 text.") from None


def _json_body(request: HttpRequest) -> dict:
    try:
        data = json.loads(_body_text(request) or "null")
    except json.JSONDecodeError as exc:
        raise SpecError(400, "bad_json", f"The body is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from None
    if not isinstance(data, dict):
        raise SpecError(400, "bad_json", "The body must be a JSON object.")
    return data


@require_http_methods(["GET", "POST"])
@api_errors
def models_collection(request: HttpRequest) -> JsonResponse:
    if request.method == "POST":
        model, created = deployments.submit_spec(request.user, _body_text(request))
        body = {"model_key": model.model_key, "model_id": model.model_id, "state": model.state, "generation": model.generation, "created": created}
        return JsonResponse(body, status=202)
    models = ServeModel.objects.visible_to(request.user).select_related("owner").order_by("-created_at")
    if request.GET.get("state"):
        models = models.filter(state=request.GET["state"].upper())
    elif request.GET.get("include_deleted") not in ("1", "true"):
        models = models.exclude(state=State.DELETED)
    if request.GET.get("owner") and is_admin(request.user):
        models = models.filter(owner__username=request.GET["owner"])
    return JsonResponse({"items": [model_json(m) for m in models], "openai_base_url": openai_base_url()})


@require_http_methods(["GET", "PATCH", "DELETE"])
@api_errors
def model_item(request: HttpRequest, model_key: str) -> JsonResponse:
    model = _owned(request, model_key)
    if request.method == "PATCH":
        data = _json_body(request)
        unknown = sorted(set(data) - {"num_replicas"})
        if unknown:
            raise SpecError(422, "invalid_spec", f"Only num_replicas can be patched; post the YAML spec to change {', '.join(unknown)}.", unknown[0])
        if "num_replicas" not in data:
            raise SpecError(422, "invalid_spec", "Send {\"num_replicas\": N}.", "num_replicas")
        model = deployments.scale(model, data["num_replicas"], request.user)
        return JsonResponse({"model_key": model.model_key, "state": model.state, "generation": model.generation}, status=202)
    if request.method == "DELETE":
        model = deployments.request_delete(model, request.user)
        return JsonResponse({"model_key": model.model_key, "state": model.state}, status=202)
    return JsonResponse(_detail(request, model))


def _detail(request: HttpRequest, model: ServeModel) -> dict:
    events = ServeEvent.objects.filter(model=model).order_by("-created_at", "-id")
    before = request.GET.get("events_before")
    if before and before.isdigit():
        events = events.filter(id__lt=int(before))
    page = list(events[: EVENTS_PAGE + 1])
    next_url = None
    if len(page) > EVENTS_PAGE:
        page = page[:EVENTS_PAGE]
        next_url = f"{request.path}?events_before={page[-1].pk}"
    return {
        **model_json(model),
        "openai_base_url": openai_base_url(),
        "resolved_spec_yaml": resolved_spec_yaml(model),
        "events": {"items": [event_json(e) for e in page], "next": next_url},
        "revisions": [revision_json(r) for r in model.revisions.all()],
        "serve_status": _live_status(model),
    }


def _live_status(model: ServeModel) -> dict:
    try:
        app = get_client().status().get(model.model_key)
    except ServeUnavailable as exc:
        return {"available": False, "message": f"Cannot reach Ray Serve: {exc}"}
    if app is None:
        return {"available": True, "status": None, "message": "Serve runs no application for this model.", "deployments": {}}
    return {"available": True, **app.as_dict()}


@require_POST
@api_errors
def model_rollback(request: HttpRequest, model_key: str) -> JsonResponse:
    model = _owned(request, model_key)
    data = _json_body(request)
    revision = data.get("revision")
    if not isinstance(revision, int) or isinstance(revision, bool):
        raise SpecError(422, "invalid_spec", "Send {\"revision\": N, \"confirm\": true} with a revision number.", "revision")
    if data.get("confirm") is not True:
        raise SpecError(422, "confirmation_required", "Rolling back redeploys the model: send \"confirm\": true.", "confirm")
    try:
        model = deployments.rollback(model, revision, request.user)
    except LookupError as exc:
        return json_error(404, "not_found", str(exc))
    return JsonResponse({"model_key": model.model_key, "state": model.state, "generation": model.generation}, status=202)


@require_GET
def serve_status(request: HttpRequest) -> JsonResponse:
    if not is_admin(request.user):
        return json_error(403, "forbidden", "The cluster status is for admins.")
    known = dict(ServeModel.objects.reconcilable().values_list("model_key", "state"))
    body: dict = {"openai_base_url": openai_base_url(), "models_by_state": _counts()}
    try:
        client = get_client()
        apps = client.status()
        body["resources"] = client.cluster_resources().as_dict()
        body["applications"] = {name: {**app.as_dict(), "gantry_state": known.get(name)} for name, app in apps.items()}
        body["unknown_applications"] = sorted(n for n in apps if n not in known and n != "gantry-router")
        body["available"] = True
    except ServeUnavailable as exc:
        body.update(available=False, message=f"Cannot reach Ray Serve: {exc}")
    body["pending_resources"] = list(
        ServeModel.objects.filter(state=State.QUEUED, deadline__isnull=False).values_list("model_key", flat=True)
    )
    return JsonResponse(body)


def _counts() -> dict:
    from django.db.models import Count

    return dict(ServeModel.objects.values_list("state").annotate(n=Count("id")).values_list("state", "n"))
