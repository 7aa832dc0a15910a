"""Preflight pages: a run's report (each guard, declared beside effective, the remedy, who forced
what), running it on demand from a model's page, and forcing a version skew with a reason."""
from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from gates import preflights
from gates.models import PreflightRun
from serving.models import ServeModel
from serving.spec import Roots, SpecError, resolve_model_source

RECENT_RUNS = 50


def _see_other(url: str) -> HttpResponseRedirect:
    response = HttpResponseRedirect(url)
    response.status_code = 303
    return response


def visible_runs(user):
    runs = PreflightRun.objects.select_related("model", "owner")
    return runs if user.is_staff else runs.filter(owner=user)


def _run(request: HttpRequest, pk: int) -> PreflightRun:
    # Another user's report is a 404: which folders and secrets they use is not yours to learn.
    return get_object_or_404(visible_runs(request.user), pk=pk)


def may_decide(user, run: PreflightRun) -> bool:
    return user.is_staff or run.owner_id == user.pk


def _report_context(request: HttpRequest, run: PreflightRun, **extra) -> dict:
    open_skew = run.can_be_forced and not run.forced and may_decide(request.user, run)
    elsewhere = preflights.not_forceable_here(run) if open_skew else ""
    return {
        "run": run, "results": run.guard_results, "may_force": open_skew and not elsewhere, "force_elsewhere": elsewhere,
        "polling": not run.is_done, "reason": "", "force_error": "", **extra,
    }


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    runs = visible_runs(request.user).order_by("-created_at", "-id")[:RECENT_RUNS]
    return render(request, "gates/index.html", {"runs": runs})


@vary_on_headers("HX-Request")
@require_GET
def report(request: HttpRequest, pk: int) -> HttpResponse:
    run = _run(request, pk)
    template = "gates/preflight_report.html#report" if request.htmx else "gates/preflight_report.html"
    return render(request, template, _report_context(request, run))


@require_POST
def force(request: HttpRequest, pk: int) -> HttpResponse:
    run = _run(request, pk)
    if not may_decide(request.user, run):
        return render(request, "gates/preflight_report.html", _report_context(request, run, force_error="Only the model's owner or an admin may force its preflight."), status=403)
    reason = request.POST.get("reason", "")
    refusal = preflights.not_forceable_here(run)
    if refusal:
        return render(request, "gates/preflight_report.html", _report_context(request, run, force_elsewhere=refusal), status=409)
    try:
        run = preflights.force(run, request.user, reason)
    except preflights.ForceRefused as exc:
        status = 422 if exc.field == "reason" else 409
        return render(request, "gates/preflight_report.html", _report_context(request, run, reason=reason, force_error=exc.message), status=status)
    messages.success(request, f"Preflight #{run.pk} forced; the model deploys with your reason on record.")
    return _see_other(reverse("serving:detail", args=[run.model.model_key]) if run.model else run.get_absolute_url())


@require_POST
def run_for_model(request: HttpRequest, model_key: str) -> HttpResponse:
    """The model's "Run preflight" button: its current spec, checked now, against the folder as it
    is now (the path jail again: the folder may have become a symlink since it was submitted)."""
    model = get_object_or_404(ServeModel.objects.visible_to(request.user).select_related("owner"), model_key=model_key)
    try:
        resolve_model_source(model.resolved_spec["model_source"], username=model.owner.username, roots=Roots.from_settings())
    except SpecError as exc:
        messages.error(request, f"Preflight not run: {exc.message}")
        return _see_other(reverse("serving:detail", args=[model.model_key]))
    run = preflights.run_on_demand(model.resolved_spec, owner=model.owner, trigger=PreflightRun.Trigger.PAGE, model=model)
    return _see_other(run.get_absolute_url())
