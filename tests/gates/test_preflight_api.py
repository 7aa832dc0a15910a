"""/api/v2/preflight: a spec in, a report out, nothing deployed; the serving API's auth, roots and
errors; another user's report is a 404; forcing a deploy's version skew with a reason, audited."""
from __future__ import annotations

import json

import pytest

from dashboard.models import ApiToken, AuditEntry
from gates import preflights
from gates.models import PreflightRun
from serving.choices import EventKind
from serving.models import ServeModel
from tests.gates.test_preflight_cli import WRONG_SHA, write_model
from tests.serving.factories import create_model

pytestmark = pytest.mark.django_db

URL = "/api/v2/preflight"


@pytest.fixture
def roots(settings, tmp_path):
    """The serving roots with real model folders: a clean one, one whose card no longer matches its
    tokenizer (a version skew), one whose prompt has a variable nothing fills, and alice's and bob's own."""
    settings.GANTRY_ENGINE = "cpu"
    settings.GANTRY_HF_ROOT = tmp_path / "hf"
    settings.GANTRY_DATASETS_ROOT = tmp_path / "datasets"
    settings.GANTRY_USERS_ROOT = tmp_path / "users"
    (tmp_path / "datasets").mkdir()
    write_model(tmp_path / "hf" / "tiny-llama")
    write_model(tmp_path / "hf" / "skewed", sha=WRONG_SHA)
    write_model(tmp_path / "hf" / "unfilled", sha=WRONG_SHA, prompt="Dear {{ customer }},\n", defaults="")
    write_model(tmp_path / "users" / "alice" / "models" / "mine")
    write_model(tmp_path / "users" / "bob" / "models" / "his")
    return tmp_path


class Api:
    def __init__(self, client, user):
        _, raw = ApiToken.issue(user, "ci")
        self.client, self.auth = client, {"HTTP_AUTHORIZATION": f"Bearer {raw}"}

    def post_yaml(self, text: str, url: str = URL):
        return self.client.post(url, data=text, content_type="application/yaml", **self.auth)

    def post_json(self, url: str, body):
        return self.client.post(url, data=json.dumps(body), content_type="application/json", **self.auth)

    def get(self, url: str):
        return self.client.get(url, **self.auth)


@pytest.fixture
def alice_api(client, alice):
    return Api(client, alice)


@pytest.fixture
def bob_api(client, bob):
    return Api(client, bob)


def spec(source: str = "$HOME/common/hf/tiny-llama", suffix: str = "demo", preflight: str = "") -> str:
    return f"model_id: {suffix}\nmodel_source: {source}\n" + (f"preflight:\n{preflight}" if preflight else "")


def error_of(response) -> dict:
    assert response["Content-Type"] == "application/json"
    return response.json()["error"]


def deploy_run(model) -> PreflightRun:
    """The preflight a deploy runs for the model's current spec, as the worker runs it."""
    run = preflights.new_run(model.resolved_spec, trigger=PreflightRun.Trigger.DEPLOY, owner=model.owner, model=model)
    return preflights.execute(run, preflights.cached_runtime(), wait_for_secrets=False)


def force_url(run: PreflightRun) -> str:
    return f"{URL}/{run.pk}/force"


# --- running one --------------------------------------------------------------------------------------

def test_it_reports_on_a_spec_and_deploys_nothing(alice_api, alice, roots):
    response = alice_api.post_yaml(spec("$HOME/common/hf/skewed"))
    assert response.status_code == 200
    report = response.json()
    assert report["status"] == "fail" and report["passed"] is False and report["trigger"] == "api"
    assert report["folder"] == str(roots / "hf" / "skewed")
    versions = report["guards"][0]
    assert versions["guard"] == "versions" and versions["status"] == "fail" and versions["remedy"]
    [sha] = [e for e in versions["evidence"] if e["item"] == "tokenizer_sha"]
    assert sha["declared"] == WRONG_SHA and sha["effective"] != WRONG_SHA and sha["status"] == "fail"
    assert [g["guard"] for g in report["guards"]] == ["versions", "cuda", "vram", "prompts", "secrets"]

    run = PreflightRun.objects.get()
    assert report["id"] == run.pk and report["url"] == f"/gates/preflight/{run.pk}/"
    assert run.owner == alice and run.model is None and run.status == "fail"
    assert not ServeModel.objects.exists()  # a preflight is not a deploy

    again = alice_api.get(f"{URL}/{run.pk}")
    assert again.status_code == 200 and again.json() == report


def test_it_passes_a_clean_folder_of_the_users_own(alice_api, roots):
    report = alice_api.post_yaml(spec("$HOME/models/mine")).json()
    assert report["status"] in ("ok", "warn") and report["passed"] is True
    assert report["folder"] == str(roots / "users" / "alice" / "models" / "mine")


def test_a_spec_the_model_runs_is_reported_on_the_model_and_another_is_not(alice_api, alice, roots):
    model = create_model(alice, "demo")  # $HOME/common/hf/tiny-llama
    same = alice_api.post_yaml(spec(suffix="demo")).json()
    assert same["model_key"] == model.model_key and same["generation"] == model.generation
    # Trying another folder under the same name is a what-if, not the model's preflight.
    other = alice_api.post_yaml(spec("$HOME/common/hf/skewed", suffix="demo")).json()
    assert other["model_key"] is None
    assert PreflightRun.objects.get(pk=other["id"]).model is None
    assert model.preflight_runs.get().pk == same["id"]


def test_bad_yaml_is_a_400(alice_api, roots):
    response = alice_api.post_yaml("model_id: [demo\nmodel_source: x\n")
    assert response.status_code == 400
    assert error_of(response)["code"] == "bad_yaml"
    assert not PreflightRun.objects.exists()


def test_an_unknown_preflight_key_is_a_422_naming_it(alice_api, roots):
    response = alice_api.post_yaml(spec(preflight="  xyz: 1\n"))
    assert response.status_code == 422
    error = error_of(response)
    assert error["field"] == "preflight.xyz" and "xyz" in error["message"]
    assert not PreflightRun.objects.exists()


def test_a_folder_in_another_users_root_is_a_403(alice_api, roots):
    response = alice_api.post_yaml(spec(str(roots / "users" / "bob" / "models" / "his")))
    assert response.status_code == 403
    error = error_of(response)
    assert error["field"] == "model_source" and "another user's folder" in error["message"]
    assert not PreflightRun.objects.exists()


def test_a_folder_that_does_not_exist_is_a_422(alice_api, roots):
    response = alice_api.post_yaml(spec("$HOME/models/none"))
    assert response.status_code == 422 and error_of(response)["field"] == "model_source"


def test_anonymous_is_a_401(client, roots):
    response = client.post(URL, data=spec(), content_type="application/yaml")
    assert response.status_code == 401 and error_of(response)["code"] == "unauthenticated"
    assert client.get(f"{URL}/1").status_code == 401
    assert not PreflightRun.objects.exists()


def test_a_session_login_works_like_a_token(alice_client, roots):
    response = alice_client.post(URL, data=spec(), content_type="application/yaml")
    assert response.status_code == 200 and response.json()["passed"] is True


def test_another_users_report_is_a_404(alice_api, bob_api, roots):
    report = alice_api.post_yaml(spec("$HOME/common/hf/skewed")).json()
    response = bob_api.get(f"{URL}/{report['id']}")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    assert bob_api.get(f"{URL}/999999").status_code == 404
    forced = bob_api.post_json(f"{URL}/{report['id']}/force", {"reason": "bob says it is fine to ship"})
    assert forced.status_code == 404
    assert PreflightRun.objects.get(pk=report["id"]).forced_at is None


def test_an_admin_sees_any_report(admin, client, alice_api, roots):
    report = alice_api.post_yaml(spec()).json()
    assert Api(client, admin).get(f"{URL}/{report['id']}").status_code == 200


# --- forcing --------------------------------------------------------------------------------------------

def test_forcing_a_deploys_skew_records_who_and_why_and_audits_it(alice_api, alice, roots):
    model = create_model(alice, "demo", source="$HOME/common/hf/skewed")
    run = deploy_run(model)
    assert run.status == "fail" and run.can_be_forced

    reason = "tokenizer re-exported, same vocab; checked by hand"
    response = alice_api.post_json(force_url(run), {"reason": reason})
    assert response.status_code == 200
    body = response.json()
    assert body["forced"]["by"] == "alice" and body["forced"]["reason"] == reason
    assert body["passed"] is True and body["can_be_forced"] is False

    run.refresh_from_db()
    assert run.forced_by == alice and run.force_reason == reason and run.forced_at is not None and run.passed
    entry = AuditEntry.objects.get(action="preflight.force")
    assert entry.actor == alice and entry.detail == reason and model.model_key in entry.target
    assert model.events.filter(kind=EventKind.PREFLIGHT_FORCED).exists()

    again = alice_api.post_json(force_url(run), {"reason": reason})
    assert again.status_code == 409  # forced once: nothing left to force
    assert AuditEntry.objects.filter(action="preflight.force").count() == 1


def test_a_short_reason_is_a_422_on_reason(alice_api, alice, roots):
    run = deploy_run(create_model(alice, "demo", source="$HOME/common/hf/skewed"))
    for body in ({"reason": "ok"}, {}, {"reason": 42}):
        response = alice_api.post_json(force_url(run), body)
        assert response.status_code == 422 and error_of(response)["field"] == "reason", body
    run.refresh_from_db()
    assert run.forced_at is None and not AuditEntry.objects.filter(action="preflight.force").exists()


def test_a_prompt_failure_cannot_be_forced(alice_api, alice, roots):
    run = deploy_run(create_model(alice, "demo", source="$HOME/common/hf/unfilled"))
    assert run.status == "fail" and not run.can_be_forced
    response = alice_api.post_json(force_url(run), {"reason": "we will fill it in production later"})
    assert response.status_code == 409
    assert "prompt variables must be fixed" in error_of(response)["message"]
    run.refresh_from_db()
    assert run.forced_at is None


def test_a_run_of_no_model_cannot_be_forced(alice_api, roots):
    report = alice_api.post_yaml(spec("$HOME/common/hf/skewed")).json()
    assert report["guards"][0]["forceable"] is True  # a skew, but no deploy waits on it
    assert report["can_be_forced"] is False
    response = alice_api.post_json(f"{URL}/{report['id']}/force", {"reason": "tokenizer re-exported, same vocab"})
    assert response.status_code == 409 and "not a model's deploy" in error_of(response)["message"]
    assert PreflightRun.objects.get(pk=report["id"]).forced_at is None


def test_an_on_demand_run_of_a_model_cannot_be_forced(alice_api, alice, roots):
    """The deploy gate reads the deploy's own preflight: forcing an on-demand run would let nothing through."""
    model = create_model(alice, "demo", source="$HOME/common/hf/skewed")
    deployed = deploy_run(model)
    report = alice_api.post_yaml(spec("$HOME/common/hf/skewed", suffix="demo")).json()
    assert report["model_key"] == model.model_key and report["can_be_forced"] is False
    assert alice_api.get(f"{URL}/{deployed.pk}").json()["can_be_forced"] is True
    response = alice_api.post_json(f"{URL}/{report['id']}/force", {"reason": "tokenizer re-exported, same vocab"})
    assert response.status_code == 409
    assert f"force the preflight the deploy ran, preflight #{deployed.pk}" in error_of(response)["message"]
    assert not AuditEntry.objects.filter(action="preflight.force").exists()


def test_a_run_that_passed_cannot_be_forced(alice_api, alice, roots):
    run = deploy_run(create_model(alice, "demo"))
    assert run.passed
    response = alice_api.post_json(force_url(run), {"reason": "belt and braces, nothing failed"})
    assert response.status_code == 409 and "nothing to force" in error_of(response)["message"]
