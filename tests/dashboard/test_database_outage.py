"""handler500 (dashboard/outage.py): a lost database connection is a clean 503, anything else a 500.
tests/faults/test_postgres_restart.py shows it through gunicorn with the real PostgreSQL stopped."""
from __future__ import annotations

import json

from django.db import IntegrityError, OperationalError

from dashboard.outage import server_error


def answer(rf, path: str, exc: Exception):
    try:
        raise exc
    except Exception:  # noqa: BLE001 — Django calls handler500 inside its except block, as here
        return server_error(rf.get(path))


def test_an_api_request_during_an_outage_gets_the_apis_json_503(rf):
    response = answer(rf, "/api/v2/serve/models", OperationalError("connection refused"))
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert json.loads(response.content)["error"]["code"] == "database_unavailable"


def test_a_page_during_an_outage_gets_a_short_503_page(rf):
    response = answer(rf, "/serving/", OperationalError("server closed the connection unexpectedly"))
    assert response.status_code == 503 and b"Database unavailable" in response.content


def test_any_other_error_stays_a_500(rf):
    assert answer(rf, "/serving/", IntegrityError("duplicate key")).status_code == 500
    assert answer(rf, "/api/v2/serve/models", ValueError("a bug")).status_code == 500
