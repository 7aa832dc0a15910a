"""The serving pages against a real Ray head and the real CPU engine, in a real headless Chromium:
deploy the demo model with the form, watch the badge move without reloading, run the Python example
copied from the page, scale to 2, delete with confirmation. A background thread ticks the
reconciler once a second, as beat and the on-commit enqueue do in `make run`.
"""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import uuid

import pytest
from django.db import connection
from playwright.sync_api import expect

from serving import deployments
from serving.choices import State
from serving.cluster import get_client
from serving.models import ServeModel
from serving.reconciler import reconcile
from tests.conftest import login_in_browser
from tests.ray_cluster import listed_models, replicas

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def real_gantry(ray_head, tiny_model, settings, tmp_path, monkeypatch):
    settings.GANTRY_SERVE_CLIENT = "serving.cluster.RayServeClient"
    settings.GANTRY_ENGINE = "cpu"
    settings.GANTRY_HF_ROOT = tiny_model.parent
    settings.GANTRY_USERS_ROOT = tmp_path / "users"
    settings.GANTRY_DATASETS_ROOT = tmp_path / "datasets"
    # No Celery worker consumes the test broker: the ticker below is this test's beat.
    monkeypatch.setattr(deployments, "reconcile_soon", lambda: None)
    stop = threading.Event()

    def beat():
        try:
            while not stop.is_set():
                reconcile(get_client())
                stop.wait(1)
        finally:
            connection.close()

    ticker = threading.Thread(target=beat, daemon=True)
    ticker.start()
    yield ray_head
    stop.set()
    ticker.join(timeout=120)


def test_deploy_watch_call_scale_and_delete_from_the_browser(page, live_server, alice, real_gantry, test_output):
    head = real_gantry
    suffix = f"demo-{uuid.uuid4().hex[:6]}"
    login_in_browser(page, live_server.url, "alice")
    page.goto(f"{live_server.url}/serving/new")
    page.locator("summary", has_text="Write the YAML instead").click()
    yaml_box = page.locator("textarea[name=spec_yaml]")
    yaml_box.fill(yaml_box.input_value().replace("model_id: demo", f"model_id: {suffix}"))
    page.get_by_role("button", name="Deploy this YAML").click()

    expect(page).to_have_url(re.compile(r"/serving/alice-\d{12}-" + re.escape(suffix) + "$"))
    model = ServeModel.objects.get(suffix=suffix)
    badge = page.locator("#live-status .badge")
    assert badge.text_content() in ("QUEUED", "DEPLOYING")
    expect(badge).to_have_text("DEPLOYING", timeout=60_000)
    expect(badge).to_have_text("RUNNING", timeout=360_000)
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # never reloaded
    expect(page.locator("#replicas")).to_contain_text("RUNNING: 1")
    page.screenshot(path=test_output / "detail-running-real.png", full_page=True)

    # The example exactly as the page shows it, run as a user would run it.
    example = page.locator("#example-python").inner_text()
    assert f'model="{model.model_id}"' in example and f"http://127.0.0.1:{head.serve_port}/v1" in example
    script = test_output / "copied_example.py"
    script.write_text(example)
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip(), "the example printed no reply"

    (first_replica,) = replicas(head, model.model_id).items()
    page.get_by_label(re.compile("Replicas")).fill("2")
    page.get_by_role("button", name="Scale", exact=True).click()
    expect(page.locator("#replicas")).to_contain_text("RUNNING: 2", timeout=360_000)
    expect(badge).to_have_text("RUNNING")
    assert replicas(head, model.model_id)[first_replica[0]] == first_replica[1]

    page.get_by_role("link", name="Delete this model…").click()
    page.get_by_label(re.compile("Type .* to confirm")).fill(model.model_id)
    page.get_by_role("button", name="Delete model").click()
    expect(badge).to_have_text("DELETED", timeout=120_000)
    assert model.model_id not in listed_models(head)
    model.refresh_from_db()
    assert model.state == State.DELETED
