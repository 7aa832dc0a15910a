"""/api/v2/gates/baselines: propose (eval_baseline.json + name + justification_url), list, read with
its diff, approve / reject (a reviewer who is not the author), export; errors as JSON naming the key."""
from __future__ import annotations

import itertools
import json

import pytest
from django.test import Client

from dashboard.models import ApiToken
from gates import baselines as service
from gates.models import Baseline
from tests.gates.test_baselines import SEED, SHA_V1, URL, doc

pytestmark = pytest.mark.django_db

API = "/api/v2/gates/baselines"
TOKEN_NAMES = itertools.count()  # a user's active tokens have distinct names


class Api:
    def __init__(self, user):
        _, raw = ApiToken.issue(user, f"ci-{next(TOKEN_NAMES)}")
        self.client, self.auth = Client(), {"HTTP_AUTHORIZATION": f"Bearer {raw}"}

    def post(self, url: str, body) -> object:
        data = body if isinstance(body, str) else json.dumps(body)
        return self.client.post(url, data=data, content_type="application/json", **self.auth)

    def get(self, url: str, **params):
        return self.client.get(url, params, **self.auth)


def proposal_body(**extra) -> str:
    # What CI sends: the file with two more keys (jq '. + {name, justification_url}').
    data = json.loads(SEED)
    return json.dumps({**data, "name": "grammar-tutor", "justification_url": URL, **extra})


@pytest.fixture
def v1(alice, rita):
    return service.approve(service.propose("grammar-tutor", doc(), URL, alice), rita)


def error(response) -> dict:
    return response.json()["error"]


def test_a_proposal_is_created_and_read_back_by_anyone(alice, bob):
    response = Api(alice).post(API, proposal_body())
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["name"], body["version"], body["status"], body["author"]) == ("grammar-tutor", 1, "proposed", "alice")
    assert body["document"]["buckets"]["verb.go"] == {"accuracy": 0.74, "n": 60}
    assert body["document"]["tolerance_pp"] == 0.02 and "previous_baseline_sha" not in body["document"]
    item = Api(bob).get(f"{API}/{body['id']}").json()  # baselines are team-wide
    assert item["may_decide"] is False and "Only a reviewer" in item["why_not"]
    assert item["compared_with"] is None and len(item["diff"]) == 10
    assert {d["change"] for d in item["diff"]} == {"added"}


@pytest.mark.parametrize("body, status, code, field", [
    ('{"name": "grammar-tutor",\n "buckets": [}', 400, "bad_json", "document"),
    ('[1, 2]', 400, "bad_json", None),
    (proposal_body(justification_url=""), 422, "invalid_justification", "justification_url"),
    (proposal_body(name="no spaces allowed"), 422, "invalid_name", "name"),
    (proposal_body().replace('"n": 60', '"n": -1', 1), 422, "invalid_baseline", None),
    (proposal_body(tolerance_pp="0.02"), 422, "invalid_baseline", "tolerance_pp"),
    (proposal_body(previous_baseline_sha="f" * 40), 422, "wrong_previous", "previous_baseline_sha"),
])
def test_a_refused_proposal_is_a_json_error_naming_the_key(alice, body, status, code, field):
    response = Api(alice).post(API, body)
    assert response.status_code == status, response.content
    err = error(response)
    assert (err["status"], err["code"]) == (status, code)
    if field:
        assert err["field"] == field
    if code == "bad_json" and field:
        assert "line 2" in err["message"]
    assert not Baseline.objects.exists()


def test_a_bucket_error_names_the_bucket(alice):
    err = error(Api(alice).post(API, proposal_body().replace('"n": 60', '"n": -1', 1)))
    assert err["field"] == 'buckets["verb.go"].n'


def test_the_list_filters_by_name_and_status(alice, v1):
    api = Api(alice)
    api.post(API, proposal_body(baseline_sha="c" * 40, previous_baseline_sha=SHA_V1))
    assert [(b["version"], b["status"]) for b in api.get(API).json()["items"]] == [(2, "proposed"), (1, "current")]
    assert [b["version"] for b in api.get(API, status="current").json()["items"]] == [1]
    assert api.get(API, name="other").json()["items"] == []
    bad = api.get(API, status="live")
    assert bad.status_code == 400 and error(bad)["field"] == "status"


def test_only_a_reviewer_who_is_not_the_author_decides(alice, bob, rita, v1):
    body = Api(rita).post(API, proposal_body(baseline_sha="c" * 40, previous_baseline_sha=SHA_V1)).json()
    url = f"{API}/{body['id']}/approve"
    for user in (rita, bob):  # the author (a reviewer herself) and a user without the permission
        response = Api(user).post(url, {"note": "ok"})
        assert response.status_code == 403 and error(response)["code"] == "forbidden"
        assert Baseline.objects.get(pk=body["id"]).status == "proposed"
    assert Api(alice).post(url, {"note": "ok"}).status_code == 403  # neither author nor reviewer


def test_approval_supersedes_and_a_second_decision_is_a_conflict(alice, rita, admin, v1):
    body = Api(alice).post(API, proposal_body(baseline_sha="c" * 40, previous_baseline_sha=SHA_V1)).json()
    response = Api(admin).post(f"{API}/{body['id']}/approve", {"note": "checked run abc123"})
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["reviewer"], response.json()["decision_note"]) == ("current", "admin", "checked run abc123")
    assert Baseline.objects.get(pk=v1.pk).status == "superseded"
    again = Api(rita).post(f"{API}/{body['id']}/reject", {"note": "too late"})
    assert again.status_code == 409 and error(again)["code"] == "already_decided"
    item = Api(alice).get(f"{API}/{body['id']}").json()
    assert item["compared_with"] == v1.pk
    assert {d["bucket"]: d["change"] for d in item["diff"]}["verb.go"] == "same"


def test_a_stale_proposal_is_refused_with_what_to_do(alice, bob, rita, v1):
    late = Api(alice).post(API, proposal_body(baseline_sha="a" * 40, previous_baseline_sha=SHA_V1)).json()
    first = Api(bob).post(API, proposal_body(baseline_sha="b" * 40, previous_baseline_sha=SHA_V1)).json()
    assert Api(rita).post(f"{API}/{first['id']}/approve", {}).status_code == 200
    response = Api(rita).post(f"{API}/{late['id']}/approve", {"note": ""})
    assert response.status_code == 409
    err = error(response)
    assert err["code"] == "stale_proposal" and "previous_baseline_sha " + "b" * 40 in err["message"]
    assert Baseline.objects.get(pk=late["id"]).status == "proposed"


def test_a_rejection_needs_a_note(alice, rita):
    body = Api(alice).post(API, proposal_body()).json()
    response = Api(rita).post(f"{API}/{body['id']}/reject", {})
    assert response.status_code == 422 and error(response)["field"] == "note"
    response = Api(rita).post(f"{API}/{body['id']}/reject", {"note": "numbers from the wrong run"})
    assert response.status_code == 200 and response.json()["status"] == "rejected"


def test_the_export_is_the_canonical_file(bob, v1):
    response = Api(bob).get(f"{API}/{v1.pk}/export")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/json")
    assert response.content.decode() == service.export_baseline(v1)
    assert Api(bob).get(f"{API}/999999/export").status_code == 404


def test_the_api_needs_a_login(client, v1):
    assert client.get(API).status_code == 401
    assert client.post(f"{API}/{v1.pk}/approve", "{}", content_type="application/json").status_code == 401
