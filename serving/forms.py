"""The serving pages' forms. They turn what a person typed into the YAML the API takes and leave every
rule to serving.spec, so the page and the API refuse the same input with the same words."""
from __future__ import annotations

import re
from dataclasses import dataclass

import yaml
from django import forms
from django.utils import timezone

from serving import deployments
from serving.engine import current_engine
from serving.models import ServeModel
from serving.spec.errors import SpecError, shown
from serving.spec.parsing import YamlRefused, load_yaml, parse_spec_yaml, yaml_error_place, yaml_error_problem
from serving.spec.paths import ResolvedSpec, Roots, resolve_spec
from serving.spec.validation import ENGINE_KWARGS_ALLOWED, MAX_GPUS_PER_REPLICA, MAX_REPLICAS, validate_spec

# Deploys the demo model as is (it lives at <GANTRY_HF_ROOT>/tiny-llama), so a first deploy needs no editing.
EXAMPLE_SPEC = """\
model_id: demo
model_source: $HOME/common/hf/tiny-llama
num_replicas: 1
# gpus_per_replica: 1      # default: 1 on GPU machines, 0 (CPU replicas) on CPU machines
# engine_kwargs:
#   max_model_len: 2048
"""

FORM, YAML = "form", "yaml"
FORM_FIELDS = ("model_id", "model_source", "num_replicas", "gpus_per_replica")
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
_KEY_VALUE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=(.*)")


def _number_or_text(value: str):
    # A typed "2" is the number 2; anything else goes through as typed so the spec's own check says
    # what is wrong with it ("num_replicas must be a whole number …; got 'two'").
    return int(value) if _WHOLE_NUMBER.fullmatch(value) else value


def _scalar(text: str):
    try:
        return load_yaml(text) if text else None
    except YamlRefused as exc:  # the place is within the one value: the whole field's would mislead
        raise _engine_options_refused(exc, where="") from None
    except yaml.YAMLError:
        return text


def _engine_options_refused(exc: YamlRefused, where: str) -> SpecError:
    message = f"Engine options are refused{where}: {yaml_error_problem(exc)}."
    return SpecError(400, "bad_engine_options", message, "engine_kwargs")


def parse_engine_options(text: str):
    """`key=value` lines, or a YAML/JSON mapping, as the value of `engine_kwargs`.

    Values are typed the YAML way (2048 → number, true → boolean). Whatever is not a mapping is
    passed on as is: the spec refuses it in its own words.
    """
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    matches = [_KEY_VALUE.fullmatch(line) for line in lines]
    if matches and all(matches):
        options: dict = {}
        for match in filter(None, matches):
            key, raw = match.groups()
            if key in options:
                raise SpecError(400, "bad_engine_options", f"Engine option {shown(key)} is given twice.", "engine_kwargs")
            options[key] = _scalar(raw.strip())
        return options
    # The spec's own loader, so the field refuses what the YAML tab refuses (aliases, a key twice).
    try:
        return load_yaml(text)
    except YamlRefused as exc:
        raise _engine_options_refused(exc, yaml_error_place(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1}: {yaml_error_problem(exc)})" if mark else ""
        raise SpecError(
            400,
            "bad_engine_options",
            f"Engine options must be key=value lines or a YAML/JSON mapping; this is neither{where}.",
            "engine_kwargs",
        ) from None


@dataclass(frozen=True)
class Preview:
    resolved: ResolvedSpec
    spec_text: str
    existing: ServeModel | None

    @property
    def gpus_needed(self) -> int:
        return self.resolved.num_replicas * self.resolved.gpus_per_replica

    @property
    def gpus_at_most(self) -> int:
        """With autoscaling, what max_replicas would hold: Serve scales up only where they are free."""
        most = (self.resolved.autoscaling or {}).get("max_replicas", self.resolved.num_replicas)
        return most * self.resolved.gpus_per_replica


class NewModelForm(forms.Form):
    """The fields tab and the YAML tab of /serving/new, in one <form> so neither loses what was typed.

    Which one counts is the value of the button pressed (`mode` to deploy, `preview` to preview).
    Every field is optional here: the spec decides what is missing.
    """

    model_id = forms.CharField(
        required=False,
        label="Name (model_id)",
        help_text="1–64 letters, digits, '.', '_' or '-'. Clients call the model as <you>-<YYYYMMDDHHMM>-<name>. "
        "Submitting a name you already use updates that model.",
        widget=forms.TextInput(attrs={"placeholder": "demo", "autocomplete": "off", "spellcheck": "false"}),
    )
    model_source = forms.CharField(
        required=False,
        label="Model folder (model_source)",
        help_text="The folder with config.json and the weights; “Where models come from” says what $HOME means here.",
        widget=forms.TextInput(attrs={"placeholder": "$HOME/common/hf/tiny-llama", "list": "hf-models", "spellcheck": "false"}),
    )
    num_replicas = forms.CharField(
        required=False,
        initial="1",
        label="Replicas (num_replicas)",
        help_text=f"0 to {MAX_REPLICAS}; 0 keeps the model but frees its GPUs.",
        widget=forms.NumberInput(attrs={"min": 0, "max": MAX_REPLICAS}),
    )
    gpus_per_replica = forms.CharField(
        required=False,
        label="GPUs per replica (gpus_per_replica)",
        help_text=f"0 to {MAX_GPUS_PER_REPLICA}. Empty: 1 on GPU machines, 0 (CPU replicas) on CPU machines.",
        widget=forms.NumberInput(attrs={"min": 0, "max": MAX_GPUS_PER_REPLICA}),
    )
    engine_options = forms.CharField(
        required=False,
        strip=False,
        label="Engine options (engine_kwargs)",
        help_text="Optional: key=value lines or a YAML/JSON mapping, passed to vLLM. Allowed: "
        f"{', '.join(ENGINE_KWARGS_ALLOWED)}. Never trust_remote_code.",
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "placeholder": "max_model_len=2048\nenforce_eager=true"}),
    )
    spec_yaml = forms.CharField(
        required=False,
        strip=False,
        initial=EXAMPLE_SPEC,
        label="Spec (YAML, as the API takes it)",
        widget=forms.Textarea(attrs={"rows": 9, "spellcheck": "false"}),
    )

    @property
    def mode(self) -> str:
        pressed = self.data.get("preview") or self.data.get("mode")
        return YAML if pressed == YAML else FORM

    @property
    def previewing(self) -> bool:
        return "preview" in self.data

    def spec_text(self) -> str:
        """The YAML this submission stands for: the YAML tab as typed, or the fields written as YAML."""
        data = {name: self.data.get(name, "") for name in self.fields}
        if self.mode == YAML:
            return data["spec_yaml"]
        spec: dict = {}
        # A field left empty is left out, so the spec's defaults (and its "missing" messages) apply.
        for name in ("model_id", "model_source"):
            if data[name].strip():
                spec[name] = data[name].strip()
        for name in ("num_replicas", "gpus_per_replica"):
            if data[name].strip():
                spec[name] = _number_or_text(data[name].strip())
        if data["engine_options"].strip():
            spec["engine_kwargs"] = parse_engine_options(data["engine_options"])
        return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)

    def submit(self, user) -> tuple[ServeModel, bool]:
        return deployments.submit_spec(user, self.spec_text())

    def preview(self, user) -> Preview:
        """What submit would do, resolved with the same rules, without writing anything."""
        text = self.spec_text()
        spec = validate_spec(parse_spec_yaml(text), engine=current_engine())
        existing = ServeModel.objects.filter(owner=user, suffix=spec.suffix).first()
        # An update keeps the public id of the model's creation minute, as submit_spec does.
        created_at = existing.created_at if existing else timezone.now()
        resolved = resolve_spec(spec, username=user.username, created_at=created_at, roots=Roots.from_settings())
        return Preview(resolved, text, existing)

    def show_error(self, exc: SpecError) -> None:
        """Puts the spec's message beside the field it is about (the whole YAML on the YAML tab)."""
        self.add_error(self._field_of(exc), exc.message)

    def _field_of(self, exc: SpecError) -> str | None:
        if self.mode == YAML:
            return "spec_yaml"
        field = exc.field or ""
        if field == "engine_kwargs" or field.startswith("engine_kwargs."):
            return "engine_options"
        return field if field in FORM_FIELDS else None


class ScaleForm(forms.Form):
    num_replicas = forms.CharField(
        required=False,
        label="Replicas",
        widget=forms.NumberInput(attrs={"min": 0, "max": MAX_REPLICAS}),
        help_text=f"0 to {MAX_REPLICAS}; 0 keeps the model and its history but frees its GPUs.",
    )

    def replicas(self):
        return _number_or_text(self.data.get("num_replicas", "").strip())

    def show_error(self, exc: SpecError) -> None:
        self.add_error("num_replicas", exc.message)


_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)")


def _decimal_or_text(value: str):
    if _WHOLE_NUMBER.fullmatch(value):
        return int(value)
    return float(value) if _DECIMAL.fullmatch(value) else value


class AutoscaleForm(forms.Form):
    """The bounds and the target Serve's autoscaler keeps to; a field left empty keeps its value."""

    min_replicas = forms.CharField(required=False, label="Min replicas", widget=forms.NumberInput(attrs={"min": 1, "max": MAX_REPLICAS}))
    max_replicas = forms.CharField(required=False, label="Max replicas", widget=forms.NumberInput(attrs={"min": 1, "max": MAX_REPLICAS}))
    target_ongoing_requests = forms.CharField(
        required=False,
        label="Target ongoing requests per replica",
        widget=forms.NumberInput(attrs={"min": 0, "step": "any"}),
        help_text="Queue depth: requests running or waiting on one replica. Serve adds replicas above it and removes them below.",
    )
    upscale_delay_s = forms.CharField(required=False, label="Upscale delay (s)", widget=forms.NumberInput(attrs={"min": 0, "step": "any"}))
    downscale_delay_s = forms.CharField(
        required=False,
        label="Downscale delay (s)",
        widget=forms.NumberInput(attrs={"min": 0, "step": "any"}),
        help_text="How long the load must stay above (or below) the target before Serve acts: the window against flapping.",
    )

    def bounds(self) -> dict:
        return {name: _decimal_or_text(self.data[name].strip()) for name in self.fields if self.data.get(name, "").strip()}

    def show_error(self, exc: SpecError) -> None:
        field = (exc.field or "").removeprefix("autoscaling.")
        self.add_error(field if field in self.fields else None, exc.message)
