"""A person in a real headless Chromium deploys, watches, deletes and inspects models on the serving
pages, with and without JavaScript. Serve is the fake one from the serving tests (the real engine's
browser flow is tests/integration's): no Celery worker runs here, so the tests tick the reconciler
themselves, as the worker would after each change."""
from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from serving import deployments
from serving.choices import State
from serving.models import ServeModel
from serving.reconciler import reconcile
from tests.conftest import login_in_browser
from tests.serving.conftest import fake_serve, gpu_engine, roots  # noqa: F401 — fixtures used below
from tests.serving.factories import create_model

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("roots", "fake_serve")]


@pytest.fixture(autouse=True)
def no_worker(monkeypatch):
    # Nothing consumes the broker in these tests; the test runs each reconcile tick itself.
    monkeypatch.setattr(deployments, "reconcile_soon", lambda: None)


def fill_new_form(page, *, model_id: str, model_source: str = "$HOME/common/hf/tiny-llama", replicas: str = "1") -> None:
    page.get_by_label("Name (model_id)").fill(model_id)
    page.get_by_label("Model folder (model_source)").fill(model_source)
    page.get_by_label("Replicas (num_replicas)").fill(replicas)


def test_a_user_deploys_with_the_form_and_watches_it_become_running(page, live_server, alice, fake_serve, test_output):
    create_model(alice, "earlier")
    login_in_browser(page, live_server.url, "alice")
    expect(page.locator("#my-models")).to_contain_text("CREATED")
    page.screenshot(path=test_output / "home.png", full_page=True)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Serving").click()
    expect(page.get_by_role("link", name=re.compile(r"alice-\d{12}-earlier"))).to_be_visible()
    page.screenshot(path=test_output / "list.png", full_page=True)

    page.get_by_role("link", name="New model").click()
    expect(page).to_have_url(f"{live_server.url}/serving/new")
    fill_new_form(page, model_id="demo", replicas="2")
    page.get_by_role("button", name="Preview", exact=True).click()
    # htmx swapped the preview in: still the same page, nothing created, the typed values kept.
    expect(page.locator("#preview-gpus")).to_contain_text("2 replica(s)")
    expect(page.locator("#preview-model-id")).to_have_text(re.compile(r"alice-\d{12}-demo"))
    expect(page).to_have_url(f"{live_server.url}/serving/new")
    expect(page.get_by_label("Replicas (num_replicas)")).to_have_value("2")
    assert not ServeModel.objects.filter(suffix="demo").exists()
    page.screenshot(path=test_output / "new-preview.png", full_page=True)

    page.get_by_role("button", name="Deploy", exact=True).click()
    model = ServeModel.objects.get(suffix="demo")
    expect(page).to_have_url(f"{live_server.url}/serving/{model.model_key}")
    expect(page.get_by_role("heading", name=model.model_id)).to_be_visible()
    expect(page.locator(".msg.success")).to_contain_text(f"Created {model.model_id}")
    status = page.locator("#live-status")
    expect(status.locator(".badge")).to_have_text("QUEUED")
    expect(page.locator("#example-python")).to_contain_text(f'model="{model.model_id}"')
    expect(page.get_by_role("button", name="Copy").first).to_be_visible()

    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if r.headers.get("hx-request") and r.url.endswith(model.model_key) else None)
    reconcile(fake_serve)  # applies: DEPLOYING
    expect(status.locator(".badge")).to_have_text("DEPLOYING", timeout=10_000)
    reconcile(fake_serve)  # Serve reports RUNNING
    expect(status.locator(".badge")).to_have_text("RUNNING", timeout=10_000)
    expect(status.locator("#replicas")).to_contain_text("RUNNING: 2")
    expect(page.locator("#live-events")).to_contain_text("Serve reports RUNNING with 2 replica(s)")
    # RUNNING is terminal: the partial came back without its trigger, so the page stops asking.
    settled = len(polls)
    time.sleep(5)
    assert len(polls) == settled and settled >= 2
    page.screenshot(path=test_output / "detail.png", full_page=True)


def test_invalid_input_shows_the_message_beside_the_field_and_keeps_what_was_typed(page, live_server, alice, test_output):
    login_in_browser(page, live_server.url, "alice")
    page.goto(f"{live_server.url}/serving/new")
    fill_new_form(page, model_id="my model!", replicas="3")
    page.get_by_label("Engine options (engine_kwargs)").fill("max_model_len=4096")
    page.get_by_role("button", name="Deploy", exact=True).click()

    field = page.locator("#field-model_id")
    expect(field.locator(".field-error")).to_contain_text("model_id must be a name of 1 to 64 characters")
    expect(field.locator(".field-error")).to_contain_text("got 'my model!'")
    expect(page.locator(".field-error")).to_have_count(1)
    expect(page.get_by_label("Name (model_id)")).to_have_value("my model!")
    expect(page.get_by_label("Replicas (num_replicas)")).to_have_value("3")
    expect(page.get_by_label("Engine options (engine_kwargs)")).to_have_value("max_model_len=4096")
    page.screenshot(path=test_output / "new-with-error.png", full_page=True)

    # Preview answers in place, refusals included (htmx would not swap a 403 by itself).
    page.get_by_label("Name (model_id)").fill("demo")
    page.get_by_label("Model folder (model_source)").fill("/etc")
    page.get_by_role("button", name="Preview", exact=True).click()
    expect(page.locator("#field-model_source .field-error")).to_contain_text("outside the folders you may serve from")
    expect(page.locator("#field-model_id .field-error")).to_have_count(0)
    expect(page).to_have_url(f"{live_server.url}/serving/new")

    # The YAML tab: a typo is refused beside the YAML, with the fields' values still there.
    page.get_by_text("Write the YAML instead").click()
    page.get_by_label("Spec (YAML, as the API takes it)").fill("model_id: demo\nmodel_source: $HOME/common/hf/tiny-llama\nreplica: 2\n")
    page.get_by_role("button", name="Deploy this YAML").click()
    expect(page.locator("#field-spec_yaml .field-error")).to_contain_text("Unknown field 'replica'. Did you mean 'num_replicas'?")
    expect(page.get_by_label("Spec (YAML, as the API takes it)")).to_have_value(re.compile(r"replica: 2"))
    expect(page.get_by_label("Model folder (model_source)")).to_have_value("/etc")
    assert not ServeModel.objects.exists()


def test_a_user_deletes_a_model_by_typing_its_id(page, live_server, alice, test_output):
    model = create_model(alice, "doomed")
    login_in_browser(page, live_server.url, "alice")
    page.goto(f"{live_server.url}/serving/{model.model_key}")

    page.get_by_role("link", name="Delete this model…").click()
    dialog = page.get_by_role("alertdialog")
    expect(dialog).to_contain_text(f"Delete {model.model_id}?")
    expect(page).to_have_url(f"{live_server.url}/serving/{model.model_key}")  # loaded in place
    dialog.get_by_role("link", name="Cancel").click()
    expect(dialog).to_have_count(0)
    expect(page.locator("#dialog")).to_be_hidden()  # the overlay goes with it
    model.refresh_from_db()
    assert model.state == State.QUEUED

    page.get_by_role("link", name="Delete this model…").click()
    page.get_by_label(re.compile("Type .* to confirm")).fill(model.model_id)
    page.screenshot(path=test_output / "delete-confirm.png")
    page.get_by_role("button", name="Delete model").click()
    expect(page).to_have_url(f"{live_server.url}/serving/{model.model_key}")
    expect(page.locator(".msg.success")).to_contain_text(f"Delete of {model.model_id} requested")
    expect(page.locator("#live-status .badge")).to_have_text("DELETING")
    model.refresh_from_db()
    assert model.state == State.DELETING


def test_a_user_compares_two_revisions_and_rolls_back(page, live_server, alice, fake_serve, test_output):
    model = create_model(alice, "versions")
    reconcile(fake_serve)
    reconcile(fake_serve)
    deployments.scale(model, 3, alice)
    reconcile(fake_serve)
    reconcile(fake_serve)
    login_in_browser(page, live_server.url, "alice")
    page.goto(f"{live_server.url}/serving/{model.model_key}")

    revisions = page.locator("#revisions")
    expect(revisions.locator("tbody tr")).to_have_count(2)
    revisions.get_by_role("button", name="Show diff").click()  # preselected: the last two
    expect(page).to_have_url(re.compile(r"/diff\?a=1&b=2$"))
    expect(page.locator("#diff .del")).to_have_text("-num_replicas: 1")
    expect(page.locator("#diff .add")).to_have_text("+num_replicas: 3")
    page.screenshot(path=test_output / "diff.png", full_page=True)

    page.go_back()
    revisions.get_by_role("link", name="Roll back to this").click()
    dialog = page.get_by_role("alertdialog")
    expect(dialog).to_contain_text("Roll back")
    dialog.get_by_role("button", name="Roll back to revision 1").click()
    expect(page.locator(".msg.success")).to_contain_text("Rollback of")
    model.refresh_from_db()
    assert model.num_replicas == 1 and model.change_reason == "rollback to revision 1"


@pytest.mark.browser_context_args.with_args(java_script_enabled=False)
def test_the_create_flow_works_without_javascript(page, live_server, alice, roots, test_output):
    login_in_browser(page, live_server.url, "alice")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Serving").click()
    page.get_by_role("link", name="New model").click()
    fill_new_form(page, model_id="plain")
    page.get_by_role("button", name="Preview", exact=True).click()  # a normal post to /serving/new
    expect(page.locator("#preview-resolved")).to_contain_text(str(roots / "hf" / "tiny-llama"))
    assert not ServeModel.objects.exists()

    page.get_by_role("button", name="Deploy", exact=True).click()
    model = ServeModel.objects.get(suffix="plain")
    expect(page).to_have_url(f"{live_server.url}/serving/{model.model_key}")
    expect(page.locator("#live-status .badge")).to_have_text("QUEUED")
    copy_buttons = page.locator("button[data-copy]")
    expect(copy_buttons).to_have_count(3)
    for i in range(3):
        expect(copy_buttons.nth(i)).to_be_hidden()  # they need JavaScript; the code is still there to select
    expect(page.locator("#example-python")).to_contain_text("print(reply.choices[0].message.content)")

    page.get_by_label("Replicas", exact=True).fill("0")  # not "Min replicas" of the autoscaling form
    page.get_by_role("button", name="Scale", exact=True).click()
    expect(page.locator(".msg.success")).to_contain_text("to 0 replica(s)")
    model.refresh_from_db()
    assert model.num_replicas == 0

    page.get_by_role("link", name="Delete this model…").click()  # a page of its own without htmx
    expect(page).to_have_url(f"{live_server.url}/serving/{model.model_key}/delete")
    page.get_by_label(re.compile("Type .* to confirm")).fill(model.model_id)
    page.get_by_role("button", name="Delete model").click()
    expect(page.locator("#live-status .badge")).to_have_text("DELETING")


@pytest.mark.usefixtures("gpu_engine")
def test_an_admin_sees_the_cluster(page, live_server, admin, alice, fake_serve, test_output):
    running = create_model(alice, "chat", num_replicas=2, gpus_per_replica=2)
    reconcile(fake_serve)
    reconcile(fake_serve)
    waiting = create_model(alice, "huge", num_replicas=4, gpus_per_replica=2)
    reconcile(fake_serve)
    fake_serve.apps["forgotten-experiment"] = fake_serve._app({}, 1, "RUNNING", 0)
    reconcile(fake_serve)  # the page shows what the reconciler read at the start of its last tick

    login_in_browser(page, live_server.url, "admin")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Serving").click()
    page.get_by_role("link", name="Cluster").click()
    expect(page.get_by_role("heading", name="Cluster", exact=True)).to_be_visible()
    expect(page.locator("#gpus-total")).to_have_text("8")
    expect(page.locator("#gpus-free")).to_have_text("4")
    expect(page.locator("#unknown")).to_contain_text("forgotten-experiment")
    expect(page.locator("#pending")).to_contain_text(waiting.model_id)
    expect(page.locator("#applications")).to_contain_text(running.model_key)
    expect(page.locator("#serve-as-of")).to_contain_text("as of")
    expect(page.locator("#engine")).to_have_text("gpu")
    page.screenshot(path=test_output / "cluster.png", full_page=True)
