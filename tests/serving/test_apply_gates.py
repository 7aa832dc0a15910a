"""Serving's apply hook (serving/apply_gates.py): gates' preflight is registered there when Django
starts, the reconciler asks it before every apply of a new spec, and a process in which no gate is
registered deploys nothing unchecked. Serve is the fake at the edge."""
from __future__ import annotations

import pytest

from gates.apply_gate import preflight_verdict
from serving import apply_gates
from serving.choices import EventKind, State
from serving.models import ServeEvent, ServeModel
from serving.reconciler import reconcile
from tests.serving.factories import create_model

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "gpu_engine")]


def test_the_preflight_is_an_apply_gate_once_django_has_started():
    assert preflight_verdict in apply_gates.registered()


def test_with_no_gate_registered_nothing_reaches_serve_and_the_model_says_why(alice, fake_serve, monkeypatch):
    monkeypatch.setattr(apply_gates, "_gates", [])
    model = create_model(alice)
    reconcile(fake_serve)
    assert fake_serve.applied() == []
    model = ServeModel.objects.get(pk=model.pk)
    assert model.state == State.FAILED and "No apply gate is registered" in model.error_summary
    assert ServeEvent.objects.filter(model=model, kind=EventKind.PREFLIGHT_FAILED).exists()


def test_a_gate_that_says_pending_holds_the_apply_and_a_pass_lets_it_through(alice, fake_serve, monkeypatch):
    answers = [apply_gates.ApplyVerdict(apply_gates.PENDING, "the other gate is still looking"), apply_gates.ApplyVerdict(apply_gates.PASSED)]
    monkeypatch.setattr(apply_gates, "_gates", [lambda model: answers.pop(0)])
    model = create_model(alice)
    reconcile(fake_serve)
    assert fake_serve.applied() == [] and ServeModel.objects.get(pk=model.pk).state == State.QUEUED
    assert ServeEvent.objects.filter(model=model, kind=EventKind.PREFLIGHT, message="the other gate is still looking").exists()
    reconcile(fake_serve)
    assert fake_serve.applied() == [model.model_key] and ServeModel.objects.get(pk=model.pk).state == State.DEPLOYING


def test_the_first_gate_that_does_not_pass_decides(monkeypatch):
    refused = apply_gates.ApplyVerdict(apply_gates.FAILED, "refused by the second gate")
    monkeypatch.setattr(apply_gates, "_gates", [
        lambda model: apply_gates.ApplyVerdict(apply_gates.PASSED, engine="cpu", source="first"),
        lambda model: refused,
        lambda model: pytest.fail("a gate after a refusal is not asked"),
    ])
    assert apply_gates.verdict_for_apply(object()) == refused
