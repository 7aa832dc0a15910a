"""The playground pages: the form, the answers it starts (one pane per model), and each pane's stream."""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from serving import playground
from serving.choices import State
from serving.models import ServeModel
from serving.views import _owned


def _others(request: HttpRequest, model: ServeModel):
    """The models this one can be compared with: the user's (or, for an admin, any) RUNNING ones."""
    return ServeModel.objects.visible_to(request.user).filter(state=State.RUNNING).exclude(pk=model.pk).order_by("model_key")


def _context(request: HttpRequest, model: ServeModel, **extra) -> dict:
    return {"model": model, "others": _others(request, model), "max_tokens": 64, "prompt": "", "compare": "", "errors": {}, **extra}


@require_GET
def page(request: HttpRequest, model_key: str) -> HttpResponse:
    model = _owned(request, model_key)
    return render(request, "serving/playground.html", _context(request, model))


@require_POST
def ask(request: HttpRequest, model_key: str) -> HttpResponse:
    model = _owned(request, model_key)
    prompt, max_tokens, compare = request.POST.get("prompt", ""), request.POST.get("max_tokens", ""), request.POST.get("compare", "")
    models = [model]
    try:
        prompt, max_tokens = playground.validate(prompt, max_tokens)
        if compare:
            other = _others(request, model).filter(model_key=compare).first()
            if other is None:
                raise playground.PlaygroundRefused(422, "Compare with one of your RUNNING models.", "compare")
            models.append(other)
        for each in models:
            if each.state != State.RUNNING:
                raise playground.PlaygroundRefused(409, f"{each.model_id} is {each.state}: the playground talks to a RUNNING model.")
        playground.check_rate(request.user, calls=len(models))
    except playground.PlaygroundRefused as exc:
        context = _context(request, model, prompt=prompt, max_tokens=max_tokens, compare=compare, errors={exc.field or "form": exc.message})
        return render(request, "serving/playground.html", context, status=exc.status)
    panes = []
    for each in models:
        one = playground.Ask(each.model_key, prompt, max_tokens)
        url = reverse("serving:playground_stream", args=[each.model_key]) + "?ticket=" + playground.ticket(request.user, one)
        panes.append({"model": each, "stream_url": url, "calls": playground.calls_shown(each, one)})
    context = _context(request, model, prompt=prompt, max_tokens=max_tokens, compare=compare, panes=panes)
    return render(request, "serving/playground.html", context)


@require_GET
def answer_stream(request: HttpRequest, model_key: str) -> HttpResponse:
    model = _owned(request, model_key)
    try:
        one = playground.redeem(request.user, request.GET.get("ticket", ""), model)
    except playground.PlaygroundRefused as exc:
        return HttpResponse(exc.message, status=exc.status, content_type="text/plain")
    response = StreamingHttpResponse(playground.stream(request.user, model, one), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a proxy in front must pass each token on, not the whole answer
    return response
