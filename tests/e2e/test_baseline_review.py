"""In a real headless Chromium: an author proposes a new eval baseline, cannot approve it (no button,
and a forged POST with her own session is refused and changes nothing), a reviewer reads the
per-bucket diff and approves it without JavaScript, and the history shows both versions and who
did what."""
from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from dashboard.models import AuditEntry
from gates import baselines as service
from gates.models import Baseline, BaselineEvent
from tests.conftest import login_in_browser
from tests.gates.test_baselines import SHA_V1, URL, doc

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

V2_SHA = "c" * 40


def v2_document() -> str:
    data = json.loads(service.export_text(doc()))
    data["baseline_sha"], data["previous_baseline_sha"] = V2_SHA, SHA_V1
    data["buckets"]["verb.go"]["accuracy"] = 0.80
    data["buckets"]["verb.have"] = {"accuracy": 0.7, "n": 60}
    return json.dumps(data, indent=2)


def test_an_author_proposes_a_reviewer_approves_and_history_keeps_both(page, browser, live_server, alice, bob, rita, test_output):
    v1 = service.approve(service.propose("grammar-tutor", doc(), URL, bob), rita)

    # --- alice proposes v2 ---------------------------------------------------------------------
    login_in_browser(page, live_server.url, "alice")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Baselines").click()
    expect(page.locator("#current-grammar-tutor")).to_contain_text("v1")
    page.get_by_role("link", name="Propose a baseline").click()
    page.get_by_label("Name").fill("grammar-tutor")
    page.get_by_label("Justification link").fill("https://mlflow.example.test/#/runs/v2")
    page.get_by_label("eval_baseline.json", exact=True).fill(v2_document())
    page.get_by_role("button", name="Propose").click()
    v2 = Baseline.objects.get(version=2)
    expect(page).to_have_url(f"{live_server.url}/gates/baselines/{v2.pk}/")
    expect(page.locator(".msg.success")).to_contain_text("Proposed grammar-tutor v2")

    # The author sees the diff but no way to decide on it.
    expect(page.locator("#bucket-verbgo")).to_contain_text("+6")
    expect(page.get_by_role("button", name=re.compile("Approve"))).to_have_count(0)
    expect(page.get_by_role("button", name="Reject")).to_have_count(0)
    expect(page.locator("#why-not")).to_contain_text("You proposed this baseline")
    page.screenshot(path=test_output / "baseline-author-view.png", full_page=True)

    # A forged approval with alice's own session and a valid CSRF token: refused by the rule, not by CSRF.
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    before = (Baseline.objects.get(pk=v2.pk).status, BaselineEvent.objects.count(), AuditEntry.objects.count())
    forged = page.request.post(
        f"{live_server.url}/gates/baselines/{v2.pk}/approve",
        form={"note": "approving my own", "csrfmiddlewaretoken": csrf},
        headers={"X-CSRFToken": csrf, "Referer": page.url},
    )
    assert forged.status == 403
    assert "You proposed this baseline" in forged.text()
    assert (Baseline.objects.get(pk=v2.pk).status, BaselineEvent.objects.count(), AuditEntry.objects.count()) == before
    assert Baseline.objects.get(pk=v1.pk).status == "current"

    # --- rita reviews, without JavaScript --------------------------------------------------------
    context = browser.new_context(java_script_enabled=False)
    try:
        reviewer = context.new_page()
        login_in_browser(reviewer, live_server.url, "rita")
        reviewer.get_by_role("navigation", name="Main").get_by_role("link", name="Baselines").click()
        reviewer.locator("#open-grammar-tutor").get_by_role("link", name="v2", exact=True).click()
        expect(reviewer.get_by_role("heading", name="Compared with grammar-tutor v1 (current)")).to_be_visible()
        go = reviewer.locator("#bucket-verbgo td")
        expect(go.nth(1)).to_have_text("0.74")
        expect(go.nth(2)).to_have_text("0.8")
        expect(go.nth(3)).to_have_text("+6")
        expect(go.nth(4)).to_have_text("60")
        expect(reviewer.locator("#bucket-verbhave")).to_contain_text("added")
        reviewer.screenshot(path=test_output / "baseline-review-diff.png", full_page=True)
        reviewer.get_by_label("Note").fill("Checked run v2: verb.go fixed")
        reviewer.get_by_role("button", name=re.compile("Approve")).click()
        expect(reviewer.locator(".msg.success")).to_contain_text("Approved grammar-tutor v2")
        expect(reviewer.locator("#baseline-status")).to_contain_text("approved by rita")
        expect(reviewer.get_by_role("button", name=re.compile("Approve"))).to_have_count(0)

        reviewer.get_by_role("navigation", name="Main").get_by_role("link", name="Baselines").click()
        expect(reviewer.locator("#current-grammar-tutor")).to_contain_text("v2")
        history = reviewer.locator("#history-grammar-tutor .event")
        expect(history).to_have_count(5)
        expected = [  # newest first
            ("grammar-tutor v2 approved: Checked run v2: verb.go fixed", "rita"),
            ("grammar-tutor v1 superseded: superseded by grammar-tutor v2", "rita"),
            ("grammar-tutor v2 proposed", "alice"),
            ("grammar-tutor v1 approved", "rita"),
            ("grammar-tutor v1 proposed", "bob"),
        ]
        for i, (message, who) in enumerate(expected):
            expect(history.nth(i)).to_contain_text(message)
            expect(history.nth(i).locator(".actor")).to_have_text(f"by {who}")
        reviewer.screenshot(path=test_output / "baseline-history.png", full_page=True)
    finally:
        context.close()

    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.status, v2.status, v2.reviewer, v2.supersedes_id) == ("superseded", "current", rita, v1.pk)
