"""GET /api/v2/serve/models pages: `limit` (default 100, at most 500) and an opaque `cursor` that
stays right while models are added, newest first."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from django.utils import timezone

from dashboard.models import ApiToken
from serving.choices import State
from serving.models import ServeModel
from tests.serving.factories import bulk_models, create_model
from tests.serving.test_api import URL, Api, error_of

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "fake_serve")]


@pytest.fixture
def api(client, alice):
    _, raw = ApiToken.issue(alice, "ci")
    return Api(client, raw)


def newest_first(**filters) -> list[str]:
    return list(ServeModel.objects.filter(**filters).order_by("-created_at", "-id").values_list("model_key", flat=True))


def walk(api, url: str) -> list[list[str]]:
    """Every page from `url` on, following `next` until it is null."""
    pages = []
    while url:
        response = api.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        pages.append([m["model_key"] for m in body["items"]])
        url = body["next"]
        assert len(pages) < 100
    return pages


def test_limit_pages_the_list_newest_first_until_next_is_null(api, alice):
    bulk_models(alice, 7)
    pages = walk(api, f"{URL}?limit=3")
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sum(pages, []) == newest_first()


def test_the_default_page_is_100_models(api, alice):
    bulk_models(alice, 101)
    body = api.get(URL).json()
    assert len(body["items"]) == 100 and body["next"]
    assert body["openai_base_url"].endswith("/v1")
    rest = api.get(body["next"]).json()
    assert [m["model_key"] for m in rest["items"]] == newest_first()[100:] and rest["next"] is None


def test_a_list_that_fits_in_one_page_has_no_next(api, alice):
    create_model(alice, "demo")
    body = api.get(URL).json()
    assert len(body["items"]) == 1 and body["next"] is None


@pytest.mark.parametrize("limit", ["0", "-1", "501", "ten", "1.5", ""])
def test_a_limit_outside_1_to_500_is_a_400_naming_it(api, alice, limit):
    bulk_models(alice, 2)
    response = api.get(URL, limit=limit)
    assert response.status_code == 400
    error = error_of(response)
    assert error == {"status": 400, "code": "bad_parameter", "message": error["message"], "field": "limit"}
    assert "limit" in error["message"] and "500" in error["message"]


def test_500_is_the_largest_page(api, alice):
    bulk_models(alice, 501)
    body = api.get(URL, limit=500).json()
    assert len(body["items"]) == 500 and body["next"]


def test_the_cursor_stays_right_while_models_are_added(api, alice):
    bulk_models(alice, 6)
    before = newest_first()
    first = api.get(URL, limit=4).json()
    # Two models arrive (newest of all) between the first page and the second.
    create_model(alice, "late1")
    create_model(alice, "late2")
    second = api.get(first["next"]).json()
    assert [m["model_key"] for m in first["items"]] + [m["model_key"] for m in second["items"]] == before
    assert second["next"] is None
    assert ServeModel.objects.count() == 8


def test_models_created_in_the_same_instant_are_neither_skipped_nor_repeated(api, alice):
    bulk_models(alice, 9, at=timezone.now())
    pages = walk(api, f"{URL}?limit=2")
    seen = sum(pages, [])
    assert sorted(seen) == sorted(newest_first()) and len(seen) == len(set(seen)) == 9
    assert seen == newest_first()


def test_next_keeps_the_filters_it_was_asked_with(api, alice):
    bulk_models(alice, 5)
    ServeModel.objects.filter(suffix__in=["m0", "m2", "m4"]).update(state=State.RUNNING)
    body = api.get(URL, state="RUNNING", limit=2).json()
    query = parse_qs(urlsplit(body["next"]).query)
    assert query["state"] == ["RUNNING"] and query["limit"] == ["2"] and "cursor" in query
    assert sum(walk(api, f"{URL}?state=RUNNING&limit=2"), []) == newest_first(state=State.RUNNING)


def test_a_cursor_never_shows_another_users_models(api, alice, bob):
    bulk_models(alice, 3)
    bulk_models(bob, 3)
    assert sum(walk(api, f"{URL}?limit=1"), []) == newest_first(owner=alice)


@pytest.mark.parametrize("cursor", ["nonsense", "", "MjAyNi0xMi0wMQ", "eyJ0IjogMX0"])
def test_a_cursor_that_was_not_given_out_is_a_400_naming_it(api, alice, cursor):
    bulk_models(alice, 2)
    response = api.get(URL, cursor=cursor)
    assert response.status_code == 400
    error = error_of(response)
    assert (error["code"], error["field"]) == ("bad_parameter", "cursor")
    assert "next" in error["message"]
