"""The serving pages: list, new, detail (live status, events, revisions, scale, delete, rollback) and the
admins' cluster page. The rules live in serving.deployments and serving.spec; these views only put
their answers on a page, with the status code the API would give."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

import yaml
from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from dashboard.roles import is_admin
from gates import preflights
from health.readiness import deploy_readiness
from serving import deployments, snapshot
from serving.choices import EventKind, State
from serving.cluster.serve import ROUTER_APP, AppStatus
from serving.engine import current_engine
from serving.forms import AutoscaleForm, NewModelForm, Preview, ScaleForm
from serving.live_metrics import live_view
from serving.models import ServeEvent, ServeModel, ServeRevision
from serving.serializers import openai_base_url
from serving.spec import Roots, SpecError

PAGE_SIZE = 50
EVENTS_PAGE = 50
MAX_LISTED_FOLDERS = 200
SPEC_ORDER = ("model_id", "suffix", "model_source", "num_replicas", "gpus_per_replica", "engine_kwargs")
# What a model waiting in QUEUED or DEPLOYING is waiting for, in the reconciler's words.
WAITING_KINDS = (EventKind.PENDING_RESOURCES, EventKind.SERVE_STATUS, EventKind.SERVE_UNAVAILABLE, EventKind.PREFLIGHT)


def _see_other(url: str) -> HttpResponseRedirect:
    # 303, so the browser follows a POST with a GET and a reload never repeats the change.
    response = HttpResponseRedirect(url)
    response.status_code = 303
    return response


def _owned(request: HttpRequest, model_key: str) -> ServeModel:
    # Another user's model is a 404, never a 403: its existence is not theirs to learn.
    return get_object_or_404(ServeModel.objects.visible_to(request.user).select_related("owner"), model_key=model_key)


def _detail_url(model: ServeModel) -> str:
    return reverse("serving:detail", args=[model.model_key])


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.isascii() and value.isdigit() else None


def _state_counts(user) -> dict[str, int]:
    rows = ServeModel.objects.visible_to(user).values_list("state").annotate(n=Count("id")).values_list("state", "n")
    return dict(rows)


# --- list -------------------------------------------------------------------------------------
@vary_on_headers("HX-Request")
@require_GET
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
    counts = _state_counts(request.user)
    context = {
        "page": page,
        "polling": any(not m.is_settled for m in page),
        "counts": [(s, counts.get(s, 0)) for s in State.values],
        "state": state,
        "owner": owner,
        "openai_base_url": openai_base_url(),
        "query": request.GET.urlencode(),
    }
    template = "serving/index.html#rows" if request.htmx else "serving/index.html"
    return render(request, template, context)


# --- new --------------------------------------------------------------------------------------
@vary_on_headers("HX-Request")
@require_http_methods(["GET", "POST"])
def new(request: HttpRequest) -> HttpResponse:
    """Fields or YAML → the API's YAML → deployments.submit_spec; its refusals beside the field."""
    if request.method == "GET":
        return _render_new(request, NewModelForm())
    form = NewModelForm(request.POST)
    if form.previewing:  # the Preview button without JavaScript posts here
        return _preview(request, form)
    try:
        model, created = form.submit(request.user)
    except SpecError as exc:
        form.show_error(exc)
        return _render_new(request, form, status=exc.status)
    except deployments.ChangeRefused as exc:
        form.add_error(None, str(exc))
        return _render_new(request, form, status=409)
    if created:
        messages.success(request, f"Created {model.model_id}. It deploys in the background; this page follows it.")
    else:
        messages.success(request, f"Updated {model.model_id} to generation {model.generation}. Clients keep the same model id.")
    return _see_other(_detail_url(model))


@vary_on_headers("HX-Request")
@require_POST
def new_preview(request: HttpRequest) -> HttpResponse:
    return _preview(request, NewModelForm(request.POST))


def _preview(request: HttpRequest, form: NewModelForm) -> HttpResponse:
    try:
        preview: Preview | None = form.preview(request.user)
    except SpecError as exc:
        form.show_error(exc)
        return _render_new(request, form, status=exc.status)
    return _render_new(request, form, preview=preview)


def _render_new(request: HttpRequest, form: NewModelForm, *, preview: Preview | None = None, status: int = 200) -> HttpResponse:
    roots = Roots.from_settings()
    try:
        user_root = str(roots.user_root(request.user.username))
    except ValueError:
        user_root = ""  # the spec refuses such a name with its own explanation
    context = {
        "form": form,
        "preview": preview,
        # Multi-node readiness (health's probe) beside the GPU count, for a deploy that may span nodes.
        "readiness": deploy_readiness(preview.resolved.gpus_per_replica) if preview else None,
        # The memory a replica needs against each GPU's free memory (serving/vram_fit/).
        "vram": preflights.vram_preview(preview.resolved.as_dict(), current_engine(), request.POST.get("fit_gpu", "")) if preview else None,
        "roots": roots,
        "user_root": user_root,
        "hf_models": _folders(roots.hf),
    }
    template = "serving/new.html#spec-form" if request.htmx else "serving/new.html"
    return render(request, template, context, status=status)


def _folders(root) -> list[str]:
    """The model folders in the shared HF root, to suggest; an unreadable root suggests nothing."""
    try:
        with os.scandir(root) as entries:
            names = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []
    return names[:MAX_LISTED_FOLDERS]


# --- detail -----------------------------------------------------------------------------------
def _reason(model: ServeModel) -> str:
    """Why the model is where it is: the failure, or what it has been waiting for in this state."""
    if model.error_summary:
        return model.error_summary
    if model.state in (State.QUEUED, State.DEPLOYING):
        waiting = model.events.filter(kind__in=WAITING_KINDS, created_at__gte=model.state_changed_at).first()
        return waiting.message if waiting else ""
    return ""


def _events_page(model: ServeModel, before: int | None) -> tuple[list[ServeEvent], str | None]:
    # Keyset paging by id (as the API does), so a page costs one query however long the history is.
    events = model.events.order_by("-created_at", "-id")
    if before is not None:
        events = events.filter(id__lt=before)
    page = list(events[: EVENTS_PAGE + 1])
    if len(page) <= EVENTS_PAGE:
        return page, None
    page = page[:EVENTS_PAGE]
    return page, f"{_detail_url(model)}?events_before={page[-1].pk}"


def _live_context(model: ServeModel, before: int | None = None) -> dict:
    events, next_url = _events_page(model, before)
    return {
        "model": model,
        "detail_url": _detail_url(model),
        "reason": _reason(model),
        "serve": snapshot.app_view(model.model_key),
        "events": events,
        "next_url": next_url,
        # A poll brings new revisions too: the one the reconciler just applied.
        "revisions": (rows := _revision_rows(model)),
        "diff_a": rows[1].revision.number if len(rows) > 1 else None,
        "diff_b": rows[0].revision.number if rows else None,
        "changeable": model.state not in (State.DELETING, State.DELETED),
        # The run its deploy stands on, and a check run on demand since, if any: each says what it is.
        "preflight": (deployed := model.preflight_runs.filter(trigger="deploy").order_by("-created_at", "-id").first()),
        "preflight_checked": model.preflight_runs.exclude(trigger="deploy").filter(**({"pk__gt": deployed.pk} if deployed else {})).order_by("-id").first(),
        # Terminal states wait for a person, so the partial is rendered without its trigger and the
        # browser stops asking. A page of older events is history: it does not poll either. An
        # autoscaled model that runs keeps moving by itself: its replica counts are polled too.
        "polling": (not model.is_settled or (model.autoscaling and model.state == State.RUNNING)) and before is None,
    }


@dataclass(frozen=True)
class RevisionRow:
    revision: ServeRevision
    replicas: int
    gpus: int
    applied: bool  # what Serve was last given
    desired: bool  # what the model asks for now: rolling back to it would change nothing


def _revision_rows(model: ServeModel) -> list[RevisionRow]:
    rows = []
    for revision in model.revisions.order_by("-number"):
        replicas, gpus = int(revision.resolved_spec["num_replicas"]), int(revision.resolved_spec["gpus_per_replica"])
        applied = revision.config_hash == model.applied_config_hash
        rows.append(RevisionRow(revision, replicas, replicas * gpus, applied, revision.resolved_spec == model.resolved_spec))
    return rows


def _page_context(
    request: HttpRequest, model: ServeModel, *, before: int | None = None, scale_form: ScaleForm | None = None, autoscale_form: AutoscaleForm | None = None
) -> dict:
    return {
        **_live_context(model, before),
        "spec_yaml": _spec_yaml(model.resolved_spec),
        "scale_form": scale_form or ScaleForm(initial={"num_replicas": model.num_replicas}),
        "autoscale_form": autoscale_form or AutoscaleForm(initial=model.autoscaling or {"min_replicas": 1, "max_replicas": max(model.num_replicas, 2)}),
        "openai_base_url": openai_base_url(),
        "user_is_owner": model.owner_id == request.user.pk,
        "vram_observations": model.vram_observations.all()[:10],
        "registry_version": deployments.registry_version(model),
        "engine_metrics": live_view(model),
    }


@vary_on_headers("HX-Request")
@require_GET
def detail(request: HttpRequest, model_key: str) -> HttpResponse:
    model = _owned(request, model_key)
    before = _int_or_none(request.GET.get("events_before"))
    if request.htmx and before is not None:  # "Older events": the next page, appended in place
        events, next_url = _events_page(model, before)
        return render(request, "serving/detail.html#events-page", {"events": events, "next_url": next_url})
    if request.htmx:  # the 2-second poll: status, replicas and the newest events
        return render(request, "serving/detail.html#live", _live_context(model))
    return render(request, "serving/detail.html", _page_context(request, model, before=before))


@require_POST
def scale(request: HttpRequest, model_key: str) -> HttpResponse:
    model = _owned(request, model_key)
    form = ScaleForm(request.POST)
    return _change_from_form(
        request, model, form, "scale_form",
        lambda: deployments.scale(model, form.replicas(), request.user),
        lambda changed: f"Scaling {changed.model_id} to {changed.num_replicas} replica(s) requested.",
    )


@require_POST
def autoscale(request: HttpRequest, model_key: str) -> HttpResponse:
    model = _owned(request, model_key)
    form = AutoscaleForm(request.POST)
    return _change_from_form(
        request, model, form, "autoscale_form",
        lambda: deployments.set_autoscaling(model, form.bounds(), request.user),
        lambda changed: f"Autoscaling of {changed.model_id} set; Serve applies it without restarting the replicas.",
    )


def _change_from_form(request: HttpRequest, model: ServeModel, form, form_name: str, change, said) -> HttpResponse:
    """A change posted from the model page: done and redirected, or the page again with the
    message beside the field it is about (409 above the form when the model's state refuses it)."""
    try:
        changed = change()
    except SpecError as exc:
        form.show_error(exc)
        status = exc.status
    except deployments.ChangeRefused as exc:
        form.add_error(None, str(exc))
        status = 409
    else:
        messages.success(request, said(changed))
        return _see_other(_detail_url(changed))
    return render(request, "serving/detail.html", _page_context(request, model, **{form_name: form}), status=status)


@require_POST
def retry(request: HttpRequest, model_key: str) -> HttpResponse:
    model = _owned(request, model_key)
    try:
        model = deployments.retry(model, request.user)
    except deployments.ChangeRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Retry of {model.model_id} requested: a fresh preflight, then the deploy.")
    return _see_other(_detail_url(model))


@vary_on_headers("HX-Request")
@require_http_methods(["GET", "POST"])
def delete(request: HttpRequest, model_key: str) -> HttpResponse:
    model = _owned(request, model_key)
    confirm = {
        "title": f"Delete {model.model_id}?",
        "message": "Serve removes its application and its GPUs are freed; clients calling this model id get 404. "
        "Its events and revisions are kept.",
        "action": reverse("serving:delete", args=[model.model_key]),
        "button": "Delete model",
        "type_to_confirm": model.model_id,
    }
    if request.method == "GET":
        return _confirm_page(request, model, confirm)
    typed = request.POST.get("confirm", "")
    # The typed id is checked here too: the browser's pattern check is a convenience, not a guard.
    if typed.strip() != model.model_id:
        error = f"That is not this model's id. Type {model.model_id} exactly to delete it."
        return _confirm_page(request, model, {**confirm, "typed": typed, "confirm_error": error}, status=422)
    try:
        deployments.request_delete(model, request.user)
    except deployments.ChangeRefused as exc:
        return _confirm_page(request, model, {**confirm, "typed": typed, "refused": str(exc)}, status=409)
    messages.success(request, f"Delete of {model.model_id} requested. It shows DELETED once Serve no longer runs it.")
    return _see_other(_detail_url(model))


@vary_on_headers("HX-Request")
@require_http_methods(["GET", "POST"])
def rollback(request: HttpRequest, model_key: str, number: int) -> HttpResponse:
    model = _owned(request, model_key)
    revision = get_object_or_404(ServeRevision, model=model, number=number)
    replicas, gpus = revision.resolved_spec["num_replicas"], revision.resolved_spec["gpus_per_replica"]
    confirm = {
        "title": f"Roll {model.model_id} back to revision {number}?",
        "message": f"Revision {number} ({revision.reason}, {replicas} replica(s) × {gpus} GPU(s), applied "
        f"{revision.applied_at:%Y-%m-%d %H:%M} UTC) becomes the desired spec; Gantry deploys it as a new revision "
        "and the model redeploys meanwhile.",
        "action": reverse("serving:rollback", args=[model.model_key, number]),
        "button": f"Roll back to revision {number}",
    }
    if request.method == "GET":
        return _confirm_page(request, model, confirm)
    try:
        deployments.rollback(model, number, request.user)
    except deployments.ChangeRefused as exc:
        return _confirm_page(request, model, {**confirm, "refused": str(exc)}, status=409)
    except LookupError:
        raise Http404(f"{model.model_id} has no revision {number}.") from None
    messages.success(request, f"Rollback of {model.model_id} to revision {number} requested.")
    return _see_other(_detail_url(model))


def _confirm_page(request: HttpRequest, model: ServeModel, confirm: dict, *, status: int = 200) -> HttpResponse:
    # GET from a page with htmx loads only the dialog into #dialog; without it, a page of its own.
    context = {**confirm, "model": model, "cancel_url": _detail_url(model)}
    template = "serving/confirm.html#confirm" if request.htmx else "serving/confirm.html"
    return render(request, template, context, status=status)


@require_GET
def diff(request: HttpRequest, model_key: str) -> HttpResponse:
    model = _owned(request, model_key)
    numbers = list(model.revisions.order_by("-number").values_list("number", flat=True))
    a, b = _int_or_none(request.GET.get("a")), _int_or_none(request.GET.get("b"))
    context = {"model": model, "numbers": numbers, "a": a, "b": b, "lines": [], "error": ""}
    found = {r.number: r for r in model.revisions.filter(number__in=[n for n in (a, b) if n is not None])}
    if a is None or b is None:
        context["error"] = "Pick two revisions to compare (?a=1&b=3)."
        return render(request, "serving/diff.html", context, status=400)
    missing = [n for n in (a, b) if n not in found]
    if missing:
        context["error"] = f"{model.model_id} has no revision {missing[0]}; it has {', '.join(map(str, numbers)) or 'none yet'}."
        return render(request, "serving/diff.html", context, status=404)
    context["lines"] = _diff_lines(found[a], found[b])
    return render(request, "serving/diff.html", context)


def _spec_yaml(spec: dict) -> str:
    # PostgreSQL's jsonb keeps keys in its own order: put them back in the order a reader expects.
    ordered = {key: spec[key] for key in SPEC_ORDER if key in spec}
    return yaml.safe_dump({**ordered, **spec}, sort_keys=False, allow_unicode=True)


def _diff_lines(old: ServeRevision, new: ServeRevision) -> list[tuple[str, str]]:
    before = _spec_yaml(old.resolved_spec).splitlines()
    after = _spec_yaml(new.resolved_spec).splitlines()
    # A spec is a dozen lines: show all of it, changed lines marked, rather than three lines of context.
    lines = difflib.unified_diff(before, after, f"revision {old.number}", f"revision {new.number}", n=len(before) + len(after), lineterm="")
    return [(_diff_class(line), line) for line in lines]


def _diff_class(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "file"
    return {"@": "hunk", "+": "add", "-": "del"}.get(line[:1], "same")


# --- cluster (admins) -------------------------------------------------------------------------
@dataclass(frozen=True)
class AppRow:
    name: str
    app: AppStatus
    model: ServeModel | None

    @property
    def is_router(self) -> bool:
        return self.name == ROUTER_APP

    @property
    def unknown(self) -> bool:
        return self.model is None and not self.is_router


@require_GET
def cluster(request: HttpRequest) -> HttpResponse:
    """What Serve runs against what Gantry knows; for admins. Renders without Serve too."""
    if not is_admin(request.user):
        return render(request, "serving/forbidden.html", {"what": "The cluster page"}, status=403)
    pending = (
        ServeModel.objects.filter(state=State.QUEUED)
        .with_last_event()
        .filter(Q(deadline__isnull=False) | Q(last_event_kind=EventKind.PENDING_RESOURCES))
        .select_related("owner")
        .order_by("created_at", "id")
    )
    counts = _state_counts(request.user)
    view = snapshot.cluster_view()
    context: dict = {
        "pending": pending,
        "counts": [(s, counts[s]) for s in State.values if s in counts],
        "freshness": view.freshness,
        "engine": view.engine,
        "engine_source": "set by GANTRY_ENGINE" if settings.GANTRY_ENGINE in ("cpu", "gpu") else "the Ray cluster has GPUs" if view.engine == "gpu" else "the Ray cluster has no GPUs",
        "resources": view.resources,
        "unavailable": view.freshness.problem() if view.freshness.read_at is None else "",
        "stale": view.freshness.problem() if view.freshness.read_at is not None else "",
        "apps": [],
        "unknown": [],
    }
    if view.freshness.read_at is None:
        return render(request, "serving/cluster.html", context)
    apps = view.apps
    # DELETED models are not Gantry's any more: an application under their name is one nobody manages.
    known = {m.model_key: m for m in ServeModel.objects.reconcilable().filter(model_key__in=list(apps)).select_related("owner")}
    rows = [AppRow(name, app, known.get(name)) for name, app in sorted(apps.items())]
    nodes = view.resources.nodes if view.resources else ()
    columns = list(dict.fromkeys(key for node in nodes for key in node))  # whatever the client reports, in its order
    context.update(
        apps=rows,
        unknown=[row for row in rows if row.unknown],
        node_columns=columns,
        node_rows=[[node.get(column, "") for column in columns] for node in nodes],
    )
    return render(request, "serving/cluster.html", context)
