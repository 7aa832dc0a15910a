"""The model list, as API and as page, costs the same number of SQL queries for 1 model or 30,
however many events each has; every page of the API (a cursor's too) costs what the first does."""
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.serving.factories import create_model

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "fake_serve")]


def queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured)


def make_models(user, count: int, start: int = 0, events: int = 3) -> None:
    for i in range(start, start + count):
        model = create_model(user, f"m{i}")
        for _ in range(events):
            model.log("SERVE_STATUS", "deploying")


@pytest.mark.parametrize("url", ["/api/v2/serve/models", "/serving/", "/serving/?state=QUEUED"])
def test_the_list_costs_the_same_queries_for_one_model_or_thirty(alice_client, alice, url):
    make_models(alice, 1)
    one = queries(alice_client, url)
    make_models(alice, 29, start=1, events=10)
    thirty = queries(alice_client, url)
    assert thirty == one


def test_the_admin_list_of_everyones_models_is_constant_too(admin_client, alice, bob):
    make_models(alice, 1)
    one = queries(admin_client, "/serving/")
    make_models(bob, 20, events=5)
    assert queries(admin_client, "/serving/") == one


def test_the_page_shows_each_models_last_event(alice_client, alice):
    model = create_model(alice, "m0")
    model.log("PENDING_RESOURCES", "Needs 4 GPU(s)")
    page = alice_client.get("/serving/").text
    assert "PENDING_RESOURCES" in page and "Needs 4 GPU(s)" in page and model.model_id in page


def test_every_page_of_the_list_api_costs_what_a_one_model_list_does(alice_client, alice):
    make_models(alice, 1)
    one = queries(alice_client, "/api/v2/serve/models?limit=10")
    make_models(alice, 29, start=1, events=10)
    second_page = alice_client.get("/api/v2/serve/models?limit=10").json()["next"]
    assert queries(alice_client, "/api/v2/serve/models?limit=10") == one
    assert queries(alice_client, second_page) == one
