"""The serving pages as a person uses them without JavaScript: plain GETs and form posts, with the
response checked for what a person reads and the database checked for what happened."""
from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dashboard.models import AuditEntry
from serving import deployments
from serving.choices import EventKind, State
from serving.forms import EXAMPLE_SPEC
from serving.models import ServeEvent, ServeModel, ServeRevision
from serving.reconciler import reconcile
from tests.serving.factories import create_model, spec

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "fake_serve")]

API = "/api/v2/serve/models"
VOID = {"input", "br", "img", "meta", "link", "hr", "source", "wbr", "col", "area", "base"}


class _Element(HTMLParser):
    """The text and attributes of the element with one id, as a browser would show them."""

    def __init__(self, element_id: str):
        super().__init__(convert_charrefs=True)
        self.element_id, self.depth, self.parts, self.attrs, self.found = element_id, 0, [], {}, False

    def handle_starttag(self, tag, attrs):
        if self.depth:
            self.depth += tag not in VOID
        elif not self.found and dict(attrs).get("id") == self.element_id:
            self.found, self.attrs, self.depth = True, dict(attrs), int(tag not in VOID)

    def handle_endtag(self, tag):
        if self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.parts.append(data)


def element(html: str, element_id: str) -> _Element:
    parser = _Element(element_id)
    parser.feed(html)
    assert parser.found, f"no element #{element_id} on the page"
    return parser


def text_of(html: str, element_id: str) -> str:
    return "".join(element(html, element_id).parts)


def value_of(html: str, element_id: str) -> str:
    return element(html, element_id).attrs.get("value", "")


def errors_on(html: str) -> list[str]:
    return [unescape(m) for m in re.findall(r'class="field-error"[^>]*>(.*?)</p>', html, re.S)]


def api_error(client, text: str) -> dict:
    """What POST /api/v2/serve/models says about the same spec: the page must say the same."""
    response = client.post(API, data=text, content_type="application/yaml")
    assert response.status_code >= 400
    return {"status": response.status_code, **response.json()["error"]}


def form_post(**fields) -> dict:
    return {"mode": "form", "model_id": "", "model_source": "", "num_replicas": "1", "gpus_per_replica": "", "engine_options": "", "spec_yaml": EXAMPLE_SPEC, **fields}


def yaml_post(text: str) -> dict:
    return {**form_post(), "mode": "yaml", "spec_yaml": text}


def settle(fake) -> None:
    """Two reconcile ticks against the fake Serve: apply (DEPLOYING), then observe (RUNNING)."""
    reconcile(fake)
    reconcile(fake)


# --- new ---------------------------------------------------------------------------------------
def test_the_new_page_explains_the_macros_with_this_users_real_folders(alice_client, roots):
    page = alice_client.get("/serving/new").text
    assert str(roots / "hf") in page and str(roots / "users" / "alice") in page and str(roots / "datasets") in page
    assert "$HOME/common/hf" in page and "$HOME/common/datasets" in page
    assert "$HOME/common/hf/tiny-llama" in page  # the shared folder's models are suggested
    assert "model_id: demo\nmodel_source: $HOME/common/hf/tiny-llama\nnum_replicas: 1" in text_of(page, "id_spec_yaml")


def test_the_form_creates_the_model_and_redirects_to_its_page(alice_client, alice, roots):
    response = alice_client.post("/serving/new", form_post(model_id="demo", model_source="$HOME/common/hf/tiny-llama", num_replicas="2", gpus_per_replica="0", engine_options="max_model_len=2048\nenforce_eager=true"))

    model = ServeModel.objects.get(owner=alice, suffix="demo")
    assert response.status_code == 303 and response["Location"] == f"/serving/{model.model_key}"
    assert model.state == State.QUEUED and model.num_replicas == 2 and model.gpus_per_replica == 0
    assert model.resolved_spec["engine_kwargs"] == {"max_model_len": 2048, "enforce_eager": True}
    assert model.resolved_spec["model_source"] == str(roots / "hf" / "tiny-llama")
    assert model.events.get().kind == EventKind.CREATED
    page = alice_client.get(response["Location"]).text
    assert f"Created {model.model_id}" in page


def test_the_yaml_tabs_example_deploys_the_demo_model_as_it_is(alice_client, alice, roots):
    response = alice_client.post("/serving/new", yaml_post(EXAMPLE_SPEC))
    model = ServeModel.objects.get(owner=alice)
    assert response.status_code == 303 and response["Location"] == f"/serving/{model.model_key}"
    assert model.suffix == "demo" and model.num_replicas == 1
    assert model.resolved_spec["model_source"] == str(roots / "hf" / "tiny-llama")
    assert model.spec_yaml == EXAMPLE_SPEC  # stored as typed, comments and all


def test_submitting_a_suffix_again_updates_that_model(alice_client, alice):
    model = create_model(alice, "demo")
    response = alice_client.post("/serving/new", form_post(model_id="demo", model_source="$HOME/common/hf/other", num_replicas="2"))
    assert response.status_code == 303 and response["Location"] == f"/serving/{model.model_key}"
    model.refresh_from_db()
    assert model.generation == 2 and model.num_replicas == 2 and model.resolved_spec["model_source"].endswith("/hf/other")
    assert ServeModel.objects.count() == 1


INVALID = {
    "bad suffix": ("form", {"model_id": "bad name!", "model_source": "$HOME/common/hf/tiny-llama"}, "model_id", 422, "model_id must be a name of"),
    "replica typo": ("yaml", "model_id: demo\nmodel_source: $HOME/common/hf/tiny-llama\nreplica: 2\n", "spec_yaml", 422, "Did you mean 'num_replicas'?"),
    "trust_remote_code": ("form", {"model_id": "demo", "model_source": "$HOME/common/hf/tiny-llama", "engine_options": "trust_remote_code=true"}, "engine_options", 422, "trust_remote_code is not allowed"),
    "engine option out of range": ("form", {"model_id": "demo", "model_source": "$HOME/common/hf/tiny-llama", "engine_options": '{"gpu_memory_utilization": 1.5}'}, "engine_options", 422, "engine_kwargs.gpu_memory_utilization must be"),
    "path outside the roots": ("form", {"model_id": "demo", "model_source": "/etc"}, "model_source", 403, "outside the folders you may serve from"),
    "another user's folder": ("form", {"model_id": "demo", "model_source": "$HOME/../bob/models/his"}, "model_source", 403, "'..'"),
    "replicas not a number": ("form", {"model_id": "demo", "model_source": "$HOME/common/hf/tiny-llama", "num_replicas": "two"}, "num_replicas", 422, "got 'two'"),
    "unparsable yaml": ("yaml", "model_id: [demo\nmodel_source: x\n", "spec_yaml", 400, "not valid YAML at line"),
}


@pytest.mark.parametrize("mode,typed,field,status,words", INVALID.values(), ids=INVALID.keys())
def test_invalid_input_gets_the_apis_words_beside_the_field_and_keeps_what_was_typed(alice_client, mode, typed, field, status, words):
    data = form_post(**typed) if mode == "form" else yaml_post(typed)
    response = alice_client.post("/serving/new", data)

    page = response.text
    assert response.status_code == status
    assert errors_on(page) == [text_of(page, f"id_{field}_error")]  # one message, beside that field
    message = text_of(page, f"field-{field}")
    assert words in message
    # The API refuses the same spec with the same status and the same words.
    api_text = typed if mode == "yaml" else _as_yaml(typed)
    assert api_error(alice_client, api_text)["message"] in message
    assert api_error(alice_client, api_text)["status"] == status
    # Everything typed comes back, in both tabs.
    if mode == "yaml":
        assert text_of(page, "id_spec_yaml").strip("\n") == typed.strip("\n")
        assert "open" in element(page, "yaml-tab").attrs  # the YAML tab stays open
    else:
        for name, value in typed.items():
            shown = text_of(page, f"id_{name}") if name == "engine_options" else value_of(page, f"id_{name}")
            assert shown.strip("\n") == value
        assert text_of(page, "id_spec_yaml") == "\n" + EXAMPLE_SPEC or text_of(page, "id_spec_yaml") == EXAMPLE_SPEC
    assert not ServeModel.objects.exists() and not ServeEvent.objects.exists()


def _as_yaml(fields: dict) -> str:
    from serving.forms import NewModelForm

    return NewModelForm(form_post(**fields)).spec_text()


@pytest.mark.parametrize("typed", [
    "max_model_len=2048\ndtype=bfloat16\nenforce_eager=true",
    "max_model_len: 2048\ndtype: bfloat16\nenforce_eager: true",
    '{"max_model_len": 2048, "dtype": "bfloat16", "enforce_eager": true}',
], ids=["key=value", "yaml", "json"])
def test_engine_options_can_be_written_three_ways(alice_client, alice, typed):
    response = alice_client.post("/serving/new", form_post(model_id="demo", model_source="$HOME/common/hf/tiny-llama", engine_options=typed))
    assert response.status_code == 303
    engine_kwargs = ServeModel.objects.get(owner=alice).resolved_spec["engine_kwargs"]
    assert engine_kwargs == {"max_model_len": 2048, "dtype": "bfloat16", "enforce_eager": True}


@pytest.mark.parametrize("typed,words", [
    ("seed=1\nseed=2", "Engine option 'seed' is given twice."),
    ("seed: [1", "Engine options must be key=value lines or a YAML/JSON mapping"),
    ("- max_model_len", "engine_kwargs must be a mapping of engine options"),
])
def test_engine_options_that_are_not_a_mapping_are_refused_beside_them(alice_client, typed, words):
    response = alice_client.post("/serving/new", form_post(model_id="demo", model_source="$HOME/common/hf/tiny-llama", engine_options=typed))
    assert response.status_code in (400, 422)
    assert words in text_of(response.text, "field-engine_options")
    assert text_of(response.text, "id_engine_options").strip("\n") == typed
    assert not ServeModel.objects.exists()


def test_a_change_to_a_model_being_deleted_is_a_409_with_the_reason(alice_client, alice):
    model = create_model(alice, "demo")
    deployments.request_delete(model, alice)
    response = alice_client.post("/serving/new", form_post(model_id="demo", model_source="$HOME/common/hf/tiny-llama"))
    assert response.status_code == 409
    assert "is being deleted" in response.text
    model.refresh_from_db()
    assert model.state == State.DELETING and model.generation == 1


# --- preview -----------------------------------------------------------------------------------
@pytest.mark.usefixtures("gpu_engine")
@pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "no-js"])
def test_preview_shows_the_resolved_id_path_and_gpus_and_creates_nothing(alice_client, roots, htmx):
    data = {**form_post(model_id="demo", model_source="$HOME/common/hf/tiny-llama", num_replicas="3", gpus_per_replica="2"), "preview": "form"}
    del data["mode"]
    if htmx:
        response = alice_client.post("/serving/new/preview", data, HTTP_HX_REQUEST="true")
    else:
        response = alice_client.post("/serving/new", data)

    assert response.status_code == 200
    page = response.text
    assert ("<html" in page) is not htmx  # htmx gets the form alone, to swap in place
    assert re.fullmatch(r"alice-\d{12}-demo", text_of(page, "preview-model-id"))
    assert str(roots / "hf" / "tiny-llama") in text_of(page, "preview-resolved")
    assert text_of(page, "preview-gpus").startswith("6 (3 replica(s) × 2 GPU(s)")
    assert value_of(page, "id_num_replicas") == "3"  # the form stays as typed
    assert not ServeModel.objects.exists() and not ServeEvent.objects.exists()


def test_previewing_an_existing_suffix_shows_its_id_and_says_it_updates(alice_client, alice):
    model = create_model(alice, "demo")
    response = alice_client.post("/serving/new/preview", {**yaml_post(spec("demo", num_replicas=2)), "preview": "yaml"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert text_of(response.text, "preview-model-id") == model.model_id
    assert "updates it to generation 2" in response.text
    model.refresh_from_db()
    assert model.generation == 1 and model.num_replicas == 1


def test_a_refused_preview_shows_the_reason_beside_the_field_with_its_status(alice_client):
    data = {**form_post(model_id="demo", model_source="/etc"), "preview": "form"}
    response = alice_client.post("/serving/new/preview", data, HTTP_HX_REQUEST="true")
    assert response.status_code == 403
    assert "outside the folders you may serve from" in text_of(response.text, "field-model_source")
    assert not ServeModel.objects.exists()


# --- detail ------------------------------------------------------------------------------------
def test_another_users_model_is_a_404_on_every_page_and_an_admin_sees_it(client, alice, bob, admin, fake_serve):
    # Two real revisions, so /diff and /rollback have something to show: each 404 below is about
    # whose model it is, never about a revision that does not exist.
    model = _two_revisions(alice, fake_serve)
    pages = ("", "/delete", "/diff?a=1&b=2", "/rollback/1")
    client.force_login(alice)
    for url in pages:
        assert client.get(f"/serving/{model.model_key}{url}").status_code == 200, url
    events = model.events.count()

    client.force_login(bob)
    for url in pages:
        assert client.get(f"/serving/{model.model_key}{url}").status_code == 404, url
    assert client.post(f"/serving/{model.model_key}/delete", {"confirm": model.model_id}).status_code == 404
    assert client.post(f"/serving/{model.model_key}/scale", {"num_replicas": "0"}).status_code == 404
    assert client.post(f"/serving/{model.model_key}/rollback/1").status_code == 404
    model.refresh_from_db()
    assert model.state == State.RUNNING and model.num_replicas == 3 and model.generation == 2
    assert model.events.count() == events and not AuditEntry.objects.filter(actor=bob).exists()
    client.force_login(alice)
    assert client.post(f"/serving/{model.model_key}/rollback/1").status_code == 303
    model.refresh_from_db()
    assert model.generation == 3 and model.num_replicas == 1

    client.force_login(admin)
    page = client.get(f"/serving/{model.model_key}")
    assert page.status_code == 200 and "Owner <strong>alice</strong>" in page.text


def test_the_call_examples_use_this_installations_base_url_and_the_models_id(alice_client, alice, settings):
    settings.GANTRY_SERVE_HOST, settings.GANTRY_SERVE_PORT = "gpu-box.internal", 8123
    model = create_model(alice, "demo")
    page = alice_client.get(f"/serving/{model.model_key}").text

    python = unescape(text_of(page, "example-python"))
    assert 'client = OpenAI(base_url="http://gpu-box.internal:8123/v1", api_key="not-needed")' in python
    assert f'model="{model.model_id}"' in python and python.rstrip().endswith("print(reply.choices[0].message.content)")
    compile(python, "example.py", "exec")
    compile(unescape(text_of(page, "example-stream")), "stream.py", "exec")
    curl = unescape(text_of(page, "example-curl"))
    assert curl.startswith("curl http://gpu-box.internal:8123/v1/chat/completions") and f'"model": "{model.model_id}"' in curl
    assert "The inference endpoint has no authentication." in page


def test_the_detail_shows_the_resolved_spec_and_serves_replicas(alice_client, alice, fake_serve, roots):
    model = create_model(alice, "demo", num_replicas=2)
    settle(fake_serve)
    page = alice_client.get(f"/serving/{model.model_key}").text
    resolved = text_of(page, "resolved-spec")
    assert resolved.startswith(f"model_id: {model.model_id}\n") and f"model_source: {roots / 'hf' / 'tiny-llama'}" in resolved
    assert 'data-state="RUNNING"' in page.split('id="live-status"')[1].split("</section>")[0]
    assert "RUNNING: 2" in text_of(page, "replicas")


def test_a_failed_model_shows_why_beside_its_badge(alice_client, alice, fake_serve):
    model = create_model(alice, "demo")
    fake_serve.fail_apply[model.model_key] = "CUDA out of memory"
    reconcile(fake_serve)
    model.refresh_from_db()
    assert model.state == State.FAILED
    page = alice_client.get(f"/serving/{model.model_key}").text
    assert "CUDA out of memory" in text_of(page, "state-reason")


@pytest.mark.usefixtures("gpu_engine")
def test_a_queued_model_shows_what_it_waits_for(alice_client, alice, fake_serve):
    fake_serve.total_gpus = 1
    model = create_model(alice, "big", num_replicas=2, gpus_per_replica=1)
    reconcile(fake_serve)
    model.refresh_from_db()
    assert model.state == State.QUEUED and model.deadline is not None
    reason = text_of(alice_client.get(f"/serving/{model.model_key}").text, "state-reason")
    assert reason.startswith("Needs 2 GPU(s)") and "Waiting for GPUs" in reason


def test_when_serve_cannot_be_reached_the_page_says_so_plainly(alice_client, alice, fake_serve):
    model = create_model(alice, "demo")
    fake_serve.unavailable = True
    reconcile(fake_serve)
    response = alice_client.get(f"/serving/{model.model_key}")
    assert response.status_code == 200
    said = text_of(response.text, "serve-error")
    assert said.startswith("Serve's status is unavailable") and "connection refused (fake)" in said


def test_a_status_serve_stopped_answering_for_is_shown_as_stale_with_its_age(alice_client, alice, fake_serve):
    model = create_model(alice, "demo")
    settle(fake_serve)
    fake_serve.unavailable = True
    reconcile(fake_serve)
    page = alice_client.get(f"/serving/{model.model_key}").text
    assert text_of(page, "serve-as-of").startswith("as of ") and "s ago" in text_of(page, "serve-as-of")
    said = text_of(page, "serve-error")
    assert said.startswith("Serve's status is stale") and "connection refused (fake)" in said
    assert "RUNNING: 1" in text_of(page, "replicas")  # what Serve said last, under the warning


def _model_in(state: str, alice, fake_serve) -> ServeModel:
    model = create_model(alice, "demo")
    if state == State.DEPLOYING:
        fake_serve.deploy_reads = 5
        reconcile(fake_serve)
    elif state == State.RUNNING:
        settle(fake_serve)
    elif state == State.FAILED:
        fake_serve.fail_apply[model.model_key] = "boom"
        reconcile(fake_serve)
    elif state == State.DELETED:
        deployments.request_delete(model, alice)
        reconcile(fake_serve)
    model.refresh_from_db()
    assert model.state == state
    return model


@pytest.mark.parametrize("state,polls", [("QUEUED", True), ("DEPLOYING", True), ("RUNNING", False), ("FAILED", False), ("DELETED", False)])
def test_the_live_part_polls_only_until_the_state_is_terminal(alice_client, alice, fake_serve, state, polls):
    model = _model_in(state, alice, fake_serve)
    partial = alice_client.get(f"/serving/{model.model_key}", HTTP_HX_REQUEST="true")
    assert partial.status_code == 200 and "<html" not in partial.text
    assert 'id="live-status"' in partial.text and 'id="live-events"' in partial.text
    assert ('hx-trigger="every 2s"' in partial.text) is polls
    assert ('hx-trigger="every 2s"' in alice_client.get(f"/serving/{model.model_key}").text) is polls


def test_events_are_paged_fifty_at_a_time_newest_first(alice_client, alice):
    model = create_model(alice, "demo")
    for i in range(60):
        model.log(EventKind.SERVE_STATUS, f"status {i:02d}")
    page = alice_client.get(f"/serving/{model.model_key}").text
    shown = re.findall(r"status (\d\d)", text_of(page, "live-events"))
    assert shown == [f"{i:02d}" for i in range(59, 9, -1)]
    older = re.search(r'href="([^"]*events_before=\d+)"', page).group(1)
    rest = alice_client.get(unescape(older), HTTP_HX_REQUEST="true").text
    assert re.findall(r"status (\d\d)", rest) == [f"{i:02d}" for i in range(9, -1, -1)] and "CREATED" in rest


def test_the_detail_costs_the_same_queries_for_5_or_60_events(alice_client, alice, fake_serve):
    model = create_model(alice, "demo")
    settle(fake_serve)  # a revision too, so its table is on the page

    def count(**headers) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert alice_client.get(f"/serving/{model.model_key}", **headers).status_code == 200
        return len(captured)

    def top_up(total: int) -> None:
        while model.events.count() < total:
            model.log(EventKind.SERVE_STATUS, "status")

    top_up(5)
    assert model.events.count() == 5 and model.revisions.count() == 1
    few, few_live = count(), count(HTTP_HX_REQUEST="true")
    top_up(60)
    assert count() == few and count(HTTP_HX_REQUEST="true") == few_live


# --- scale, delete, rollback without JavaScript -------------------------------------------------
def test_scale_posts_change_the_replicas_and_redirect(alice_client, alice):
    model = create_model(alice, "demo")
    response = alice_client.post(f"/serving/{model.model_key}/scale", {"num_replicas": "3"})
    assert response.status_code == 303 and response["Location"] == f"/serving/{model.model_key}"
    model.refresh_from_db()
    assert model.num_replicas == 3 and model.generation == 2
    event = model.events.first()
    assert event.kind == EventKind.SCALED and event.actor_name == "alice"


def test_a_bad_replica_count_is_refused_beside_the_field(alice_client, alice):
    model = create_model(alice, "demo")
    response = alice_client.post(f"/serving/{model.model_key}/scale", {"num_replicas": "65"})
    assert response.status_code == 422
    assert "num_replicas must be a whole number from 0 to 64" in text_of(response.text, "field-num_replicas")
    assert value_of(response.text, "id_num_replicas") == "65"
    model.refresh_from_db()
    assert model.num_replicas == 1 and model.generation == 1


def test_scaling_a_deleted_model_is_a_409(alice_client, alice, fake_serve):
    model = _model_in(State.DELETED, alice, fake_serve)
    response = alice_client.post(f"/serving/{model.model_key}/scale", {"num_replicas": "2"})
    assert response.status_code == 409 and "cannot be scaled" in response.text
    model.refresh_from_db()
    assert model.num_replicas == 1


def test_delete_asks_for_the_typed_id_then_deletes(alice_client, alice):
    model = create_model(alice, "demo")
    confirm = alice_client.get(f"/serving/{model.model_key}/delete")
    assert confirm.status_code == 200 and f"Type <code>{model.model_id}</code> to confirm" in confirm.text
    dialog = alice_client.get(f"/serving/{model.model_key}/delete", HTTP_HX_REQUEST="true")
    assert 'role="alertdialog"' in dialog.text and "<html" not in dialog.text

    response = alice_client.post(f"/serving/{model.model_key}/delete", {"confirm": model.model_id})
    assert response.status_code == 303 and response["Location"] == f"/serving/{model.model_key}"
    model.refresh_from_db()
    assert model.state == State.DELETING
    assert model.events.first().kind == EventKind.DELETE_REQUESTED
    assert AuditEntry.objects.filter(action="serve.delete", actor=alice).exists()


@pytest.mark.parametrize("typed", ["", "demo", "alice-demo", "wrong"])
def test_delete_with_the_wrong_typed_id_changes_nothing(alice_client, alice, typed):
    model = create_model(alice, "demo")
    response = alice_client.post(f"/serving/{model.model_key}/delete", {"confirm": typed})
    assert response.status_code == 422
    assert f"Type {model.model_id} exactly" in response.text
    assert value_of(response.text, "confirm-text") == typed
    model.refresh_from_db()
    assert model.state == State.QUEUED
    assert not model.events.filter(kind=EventKind.DELETE_REQUESTED).exists()
    assert not AuditEntry.objects.filter(action="serve.delete").exists()


def test_deleting_a_deleted_model_is_a_409(alice_client, alice, fake_serve):
    model = _model_in(State.DELETED, alice, fake_serve)
    response = alice_client.post(f"/serving/{model.model_key}/delete", {"confirm": model.model_id})
    assert response.status_code == 409 and "already deleted" in text_of(response.text, "refused")


def _two_revisions(alice, fake_serve) -> ServeModel:
    model = create_model(alice, "demo")
    settle(fake_serve)
    deployments.scale(model, 3, alice)
    settle(fake_serve)
    model.refresh_from_db()
    assert list(model.revisions.values_list("number", flat=True)) == [2, 1] and model.state == State.RUNNING
    return model


def test_rollback_confirms_then_sets_the_earlier_spec_back(alice_client, alice, fake_serve):
    model = _two_revisions(alice, fake_serve)
    page = alice_client.get(f"/serving/{model.model_key}").text
    assert f"/serving/{model.model_key}/rollback/1" in page
    assert f"/serving/{model.model_key}/rollback/2" not in page  # that is the current spec already

    confirm = alice_client.get(f"/serving/{model.model_key}/rollback/1")
    assert confirm.status_code == 200 and "Roll back to revision 1" in confirm.text
    response = alice_client.post(f"/serving/{model.model_key}/rollback/1")
    assert response.status_code == 303 and response["Location"] == f"/serving/{model.model_key}"
    model.refresh_from_db()
    assert model.num_replicas == 1 and model.change_reason == "rollback to revision 1"
    assert model.events.first().kind == EventKind.ROLLBACK
    assert AuditEntry.objects.filter(action="serve.rollback", actor=alice).exists()


def test_rollback_to_a_revision_that_does_not_exist_is_a_404(alice_client, alice, fake_serve):
    model = _two_revisions(alice, fake_serve)
    assert alice_client.post(f"/serving/{model.model_key}/rollback/9").status_code == 404
    model.refresh_from_db()
    assert model.num_replicas == 3 and not model.events.filter(kind=EventKind.ROLLBACK).exists()


def test_the_diff_marks_the_changed_lines(alice_client, alice, fake_serve):
    model = _two_revisions(alice, fake_serve)
    response = alice_client.get(f"/serving/{model.model_key}/diff", {"a": 1, "b": 2})
    assert response.status_code == 200
    assert '<span class="del">-num_replicas: 1</span>' in response.text
    assert '<span class="add">+num_replicas: 3</span>' in response.text
    assert f'<span class="same"> model_id: {model.model_id}</span>' in response.text
    assert alice_client.get(f"/serving/{model.model_key}/diff", {"a": 1, "b": 7}).status_code == 404
    assert alice_client.get(f"/serving/{model.model_key}/diff", {"a": "x"}).status_code == 400
    assert ServeRevision.objects.count() == 2


# --- cluster -----------------------------------------------------------------------------------
def test_the_cluster_page_is_for_admins(alice_client):
    response = alice_client.get("/serving/cluster")
    assert response.status_code == 403 and "for administrators" in response.text


@pytest.mark.usefixtures("gpu_engine")
def test_admins_see_applications_gpus_waiting_models_and_unknown_apps(admin_client, alice, fake_serve):
    running = create_model(alice, "small", num_replicas=2, gpus_per_replica=1)
    settle(fake_serve)
    waiting = create_model(alice, "huge", num_replicas=8, gpus_per_replica=1)
    reconcile(fake_serve)
    fake_serve.apps["leftover-experiment"] = fake_serve._app({}, 1, "RUNNING", 0)
    reconcile(fake_serve)  # the page shows the snapshot the reconciler takes at the start of a tick
    resources = fake_serve.cluster_resources()

    page = admin_client.get("/serving/cluster").text
    assert text_of(page, "gpus-total") == "8" and text_of(page, "gpus-free") == f"{resources.free_gpus:g}" == "6"
    assert "leftover-experiment" in text_of(page, "unknown")
    assert "gantry-router" not in text_of(page, "unknown") and running.model_key not in text_of(page, "unknown")
    assert running.model_key in text_of(page, "applications") and "the router" in text_of(page, "applications")
    assert waiting.model_id in text_of(page, "pending") and running.model_id not in text_of(page, "pending")
    assert "Needs 8 GPU(s)" in text_of(page, "pending")


def test_the_cluster_page_renders_without_serve(admin_client, alice, fake_serve):
    model = create_model(alice, "demo")
    fake_serve.unavailable = True
    reconcile(fake_serve)
    response = admin_client.get("/serving/cluster")
    assert response.status_code == 200
    assert "connection refused (fake)" in text_of(response.text, "serve-unavailable")
    assert model.state == State.QUEUED


# --- list and home -----------------------------------------------------------------------------
def test_the_list_links_to_new_and_admins_to_the_cluster(client, alice, admin):
    model = create_model(alice, "demo")
    client.force_login(alice)
    page = client.get("/serving/").text
    assert 'href="/serving/new"' in page and 'href="/serving/cluster"' not in page
    assert f'href="/serving/{model.model_key}"' in page
    client.force_login(admin)
    assert 'href="/serving/cluster"' in client.get("/serving/").text


def test_home_shows_my_models_by_state_and_my_recent_events(client, alice, bob, admin):
    mine = create_model(alice, "demo")
    for i in range(12):
        mine.log(EventKind.SERVE_STATUS, f"mine {i}")
    theirs = create_model(bob, "secret")
    client.force_login(alice)
    page = client.get("/").text
    assert 'href="/serving/?state=QUEUED"' in page and 'href="/serving/new"' in page
    counts = re.findall(r'data-state="(\w+)">\w+</span>\s*(\d+)', page)
    assert ("QUEUED", "1") in counts and ("RUNNING", "0") in counts
    recent = re.findall(r"mine (\d+)", page)
    assert recent == [str(i) for i in range(11, 1, -1)]  # ten, newest first
    assert theirs.model_id not in page

    client.force_login(admin)
    page = client.get("/").text
    assert ("QUEUED", "2") in re.findall(r'data-state="(\w+)">\w+</span>\s*(\d+)', page)
    assert theirs.model_id in page


def test_home_costs_the_same_queries_for_one_model_or_twenty(alice_client, alice):
    create_model(alice, "m0")

    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert alice_client.get("/").status_code == 200
        return len(captured)

    one = count()
    for i in range(1, 20):
        create_model(alice, f"m{i}").log(EventKind.SERVE_STATUS, "x")
    assert count() == one
