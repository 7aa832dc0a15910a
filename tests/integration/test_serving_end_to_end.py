"""Gantry end to end on a real Ray head with the real CPU engine, no mock anywhere in the path:
the API creates a model, the reconciler (the code beat runs) deploys it, the official openai client
talks to it through the router, it scales, a neighbour comes and goes without restarting it, and
it disappears cleanly. Re-running on a used cluster passes: model ids carry a fresh suffix.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid

import openai
import pytest

from dashboard.models import ApiToken
from serving.choices import EventKind, State
from serving.cluster import get_client
from serving.cluster.serve import ROUTER_APP
from serving.models import ServeEvent, ServeModel
from serving.reconciler import reconcile
from tests.ray_cluster import listed_models, replicas, router_url

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

URL = "/api/v2/serve/models"


class Api:
    def __init__(self, client, user):
        _, raw = ApiToken.issue(user, f"e2e-{uuid.uuid4().hex[:6]}")
        self.client, self.auth = client, {"HTTP_AUTHORIZATION": f"Bearer {raw}"}

    def create(self, text: str) -> dict:
        response = self.client.post(URL, data=text, content_type="application/yaml", **self.auth)
        assert response.status_code == 202, response.content
        return response.json()

    def get(self, key: str) -> dict:
        return self.client.get(f"{URL}/{key}", **self.auth).json()

    def patch(self, key: str, body: dict) -> None:
        response = self.client.patch(f"{URL}/{key}", data=json.dumps(body), content_type="application/json", **self.auth)
        assert response.status_code == 202, response.content

    def delete(self, key: str) -> None:
        assert self.client.delete(f"{URL}/{key}", **self.auth).status_code == 202


def drive(key: str, until, timeout_s: float = 360, expect_failure: bool = False) -> ServeModel:
    """Run reconcile ticks, as beat and the on-commit enqueue would, until `until(model)` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        reconcile(get_client())
        model = ServeModel.objects.get(model_key=key)
        if until(model):
            return model
        if model.state == State.FAILED and not expect_failure:
            raise AssertionError(f"{key} FAILED: {model.error_summary}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} still {model.state} after {timeout_s:g} s; last events: {list(ServeEvent.objects.filter(model=model)[:3])}")
        time.sleep(1)


def suffix(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def spec(name: str, replicas: int = 1, source: str = "$HOME/common/hf/tiny-llama") -> str:
    return f"model_id: {name}\nmodel_source: {source}\nnum_replicas: {replicas}\n"


def test_a_model_lives_its_whole_life_through_gantry(gantry, client, alice, bob):
    head = gantry
    alices, bobs = Api(client, alice), Api(client, bob)

    created = alices.create(spec(suffix("chat")))
    key, model_id = created["model_key"], created["model_id"]
    assert created["state"] == "QUEUED"
    drive(key, lambda m: m.state == State.RUNNING)
    assert model_id in listed_models(head)

    api = openai.OpenAI(base_url=router_url(head, "/v1"), api_key="not-needed", max_retries=0, timeout=60)
    reply = api.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
    assert reply.model == model_id and reply.usage.completion_tokens > 0
    chunks = list(api.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True))
    assert sum(len(c.choices[0].delta.content or "") for c in chunks if c.choices) > 0

    (first_replica,) = replicas(head, model_id).items()
    alices.patch(key, {"num_replicas": 2})
    drive(key, lambda m: m.state == State.RUNNING and m.num_replicas == 2 and m.is_settled)
    detail = alices.get(key)
    assert detail["serve_status"]["deployments"] and list(detail["serve_status"]["deployments"].values())[0]["replica_states"] == {"RUNNING": 2}
    scaled = replicas(head, model_id)
    assert scaled[first_replica[0]] == first_replica[1], "scaling replaced the replica that was serving"
    assert detail["revisions"][0]["reason"] == "scale 1 → 2"

    model_before, router_before = replicas(head, model_id), replicas(head, ROUTER_APP)
    neighbour = bobs.create(spec(suffix("neighbour")))
    drive(neighbour["model_key"], lambda m: m.state == State.RUNNING)
    assert sorted(listed_models(head)) == sorted([model_id, neighbour["model_id"]])
    bobs.delete(neighbour["model_key"])
    drive(neighbour["model_key"], lambda m: m.state == State.DELETED)
    assert replicas(head, model_id) == model_before, "adding or deleting a neighbour restarted this model"
    assert replicas(head, ROUTER_APP) == router_before, "adding or deleting a model restarted the router"
    assert api.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Still there?"}], max_tokens=4).choices

    alices.delete(key)
    drive(key, lambda m: m.state == State.DELETED)
    assert model_id not in listed_models(head)
    assert model_id not in get_client().status()
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Gone?"}], max_tokens=4)
    kinds = list(ServeEvent.objects.filter(model__model_key=key).values_list("kind", flat=True))
    assert {EventKind.CREATED, EventKind.APPLIED, EventKind.RUNNING, EventKind.SCALED, EventKind.DELETE_REQUESTED, EventKind.DELETED} <= set(kinds)


def test_a_folder_without_weights_fails_with_the_engines_reason(gantry, client, alice, tiny_model):
    broken = tiny_model.parent / f"no-weights-{uuid.uuid4().hex[:6]}"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model / name, broken / name)
    alices = Api(client, alice)
    created = alices.create(spec(suffix("broken"), source=f"$HOME/common/hf/{broken.name}"))
    # Serve tries a failing replica three times (~80 s each on 2 busy cores) before DEPLOY_FAILED.
    model = drive(created["model_key"], lambda m: m.state == State.FAILED, timeout_s=480, expect_failure=True)
    assert "DEPLOY_FAILED" in model.error_summary
    event = ServeEvent.objects.get(model=model, kind=EventKind.FAILED)
    # Serve's own words: which deployment failed, then the engine's exception at the end...
    assert "LLMServer" in event.message and "Engine core initialization failed" in event.message, event.message
    # ...and, from the failing replica's own log, what Serve only points at ("see root cause above").
    assert "Root cause, from the replica's log:" in event.message, event.message
    assert "Cannot find any model weights" in event.message.split("Root cause", 1)[1], event.message
    alices.delete(created["model_key"])
    drive(created["model_key"], lambda m: m.state == State.DELETED, expect_failure=True)
    assert created["model_key"] not in get_client().status()


def test_gpus_the_cluster_cannot_give_keep_the_model_queued_then_fail_at_the_deadline(gantry, client, alice, settings):
    settings.GANTRY_PENDING_TIMEOUT_S = 3
    alices = Api(client, alice)
    created = alices.create(f"model_id: {suffix('greedy')}\nmodel_source: $HOME/common/hf/tiny-llama\ngpus_per_replica: 1\n")
    reconcile(get_client())
    model = ServeModel.objects.get(model_key=created["model_key"])
    assert model.state == State.QUEUED
    pending = ServeEvent.objects.get(model=model, kind=EventKind.PENDING_RESOURCES)
    assert "Needs 1 GPU(s)" in pending.message and "0 free of 0" in pending.message
    time.sleep(3.5)
    model = drive(created["model_key"], lambda m: m.state == State.FAILED, timeout_s=30, expect_failure=True)
    assert "No GPUs became free" in model.error_summary
    assert created["model_key"] not in get_client().status()  # nothing half-applied to Serve


def test_a_model_with_a_skewed_card_never_reaches_serve_until_a_person_forces_it(gantry, client, alice, tiny_model):
    from gates.models import PreflightRun

    head = gantry
    skewed = tiny_model.parent / f"skewed-{uuid.uuid4().hex[:6]}"
    shutil.copytree(tiny_model, skewed)
    card = json.loads((skewed / "model-card.json").read_text())
    (skewed / "model-card.json").write_text(json.dumps({**card, "tokenizer_sha": "ad4c1b9"}))  # written for another tokenizer
    alices = Api(client, alice)
    created = alices.create(spec(suffix("skewed"), source=f"$HOME/common/hf/{skewed.name}"))
    key = created["model_key"]

    model = drive(key, lambda m: m.state == State.FAILED, timeout_s=120, expect_failure=True)
    assert key not in get_client().status(), "a failed preflight must keep the model out of Serve"
    run = PreflightRun.objects.get(model=model)
    assert run.runtime["source"] == "cluster" and run.runtime["nodes"], "compared with the real cluster's workers"
    client.force_login(alice)
    page = client.get(f"/serving/{key}").content.decode()
    assert "checkpoint ↔ runtime" in page and f"/gates/preflight/{run.pk}/" in page
    report = client.get(f"/gates/preflight/{run.pk}/").content.decode()
    assert "ad4c1b9" in report and card["tokenizer_sha"] in report  # declared beside effective

    forced = client.post(
        f"/api/v2/preflight/{run.pk}/force", data=json.dumps({"reason": "card rebuilt by hand; tokenizer unchanged since training"}),
        content_type="application/json", **alices.auth,
    )
    assert forced.status_code == 200, forced.content
    model = drive(key, lambda m: m.state == State.RUNNING)
    assert model.model_id in listed_models(head)
    assert ServeEvent.objects.filter(model=model, kind=EventKind.PREFLIGHT_FORCED, actor_name="alice").exists()
    alices.delete(key)
    drive(key, lambda m: m.state == State.DELETED)
