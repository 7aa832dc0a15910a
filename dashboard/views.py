from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods
from django.views.defaults import page_not_found

from dashboard.api import is_api_path, json_error
from dashboard.forms import TokenForm
from dashboard.models import ApiToken
from dashboard.readiness import check_broker, check_database, check_ray
from dashboard.roles import is_admin, role_name
from serving.choices import State
from serving.models import ServeEvent, ServeModel

RECENT_EVENTS = 10


def home(request: HttpRequest) -> HttpResponse:
    """Where my models stand and what last happened to them (admins: everyone's)."""
    counts = dict(
        ServeModel.objects.visible_to(request.user).values_list("state").annotate(n=Count("id")).values_list("state", "n")
    )
    # Admins also see events of no model (applications Serve runs that Gantry does not know).
    events = ServeEvent.objects.all() if is_admin(request.user) else ServeEvent.objects.filter(model__owner=request.user)
    context = {
        "role": role_name(request.user),
        "counts": [(state, counts.get(state, 0)) for state in State.values],
        "total": sum(counts.values()),
        "recent_events": events.order_by("-created_at", "-id")[:RECENT_EVENTS],
    }
    if is_admin(request.user):
        from health.panel import health_summary

        context["health"] = health_summary()
    return render(request, "dashboard/home.html", context)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """A path no route takes: under /api/ the API's JSON 404, as for an unknown key (a script parses
    the body whatever the status); elsewhere Django's page."""
    if is_api_path(request.path):
        return json_error(404, "not_found", "No such API endpoint; GET /api/v2/openapi.json lists them.")
    return page_not_found(request, exception)


@login_not_required
@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@login_not_required
@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the database and the broker answer. Ray is reported but does not decide:
    without it the dashboard still serves, and deployments wait in QUEUED.

    Anyone may ask (load balancers do), so only staff see why a check failed: the exception text
    names hosts, ports and drivers; everyone else gets each component's name and whether it is up."""
    required = [check_database(), check_broker()]
    ray = check_ray()
    ready = all(check.ok for check in required)
    shown = (lambda check: check.as_dict()) if is_admin(request.user) else (lambda check: {"ok": check.ok})
    body = {
        "status": "ready" if ready else "unavailable",
        "checks": {check.name: shown(check) for check in required},
        "optional": {ray.name: shown(ray)},
    }
    return JsonResponse(body, status=200 if ready else 503)


@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    created = None
    form = TokenForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        token, raw = ApiToken.issue(request.user, form.cleaned_data["name"])
        created = {"token": token, "raw": raw}
        form = TokenForm(user=request.user)
    context = {
        "form": form,
        "created": created,
        "tokens": ApiToken.objects.filter(user=request.user),
    }
    return render(request, "dashboard/tokens.html", context, status=422 if form.errors else 200)


@require_http_methods(["GET", "POST"])
def revoke_token(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken.objects.active(), pk=pk, user=request.user)
    if request.method == "POST":
        token.revoke(actor=request.user)
        messages.success(request, f"Revoked API token “{token.name}”. Scripts using it now get 401.")
        return redirect("tokens")
    template = "dashboard/token_revoke.html#confirm" if request.htmx else "dashboard/token_revoke.html"
    return render(request, template, {"token": token})


