"""Forms of the baseline and eval-set pages. They collect text and files; gates.baselines and
gates.evalsets decide what is valid, and their refusals are put back beside the field they name."""
from __future__ import annotations

from django import forms

from gates.baselines import MAX_DOCUMENT_BYTES
from gates.evalsets import MAX_EVALSET_BYTES

# Keys of an eval_baseline.json are shown beside the document: the form has no field per key.
FORM_FIELDS = ("name", "justification_url", "note", "file", "dvc_file", "gate", "mlflow_run_id", "artifact_path", "semver", "registered_model")


def field_for(key: str | None) -> str | None:
    """The form field a service's refusal belongs beside (None: above the form)."""
    if key in FORM_FIELDS:
        return key
    return "document" if key else None


class ProposeForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="The gate this baseline is the floor of, e.g. grammar-tutor.")
    justification_url = forms.CharField(
        label="Justification link", max_length=2000, strip=True,
        help_text="The experiment that set these numbers (an MLflow run, a PR): a reviewer reads it before approving.",
    )
    document = forms.CharField(
        label="eval_baseline.json", required=False, strip=False, widget=forms.Textarea(attrs={"rows": 16, "spellcheck": "false"}),
        help_text="Paste the file, or choose it below. previous_baseline_sha must be the current baseline's baseline_sha.",
    )
    document_file = forms.FileField(label="…or upload eval_baseline.json", required=False)

    def document_text(self) -> str | None:
        """The pasted or uploaded JSON, or None with the error added to the form."""
        upload = self.cleaned_data.get("document_file")
        pasted = self.cleaned_data.get("document") or ""
        if upload is not None:
            if upload.size > MAX_DOCUMENT_BYTES:
                self.add_error("document_file", f"The file is larger than {MAX_DOCUMENT_BYTES // 1024} KiB.")
                return None
            try:
                text = upload.read().decode("utf-8-sig")
            except UnicodeDecodeError:
                self.add_error("document_file", "The file is not UTF-8 text.")
                return None
            # Shown back in the text area, so an error in it can be fixed right there.
            self.data = self.data.copy()
            self.data["document"] = text
            return text
        if not pasted.strip():
            self.add_error("document", "Paste eval_baseline.json here or choose the file.")
            return None
        return pasted


class DecisionForm(forms.Form):
    note = forms.CharField(
        required=False, max_length=4000, widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Optional when approving; a rejection says why (the author reads it).",
    )


class EvalSetForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the team calls it, e.g. phase-20.")
    file = forms.FileField(label="Eval set (.jsonl)", help_text=f"One JSON row per line, at most {MAX_EVALSET_BYTES // 2**20} MiB.")
    dvc_file = forms.FileField(
        label="Its .dvc file (optional)", required=False,
        help_text="When given, the upload must be the file it tracks (its md5, DVC 2 or 3 alike).",
    )


class GateRunForm(forms.Form):
    gate = forms.CharField(max_length=100, help_text="The baseline family the candidate is held to, e.g. grammar-tutor.")
    mlflow_run_id = forms.CharField(label="MLflow run id", max_length=64, help_text="The candidate's training run; its artifacts hold the model folder.")
    artifact_path = forms.CharField(max_length=255, initial="model", help_text="The folder inside the run's artifacts that holds config.json and the weights.")
    semver = forms.CharField(label="Version", max_length=100, help_text="Promoted as this semver tag, e.g. v0.3.1 (the registry refuses one already used).")
    registered_model = forms.CharField(
        label="Registered model", max_length=100, required=False,
        help_text="The MLflow registered model it is promoted into; empty: the gate's name.",
    )


class SignOffForm(forms.Form):
    note = forms.CharField(
        max_length=4000, widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Why the INCONCLUSIVE buckets are acceptable; kept with the promotion.",
    )
    result_sha256 = forms.CharField(widget=forms.HiddenInput)
