"""Every query parameter the OpenAPI document declares on a GET is checked: a value outside its schema
is a 400 naming it, never a 200 that quietly ignores it (schemathesis found ?state=AAA and
?events_before=null answered as if absent)."""
from __future__ import annotations

import pytest

from dashboard.models import ApiToken
from serving.models import ServeModel
from serving.openapi import document
from tests.serving.factories import create_model
from tests.serving.test_api import Api, error_of

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "fake_serve")]

# Values no schema of that kind admits. A parameter whose schema yields none fails the walk below:
# declare a constraint for it (or a bad value here), so it cannot go unchecked.
BAD_BY_TYPE = {
    "boolean": ["maybe", "null", "2", ""],
    "integer": ["null", "ten", "1.5", "", "1e3", "٣"],
}
BAD_BY_NAME = {
    "owner": ["no spaces allowed", "a" * 151, ""],
    "cursor": ["not-a-cursor", "", "%%%"],
    "gate": ["no spaces allowed", "a" * 101, "../x", ""],
}


def resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    return schema


def bad_values(doc: dict, parameter: dict) -> list[str]:
    schema = resolve(doc, parameter["schema"])
    values = list(BAD_BY_NAME.get(parameter["name"], []))
    if "enum" in schema:
        values += ["AAA", "", "null"]
    values += BAD_BY_TYPE.get(schema.get("type", ""), [])
    if "minimum" in schema:
        values.append(str(schema["minimum"] - 1))
    if "maximum" in schema:
        values.append(str(schema["maximum"] + 1))
    return values


def declared_query_parameters() -> list[tuple[str, dict]]:
    doc = document()
    found = []
    for path, item in doc["paths"].items():
        if "get" not in item:
            continue
        for parameter in item.get("parameters", []) + item["get"].get("parameters", []):
            if parameter["in"] == "query":
                found.append((path, parameter))
    return found


CASES = [
    pytest.param(path, parameter["name"], value, id=f"{path} ?{parameter['name']}={value[:12]!r}")
    for path, parameter in declared_query_parameters()
    for value in bad_values(document(), parameter)
]


@pytest.fixture
def admin_api(client, admin):
    _, raw = ApiToken.issue(admin, "ci")
    return Api(client, raw)


def test_every_declared_query_parameter_has_bad_values_to_try():
    declared = declared_query_parameters()
    assert {p["name"] for _, p in declared} >= {"state", "include_deleted", "owner", "limit", "cursor", "events_before"}
    for path, parameter in declared:
        assert bad_values(document(), parameter), f"{path} ?{parameter['name']}: no bad value to send"


@pytest.mark.parametrize("path,name,value", CASES)
def test_a_bad_value_for_a_declared_query_parameter_is_a_400_naming_it(admin_api, alice, path, name, value):
    # As an admin, so that the admin-only `owner` is read rather than ignored.
    model = create_model(alice, "demo")
    url = "/api/v2" + path.replace("{model_key}", model.model_key)
    response = admin_api.get(url, **{name: value})
    assert response.status_code == 400, (url, name, value, response.content[:300])
    error = error_of(response)
    assert (error["status"], error["code"], error["field"]) == (400, "bad_parameter", name)
    assert name in error["message"]
    model.refresh_from_db()
    assert ServeModel.objects.count() == 1 and model.generation == 1


@pytest.mark.parametrize("path,name,value", [
    ("/serve/models", "state", "RUNNING"),
    ("/serve/models", "state", "running"),
    ("/serve/models", "include_deleted", "true"),
    ("/serve/models", "include_deleted", "0"),
    ("/serve/models", "owner", "alice"),
    ("/serve/models", "owner", "first.last@example+x-y"),
    ("/serve/models", "limit", "1"),
    ("/serve/models", "limit", "500"),
    ("/serve/models/{model_key}", "events_before", "999999"),
])
def test_a_good_value_for_a_declared_query_parameter_is_a_200(admin_api, alice, path, name, value):
    model = create_model(alice, "demo")
    url = "/api/v2" + path.replace("{model_key}", model.model_key)
    assert admin_api.get(url, **{name: value}).status_code == 200


def test_the_list_declares_its_paging(alice_client):
    doc = alice_client.get("/api/v2/openapi.json").json()
    get = doc["paths"]["/serve/models"]["get"]
    names = {p["name"]: p["schema"] for p in get["parameters"]}
    assert names["limit"] == {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}
    assert names["cursor"]["type"] == "string"
    body = get["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
    assert body["next"] == {"type": ["string", "null"], "description": body["next"]["description"]}
    assert {"items", "openai_base_url", "next"} <= set(body)
    assert "400" in get["responses"] and "400" in doc["paths"]["/serve/models/{model_key}"]["get"]["responses"]
