"""Baseline pages: the families with their current version, open proposals and history; proposing
one; a proposal's per-bucket diff with approve / reject; the eval_baseline.json download. Baselines
are team-wide: every logged-in user reads them, only a reviewer who is not the author decides."""
from __future__ import annotations

from collections import defaultdict

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from gates import baselines as service
from gates.baseline_forms import DecisionForm, ProposeForm, field_for
from gates.models import Baseline, BaselineEvent, BaselineStatus, EvalSet

HISTORY_PER_NAME = 50


def _see_other(url: str) -> HttpResponseRedirect:
    # 303, so the browser follows a POST with a GET and a reload never repeats the decision.
    response = HttpResponseRedirect(url)
    response.status_code = 303
    return response


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    families: dict[str, dict] = defaultdict(lambda: {"current": None, "open": [], "history": []})
    for baseline in Baseline.objects.order_by("name", "-version"):
        family = families[baseline.name]
        if baseline.status == BaselineStatus.CURRENT:
            family["current"] = baseline
        elif baseline.is_open:
            family["open"].append(baseline)
    for event in BaselineEvent.objects.filter(name__in=list(families)).order_by("-created_at", "-id"):
        if len(families[event.name]["history"]) < HISTORY_PER_NAME:
            families[event.name]["history"].append(event)
    rows = [{"name": name, **family} for name, family in sorted(families.items())]
    return render(request, "gates/baselines.html", {"families": rows})


@require_http_methods(["GET", "POST"])
def propose(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        initial = {"name": request.GET.get("name", "")}
        return render(request, "gates/baseline_propose.html", {"form": ProposeForm(initial=initial)})
    form = ProposeForm(request.POST, request.FILES)
    status = 422
    if form.is_valid():
        text = form.document_text()
        if text is not None:
            try:
                doc = service.parse_document(text)
                baseline = service.propose(form.cleaned_data["name"], doc, form.cleaned_data["justification_url"], request.user)
            except service.BaselineRefused as exc:
                form.add_error(field_for(exc.field), exc.message)
                status = exc.status
            else:
                messages.success(request, f"Proposed {baseline.label}. A reviewer other than you approves or rejects it here.")
                return _see_other(baseline.get_absolute_url())
    return render(request, "gates/baseline_propose.html", {"form": form}, status=status)


def _detail_context(request: HttpRequest, baseline: Baseline, **extra) -> dict:
    against = service.compared_with(baseline)
    refusal = service.decision_refusal(request.user, baseline)
    return {
        "baseline": baseline,
        "against": against,
        "diff": service.bucket_diff(against, baseline),
        "eval_sets": EvalSet.objects.with_dvc_hash(baseline.eval_set_dvc_hash)[:5],
        "hash_changed": against is not None and against.eval_set_dvc_hash != baseline.eval_set_dvc_hash,
        "may_decide": not refusal,
        "refusal": refusal if baseline.is_open else "",
        "form": DecisionForm(),
        "events": baseline.events.order_by("created_at", "id"),
        "decision_error": "",
        **extra,
    }


@require_GET
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    baseline = get_object_or_404(Baseline, pk=pk)
    return render(request, "gates/baseline_detail.html", _detail_context(request, baseline))


def _decide(request: HttpRequest, pk: int, decision) -> HttpResponse:
    baseline = get_object_or_404(Baseline, pk=pk)
    form = DecisionForm(request.POST)
    note = request.POST.get("note", "")
    try:
        baseline = decision(baseline, request.user, note)
    except service.BaselineRefused as exc:
        if exc.field == "note":
            form.add_error("note", exc.message)
        baseline.refresh_from_db()
        context = _detail_context(request, baseline, form=form, decision_error="" if exc.field == "note" else exc.message)
        return render(request, "gates/baseline_detail.html", context, status=exc.status)
    verb = "Approved" if baseline.status == BaselineStatus.CURRENT else "Rejected"
    tail = f" It is now the current {baseline.name} baseline." if verb == "Approved" else ""
    messages.success(request, f"{verb} {baseline.label}.{tail}")
    return _see_other(baseline.get_absolute_url())


@require_POST
def approve(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, service.approve)


@require_POST
def reject(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, service.reject)


def export_response(baseline: Baseline) -> HttpResponse:
    response = HttpResponse(service.export_baseline(baseline), content_type="application/json; charset=utf-8")
    # The seed's file name: CI reads eval_baseline.json at the repo root.
    response["Content-Disposition"] = 'attachment; filename="eval_baseline.json"'
    response["X-Baseline"] = f"{baseline.label} {baseline.status} sha256:{baseline.content_sha}"
    return response


@require_GET
def export(request: HttpRequest, pk: int) -> HttpResponse:
    return export_response(get_object_or_404(Baseline, pk=pk))
