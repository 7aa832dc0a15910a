"""The secrets page: the user's secret names, a form to set one, delete with a confirmation.
The rules live in gates.secrets; a value goes in and never comes back out."""
from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_http_methods
from django.views.decorators.vary import vary_on_headers

from gates import secrets as store
from gates.forms import SecretForm
from gates.models import Secret


def _see_other(url: str) -> HttpResponseRedirect:
    # 303, so the browser follows a POST with a GET and a reload never sends the value again.
    response = HttpResponseRedirect(url)
    response.status_code = 303
    return response


# Django's error reports (DEBUG pages, mail to admins) show POST data and a frame's locals: not these.
@sensitive_post_parameters("value")
@require_http_methods(["GET", "POST"])
@sensitive_variables("form")  # innermost: it hides the locals of the function it wraps directly
def secrets(request: HttpRequest) -> HttpResponse:
    form = SecretForm(request.POST) if request.method == "POST" else SecretForm()
    status = 200
    if form.is_bound and form.is_valid():
        name = form.cleaned_data["name"]
        try:
            _, created = store.set_secret(request.user, name, form.cleaned_data["value"], request.user)
        except store.SecretError as exc:
            form.add_error(exc.field, exc.message)
        else:
            done = "Added" if created else "Replaced the value of"
            messages.success(request, f"{done} {name}. Models that need it get it when they are next deployed.")
            return _see_other(reverse("gates:secrets"))
    if form.errors:
        status = 422
    rows = Secret.objects.filter(owner=request.user).only("name", "updated_at", "updated_by_name")
    return render(request, "gates/secrets.html", {"form": form, "secrets": rows}, status=status)


@vary_on_headers("HX-Request")
@require_http_methods(["GET", "POST"])
def secret_delete(request: HttpRequest, name: str) -> HttpResponse:
    # Another user's secret is a 404, never a 403: its existence is not theirs to learn.
    secret = get_object_or_404(Secret.objects.only("name"), owner=request.user, name=name)
    if request.method == "POST":
        try:
            store.delete_secret(request.user, secret.name, request.user)
        except Secret.DoesNotExist:  # deleted meanwhile, from another tab or the API
            raise Http404("No such secret (or it is not yours).") from None
        messages.success(request, f"Deleted {secret.name}. Deploys that need it fail their preflight until it is set again.")
        return _see_other(reverse("gates:secrets"))
    # GET from the page with htmx loads only the dialog into #dialog; without it, a page of its own.
    template = "gates/secret_delete.html#confirm" if request.htmx else "gates/secret_delete.html"
    return render(request, template, {"secret": secret})
