from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from dashboard.readiness import check_broker, check_database, check_ray
from dashboard.roles import is_admin
from health.panel import health_panel


@require_GET
@vary_on_headers("HX-Request")
def index(request: HttpRequest) -> HttpResponse:
    """The checks as the probes last read them; htmx polls the live part every probe interval."""
    if not is_admin(request.user):
        return render(request, "serving/forbidden.html", {"what": "The health panel"}, status=403)
    context: dict = {"panel": health_panel(), "interval": settings.GANTRY_HEALTH_INTERVAL_S}
    if request.htmx:
        return render(request, "health/index.html#live", context)
    # How this web process itself reaches its dependencies, right now (the probes run on a worker).
    context["dependencies"] = [check_database(), check_broker(), check_ray()]
    return render(request, "health/index.html", context)
