from django.core.paginator import Paginator
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.vary import vary_on_headers

from dashboard.roles import is_admin
from serving.choices import TERMINAL_STATES, State
from serving.models import ServeModel
from serving.serializers import openai_base_url

PAGE_SIZE = 50


@vary_on_headers("HX-Request")
def index(request: HttpRequest) -> HttpResponse:
    """My models (admins: everyone's, filterable). Live rows poll while any is mid-change."""
    models = ServeModel.objects.visible_to(request.user).select_related("owner").with_last_event().order_by("-created_at", "-id")
    state = request.GET.get("state", "").upper()
    if state in State.values:
        models = models.filter(state=state)
    else:
        state = ""
        models = models.exclude(state=State.DELETED)
    owner = request.GET.get("owner", "") if is_admin(request.user) else ""
    if owner:
        models = models.filter(owner__username=owner)
    page = Paginator(models, PAGE_SIZE).get_page(request.GET.get("page"))
    counts = dict(
        ServeModel.objects.visible_to(request.user).values_list("state").annotate(n=Count("id")).values_list("state", "n")
    )
    context = {
        "page": page,
        "polling": any(m.state not in TERMINAL_STATES for m in page),
        "counts": [(s, counts.get(s, 0)) for s in State.values],
        "state": state,
        "owner": owner,
        "openai_base_url": openai_base_url(),
        "query": request.GET.urlencode(),
    }
    template = "serving/index.html#rows" if request.htmx else "serving/index.html"
    return render(request, template, context)
