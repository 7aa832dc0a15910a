import functools
from collections.abc import Callable

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods
from django.views.decorators.vary import vary_on_headers

from dashboard.readiness import check_broker, check_database, check_ray
from dashboard.roles import is_admin
from health.metrics import CONTENT_TYPE, metrics_text
from health import reaping
from health.panel import health_panel
from health.probes.gpu import REAP_GRACE_S
from health.probes.zombies import find_segment, find_zombie, memory_text


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


def _forbidden(request: HttpRequest, what: str) -> HttpResponse:
    return render(request, "serving/forbidden.html", {"what": what}, status=403)


def _zombies_url() -> str:
    return reverse("health:index") + "#zombies"


def _confirm(request: HttpRequest, confirm: dict, *, status: int = 200) -> HttpResponse:
    context = {**confirm, "cancel_url": _zombies_url()}
    template = "health/confirm.html#confirm" if request.htmx else "health/confirm.html"
    return render(request, template, context, status=status)


def _confirm_then_ask(request: HttpRequest, confirm: dict, ask: Callable[[], None], asked: str) -> HttpResponse:
    """GET: the confirmation page. POST (its form): a worker is asked to do it, and the panel says so."""
    if request.method == "GET":
        return _confirm(request, confirm)
    ask()
    messages.success(request, asked)
    return HttpResponseRedirect(_zombies_url(), status=303)


def _admins_only(what: str):
    """Checked here, on the server, whatever the page showed: anyone else gets a 403."""

    def decorate(view):
        @functools.wraps(view)
        def checked(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not is_admin(request.user):
                return _forbidden(request, what)
            return view(request, *args, **kwargs)

        return checked

    return decorate


def _or_404(found: dict | None, missing: str) -> dict:
    if found is None:
        raise Http404(missing)
    return found


@vary_on_headers("HX-Request")
@require_http_methods(["GET", "POST"])
@_admins_only("Reaping a GPU process")
def reap(request: HttpRequest, node_id: str, pid: int) -> HttpResponse:
    """Confirm, then have a worker kill a zombie the probe found (health/reaping.py)."""
    zombie = _or_404(find_zombie(node_id, pid), f"The last reading of node {node_id[:12]} found no zombie with PID {pid}.")
    confirm = {
        "title": f"Kill PID {pid} on node {node_id[:12]}?",
        "message": f"PID {pid} ({zombie['cmdline'] or zombie['name'] or 'no command line'}) holds {memory_text(zombie['used_bytes'])} of GPU memory "
        f"on GPU {zombie['gpu']}: {zombie['why']}. It gets SIGTERM, then SIGKILL after {REAP_GRACE_S:g} s — only if, on its "
        "node, it is still the process the probe saw and no live replica.",
        "action": reverse("health:reap", args=[node_id, pid]),
        "button": f"Kill PID {pid}",
    }
    if not zombie["reapable"]:
        return _confirm(request, {**confirm, "refused": f"PID {pid} cannot be reaped from here: {zombie['why']}."}, status=409)
    return _confirm_then_ask(
        request, confirm, lambda: reaping.request_reap(request.user, node_id, zombie),
        f"Reap of PID {pid} requested: a worker asks its node now; the outcome shows under Last reaps.",
    )


@vary_on_headers("HX-Request")
@require_http_methods(["GET", "POST"])
@_admins_only("Removing a shared-memory segment")
def remove_segment(request: HttpRequest, node_id: str, name: str) -> HttpResponse:
    segment = _or_404(find_segment(node_id, name), f"The last reading of node {node_id[:12]} found no orphan segment {name}.")
    confirm = {
        "title": f"Remove /dev/shm/{name} on node {node_id[:12]}?",
        "message": f"No process held it when last read ({segment['resident_bytes'] / 1024**2:.1f} MiB of RAM, "
        f"{segment['bytes'] / 1024**2:.0f} MiB apparent, {segment['age_s']:.0f} s old). It is unlinked only if, on its node, "
        "still nobody holds it.",
        "action": reverse("health:remove_segment", args=[node_id, name]),
        "button": f"Remove {name}",
    }
    return _confirm_then_ask(
        request, confirm, lambda: reaping.request_segment_removal(request.user, node_id, segment),
        f"Removal of {name} requested; the outcome shows under Last reaps.",
    )
