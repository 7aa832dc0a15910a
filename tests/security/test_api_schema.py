"""Schemathesis against the API as it describes itself: /api/v2/openapi.json is fetched from the
running app with a real token, and every operation in it is called with generated requests — valid
by the schema and deliberately invalid — through Gantry's whole WSGI stack (middleware, token auth,
views, the real PostgreSQL). No answer is a 5xx, and each answer's status, content type and body
are ones the schema declares for that operation. Bounded: a few examples per operation."""
from __future__ import annotations

import time

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance
from schemathesis.checks import not_a_server_error

from dashboard.models import ApiToken

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "gpu_engine", "fake_serve")]

# An eval set is uploaded as JSON lines: text on the wire.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# The run is bounded by its examples per operation, not by a clock (a 60 s bound failed CI under
# load with nothing failing); how long it takes is printed.
EXAMPLES = {GenerationMode.POSITIVE: 15, GenerationMode.NEGATIVE: 25}


@pytest.fixture
def wsgi_app():
    """Gantry's WSGI application, called in this process so it sees the test's database transaction.
    Django closes the connection after each request; as its own test client does, not meanwhile."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield get_wsgi_application()
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


def test_no_operation_answers_a_5xx_or_outside_its_schema(alice, alices, wsgi_app):
    _, raw = ApiToken.issue(alice, "schemathesis")
    auth = {"Authorization": f"Bearer {raw}"}
    schema = schemathesis.openapi.from_wsgi("/api/v2/openapi.json", wsgi_app, headers=auth)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25, "the schema lists Gantry's API"

    started, called, failures = time.monotonic(), [], []
    for operation in operations:
        for mode, examples in EXAMPLES.items():

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case):
                case.call_and_validate(headers=auth, checks=CHECKS)
                called.append(operation.label)

            try:
                call()
            except BaseExceptionGroup as exc:
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:300]}")
    elapsed = time.monotonic() - started
    print(f"schemathesis: {len(called)} calls to {len(operations)} operations in {elapsed:.1f} s, {len(failures)} failing")
    assert not failures, "\n".join(failures)
    assert len(set(called)) == len(operations)


def test_an_api_path_no_route_takes_is_the_apis_json_404_and_a_page_keeps_djangos(alice, alice_client):
    # Found by the run above: /api/v2/preflight/-1 matched no <int:pk> and got Django's HTML page.
    _, raw = ApiToken.issue(alice, "script")
    response = alice_client.get("/api/v2/preflight/-1", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    page = alice_client.get("/serving/a/b/c/d")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")
