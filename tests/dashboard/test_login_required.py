"""Every page and API endpoint needs a login: pages redirect to the login page, the API answers 401 JSON."""
import pytest

from tests.security.urlwalk import all_routes

# Reachable without logging in, on purpose.
PUBLIC = {"login", "logout", "healthz", "readyz"}
# Scraped by machines with a bearer token: a 401 that says how, never the login page.
SCRAPED = {"/metrics"}

# A key in the path is a placeholder (1 or x): the page must refuse before it looks anything up.
ROUTES = sorted({(route.name, route.path()) for route in all_routes() if route.name not in PUBLIC})


def test_the_walk_finds_the_pages_and_the_api():
    paths = {path for _, path in ROUTES}
    assert "/" in paths and "/settings/tokens/" in paths and "/api/v2/me" in paths


@pytest.mark.django_db
@pytest.mark.parametrize("name,path", ROUTES, ids=[path for _, path in ROUTES])
@pytest.mark.parametrize("method", ["get", "post"])
def test_anonymous_requests_are_refused(client, name, path, method):
    response = getattr(client, method)(path)
    if path.startswith("/api/"):
        assert response.status_code == 401
        assert response["Content-Type"] == "application/json"
        assert response.json()["error"]["code"] == "unauthenticated"
    elif path in SCRAPED:
        assert response.status_code == 401 and response["WWW-Authenticate"] == 'Bearer realm="gantry"'
    else:
        assert response.status_code == 302
        assert response["Location"].startswith("/login/?next=")


@pytest.mark.django_db
def test_health_endpoints_are_public(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


@pytest.mark.django_db
def test_login_page_logs_a_user_in_and_out(client, alice):
    from tests.conftest import PASSWORD

    response = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    assert "Welcome, alice" in client.get("/").text
    client.post("/logout/")
    assert client.get("/").status_code == 302


@pytest.mark.django_db
def test_a_wrong_password_says_so_on_the_login_page(client, alice):
    response = client.post("/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert "enter a correct username and password" in response.text
