"""/gates/secrets/ and /api/v2/secrets: set, replace, delete with a confirmation, audited; another
user's secret is a 404; and a value, once given, never comes back out of anything Gantry shows."""
from __future__ import annotations

import json
import logging
import re
import sys

import pytest
from cryptography.fernet import Fernet
from django.apps import apps
from django.core import serializers
from django.db import connection
from django.test import Client
from django.views.debug import ExceptionReporter

from dashboard.models import ApiToken, AuditEntry
from gates import secrets as store
from gates.models import Secret
from gates.preflight import secrets as guard
from gates.preflight.base import PreflightConfig, PreflightContext, Runtime

pytestmark = pytest.mark.django_db

PAGE = "/gates/secrets/"
API = "/api/v2/secrets"
VALUE = "sk-proj-Zq8Rw2Lp-THE-VALUE-NOBODY-SEES-4hT6"


def delete_url(name: str) -> str:
    return f"{PAGE}{name}/delete"


class Api:
    def __init__(self, user):
        _, raw = ApiToken.issue(user, "ci")
        self.client, self.auth = Client(), {"HTTP_AUTHORIZATION": f"Bearer {raw}"}

    def get(self, url=API):
        return self.client.get(url, **self.auth)

    def put(self, name, body):
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return self.client.put(f"{API}/{name}", data=data, content_type="application/json", **self.auth)

    def delete(self, name):
        return self.client.delete(f"{API}/{name}", **self.auth)


@pytest.fixture
def alice_api(alice):
    return Api(alice)


@pytest.fixture
def bob_api(bob):
    return Api(bob)


def error_of(response) -> dict:
    assert response["Content-Type"] == "application/json"
    return response.json()["error"]


# --- the page -------------------------------------------------------------------------------------
def test_the_page_lists_names_with_their_time_and_a_form_that_works_without_javascript(alice_client, alice):
    store.set_secret(alice, "OPENAI_API_KEY", VALUE, alice)
    response = alice_client.get(PAGE)
    assert response.status_code == 200
    html = response.text
    assert "OPENAI_API_KEY" in html and VALUE not in html
    secret = Secret.objects.get()
    assert secret.updated_at.strftime("%Y-%m-%d %H:%M") in html
    assert f'<form method="post" action="{PAGE}"' in html
    value_input = re.search(r"<input[^>]*name=\"value\"[^>]*>", html).group(0)
    assert 'type="password"' in value_input and 'autocomplete="off"' in value_input and "value=" not in value_input
    assert f'href="{delete_url("OPENAI_API_KEY")}"' in html  # a real link; htmx only opens it in the dialog
    assert f'href="{PAGE}"' in alice_client.get("/").text  # in the layout's navigation


def test_setting_a_secret_redirects_audits_and_shows_the_name(alice_client, alice):
    response = alice_client.post(PAGE, {"name": "OPENAI_API_KEY", "value": VALUE})
    assert response.status_code == 303 and response["Location"] == PAGE
    assert store.values_for(alice, ["OPENAI_API_KEY"]) == {"OPENAI_API_KEY": VALUE}
    assert AuditEntry.objects.filter(action="secret.create", target="secret OPENAI_API_KEY of alice", actor=alice).exists()
    page = alice_client.get(PAGE).text
    assert "Added OPENAI_API_KEY." in page and VALUE not in page


def test_setting_it_again_replaces_the_value(alice_client, alice):
    alice_client.post(PAGE, {"name": "TOKEN", "value": "first"})
    response = alice_client.post(PAGE, {"name": "TOKEN", "value": VALUE}, follow=True)
    assert "Replaced the value of TOKEN." in response.text
    assert Secret.objects.count() == 1 and store.values_for(alice, ["TOKEN"]) == {"TOKEN": VALUE}
    assert list(AuditEntry.objects.order_by("at", "id").values_list("action", flat=True)) == ["secret.create", "secret.replace"]


def test_a_bad_name_is_shown_beside_the_field_and_the_value_is_not_sent_back(alice_client):
    response = alice_client.post(PAGE, {"name": "openai-key", "value": VALUE})
    assert response.status_code == 422
    html = response.text
    error = re.search(r'<p class="field-error" id="name-error">([^<]*)</p>', html)
    assert error and "capital letters, digits and _" in error.group(1)
    assert 'value="openai-key"' in html  # the name is kept for fixing
    assert VALUE not in html
    assert not Secret.objects.exists() and not AuditEntry.objects.exists()


def test_a_bad_value_is_shown_beside_its_field_without_echoing_it(alice_client):
    too_big = VALUE * (64 * 1024 // len(VALUE) + 1)
    response = alice_client.post(PAGE, {"name": "BIG", "value": too_big})
    assert response.status_code == 422
    error = re.search(r'<p class="field-error" id="value-error">([^<]*)</p>', response.text)
    assert error and "at most 64 KiB" in error.group(1)
    assert VALUE not in response.text and not Secret.objects.exists()


def test_a_missing_value_is_refused_beside_its_field(alice_client):
    response = alice_client.post(PAGE, {"name": "EMPTY", "value": ""})
    assert response.status_code == 422 and 'id="value-error"' in response.text
    assert not Secret.objects.exists()


def test_delete_asks_first_then_deletes_and_audits(alice_client, alice):
    store.set_secret(alice, "TOKEN", VALUE, alice)
    confirm = alice_client.get(delete_url("TOKEN"))
    assert confirm.status_code == 200
    assert "Delete the secret TOKEN?" in confirm.text and f'action="{delete_url("TOKEN")}"' in confirm.text
    assert "<html" in confirm.text and VALUE not in confirm.text
    assert store.names_for(alice) == {"TOKEN"}  # asking deletes nothing

    dialog = alice_client.get(delete_url("TOKEN"), HTTP_HX_REQUEST="true")
    assert "<html" not in dialog.text and 'role="alertdialog"' in dialog.text

    response = alice_client.post(delete_url("TOKEN"))
    assert response.status_code == 303 and response["Location"] == PAGE
    assert store.names_for(alice) == set()
    assert AuditEntry.objects.filter(action="secret.delete", target="secret TOKEN of alice", actor=alice).count() == 1
    assert "Deleted TOKEN." in alice_client.get(PAGE).text
    assert alice_client.post(delete_url("TOKEN")).status_code == 404


def test_bob_cannot_see_or_delete_alices_secrets(client, alice, bob):
    store.set_secret(alice, "ALICES_TOKEN", VALUE, alice)
    client.force_login(bob)
    assert "ALICES_TOKEN" not in client.get(PAGE).text
    assert client.get(delete_url("ALICES_TOKEN")).status_code == 404
    assert client.post(delete_url("ALICES_TOKEN")).status_code == 404
    # Bob setting the same name makes his own; alice's is untouched.
    client.post(PAGE, {"name": "ALICES_TOKEN", "value": "bobs"})
    assert store.values_for(alice, ["ALICES_TOKEN"]) == {"ALICES_TOKEN": VALUE}
    assert store.values_for(bob, ["ALICES_TOKEN"]) == {"ALICES_TOKEN": "bobs"}
    assert not AuditEntry.objects.filter(action="secret.delete").exists()


def test_anonymous_visitors_go_to_the_login_page(client):
    assert client.get(PAGE)["Location"].startswith("/login/")
    assert client.post(PAGE, {"name": "X", "value": "y"})["Location"].startswith("/login/")
    assert not Secret.objects.exists()


def test_the_admin_shows_names_and_dates_only(client, admin, alice):
    secret, _ = store.set_secret(alice, "TOKEN", VALUE, alice)
    client.force_login(admin)
    listing = client.get("/admin/gates/secret/")
    assert listing.status_code == 200 and "TOKEN" in listing.text
    detail = client.get(f"/admin/gates/secret/{secret.pk}/change/")
    assert detail.status_code == 200
    for page in (listing, detail):
        assert VALUE not in page.text and secret.ciphertext not in page.text
    assert client.get("/admin/gates/secret/add/").status_code == 403


# --- the API --------------------------------------------------------------------------------------
def test_put_creates_then_replaces(alice_api, alice):
    created = alice_api.put("OPENAI_API_KEY", {"value": VALUE})
    assert created.status_code == 201
    assert created.json()["name"] == "OPENAI_API_KEY" and created.json()["created"] is True
    replaced = alice_api.put("OPENAI_API_KEY", {"value": VALUE + "-2"})
    assert replaced.status_code == 200 and replaced.json()["created"] is False
    assert store.values_for(alice, ["OPENAI_API_KEY"]) == {"OPENAI_API_KEY": VALUE + "-2"}
    assert list(AuditEntry.objects.order_by("at", "id").values_list("action", flat=True)) == ["secret.create", "secret.replace"]


def test_get_lists_names_and_times_only(alice_api, alice, bob):
    store.set_secret(alice, "B_TOKEN", VALUE, alice)
    store.set_secret(alice, "A_TOKEN", VALUE, alice)
    store.set_secret(bob, "BOBS", VALUE, bob)
    body = alice_api.get().json()
    assert [item["name"] for item in body["items"]] == ["A_TOKEN", "B_TOKEN"]
    assert all(set(item) == {"name", "updated_at"} for item in body["items"])
    assert body["items"][0]["updated_at"] == Secret.objects.get(owner=alice, name="A_TOKEN").updated_at.isoformat()


def test_there_is_no_way_to_get_one_value(alice_api, alice):
    store.set_secret(alice, "TOKEN", VALUE, alice)
    response = alice_api.get(f"{API}/TOKEN")
    assert response.status_code == 405 and VALUE not in response.content.decode()


def test_delete_answers_204_then_404(alice_api, alice):
    store.set_secret(alice, "TOKEN", VALUE, alice)
    response = alice_api.delete("TOKEN")
    assert response.status_code == 204 and response.content == b""
    assert store.names_for(alice) == set()
    assert AuditEntry.objects.filter(action="secret.delete", target="secret TOKEN of alice").count() == 1
    again = alice_api.delete("TOKEN")
    assert again.status_code == 404 and error_of(again)["code"] == "not_found"


def test_bob_cannot_list_replace_or_delete_alices(alice, bob_api):
    store.set_secret(alice, "TOKEN", VALUE, alice)
    assert bob_api.get().json()["items"] == []
    assert bob_api.delete("TOKEN").status_code == 404
    assert store.values_for(alice, ["TOKEN"]) == {"TOKEN": VALUE}


@pytest.mark.parametrize("name", ["lower_case", "9STARTS_WITH_DIGIT", "X" * 129, "HAS.DOT"])
def test_a_bad_name_is_422_with_field_name(alice_api, name):
    for response in (alice_api.put(name, {"value": VALUE}), alice_api.delete(name)):
        error = error_of(response)
        assert response.status_code == 422 and error["field"] == "name" and error["code"] == "invalid_name"
        assert "capital letters" in error["message"]
    assert not Secret.objects.exists()


@pytest.mark.parametrize(
    "body,status,field",
    [
        ('{"value": ', 400, None),
        ("[1, 2]", 422, "value"),
        ('{"other": "x"}', 422, "value"),
        ('{"value": 42}', 422, "value"),
        ('{"value": ""}', 422, "value"),
        ('{"value": "ok", "name": "X"}', 422, "value"),
        (b"\xff\xfe", 400, None),
    ],
)
def test_bad_bodies_are_refused_saying_what_to_send(alice_api, body, status, field):
    response = alice_api.put("TOKEN", body)
    error = error_of(response)
    assert response.status_code == status and error.get("field") == field
    assert not Secret.objects.exists()


def test_anonymous_api_calls_are_401(client):
    for response in (client.get(API), client.put(f"{API}/TOKEN", data='{"value": "x"}', content_type="application/json"), client.delete(f"{API}/TOKEN")):
        assert response.status_code == 401 and error_of(response)["code"] == "unauthenticated"
    assert not Secret.objects.exists()


# --- the guarantee --------------------------------------------------------------------------------
def every_row_of_every_table() -> str:
    """Every row Gantry's database holds, serialized model by model, plus every table read raw."""
    tables = set(connection.introspection.table_names())
    dumps = []
    for model in apps.get_models(include_auto_created=True):
        if model._meta.managed and not model._meta.proxy and model._meta.db_table in tables:
            dumps.append(serializers.serialize("json", model._default_manager.all()))
    with connection.cursor() as cursor:
        for table in sorted(tables):
            cursor.execute(f'SELECT * FROM "{table}"')
            dumps.append(repr(cursor.fetchall()))
    return "\n".join(dumps)


def test_a_value_never_appears_in_a_page_an_api_answer_an_audit_row_a_log_or_an_error(alice, bob, admin, caplog, settings):
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    def keep(response):
        seen.append(response.content.decode("utf-8", "replace"))
        seen.append(str(response.cookies))  # the messages framework keeps its notes in a cookie
        seen.append(str(dict(response.items())))
        return response

    pages = Client()
    pages.force_login(alice)
    keep(pages.post(PAGE, {"name": "OPENAI_API_KEY", "value": VALUE}))
    keep(pages.post(PAGE, {"name": "OPENAI_API_KEY", "value": VALUE}, follow=True))
    keep(pages.post(PAGE, {"name": "bad name", "value": VALUE}))  # refused: the form comes back
    keep(pages.post(PAGE, {"name": "NUL_INSIDE", "value": VALUE + "\x00"}))
    keep(pages.get(PAGE))
    keep(pages.get(delete_url("OPENAI_API_KEY")))
    keep(pages.get(delete_url("OPENAI_API_KEY"), HTTP_HX_REQUEST="true"))

    api = Api(alice)
    keep(api.put("API_COPY", {"value": VALUE}))
    keep(api.put("API_COPY", {"value": VALUE}))
    keep(api.put("bad-name", {"value": VALUE}))
    keep(api.put("TRUNCATED", '{"value": "' + VALUE))  # not JSON: the parser's message must not quote it
    keep(api.put("EXTRA", {"value": VALUE, VALUE: VALUE}))
    keep(api.put("TOO_BIG", {"value": VALUE * 2000}))
    keep(api.get())
    keep(api.get(f"{API}/API_COPY"))
    keep(api.delete("API_COPY"))

    keep(Api(bob).delete("OPENAI_API_KEY"))
    staff = Client()
    staff.force_login(admin)
    keep(staff.get("/admin/gates/secret/"))
    keep(staff.get(f"/admin/gates/secret/{Secret.objects.get(name='OPENAI_API_KEY').pk}/change/"))
    keep(staff.get("/admin/dashboard/auditentry/"))

    # The guard, passing and failing (with a near miss), and what it would store as a report.
    names = store.store_names(alice)
    config = PreflightConfig(secrets=("OPENAI_API_KEY", "OPENAI_API_KEYS"), secret_timeout=0.6)
    result = guard.check(PreflightContext(settings.BASE_DIR, config, Runtime("local", ()), names))
    seen.append(json.dumps(result.as_dict()))

    # The errors the apply step can meet, and redaction of a replica's error line.
    try:
        store.values_for(alice, ["OPENAI_API_KEY", "NEVER_SET"])
    except store.MissingSecret as exc:
        seen.append(exc.message)
    settings.GANTRY_SECRETS_KEYS = [Fernet.generate_key().decode()]
    try:
        store.values_for(alice, ["OPENAI_API_KEY"])
    except store.UnreadableSecret as exc:
        seen.append(exc.message)
    settings.GANTRY_SECRETS_KEYS = []
    values = store.values_for(alice, ["OPENAI_API_KEY"])
    assert values == {"OPENAI_API_KEY": VALUE}  # the value did go in: this test is not vacuous
    seen.append(store.redact(f"openai.AuthenticationError: Incorrect API key provided: {VALUE}", values))

    assert Secret.objects.count() == 1 and AuditEntry.objects.filter(action__startswith="secret.").count() >= 4
    seen.append(every_row_of_every_table())
    seen.append(caplog.text)
    leaks = [i for i, text in enumerate(seen) if VALUE in text or VALUE[:16] in text]
    assert leaks == [], f"the value appears in: {[seen[i][:300] for i in leaks]}"


@pytest.mark.parametrize("path", ["page", "api"])
def test_the_error_report_of_a_crash_while_saving_hides_the_value(rf, alice, monkeypatch, path):
    """What Django mails the admins about a 500 (frames' locals, POST data) must not carry it."""
    from gates import api, secret_views

    def database_went_away(**kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(Secret.objects, "update_or_create", database_went_away)
    if path == "page":
        request = rf.post(PAGE, {"name": "CRASH", "value": VALUE})
        view, kwargs = secret_views.secrets, {}
    else:
        request = rf.put(f"{API}/CRASH", data=json.dumps({"value": VALUE}), content_type="application/json")
        view, kwargs = api.secret_item, {"name": "CRASH"}
    request.user = alice
    try:
        view(request, **kwargs)
    except RuntimeError:
        info = sys.exc_info()
    else:
        pytest.fail("the view did not crash")
    reporter = ExceptionReporter(request, *info)
    report = reporter.get_traceback_text() + reporter.get_traceback_html()
    assert "the database went away" in report and "set_secret" in report  # a real report of the crash
    assert VALUE not in report
