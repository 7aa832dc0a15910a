"""Shared fixtures: alice and bob (users), rita (reviewer), admin; logged-in clients; a browser."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings

# Playwright's sync API runs an event loop in the test thread; Django's ORM calls there are safe.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery-staple"
FAULTS = ROOT / "tests" / "faults"


def pytest_ignore_collect(collection_path, config):
    # The fault tests bring up a whole production topology of their own (bin/gantry-cluster) and
    # break its pieces one by one: `make test-faults` runs them; `make test` does not yet.
    if collection_path == FAULTS and os.environ.get("GANTRY_FAULTS") != "1":
        return True
    return None


RAY_FOLDERS = (ROOT / "tests" / "integration",)
RAY_FILES = (ROOT / "tests" / "e2e" / "test_make_run.py",)  # `make run` starts a Ray head of its own


def pytest_collection_modifyitems(config, items):
    # Every test that starts or uses a Ray cluster is marked `ray`, whichever fixture brought the
    # head in: `bin/gantry-test -m "not ray"` is the suite without them (~a third of make test's time).
    for item in items:
        path = Path(item.path)
        if "ray_head" in getattr(item, "fixturenames", ()) or path in RAY_FILES or any(f in path.parents for f in RAY_FOLDERS):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session", autouse=True)
def quick_password_hashes():
    """Users the tests make hash their passwords with tests/hashers.py's PBKDF2 of few iterations; no
    test is about the hash's cost (tests/security keeps its own, quicker still)."""
    from django.conf import settings as django_settings
    from django.test import override_settings

    with override_settings(PASSWORD_HASHERS=["tests.hashers.QuickPBKDF2PasswordHasher", *django_settings.PASSWORD_HASHERS]):
        yield


@pytest.fixture(autouse=True)
def preflight_at_once(monkeypatch):
    """A deploy's preflight runs as soon as the reconciler asks for it, in this process, instead of
    as a task on the gates queue: tests drive the reconciler tick by tick with no Celery worker (as
    they call the reconcile task's body, not the task). The run itself is the real one, reading the
    cluster's runtime through the configured client; tests/serving/test_preflight_gate.py checks
    the real queue, and bench/serve_overhead.py runs it through a real worker."""
    from gates import preflights

    def run_now(run):
        from serving.cluster import get_client

        preflights.run_for_deploy(run.pk, get_client())

    monkeypatch.setattr(preflights, "enqueue", run_now)


@pytest.fixture
def broker(settings):
    """The real Redis broker with Gantry's three queues empty, for tests that read what was sent.
    make test always runs against Redis; with another broker (the filesystem one) they are skipped."""
    import redis

    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("this test reads the Redis broker's lists; make test runs it against Redis")
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete("health", "serve", "gates")
    yield client
    client.delete("health", "serve", "gates")


@pytest.fixture
def test_output() -> Path:
    """Where tests leave screenshots and logs for a person to look at."""
    path = Path(os.environ.get("GANTRY_TEST_OUTPUT", ROOT / "test-output"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _make_user(django_user_model, username: str, **extra):
    return django_user_model.objects.create_user(username, f"{username}@example.test", PASSWORD, **extra)


@pytest.fixture
def alice(db, django_user_model):
    return _make_user(django_user_model, "alice")


@pytest.fixture
def bob(db, django_user_model):
    return _make_user(django_user_model, "bob")


@pytest.fixture
def rita(db, django_user_model):
    from django.contrib.auth.models import Group

    from dashboard.roles import REVIEWERS_GROUP, ensure_roles

    ensure_roles()
    user = _make_user(django_user_model, "rita")
    user.groups.add(Group.objects.get(name=REVIEWERS_GROUP))
    return user


@pytest.fixture
def admin(db, django_user_model):
    return _make_user(django_user_model, "admin", is_staff=True, is_superuser=True)


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def bob_client(client, bob):
    client.force_login(bob)
    return client


@pytest.fixture
def admin_client(client, admin):
    client.force_login(admin)
    return client


# --- Browser (pytest-playwright) -------------------------------------------------------------
CHROMIUM = os.environ.get("GANTRY_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    # Playwright's own browser download does not work offline: use Debian's chromium.
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    }


def login_in_browser(page, base_url: str, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")


# --- A real Ray cluster (tests/ray_cluster.py) ---------------------------------------------------
@pytest.fixture(scope="session")
def ray_head():
    import ray

    from tests.ray_cluster import RayHead

    head = RayHead()
    saved = {name: getattr(settings, name) for name in ("RAY_ADDRESS", "RAY_DASHBOARD_URL", "GANTRY_SERVE_PORT")}
    try:
        head.wait_until_up()
        settings.RAY_ADDRESS = head.address
        settings.RAY_DASHBOARD_URL = head.dashboard_url
        settings.GANTRY_SERVE_PORT = head.serve_port
        yield head
    finally:
        if ray.is_initialized():
            ray.shutdown()
        head.stop()
        for name, value in saved.items():
            setattr(settings, name, value)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from django.core.management import call_command

    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    call_command("make_tiny_model", str(folder))
    return folder
