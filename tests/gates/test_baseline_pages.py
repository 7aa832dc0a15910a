"""/gates/baselines/…: the families page, proposing (errors beside the field, with the status the
API gives), a proposal's per-bucket diff, approve / reject only for a reviewer who is not the
author (a forged POST is a 403 that changes nothing), and the eval_baseline.json download."""
from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from dashboard.models import AuditEntry
from gates import baselines as service
from gates.models import Baseline, BaselineEvent
from tests.gates.test_baselines import EVAL_MD5, SEED, SHA_V1, URL, doc

pytestmark = pytest.mark.django_db

PROPOSE = "/gates/baselines/propose"


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def detail_url(baseline: Baseline) -> str:
    return f"/gates/baselines/{baseline.pk}/"


def v2_of(author, *, sha: str = "c" * 40):
    return service.propose("grammar-tutor", doc(sha=sha, previous=SHA_V1, verb__go=("0.80", 60)), URL, author)


@pytest.fixture
def v1(alice, rita):
    return service.approve(service.propose("grammar-tutor", doc(), URL, alice), rita)


def state(baseline: Baseline) -> tuple:
    fresh = Baseline.objects.get(pk=baseline.pk)
    return fresh.status, fresh.reviewer_id, fresh.decided_at, fresh.events.count()


# --- proposing -------------------------------------------------------------------------------------
def test_a_pasted_baseline_is_proposed_and_the_browser_sent_to_it(alice_client, alice):
    response = alice_client.post(PROPOSE, {"name": "grammar-tutor", "justification_url": URL, "document": SEED})
    baseline = Baseline.objects.get()
    assert response.status_code == 303 and response["Location"] == detail_url(baseline)
    assert (baseline.status, baseline.author, baseline.version) == ("proposed", alice, 1)
    page = alice_client.get(detail_url(baseline)).content.decode()
    assert "Proposed grammar-tutor v1" in page


def test_an_uploaded_file_is_proposed_too(alice_client):
    upload = SimpleUploadedFile("eval_baseline.json", SEED.encode(), content_type="application/json")
    response = alice_client.post(PROPOSE, {"name": "grammar-tutor", "justification_url": URL, "document_file": upload})
    assert response.status_code == 303
    assert Baseline.objects.get().eval_set_dvc_hash == EVAL_MD5


def field_error(page: str, field: str) -> str:
    match = re.search(rf'<div class="field-errors" id="{field}-errors" role="alert">(.*?)</div>', page, re.S)
    return match.group(1) if match else ""


@pytest.mark.parametrize("data, status, field, words", [
    ({"document": '{\n  "eval_set_dvc_hash": oops\n}'}, 400, "document", "line 2"),
    ({"document": SEED.replace('"verb.go":              {"accuracy": 0.74', '"verb.go": {"accuracy": "high"')}, 422, "document", "buckets[&quot;verb.go&quot;].accuracy"),
    ({"document": SEED, "justification_url": ""}, 422, "justification_url", ""),
    ({"document": SEED, "justification_url": "see slack"}, 422, "justification_url", "http(s) link"),
    ({"document": ""}, 422, "document", "Paste eval_baseline.json"),
    ({"document": SEED.replace('"tolerance_pp"', f'"previous_baseline_sha": "{"e" * 40}", "tolerance_pp"')}, 422, "document", "previous_baseline_sha"),
])
def test_a_refused_proposal_shows_why_beside_the_field_and_creates_nothing(alice_client, data, status, field, words):
    response = alice_client.post(PROPOSE, {"name": "grammar-tutor", "justification_url": URL, **data})
    assert response.status_code == status
    error = field_error(response.content.decode(), field)
    assert error and words in error
    assert not Baseline.objects.exists() and not BaselineEvent.objects.exists()


def test_the_text_typed_is_kept_when_a_proposal_is_refused(alice_client):
    bad = SEED.replace("0.02", "0.0212345678")
    page = alice_client.post(PROPOSE, {"name": "grammar-tutor", "justification_url": URL, "document": bad}).content.decode()
    assert "0.0212345678" in page and f'value="{URL}"' in page.replace("&amp;", "&")


# --- the review --------------------------------------------------------------------------------
def test_the_detail_shows_the_per_bucket_diff_against_the_current_one(alice_client, alice, v1):
    v2 = v2_of(alice)
    page = alice_client.get(detail_url(v2)).content.decode()
    assert "Compared with grammar-tutor v1 (current)" in page
    row = re.search(r'<tr id="bucket-verbgo".*?</tr>', page, re.S).group(0)
    cells = [re.sub(r"<.*?>", "", c).strip() for c in re.findall(r"<td.*?>(.*?)</td>", row, re.S)]
    assert cells == ["verb.go", "0.74", "0.8", "+6", "60", "changed"]
    same = re.search(r'<tr id="bucket-verbbe".*?</tr>', page, re.S).group(0)
    assert "unchanged" in same


def test_buttons_are_absent_for_the_author_and_for_a_non_reviewer_and_present_for_a_reviewer(alice, bob, rita, v1):
    v2 = v2_of(alice)
    for user, why in ((alice, "You proposed this baseline"), (bob, "Only a reviewer")):
        page = client_for(user).get(detail_url(v2)).content.decode()
        assert 'id="approve"' not in page and 'id="reject"' not in page
        assert why in page
    page = client_for(rita).get(detail_url(v2)).content.decode()
    assert 'id="approve"' in page and 'id="reject"' in page
    assert f'action="/gates/baselines/{v2.pk}/approve"' in page


@pytest.mark.parametrize("who", ["alice", "bob"])
@pytest.mark.parametrize("action", ["approve", "reject"])
def test_a_forged_decision_by_the_author_or_a_non_reviewer_is_a_403_that_changes_nothing(request, alice, v1, who, action):
    v2 = v2_of(alice)
    before = state(v2), state(v1), AuditEntry.objects.count()
    response = client_for(request.getfixturevalue(who)).post(f"/gates/baselines/{v2.pk}/{action}", {"note": "lgtm"})
    assert response.status_code == 403
    assert (state(v2), state(v1), AuditEntry.objects.count()) == before


def test_a_reviewer_approves_and_the_history_says_who_did_what(alice, rita, v1):
    v2 = v2_of(alice)
    response = client_for(rita).post(f"/gates/baselines/{v2.pk}/approve", {"note": "run abc123 checked"})
    assert response.status_code == 303 and response["Location"] == detail_url(v2)
    assert Baseline.objects.get(pk=v2.pk).status == "current" and Baseline.objects.get(pk=v1.pk).status == "superseded"
    page = client_for(alice).get("/gates/baselines/").content.decode()
    current = re.search(r'<p id="current-grammar-tutor">.*?</p>', page, re.S).group(0)
    assert ">v2<" in current and "approved by rita" in current
    history = page[page.index('id="history-grammar-tutor"'):]
    for line in ("grammar-tutor v2 approved: run abc123 checked", "grammar-tutor v1 superseded: superseded by grammar-tutor v2",
                 "grammar-tutor v2 proposed", "grammar-tutor v1 approved", "grammar-tutor v1 proposed"):
        assert line in history
    assert history.count("by rita") == 3 and history.count("by alice") == 2


def test_a_rejection_without_a_note_is_refused_beside_the_note(rita, alice, v1):
    v2 = v2_of(alice)
    response = client_for(rita).post(f"/gates/baselines/{v2.pk}/reject", {"note": ""})
    assert response.status_code == 422
    assert "Say why" in field_error(response.content.decode(), "note")
    assert Baseline.objects.get(pk=v2.pk).status == "proposed"
    assert client_for(rita).post(f"/gates/baselines/{v2.pk}/reject", {"note": "wrong eval set"}).status_code == 303
    assert Baseline.objects.get(pk=v2.pk).status == "rejected"


def test_approving_a_stale_proposal_says_why_on_the_page(alice, bob, rita, v1):
    late, first = v2_of(alice, sha="a" * 40), v2_of(bob, sha="b" * 40)
    client_for(rita).post(f"/gates/baselines/{first.pk}/approve", {"note": ""})
    response = client_for(rita).post(f"/gates/baselines/{late.pk}/approve", {"note": ""})
    assert response.status_code == 409
    assert "the current baseline is now grammar-tutor v3" in response.content.decode()
    assert Baseline.objects.get(pk=late.pk).status == "proposed"


def test_the_export_downloads_eval_baseline_json(bob, v1):
    response = client_for(bob).get(f"/gates/baselines/{v1.pk}/export")
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="eval_baseline.json"'
    assert response.content.decode() == service.export_baseline(v1)


def test_pages_need_a_login(client, v1):
    for url in ("/gates/baselines/", PROPOSE, detail_url(v1), f"/gates/baselines/{v1.pk}/export"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")
