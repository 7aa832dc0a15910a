"""Who may reach what, generated from the URL patterns: a new route that names an object cannot
ship without saying which kind it names, and then it is in every row of the matrix below.

The rule, per area:
- Per-user objects (a model with its revisions and events, preflight runs, secrets, API tokens):
  another user's answers exactly as a key that nothing has — 404 wherever the method applies, the
  same 405 where it never does — on the pages and in the API, and changes nothing. Never 403 or 200:
  that would tell bob that alice has such a model. Admins see every user's models and runs by design
  (DESIGN.md, "Who uses it"), so "another user" here is a user or a reviewer.
- Team objects (baselines and gate runs; eval sets have no URL of their own): every logged-in user
  reads them, because a reviewer must see a proposal or an inconclusive run to decide it; deciding is
  a reviewer's alone, so a user's decision is refused (4xx, never a 404 that would pretend the shared
  object away) and changes nothing. That no one approves their own proposal is pinned by
  tests/gates/test_baseline_pages.py, test_baseline_api.py and tests/e2e/test_baseline_review.py.
- Admin-only areas (cluster page, health panel with its zombie and shared-memory actions,
  /api/v2/serve/status, /metrics): 403 for anyone else, whatever the key: their existence is
  documented and the refusal comes before any lookup, so it says nothing about what exists.
"""
from __future__ import annotations

import pytest
from django.test import Client

from dashboard.models import ApiToken
from tests.security.objects import ADMIN_KEYS, KIND, MISSING, OWNED, SHARED
from tests.security.urlwalk import Route, all_routes

pytestmark = pytest.mark.django_db

ADMIN_ONLY = {"serving:cluster", "health:index", "api_serve_status", "metrics"}
PUBLIC = {"login", "logout", "healthz", "readyz"}

ROUTES = all_routes()
KEYED = [route for route in ROUTES if route.object_keys]
OWNED_ROUTES = [route for route in KEYED if all(key in OWNED for key in route.object_keys)]
SHARED_ROUTES = [route for route in KEYED if any(key in SHARED for key in route.object_keys)]
ADMIN_KEYED = [route for route in KEYED if any(key in ADMIN_KEYS for key in route.object_keys)]
UNKEYED = [route for route in ROUTES if not route.object_keys and route.name not in PUBLIC]


def ids(routes: list[Route]) -> list[str]:
    return [route.route for route in routes]


def methods(route: Route) -> tuple[str, ...]:
    # PUT is left out: a secret's name is per user, so bob's PUT writes bob's own secret.
    return ("get", "post", "patch", "delete") if route.is_api else ("get", "post")


def send(client: Client, method: str, route: Route, path: str):
    # The API gets a well-formed empty JSON body, so what answers is who may, not how it was written.
    if route.is_api and method != "get":
        return getattr(client, method)(path, "{}", content_type="application/json")
    return getattr(client, method)(path)


def client_as(user, route: Route) -> Client:
    """A browser's session for pages, the user's API token for the API (and the scraped /metrics)."""
    if route.is_api or route.name == "metrics":
        _, raw = ApiToken.issue(user, "matrix")
        return Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    client = Client()
    client.force_login(user)
    return client


def test_every_object_a_url_names_has_a_factory_and_a_rule():
    unlisted = sorted({key for route in KEYED for key in route.object_keys} - set(KIND) - ADMIN_KEYS)
    assert not unlisted, f"Routes name objects the isolation matrix has no factory for: {unlisted}. Add each to OWNED or SHARED."
    assert len(OWNED_ROUTES) >= 15 and SHARED_ROUTES, "the walk found fewer object routes than Gantry has"
    assert {route.name for route in UNKEYED} >= ADMIN_ONLY


@pytest.mark.parametrize("route", OWNED_ROUTES, ids=ids(OWNED_ROUTES))
def test_another_users_object_answers_as_if_it_did_not_exist(route, alices, alice, bob):
    before = alices.state()
    theirs = alices.path(route)
    nothing = route.path({key: MISSING[OWNED[key]] for key in route.object_keys})
    bob_client = client_as(bob, route)
    answered = {}
    for method in methods(route):
        response, baseline = send(bob_client, method, route, theirs), send(bob_client, method, route, nothing)
        assert (method, response.status_code) == (method, baseline.status_code), f"{method.upper()} {theirs} tells bob it exists"
        assert response.status_code in (404, 405), f"{method.upper()} {theirs} as bob: {response.status_code}"
        if route.is_api and response.status_code == 404:
            assert response.json() == baseline.json() and response.json()["error"]["code"] == "not_found"
        answered[method] = response.status_code
    assert 404 in answered.values(), f"{route.route} takes none of {methods(route)}"
    assert alices.state() == before, f"bob's requests to {theirs} changed alice's objects"

    # The key was a live one: its owner is not told 404 for the first method the route takes.
    method = next(m for m, status in answered.items() if status == 404)
    assert send(client_as(alice, route), method, route, theirs).status_code != 404


@pytest.mark.parametrize("route", SHARED_ROUTES, ids=ids(SHARED_ROUTES))
def test_a_team_object_is_read_by_everyone_and_decided_only_by_a_reviewer(route, alices, bob):
    before = alices.state()
    path = alices.path(route)
    client = client_as(bob, route)
    read, decide = client.get(path).status_code, send(client, "post", route, path).status_code
    assert read in (200, 405) and 400 <= decide < 500 and decide != 404, (read, decide)
    assert (read, decide) != (405, 405)
    assert alices.state() == before


@pytest.mark.parametrize("route", ADMIN_KEYED, ids=ids(ADMIN_KEYED))
def test_an_admin_only_action_is_403_for_everyone_else_whatever_the_key(route, bob):
    client = client_as(bob, route)
    assert [send(client, method, route, route.path()).status_code for method in methods(route)] == [403] * len(methods(route))


@pytest.mark.parametrize("route", UNKEYED, ids=ids(UNKEYED))
def test_admin_only_areas_are_403_for_everyone_else(route, bob, admin):
    answer = client_as(bob, route).get(route.path()).status_code
    if route.name in ADMIN_ONLY:
        assert answer == 403
        assert client_as(admin, route).get(route.path()).status_code == 200
    else:
        assert answer != 403 and answer < 500, f"{route.route}: {answer} for a logged-in user"


def test_django_admin_sends_a_non_staff_user_to_its_own_login(bob):
    client = Client()
    client.force_login(bob)
    response = client.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
