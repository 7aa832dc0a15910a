from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.views.decorators.cache import never_cache
from django.shortcuts import render
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from dashboard.readiness import check_broker, check_database, check_ray
from dashboard.roles import is_admin
from health.metrics import CONTENT_TYPE, metrics_text
from health.panel import health_panel


@require_GET
@vary_on_headers("HX-Request")
def index(request: HttpRequest) -> HttpResponse:
    """The checks as the probes last read them; htmx polls the live part every probe interval."""
    if not is_admin(request.user):
        return render(request, "serving/forbidden.html", {"what": "The health panel"}, status=403)
    context: dict = {"panel": health_panel(), "interval": settings.GANTRY_HEALTH_INTERVAL_S, "gpu_hours": settings.GANTRY_HEALTH_GPU_SAMPLES_HOURS}
    if request.htmx:
        return render(request, "health/index.html#live", context)
    # How this web process itself reaches its dependencies, right now (the probes run on a worker).
    context["dependencies"] = [check_database(), check_broker(), check_ray()]
    return render(request, "health/index.html", context)


@login_not_required
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus' scrape: an admin's session, or an admin's API token as `Authorization: Bearer`
    (BearerTokenMiddleware logs the request in as the token's owner; an unknown token is a 401 there).
    Who may ask is decided before the method, so an anonymous POST learns nothing either."""
    if not request.user.is_authenticated:
        response = HttpResponse("Send 'Authorization: Bearer <token>' with an administrator's API token.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="gantry"'
        return response
    if not is_admin(request.user):
        return HttpResponse("The metrics are for administrators: use an administrator's API token.\n", status=403, content_type="text/plain")
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    return HttpResponse(metrics_text(), content_type=CONTENT_TYPE)
