"""Gate run pages: the runs with a form to start one, and a run's live page (its steps refreshed by
htmx while it runs, the comparison, and sign-off / reject for an INCONCLUSIVE one)."""
from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from gates import gate_runs as service
from gates.baseline_forms import GateRunForm, SignOffForm, field_for
from gates.baseline_views import _see_other
from gates.models import Baseline, BaselineStatus, GateRun
from gates.models.gate_runs import RunChanged

LIST_LIMIT = 50


@require_http_methods(["GET", "POST"])
def runs(request: HttpRequest) -> HttpResponse:
    form = GateRunForm(request.POST or None, initial={"gate": request.GET.get("gate", "")})
    status = 200
    if request.method == "POST":
        status = 422
        if form.is_valid():
            try:
                run = service.request(request.user, **form.cleaned_data)
            except service.GateRunRefused as exc:
                form.add_error(field_for(exc.field), exc.message)
                status = exc.status
            else:
                messages.success(request, f"Gate run {run.pk} queued: {run.registered_model} {run.semver} against {run.baseline.label}.")
                return _see_other(run.get_absolute_url())
    context = {
        "form": form,
        "runs": GateRun.objects.select_related("baseline")[:LIST_LIMIT],
        "gates": Baseline.objects.filter(status=BaselineStatus.CURRENT).order_by("name"),
    }
    return render(request, "gates/gate_runs.html", context, status=status)


def _context(request: HttpRequest, run: GateRun, **extra) -> dict:
    refusal = service.signoff_refusal(run, request.user)
    return {
        "run": run,
        "steps": run.steps.all(),
        "buckets": (run.comparison or {}).get("buckets", []),
        "may_sign_off": not refusal,
        "refusal": refusal,
        "form": SignOffForm(initial={"result_sha256": run.result_sha256}),
        "error": "",
        **extra,
    }


@require_GET
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(GateRun.objects.select_related("baseline", "eval_set"), pk=pk)
    template = "gates/_gate_run_live.html" if request.htmx else "gates/gate_run.html"
    return render(request, template, _context(request, run))


@require_POST
def sign_off(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(GateRun.objects.select_related("baseline", "eval_set"), pk=pk)
    form = SignOffForm(request.POST)
    try:
        service.sign_off(run, request.user, result_sha256=request.POST.get("result_sha256", ""), note=request.POST.get("note", ""))
    except (service.GateRunRefused, RunChanged) as exc:
        status, message, field = (exc.status, exc.message, exc.field) if isinstance(exc, service.GateRunRefused) else (409, str(exc), None)
        if field == "note":
            form.add_error("note", message)
        run.refresh_from_db()
        return render(request, "gates/gate_run.html", _context(request, run, form=form, error="" if field == "note" else message), status=status)
    messages.success(request, f"Signed off gate run {run.pk}: it promotes {run.registered_model} {run.semver} now.")
    return _see_other(run.get_absolute_url())


@require_POST
def reject(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(GateRun.objects.select_related("baseline", "eval_set"), pk=pk)
    try:
        service.reject(run, request.user, note=request.POST.get("note", ""))
    except (service.GateRunRefused, RunChanged) as exc:
        run.refresh_from_db()
        status = exc.status if isinstance(exc, service.GateRunRefused) else 409
        return render(request, "gates/gate_run.html", _context(request, run, error=getattr(exc, "message", str(exc))), status=status)
    messages.success(request, f"Rejected gate run {run.pk}; the registry was not touched.")
    return _see_other(run.get_absolute_url())
