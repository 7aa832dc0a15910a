"""A secret's value reaches the replicas' environment and nowhere else. Alice stores one, deploys a
model whose preflight requires it through the real reconciler (FakeServe at the Ray edge records
what the replicas were given), and then every page and API endpoint the URL walk finds, as alice and
as an admin, every row of every table (events, revisions, preflight runs, audit entries, …), the
Django admin, and every log record at DEBUG are searched for it."""
from __future__ import annotations

import json
import logging

import pytest
from django.apps import apps
from django.contrib import admin as django_admin
from django.test import Client

from tests.security.objects import SECRET_NAME, SECRET_VALUE, make_owned
from tests.security.urlwalk import all_routes

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "gpu_engine")]

# The value and a piece of it: a page that shows part of a secret has leaked it too.
NEEDLES = (SECRET_VALUE, SECRET_VALUE[8:24])
LOGIN_PAGES = {"login", "logout"}


def leaks(text: str) -> bool:
    return any(needle in text for needle in NEEDLES)


def crawl(client: Client, paths: list[str]) -> dict[str, tuple[int, str]]:
    """Each path's status and text, as a full page and (for pages) as the htmx partial its poll fetches."""
    answers = {}
    for path in paths:
        for variant, headers in (("", {}), (" (htmx)", {"HTTP_HX_REQUEST": "true"})):
            if variant and path.startswith("/api/"):
                continue
            response = client.get(path, **headers)
            answers[f"GET {path}{variant}"] = (response.status_code, response.content.decode("utf-8", "replace"))
    return answers


def every_row() -> str:
    # Unmanaged models have no table of their own (gates' permissions holder).
    rows = {model._meta.label: list(model.objects.values()) for model in apps.get_models() if model._meta.managed}
    return json.dumps(rows, default=str, ensure_ascii=False)


def admin_pages(client: Client) -> list[str]:
    paths = []
    for model in django_admin.site._registry:
        base = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        paths += [base] + [f"{base}{pk}/change/" for pk in model.objects.values_list("pk", flat=True)[:20]]
    return paths


def test_a_secret_reaches_the_replicas_and_appears_nowhere_else(caplog, fake_serve, alice, admin):
    caplog.set_level(logging.DEBUG)
    owned = make_owned(alice, fake_serve)
    assert fake_serve.envs[owned.model.model_key][SECRET_NAME] == SECRET_VALUE, "the replicas got it"

    paths = [owned.path(route) for route in all_routes() if route.name not in LOGIN_PAGES]
    seen = {}
    alice_page, admin_page = Client(), Client()
    alice_page.force_login(alice)
    admin_page.force_login(admin)
    seen.update(crawl(alice_page, paths))
    seen.update({f"{k} as admin": v for k, v in crawl(admin_page, paths + admin_pages(admin_page)).items()})
    seen.update({f"{k} with a token": v for k, v in crawl(Client(HTTP_AUTHORIZATION=f"Bearer {owned.raw_token}"), [p for p in paths if p.startswith("/api/")]).items()})
    # The crawl is real: it read alice's model, its preflight report and her secrets, and nothing broke.
    ok = {where for where, (status, _) in seen.items() if status == 200}
    assert {f"GET /serving/{owned.model.model_key}", f"GET /gates/preflight/{owned.run.pk}/", f"GET /api/v2/serve/models/{owned.model.model_key}"} <= ok
    assert any(SECRET_NAME in text for _, text in seen.values()) and not [w for w, (status, _) in seen.items() if status >= 500]

    assert not [where for where, (_, text) in seen.items() if leaks(text)]
    assert not leaks(every_row())
    assert caplog.records and not [r.getMessage() for r in caplog.records if leaks(r.getMessage()) or leaks(str(r.args))]


def test_a_refused_secret_is_not_echoed_back(alice_client, caplog):
    caplog.set_level(logging.DEBUG)
    response = alice_client.post("/gates/secrets/", {"name": "not a name!", "value": SECRET_VALUE})
    assert response.status_code == 422 and not leaks(response.text)
    api = alice_client.put("/api/v2/secrets/bad name", json.dumps({"value": SECRET_VALUE}), content_type="application/json")
    assert api.status_code in (400, 422) and not leaks(api.text)
    assert not [r for r in caplog.records if leaks(r.getMessage())]
