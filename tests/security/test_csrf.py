"""Every form refuses a POST that lacks the CSRF token, walked from the URL patterns.

A logged-in browser sends its session cookie with any request another site makes it send, so every
state-changing request from a session needs the token: pages and the API alike. A bearer token is
not sent by a browser on its own (a script has to put it in the header), so requests that carry one
are exempt by design (dashboard.auth.BearerTokenMiddleware)."""
from __future__ import annotations

import pytest
from django.test import Client

from dashboard.models import ApiToken
from tests.security.urlwalk import all_routes

pytestmark = pytest.mark.django_db

ROUTES = all_routes()
API = [route for route in ROUTES if route.is_api]
REFUSED = b"CSRF verification failed"


def csrf_checked_client(user=None) -> Client:
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    return client


def refused(response) -> bool:
    return response.status_code == 403 and REFUSED in response.content


def test_a_session_post_without_the_token_is_refused_on_every_route(alice):
    client = csrf_checked_client(alice)
    taken = [f"POST {route.path()}: {r.status_code}" for route in ROUTES if not refused(r := client.post(route.path(), {"name": "x"}))]
    assert len(ROUTES) > 40 and not taken


def test_the_api_with_a_session_cookie_needs_the_token_for_every_change(alice):
    client = csrf_checked_client(alice)
    taken = [
        f"{method.upper()} {route.path()}: {r.status_code}"
        for route in API
        for method in ("put", "patch", "delete")
        if not refused(r := getattr(client, method)(route.path(), "{}", content_type="application/json"))
    ]
    assert not taken


def test_the_refused_post_changes_nothing(alice):
    response = csrf_checked_client(alice).post("/settings/tokens/", {"name": "from another site"})
    assert response.status_code == 403
    assert not ApiToken.objects.filter(user=alice).exists()


def test_the_login_form_needs_the_token_too(alice):
    from tests.conftest import PASSWORD

    client = csrf_checked_client()
    response = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 403 and REFUSED in response.content
    assert client.get("/").status_code == 302, "not logged in"


def test_a_form_posted_with_its_token_is_taken(alice):
    client = csrf_checked_client(alice)
    token = client.get("/settings/tokens/").context["csrf_token"]
    response = client.post("/settings/tokens/", {"name": "ci", "csrfmiddlewaretoken": str(token)})
    assert response.status_code == 200 and ApiToken.objects.filter(user=alice, name="ci").exists()


def test_a_bearer_token_is_exempt_by_design(alice):
    _, raw = ApiToken.issue(alice, "script")
    client = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {raw}")
    answers = {route.path(): client.post(route.path(), "{}", content_type="application/json") for route in API}
    assert not [path for path, r in answers.items() if refused(r) or r.status_code >= 500]
    assert answers["/api/v2/preflight"].status_code == 422, "the spec was read: the request got past CSRF"
