"""Autoscaling in the spec: validated, mapped onto Serve's own autoscaler, changed in place, and
every decision Serve's autoscaler takes shown as an event."""
from __future__ import annotations

import pytest

from serving import deployments
from serving.choices import EventKind, State
from serving.llm_config import build_llm_config
from serving.models import ServeEvent, ServeRevision
from serving.reconciler import reconcile
from serving.spec import ResolvedSpec, SpecError, validate_spec
from tests.serving.factories import spec
from tests.serving.test_api import URL, Api, error_of

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "fake_serve")]

AUTOSCALED = spec("auto", autoscaling="{min_replicas: 1, max_replicas: 3, target_ongoing_requests: 2, upscale_delay_s: 5, downscale_delay_s: 60}")


def invalid(data: dict) -> SpecError:
    with pytest.raises(SpecError) as caught:
        validate_spec({"model_id": "m", "model_source": "/x", **data}, engine="cpu")
    assert caught.value.status == 422
    return caught.value


# --- the spec ----------------------------------------------------------------------------------

def test_autoscaling_takes_serves_defaults_for_what_it_leaves_out():
    parsed = validate_spec({"model_id": "m", "model_source": "/x", "autoscaling": {"max_replicas": 4}}, engine="cpu")
    assert parsed.autoscaling == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2, "upscale_delay_s": 30, "downscale_delay_s": 600}
    assert parsed.num_replicas == 1  # where it starts: what is placed and GPU-checked first


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"num_replicas": 2, "autoscaling": {"max_replicas": 3}}, "autoscaling", "exclusive"),
        ({"autoscaling": {"min_replicas": 1}}, "autoscaling.max_replicas", "needs max_replicas"),
        ({"autoscaling": {"min_replicas": 4, "max_replicas": 2}}, "autoscaling.min_replicas", "min_replicas (4) is above max_replicas (2)"),
        ({"autoscaling": {"max_replicas": 2, "min_replicas": 0}}, "autoscaling.min_replicas", "from 1 to 64"),
        ({"autoscaling": {"max_replicas": 65}}, "autoscaling.max_replicas", "from 1 to 64"),
        ({"autoscaling": {"max_replicas": True}}, "autoscaling.max_replicas", "whole number"),
        ({"autoscaling": {"max_replicas": 2, "target_ongoing_requests": 0}}, "autoscaling.target_ongoing_requests", "above 0"),
        ({"autoscaling": {"max_replicas": 2, "downscale_delay_s": -1}}, "autoscaling.downscale_delay_s", "seconds from 0"),
        ({"autoscaling": {"max_replicas": 2, "upscale_delay": 3}}, "autoscaling.upscale_delay", "Did you mean 'upscale_delay_s'"),
        ({"autoscaling": [1, 3]}, "autoscaling", "must be a mapping"),
    ],
)
def test_a_bad_autoscaling_block_is_422_naming_the_field(data, field, words):
    error = invalid(data)
    assert error.field == field
    assert words in error.message


def test_an_autoscaled_spec_reads_back_as_it_was_written():
    resolved = ResolvedSpec("m", "alice-202612010000-m", "/x", 1, 0, {}, {}, {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2, "upscale_delay_s": 5, "downscale_delay_s": 60})
    assert ResolvedSpec.from_dict(resolved.as_dict()) == resolved
    assert "num_replicas" not in resolved.to_yaml()  # exclusive in what a person edits and posts again
    with pytest.raises(SpecError, match="autoscales from 1 to 3"):
        resolved.with_replicas(2)


def test_a_fixed_spec_hashes_as_it_always_did():
    resolved = ResolvedSpec("m", "alice-202612010000-m", "/x", 2, 0, {})
    assert "autoscaling" not in resolved.as_dict()


def test_the_bounds_become_serves_autoscaling_config_and_no_fixed_count():
    bounds = {"min_replicas": 2, "max_replicas": 5, "target_ongoing_requests": 1.5, "upscale_delay_s": 3, "downscale_delay_s": 40}
    config = build_llm_config({"model_id": "m", "model_source": "/x", "num_replicas": 2, "gpus_per_replica": 0, "autoscaling": bounds}, engine="cpu")
    assert config["deployment_config"] == {
        "autoscaling_config": {
            "min_replicas": 2, "initial_replicas": 2, "max_replicas": 5,
            "target_ongoing_requests": 1.5, "upscale_delay_s": 3.0, "downscale_delay_s": 40.0,
        }
    }


# --- the API -----------------------------------------------------------------------------------

@pytest.fixture
def alice_api(client, alice):
    from dashboard.models import ApiToken

    _, raw = ApiToken.issue(alice, "ci")
    return Api(client, raw)


def test_an_autoscaled_spec_is_accepted_and_its_bounds_patched(alice_api):
    created = alice_api.post_yaml(AUTOSCALED)
    assert created.status_code == 202 and created.json()["created"], created.content
    url = f"{URL}/{created.json()['model_key']}"

    patched = alice_api.patch(url, {"autoscaling": {"target_ongoing_requests": 4}})
    assert patched.status_code == 202, patched.content
    body = alice_api.get(url).json()
    assert body["generation"] == 2
    assert "target_ongoing_requests: 4" in body["resolved_spec_yaml"]
    assert "max_replicas: 3" in body["resolved_spec_yaml"]  # the rest kept as it was


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"num_replicas": 2}, "num_replicas"),
        ({"autoscaling": {"max_replicas": 0}}, "autoscaling.max_replicas"),
        ({"autoscaling": {"min_replicas": 5}}, "autoscaling.min_replicas"),
        ({"autoscaling": 3}, "autoscaling"),
        ({"autoscaling": {"max_replicas": 2}, "num_replicas": 1}, "num_replicas"),
    ],
)
def test_a_bad_patch_of_an_autoscaled_model_is_422_and_changes_nothing(alice_api, body, field):
    url = f"{URL}/{alice_api.post_yaml(AUTOSCALED).json()['model_key']}"
    response = alice_api.patch(url, body)
    assert response.status_code == 422, response.content
    assert error_of(response)["field"] == field
    assert alice_api.get(url).json()["generation"] == 1


# --- the reconciler, against a Serve stand-in that autoscales as Serve does -----------------------

def tick(fake, times: int = 1):
    for _ in range(times):
        reconcile(fake)


def autoscaled_events(model) -> list[str]:
    return list(ServeEvent.objects.filter(model=model, kind=EventKind.AUTOSCALED).order_by("id").values_list("message", flat=True))


def test_an_autoscaled_model_runs_at_min_replicas_and_its_bounds_change_in_place(alice, fake_serve):
    model, _ = deployments.submit_spec(alice, AUTOSCALED)
    tick(fake_serve, 2)
    model.refresh_from_db()
    assert model.state == State.RUNNING
    (replica,) = fake_serve.apps[model.model_key]["replica_ids"]

    deployments.set_autoscaling(model, {"max_replicas": 5, "target_ongoing_requests": 3}, alice)
    tick(fake_serve, 2)
    model.refresh_from_db()
    assert model.state == State.RUNNING
    assert fake_serve.apps[model.model_key]["replica_ids"] == [replica]
    latest = ServeRevision.objects.filter(model=model).first()
    assert latest.reason == "autoscaling bounds"
    assert latest.config["deployment_config"]["autoscaling_config"]["max_replicas"] == 5


def test_each_decision_of_serves_autoscaler_is_one_event(alice, fake_serve):
    model, _ = deployments.submit_spec(alice, AUTOSCALED)
    tick(fake_serve, 3)
    assert autoscaled_events(model) == []  # the first reading is what the apply asked for

    fake_serve.autoscale(model.model_key, 3)
    tick(fake_serve, 3)
    fake_serve.autoscale(model.model_key, 1)
    tick(fake_serve, 2)
    up, down = autoscaled_events(model)
    assert up.startswith("Serve's autoscaler scales up: 1 → 3 replica(s)")
    assert "target 2 ongoing request(s) per replica, 1–3 replicas" in up
    assert down.startswith("Serve's autoscaler scales down: 3 → 1 replica(s)")


def test_a_gpu_model_whose_max_replicas_do_not_fit_says_scaling_up_may_wait(alice, fake_serve, settings):
    fake_serve.total_gpus = 2
    text = spec("big", gpus_per_replica=1, autoscaling="{min_replicas: 1, max_replicas: 4}")
    model, _ = deployments.submit_spec(alice, text)
    tick(fake_serve)
    model.refresh_from_db()
    assert model.state == State.DEPLOYING  # min_replicas fits: it is deployed now
    (warning,) = autoscaled_events(model)
    assert warning.startswith("Scaling up to max_replicas (4 × 1 GPU(s)) may wait for GPUs")


# --- the page -----------------------------------------------------------------------------------

def test_the_page_shows_the_bounds_and_changes_them_with_the_error_beside_the_field(alice, alice_client, fake_serve):
    model, _ = deployments.submit_spec(alice, AUTOSCALED)
    tick(fake_serve, 3)
    fake_serve.autoscale(model.model_key, 2)
    tick(fake_serve)
    page = alice_client.get(f"/serving/{model.model_key}").content.decode()
    assert "Autoscaled by Serve from 1 to 3 replica(s)" in page
    assert 'id="replicas-desired">2<' in page

    refused = alice_client.post(f"/serving/{model.model_key}/autoscale", {"max_replicas": "0"})
    assert refused.status_code == 422
    assert 'id="id_max_replicas_error"' in refused.content.decode()
    assert "autoscaling.max_replicas must be a whole number from 1 to 64" in refused.content.decode()

    changed = alice_client.post(f"/serving/{model.model_key}/autoscale", {"target_ongoing_requests": "1.5"})
    assert changed.status_code == 303
    model.refresh_from_db()
    assert model.autoscaling["target_ongoing_requests"] == 1.5


def test_the_preview_counts_the_gpus_max_replicas_would_hold(alice_client, settings):
    text = spec("big", gpus_per_replica=2, autoscaling="{min_replicas: 1, max_replicas: 4}")
    page = alice_client.post("/serving/new/preview", {"mode": "yaml", "spec_yaml": text}).content.decode()
    assert "Autoscaled up to 4 replicas: up to <strong>8</strong> GPU(s)" in page
