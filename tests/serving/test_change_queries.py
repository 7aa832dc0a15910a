"""The API's changes (create, scale, delete) cost the same SQL queries with 1 model or 30, and each
reads the model it locks together with its owner: the event it logs names the owner, and a second
query per change for that is what the load benchmark's p99 pays for under 100 pollers."""
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dashboard.models import ApiToken
from tests.serving.factories import bulk_models, spec

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "fake_serve")]

URL = "/api/v2/serve/models"


@pytest.fixture
def bearer(alice):
    _, raw = ApiToken.issue(alice, "ci")
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def changes(client, bearer, suffix: str, scaled_key: str) -> dict[str, list[str]]:
    """The SQL of a create, a scale and a delete (of the model just created), as the API runs them."""
    made = {}
    with CaptureQueriesContext(connection) as captured:
        response = client.post(URL, data=spec(suffix), content_type="application/yaml", **bearer)
    assert response.status_code == 202
    made["create"], key = [q["sql"] for q in captured], response.json()["model_key"]
    with CaptureQueriesContext(connection) as captured:
        response = client.patch(f"{URL}/{scaled_key}", data=json.dumps({"num_replicas": 2}), content_type="application/json", **bearer)
    assert response.status_code == 202
    made["scale"] = [q["sql"] for q in captured]
    with CaptureQueriesContext(connection) as captured:
        assert client.delete(f"{URL}/{key}", **bearer).status_code == 202
    made["delete"] = [q["sql"] for q in captured]
    return made


def test_a_change_costs_the_same_queries_for_one_model_or_thirty(client, alice, bearer):
    first = bulk_models(alice, 1)[0]
    client.get(URL, **bearer)  # the token's last use is written once a minute: not in what is counted
    one = changes(client, bearer, "one", first.model_key)
    bulk_models(alice, 29, start=1)
    thirty = changes(client, bearer, "thirty", first.model_key)
    assert {name: len(sql) for name, sql in thirty.items()} == {name: len(sql) for name, sql in one.items()}


def test_a_change_reads_the_owner_in_the_query_that_locks_the_model(client, alice, bearer):
    model = bulk_models(alice, 1)[0]
    client.get(URL, **bearer)
    for name, sql in changes(client, bearer, "demo", model.model_key).items():
        locking = [q for q in sql if "FOR UPDATE" in q]
        assert len(locking) == 1, name
        # Only the model's row is locked, not its owner's (every change of that user would queue on it).
        assert 'INNER JOIN "auth_user"' in locking[0] and 'FOR UPDATE OF "serving_servemodel"' in locking[0], name
        assert not [q for q in sql if q.startswith('SELECT "auth_user"')], name
