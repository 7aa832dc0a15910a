"""The serving JSON API, /api/v2/serve/… (token or session auth; errors as JSON a person can act on)."""
from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime
from functools import wraps

from django.db.models import Q
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from dashboard.api import json_error
from dashboard.roles import is_admin
from serving import deployments, snapshot
from serving.choices import State
from serving.cluster.serve import ROUTER_APP
from serving.models import IllegalTransition, ServeEvent, ServeModel
from serving.serializers import event_json, model_json, openai_base_url, resolved_spec_yaml, revision_json
from serving.spec.errors import SpecError, shown

EVENTS_PAGE = 50
LIST_PAGE, MAX_LIST_PAGE = 100, 500
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
    except ValueError:  # json lets Python's limit escape: an integer of more than 4,300 digits
        raise SpecError(400, "bad_json", "The body holds a number too long to be one Gantry takes.") from None
    if not isinstance(data, dict):
        raise SpecError(400, "bad_json", "The body must be a JSON object.")
    return data


# --- query parameters: each one openapi.py declares is read here, and a value outside its schema is
# a 400 naming it (a parameter quietly ignored answers a question the client did not ask).
_WHOLE_NUMBER = re.compile(r"[0-9]{1,18}")  # ASCII digits: str.isdigit() also takes '٣' and '²'
_USERNAME = re.compile(r"[\w.@+-]{1,150}")  # Django's rule for usernames
_TRUE, _FALSE = ("1", "true"), ("0", "false")


def _bad_parameter(name: str, rule: str, value: str) -> SpecError:
    return SpecError(400, "bad_parameter", f"The query parameter {name} must be {rule}; got {shown(value)}.", name)


def _number_parameter(request: HttpRequest, name: str, *, high: int | None = None) -> int | None:
    raw = request.GET.get(name)
    if raw is None:
        return None
    value = int(raw) if _WHOLE_NUMBER.fullmatch(raw) else 0
    if value < 1 or (high is not None and value > high):
        raise _bad_parameter(name, f"a whole number from 1 to {high}" if high else "a whole number ≥ 1", raw)
    return value


def _flag_parameter(request: HttpRequest, name: str) -> bool:
    raw = request.GET.get(name)
    if raw is None or raw.lower() in _FALSE:
        return False
    if raw.lower() in _TRUE:
        return True
    raise _bad_parameter(name, "true or false (or 1 or 0)", raw)


def _state_parameter(request: HttpRequest) -> str | None:
    raw = request.GET.get("state")  # in any case: scripts have long sent ?state=running
    if raw is not None and raw.upper() not in State.values:
        raise _bad_parameter("state", f"one of {', '.join(State.values)}", raw)
    return raw.upper() if raw is not None else None


def _owner_parameter(request: HttpRequest) -> str | None:
    raw = request.GET.get("owner")
    if raw is not None and not _USERNAME.fullmatch(raw):
        raise _bad_parameter("owner", "a username (letters, digits and @.+-_, at most 150)", raw)
    return raw


# The list's cursor is the (created_at, id) of the last model on the page before: the next page is
# what sorts after it, so models added meanwhile (newer, so sorted first) never shift a page.
def _list_cursor(model: ServeModel) -> str:
    text = f"{model.created_at.isoformat()} {model.pk}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _cursor_parameter(request: HttpRequest) -> Q | None:
    raw = request.GET.get("cursor")
    if raw is None:
        return None
    try:
        at, pk = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode().split(" ")
        created_at, last_id = datetime.fromisoformat(at), int(pk)
        if created_at.tzinfo is None:
            raise ValueError("a cursor's time always has its zone")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _bad_parameter("cursor", "the cursor of a `next` link, passed on as it was given", raw) from None
    return Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=last_id)


def _model_list(request: HttpRequest) -> dict:
    # Every parameter is read before any is used, so a bad one is refused whatever the others say.
    state, owner, after = _state_parameter(request), _owner_parameter(request), _cursor_parameter(request)
    include_deleted = _flag_parameter(request, "include_deleted")
    limit = _number_parameter(request, "limit", high=MAX_LIST_PAGE) or LIST_PAGE
    models = ServeModel.objects.visible_to(request.user).select_related("owner").order_by("-created_at", "-id")
    if state:
        models = models.filter(state=state)
    elif not include_deleted:
        models = models.exclude(state=State.DELETED)
    if owner and is_admin(request.user):
        models = models.filter(owner__username=owner)
    if after is not None:
        models = models.filter(after)
    page = list(models[: limit + 1])  # one more than asked tells whether there is a next page
    next_url = None
    if len(page) > limit:
        page = page[:limit]
        query = request.GET.copy()
        query["cursor"] = _list_cursor(page[-1])
        next_url = f"{request.path}?{query.urlencode()}"
    return {"items": [model_json(m) for m in page], "next": next_url, "openai_base_url": openai_base_url()}


@require_http_methods(["GET", "POST"])
@api_errors
def models_collection(request: HttpRequest) -> JsonResponse:
    if request.method == "POST":
        model, created = deployments.submit_spec(request.user, _body_text(request))
        body = {"model_key": model.model_key, "model_id": model.model_id, "state": model.state, "generation": model.generation, "created": created}
        return JsonResponse(body, status=202)
    return JsonResponse(_model_list(request))


@require_http_methods(["GET", "PATCH", "DELETE"])
@api_errors
def model_item(request: HttpRequest, model_key: str) -> JsonResponse:
    model = _owned(request, model_key)
    if request.method == "PATCH":
        data = _json_body(request)
        unknown = sorted(set(data) - {"num_replicas", "autoscaling"})
        if unknown:
            raise SpecError(422, "invalid_spec", f"Only num_replicas or autoscaling can be patched; post the YAML spec to change {', '.join(unknown)}.", unknown[0])
        if len(data) != 1:
            raise SpecError(422, "invalid_spec", "Send {\"num_replicas\": N} or {\"autoscaling\": {\"max_replicas\": N, …}}.", "num_replicas")
        if "autoscaling" in data:
            model = deployments.set_autoscaling(model, data["autoscaling"], request.user)
        else:
            model = deployments.scale(model, data["num_replicas"], request.user)
        return JsonResponse({"model_key": model.model_key, "state": model.state, "generation": model.generation}, status=202)
    if request.method == "DELETE":
        model = deployments.request_delete(model, request.user)
        return JsonResponse({"model_key": model.model_key, "state": model.state}, status=202)
    return JsonResponse(_detail(request, model))


def _detail(request: HttpRequest, model: ServeModel) -> dict:
    events = ServeEvent.objects.filter(model=model).order_by("-created_at", "-id")
    before = _number_parameter(request, "events_before")
    if before is not None:
        events = events.filter(id__lt=before)
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
    """What Serve last said about this model's application (the reconciler's snapshot), and its age."""
    view = snapshot.app_view(model.model_key)
    freshness = view.freshness.as_dict()
    if view.freshness.read_at is None:
        return {**freshness, "message": view.freshness.problem()}
    if view.app is None:
        return {**freshness, "status": None, "message": "Serve runs no application for this model.", "deployments": {}}
    return {**freshness, **view.app.as_dict()}


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
    view = snapshot.cluster_view()
    body.update(view.freshness.as_dict(), engine=view.engine or None)
    if view.freshness.read_at is not None:
        body["resources"] = view.resources.as_dict() if view.resources else None
        body["applications"] = {name: {**app.as_dict(), "gantry_state": known.get(name)} for name, app in view.apps.items()}
        body["unknown_applications"] = sorted(n for n in view.apps if n not in known and n != ROUTER_APP)
    else:
        body["message"] = view.freshness.problem()
    body["pending_resources"] = list(
        ServeModel.objects.filter(state=State.QUEUED, deadline__isnull=False).values_list("model_key", flat=True)
    )
    return JsonResponse(body)


def _counts() -> dict:
    from django.db.models import Count

    return dict(ServeModel.objects.values_list("state").annotate(n=Count("id")).values_list("state", "n"))
