"""/api/v2/serve/models: create → list → get → patch → delete, user isolation, and every error a
script can meet, as JSON."""
import json

import pytest
import redis

from dashboard.models import ApiToken, AuditEntry
from serving.choices import State
from serving.models import ServeModel
from serving.reconciler import reconcile
from tests.serving.factories import create_model, spec

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "fake_serve")]

URL = "/api/v2/serve/models"


@pytest.fixture
def alice_api(client, alice):
    _, raw = ApiToken.issue(alice, "ci")
    return Api(client, raw)


@pytest.fixture
def bob_api(client, bob):
    _, raw = ApiToken.issue(bob, "ci")
    return Api(client, raw)


class Api:
    def __init__(self, client, token):
        self.client, self.auth = client, {"HTTP_AUTHORIZATION": f"Bearer {token}"}

    def post_yaml(self, text, url=URL):
        return self.client.post(url, data=text, content_type="application/yaml", **self.auth)

    def get(self, url, **params):
        return self.client.get(url, params, **self.auth)

    def patch(self, url, body):
        data = body if isinstance(body, str) else json.dumps(body)
        return self.client.patch(url, data=data, content_type="application/json", **self.auth)

    def post_json(self, url, body):
        return self.client.post(url, data=json.dumps(body), content_type="application/json", **self.auth)

    def delete(self, url):
        return self.client.delete(url, **self.auth)


def error_of(response) -> dict:
    assert response["Content-Type"] == "application/json"
    return response.json()["error"]


def test_the_happy_path_create_list_get_patch_delete(alice_api, alice, fake_serve, settings):
    created = alice_api.post_yaml(spec("demo", num_replicas=1))
    assert created.status_code == 202
    body = created.json()
    assert body["state"] == "QUEUED" and body["created"] is True and body["generation"] == 1
    key = body["model_key"]
    assert body["model_id"].startswith("alice-") and body["model_id"].endswith("-demo")

    listing = alice_api.get(URL).json()
    assert [m["model_key"] for m in listing["items"]] == [key]
    assert listing["openai_base_url"] == f"http://{settings.GANTRY_SERVE_HOST}:{settings.GANTRY_SERVE_PORT}/v1"

    reconcile(fake_serve)
    reconcile(fake_serve)
    detail = alice_api.get(f"{URL}/{key}").json()
    assert detail["state"] == "RUNNING"
    assert "model_source: " in detail["resolved_spec_yaml"] and "/hf/tiny-llama" in detail["resolved_spec_yaml"]
    assert [e["kind"] for e in detail["events"]["items"]] == ["RUNNING", "APPLIED", "CREATED"]
    assert detail["serve_status"]["status"] == "RUNNING"
    assert detail["serve_status"]["deployments"]["LLMServer"]["replica_states"] == {"RUNNING": 1}
    assert detail["revisions"][0]["number"] == 1

    patched = alice_api.patch(f"{URL}/{key}", {"num_replicas": 2})
    assert patched.status_code == 202 and patched.json()["generation"] == 2
    assert ServeModel.objects.get(model_key=key).num_replicas == 2

    deleted = alice_api.delete(f"{URL}/{key}")
    assert deleted.status_code == 202 and deleted.json()["state"] == "DELETING"
    assert AuditEntry.objects.filter(action="serve.delete", actor=alice).exists()
    for _ in range(4):
        reconcile(fake_serve)
    assert ServeModel.objects.get(model_key=key).state == State.DELETED
    assert alice_api.get(URL).json()["items"] == []
    assert [m["state"] for m in alice_api.get(URL, include_deleted=1).json()["items"]] == ["DELETED"]


def test_posting_the_same_suffix_updates_the_same_model(alice_api):
    first = alice_api.post_yaml(spec("demo")).json()
    second = alice_api.post_yaml(spec("demo", num_replicas=3)).json()
    assert second["model_key"] == first["model_key"] and second["model_id"] == first["model_id"]
    assert (second["generation"], second["created"]) == (2, False)
    assert ServeModel.objects.count() == 1


def test_posting_a_deleted_models_suffix_brings_it_back_queued(alice_api, alice):
    model = create_model(alice)
    ServeModel.objects.filter(pk=model.pk).update(state=State.DELETED)
    again = alice_api.post_yaml(spec("demo")).json()
    assert again["model_key"] == model.model_key and again["state"] == "QUEUED" and again["generation"] == 2


def test_unparsable_yaml_is_400(alice_api):
    response = alice_api.post_yaml("model_id: [demo\nmodel_source: x\n")
    assert response.status_code == 400
    assert error_of(response)["code"] == "bad_yaml"
    assert not ServeModel.objects.exists()


def test_an_invalid_spec_is_422_naming_the_field(alice_api):
    response = alice_api.post_yaml(spec("demo", replica=2))
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_spec" and error["field"] == "replica"
    assert "num_replicas" in error["message"]


def test_trust_remote_code_is_refused(alice_api):
    response = alice_api.post_yaml(spec("demo", engine_kwargs="{trust_remote_code: true}"))
    assert response.status_code == 422
    assert error_of(response)["field"] == "engine_kwargs.trust_remote_code"


def test_a_path_outside_your_roots_is_403(alice_api, roots):
    response = alice_api.post_yaml(spec("demo", source=str(roots / "users" / "bob" / "models" / "his")))
    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "forbidden_path" and error["field"] == "model_source"
    assert not ServeModel.objects.exists()


def test_unknown_and_other_users_models_are_404_json(alice_api, bob_api, alice, bob, fake_serve):
    bobs = create_model(bob)
    reconcile(fake_serve)  # revision 1: a rollback bob may make, so alice's 404 is about ownership
    bobs.refresh_from_db()
    assert bobs.revisions.filter(number=1).exists()
    events = bobs.events.count()
    for method in ("get", "delete"):
        for key in ("no-such-model", bobs.model_key):
            response = getattr(alice_api, method)(f"{URL}/{key}")
            assert response.status_code == 404
            assert error_of(response)["code"] == "not_found"
    assert alice_api.patch(f"{URL}/{bobs.model_key}", {"num_replicas": 2}).status_code == 404
    for key in ("no-such-model", bobs.model_key):
        response = alice_api.post_json(f"{URL}/{key}/rollback", {"revision": 1, "confirm": True})
        assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    after = ServeModel.objects.get(pk=bobs.pk)
    assert (after.state, after.generation, after.num_replicas) == (bobs.state, bobs.generation, bobs.num_replicas)
    assert after.events.count() == events and not AuditEntry.objects.filter(actor=alice).exists()

    response = bob_api.post_json(f"{URL}/{bobs.model_key}/rollback", {"revision": 1, "confirm": True})
    assert response.status_code == 202 and response.json()["generation"] == bobs.generation + 1


def test_users_list_only_their_own_models(alice_api, bob_api, alice, bob):
    create_model(alice, "a")
    create_model(bob, "b")
    assert [m["suffix"] for m in alice_api.get(URL).json()["items"]] == ["a"]
    assert [m["suffix"] for m in bob_api.get(URL).json()["items"]] == ["b"]
    assert bob_api.get(URL, owner="alice").json()["items"][0]["suffix"] == "b"  # owner filter is admin-only


def test_admins_list_everyones_models_and_can_filter_by_owner_and_state(admin_client, alice, bob):
    create_model(alice, "a")
    create_model(bob, "b")
    assert {m["owner"] for m in admin_client.get(URL).json()["items"]} == {"alice", "bob"}
    assert [m["owner"] for m in admin_client.get(URL, {"owner": "bob"}).json()["items"]] == ["bob"]
    assert admin_client.get(URL, {"state": "RUNNING"}).json()["items"] == []


def test_patch_of_a_deleting_or_deleted_model_is_409(alice_api, alice):
    model = create_model(alice)
    for state in (State.DELETING, State.DELETED):
        ServeModel.objects.filter(pk=model.pk).update(state=state)
        response = alice_api.patch(f"{URL}/{model.model_key}", {"num_replicas": 2})
        assert response.status_code == 409
        assert "cannot be scaled" in error_of(response)["message"]
    assert alice_api.delete(f"{URL}/{model.model_key}").status_code == 409  # already DELETED


def test_patch_validates_its_body(alice_api, alice):
    model = create_model(alice)
    url = f"{URL}/{model.model_key}"
    assert alice_api.patch(url, "{not json").status_code == 400
    assert error_of(alice_api.patch(url, {"num_replicas": -1}))["field"] == "num_replicas"
    assert error_of(alice_api.patch(url, {"num_replicas": "2"}))["field"] == "num_replicas"
    response = alice_api.patch(url, {"gpus_per_replica": 2})
    assert response.status_code == 422 and error_of(response)["field"] == "gpus_per_replica"
    assert ServeModel.objects.get(pk=model.pk).generation == 1


def test_deleting_twice_is_accepted_while_deleting(alice_api, alice):
    model = create_model(alice)
    assert alice_api.delete(f"{URL}/{model.model_key}").status_code == 202
    assert alice_api.delete(f"{URL}/{model.model_key}").status_code == 202
    assert AuditEntry.objects.filter(action="serve.delete").count() == 1


def test_rollback_needs_confirmation_and_an_existing_revision(alice_api, alice, fake_serve):
    model = create_model(alice)
    reconcile(fake_serve)
    url = f"{URL}/{model.model_key}/rollback"
    assert error_of(alice_api.post_json(url, {"revision": 1}))["code"] == "confirmation_required"
    assert alice_api.post_json(url, {"revision": 9, "confirm": True}).status_code == 404
    response = alice_api.post_json(url, {"revision": 1, "confirm": True})
    assert response.status_code == 202 and response.json()["generation"] == 2
    assert AuditEntry.objects.filter(action="serve.rollback", actor=alice).exists()


def test_events_are_paged_newest_first(alice_api, alice):
    model = create_model(alice)
    for _ in range(60):
        model.log("SERVE_STATUS", "tick")
    first = alice_api.get(f"{URL}/{model.model_key}").json()["events"]
    assert len(first["items"]) == 50 and first["next"]
    second = alice_api.get(first["next"]).json()["events"]
    assert len(second["items"]) == 11 and second["next"] is None
    ids = [e["id"] for e in first["items"] + second["items"]]
    assert ids == sorted(ids, reverse=True)


def test_the_cluster_status_is_for_admins(alice_api, admin_client, alice, fake_serve):
    assert alice_api.get("/api/v2/serve/status").status_code == 403
    model = create_model(alice)
    reconcile(fake_serve)
    fake_serve.apps["stray"] = fake_serve._app({}, 1, "RUNNING", 0)
    reconcile(fake_serve)  # the snapshot pages read is what the tick saw when it began
    body = admin_client.get("/api/v2/serve/status").json()
    assert body["available"] is True and body["stale"] is False and body["as_of"]
    assert body["applications"][model.model_key]["gantry_state"] == "RUNNING"
    assert body["unknown_applications"] == ["stray"]
    assert body["resources"]["total_gpus"] == 8


def test_a_change_enqueues_a_reconcile_on_the_serve_queue_once_committed(alice_api, settings):
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("reads the Redis broker's lists; make test runs against Redis")
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("serve")
    alice_api.post_yaml(spec("demo"))
    # The test's transaction never commits, so nothing may have been sent yet.
    assert broker.llen("serve") == 0


@pytest.mark.django_db(transaction=True)
def test_a_committed_change_is_on_the_serve_queue(alice_api, settings):
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("reads the Redis broker's lists; make test runs against Redis")
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("serve")
    alice_api.post_yaml(spec("demo"))
    message = json.loads(broker.lpop("serve"))
    assert message["headers"]["task"] == "serving.tasks.reconcile"
    broker.delete("serve")


def test_the_openapi_document_describes_the_serving_api(alice_client):
    doc = alice_client.get("/api/v2/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/serve/models", "/serve/models/{model_key}", "/serve/status"} <= set(doc["paths"])
    assert set(doc["paths"]["/serve/models/{model_key}"]) >= {"get", "patch", "delete"}
    assert "trust_remote_code" not in doc["components"]["schemas"]["Spec"]["properties"]["engine_kwargs"]["properties"]
