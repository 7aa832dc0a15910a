"""The model page's live metrics card, polled on its own: it reads the samples the scrape task
stored (serving/engine_metrics.py, read by serving/live_metrics.py); the web process never asks Ray."""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from serving.live_metrics import live_view
from serving.views import _owned


@never_cache
@require_GET
def live_metrics(request: HttpRequest, model_key: str) -> HttpResponse:
    model = _owned(request, model_key)
    return render(request, "serving/_engine_metrics.html#card", {"model": model, "engine_metrics": live_view(model)})
