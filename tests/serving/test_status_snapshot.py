"""Pages and the API never ask Ray: they show the status the reconciler last read, with its age, so
a dead or hung cluster cannot make a web request hang (or make a web worker a Ray driver)."""
from __future__ import annotations

import html
import json
import socket
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from serving.models import ClusterSnapshot
from serving.reconciler import reconcile
from tests.serving.factories import create_model

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "gpu_engine")]


@pytest.fixture
def silent_port():
    """A port that accepts connections (the kernel's backlog) and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(params=["silent", "closed"])
def dead_cluster(request, settings):
    """Ray as the web process would meet it: gone, or a port that accepts and never answers."""
    port = request.getfixturevalue(f"{request.param}_port")
    settings.GANTRY_SERVE_CLIENT = "serving.cluster.RayServeClient"
    settings.RAY_ADDRESS = f"127.0.0.1:{port}"
    settings.RAY_DASHBOARD_URL = f"http://127.0.0.1:{port}"
    return port


# A page that asked the dead cluster would wait for the Serve call bound (GANTRY_SERVE_CALL_TIMEOUT_S,
# 60 s); one that reads the snapshot answers in well under a second. The bound sits far from both so
# a loaded CI machine cannot fail it (2 s did, once); how fast pages are is measured in bench/.
NOT_WAITING_S = 10


def timed(client, url, **headers):
    started = time.monotonic()
    response = client.get(url, **headers)
    return response, time.monotonic() - started


def test_pages_and_the_api_answer_fast_from_the_snapshot_when_ray_is_dead(client, alice, admin, fake_serve, settings, dead_cluster):
    model = create_model(alice)
    settings.GANTRY_SERVE_CLIENT = "tests.serving.fake_serve.shared_fake"
    reconcile(fake_serve)
    reconcile(fake_serve)  # RUNNING, and the snapshot says so
    settings.GANTRY_SERVE_CLIENT = "serving.cluster.RayServeClient"  # the web process's client: dead

    client.force_login(alice)
    page, seconds = timed(client, f"/serving/{model.model_key}")
    assert page.status_code == 200 and seconds < NOT_WAITING_S
    assert "as of" in page.text and "RUNNING: 1" in page.text
    poll, seconds = timed(client, f"/serving/{model.model_key}", HTTP_HX_REQUEST="true")
    assert poll.status_code == 200 and seconds < NOT_WAITING_S
    api, seconds = timed(client, f"/api/v2/serve/models/{model.model_key}")
    assert api.status_code == 200 and seconds < NOT_WAITING_S
    status = api.json()["serve_status"]
    assert status["available"] is True and status["stale"] is False and status["status"] == "RUNNING"

    client.force_login(admin)
    cluster, seconds = timed(client, "/serving/cluster")
    assert cluster.status_code == 200 and seconds < NOT_WAITING_S and model.model_key in cluster.text
    body, seconds = timed(client, "/api/v2/serve/status")
    assert body.status_code == 200 and seconds < NOT_WAITING_S and model.model_key in body.json()["applications"]


def test_a_snapshot_the_reconciler_stopped_refreshing_is_called_stale_everywhere(client, alice, admin, fake_serve, dead_cluster):
    model = create_model(alice)
    ClusterSnapshot.objects.update_or_create(name="cluster", defaults={"read_at": timezone.now(), "resources": {}})
    ClusterSnapshot.objects.update(read_at=timezone.now() - timedelta(minutes=10))

    client.force_login(alice)
    page, seconds = timed(client, f"/serving/{model.model_key}")
    assert seconds < NOT_WAITING_S and "Serve's status is stale (as of 10 min ago)" in html.unescape(page.text)
    status = client.get(f"/api/v2/serve/models/{model.model_key}").json()["serve_status"]
    assert status["stale"] is True and status["available"] is False and "10 min ago" in status["problem"]
    client.force_login(admin)
    cluster, seconds = timed(client, "/serving/cluster")
    assert seconds < NOT_WAITING_S and "stale" in cluster.text
    body = client.get("/api/v2/serve/status").json()
    assert body["stale"] is True and body["age_s"] >= 600


def test_before_the_reconciler_ever_read_serve_the_status_is_unavailable_not_empty(client, alice, admin, dead_cluster):
    model = create_model(alice)
    client.force_login(alice)
    page, seconds = timed(client, f"/serving/{model.model_key}")
    assert seconds < NOT_WAITING_S and "Serve's status is unavailable" in html.unescape(page.text)
    assert "Serve runs no application" not in page.text  # that would be a claim nobody checked
    status = client.get(f"/api/v2/serve/models/{model.model_key}").json()["serve_status"]
    assert status["available"] is False and status["as_of"] is None
    client.force_login(admin)
    body = json.loads(client.get("/api/v2/serve/status").content)
    assert body["available"] is False and "applications" not in body
