"""The eval sets page: those uploaded, with their DVC md5s and buckets, and a form to upload one."""
from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from gates import evalsets as service
from gates.baseline_forms import EvalSetForm
from gates.models import EvalSet

LISTED = 100


@require_http_methods(["GET", "POST"])
def evalsets(request: HttpRequest) -> HttpResponse:
    form = EvalSetForm(request.POST, request.FILES) if request.method == "POST" else EvalSetForm()
    status = 200
    if form.is_bound:
        status = 422
        if form.is_valid():
            dvc = form.cleaned_data.get("dvc_file")
            upload = form.cleaned_data["file"]
            try:
                dvc_text = dvc.read().decode("utf-8") if dvc is not None else None
                if upload.size > service.MAX_EVALSET_BYTES:
                    raise service.EvalSetError(413, "too_large", [f"The file is larger than {service.MAX_EVALSET_BYTES // 2**20} MiB."])
                eval_set, created = service.upload(form.cleaned_data["name"], upload.read(), request.user, dvc_file=dvc_text)
            except UnicodeDecodeError:
                form.add_error("dvc_file", "The .dvc file is not UTF-8 text.")
            except service.EvalSetError as exc:
                status = exc.status
                # One line per problem, beside the field: a file with many bad rows is fixed from this list.
                form.add_error(exc.field, list(exc.errors))
            else:
                done = "Uploaded" if created else "Already had"
                messages.success(request, f"{done} {eval_set.name}: {eval_set.rows} rows, md5 {eval_set.md5}.")
                response = HttpResponseRedirect(reverse("gates:evalsets"))
                response.status_code = 303
                return response
    rows = EvalSet.objects.all()[:LISTED]
    return render(request, "gates/evalsets.html", {"form": form, "eval_sets": rows}, status=status)
