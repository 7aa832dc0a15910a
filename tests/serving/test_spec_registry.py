"""`model_source: models:/<name>@<alias>`: a spec deploys what the registry (a real MLflow, sqlite
backend) says. The version is resolved and downloaded when the spec is posted; the stored spec
keeps the user's `models:/…` text and the resolved spec the local copy, which re-applies check from
its marker alone, without MLflow."""
from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.models import ApiToken
from gates import registry
from serving.models import ServeModel
from serving.reconciler import reconcile
from serving.spec import Roots, SpecError, resolve_model_source
from tests.gates.mlflow_fixtures import model_folder, sqlite_backend, sqlite_registry  # noqa: F401 — fixtures
from tests.ray_cluster import free_port
from tests.serving.factories import spec
from tests.serving.test_pages import errors_on, form_post, text_of

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "fake_serve")]

URL = "/api/v2/serve/models"
EVIDENCE = {"baseline_sha": "b" * 40}


@pytest.fixture
def post(client, alice):
    _, raw = ApiToken.issue(alice, "ci")
    return lambda text: client.post(URL, data=text, content_type="application/yaml", HTTP_AUTHORIZATION=f"Bearer {raw}")


@pytest.fixture
def promoted(sqlite_registry, model_folder) -> str:
    """A model with version 1 behind `production`, promoted the way a gate run does."""
    name = sqlite_registry.unique_name()
    registry.promote(name, registry.log_candidate(model_folder), "model", "v1.0.0", gate_run_id=1, evidence=EVIDENCE)
    return name


def reapply_check(model: ServeModel) -> str:
    # What the reconciler's check_source does before every apply (scale, drift repair, rollback).
    return resolve_model_source(model.resolved_spec["model_source"], username=model.owner.username, roots=Roots.from_settings())


def test_a_registry_alias_deploys_the_local_copy_of_that_version(post, promoted, settings, fake_serve):
    response = post(spec("reg", source=f"models:/{promoted}@production"))
    assert response.status_code == 202, response.content
    model = ServeModel.objects.get(model_key=response.json()["model_key"])
    copy = Path(settings.GANTRY_REGISTRY_DIR) / promoted / "1"
    assert (copy / "config.json").is_file()
    assert f"model_source: models:/{promoted}@production" in model.spec_yaml  # what the user wrote
    assert model.resolved_spec["model_source"] == str(copy)  # what is served
    assert model.events.get().message.endswith(f"from {copy}.")  # the event names name and version

    # Re-applies need no MLflow: with it gone, the reconciler still deploys the copy.
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"
    assert reapply_check(model) == str(copy)
    reconcile(fake_serve)
    applied = [config for kind, key, config, _ in fake_serve.calls if kind == "apply" and key == model.model_key]
    assert [c["model_loading_config"]["model_source"] for c in applied] == [str(copy)]


def test_an_unknown_alias_is_422_on_model_source_with_the_reason(post, promoted):
    response = post(spec("reg", source=f"models:/{promoted}@staging"))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "model_source"
    assert f"has no alias 'staging' (its aliases: production → version 1)" in error["message"]
    assert not ServeModel.objects.exists()


def test_the_new_model_page_shows_the_registry_reason_beside_model_source(alice_client, promoted):
    response = alice_client.post("/serving/new", form_post(model_id="reg", model_source=f"models:/{promoted}@staging"))
    assert response.status_code == 422
    page = response.text
    assert errors_on(page) == [text_of(page, "id_model_source_error")]
    assert "has no alias 'staging'" in text_of(page, "field-model_source")
    assert not ServeModel.objects.exists()


def test_an_unknown_model_is_422_too(post, sqlite_registry):
    response = post(spec("reg", source="models:/nobody-registered-this@production"))
    assert response.status_code == 422
    assert "has no model named nobody-registered-this" in response.json()["error"]["message"]


def test_an_unreachable_registry_is_503_and_creates_nothing(post, settings):
    settings.MLFLOW_TRACKING_URI = uri = f"http://127.0.0.1:{free_port()}"
    response = post(spec("reg", source="models:/tiny@production"))
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "registry_unavailable" and error["field"] == "model_source"
    assert error["message"] == f"The MLflow registry at {uri} cannot be reached (connection refused); try again when it is up."
    assert not ServeModel.objects.exists()


def test_prod_refuses_a_dev_version_when_posted_and_when_reapplied(post, sqlite_registry, model_folder, settings):
    name = sqlite_registry.unique_name()
    registry.register_dev(registry.log_candidate(model_folder), name, "model", "v0.0.0-dev.1", user="alice")
    in_dev = post(spec("dev-one", source=f"models:/{name}@dev"))
    assert in_dev.status_code == 202  # outside prod the escape hatch deploys
    model = ServeModel.objects.get()

    settings.GANTRY_ENV = "prod"
    with pytest.raises(SpecError) as reapplied:
        reapply_check(model)
    assert reapplied.value.status == 422 and "never deploys v0.0.0-dev" in reapplied.value.message
    posted = post(spec("dev-two", source=f"models:/{name}@dev"))
    assert posted.status_code == 422 and "a development version" in posted.json()["error"]["message"]


def test_a_folder_in_the_registry_dir_that_gantry_did_not_write_is_refused(post, sqlite_registry, settings):
    planted = Path(settings.GANTRY_REGISTRY_DIR) / "tiny" / "1"
    planted.mkdir(parents=True)
    (planted / "config.json").write_text("{}")
    response = post(spec("reg", source=str(planted)))
    assert response.status_code == 422
    assert "is not a copy Gantry made of a registry version" in response.json()["error"]["message"]


def test_the_model_page_names_the_registry_version_and_warns_loudly_about_a_dev_one(post, alice_client, promoted, sqlite_registry, model_folder):
    gated = post(spec("gated", source=f"models:/{promoted}@production")).json()["model_key"]
    page = alice_client.get(f"/serving/{gated}").content.decode()
    assert f"models:/{promoted}/1" in page and "v1.0.0" in page and 'id="dev-version"' not in page

    name = sqlite_registry.unique_name()
    registry.register_dev(registry.log_candidate(model_folder), name, "model", "v0.0.0-dev.7", user="alice")
    dev = post(spec("dev-page", source=f"models:/{name}@dev")).json()["model_key"]
    page = alice_client.get(f"/serving/{dev}").content.decode()
    assert 'id="dev-version"' in page and "Not gated" in page and "v0.0.0-dev.7" in page
