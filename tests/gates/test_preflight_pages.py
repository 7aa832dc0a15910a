"""The preflight pages: a run's report (each guard, declared beside effective, the remedy, who forced
what), the force form and its errors, the model page's "Run preflight" button, the gates index;
another user's run is a 404 everywhere."""
from __future__ import annotations

import re

import pytest
from django.urls import reverse

from dashboard.models import AuditEntry
from gates import preflights
from gates.models import PreflightRun, RuntimeReading
from gates.preflight.base import NodeRuntime, Runtime
from serving.models import ServeModel
from tests.gates.test_preflight_api import deploy_run, roots  # noqa: F401  (roots is a fixture)
from tests.gates.test_preflight_cli import WRONG_SHA
from tests.serving.factories import create_model

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots")]

REASON = "tokenizer re-exported from the same vocab; diffed by hand"


def report_url(run: PreflightRun) -> str:
    return reverse("gates:preflight_report", args=[run.pk])


def force_url(run: PreflightRun) -> str:
    return reverse("gates:preflight_force", args=[run.pk])


def html(response) -> str:
    return response.content.decode()


def guard_section(page: str, guard: str) -> str:
    match = re.search(rf'<article class="card guard guard-\w+" id="guard-{guard}">(.*?)</article>', page, re.S)
    assert match, f"no section for the {guard} guard"
    return match.group(1)


@pytest.fixture
def skewed(alice):
    """alice's model whose card no longer matches its tokenizer, and the preflight its deploy ran."""
    model = create_model(alice, "demo", source="$HOME/common/hf/skewed")
    return model, deploy_run(model)


def test_the_report_shows_each_guard_declared_beside_effective_and_the_remedy(alice_client, alice, roots):
    card = roots / "hf" / "skewed" / "model-card.json"
    card.write_text(card.read_text().replace("{", '{"torch": "2.5.1", ', 1))
    cluster = Runtime("cluster", (NodeRuntime("node-a", {"torch": "2.4.0"}),), read_at="2025-01-01T00:00:00+00:00")
    RuntimeReading.objects.create(runtime=cluster.as_dict(), node_ids=["node-a"])
    run = deploy_run(create_model(alice, "demo", source="$HOME/common/hf/skewed"))

    response = alice_client.get(report_url(run))
    assert response.status_code == 200
    page = html(response)
    for guard in ("versions", "cuda", "prompts", "secrets"):
        guard_section(page, guard)
    versions = guard_section(page, "versions")
    assert "✖ checkpoint ↔ runtime" in versions
    # One row per compared thing: what the card declares, then what is in effect, side by side.
    assert "<td><code>torch</code></td><td><code>2.5.1</code></td><td><code>2.4.0</code></td>" in versions
    assert f"<td><code>tokenizer_sha</code></td><td><code>{WRONG_SHA}</code></td><td><code>{run.results[0]['evidence'][1]['effective']}</code></td>" in versions
    assert "drift at minor level" in versions
    assert '<p class="remedy">→ Rebuild the card from the files you ship' in versions
    assert "the Ray cluster's workers (1 node(s)" in page
    assert 'hx-trigger="every 2s"' not in page  # a finished run does not poll


def test_a_running_report_polls_and_the_partial_comes_alone(alice_client, alice):
    model = create_model(alice, "demo")
    run = preflights.new_run(model.resolved_spec, trigger=PreflightRun.Trigger.DEPLOY, owner=alice, model=model)
    partial = alice_client.get(report_url(run), HTTP_HX_REQUEST="true")
    assert partial.status_code == 200 and "HX-Request" in partial["Vary"]
    assert 'hx-trigger="every 2s"' in html(partial) and "<h1>" not in html(partial)

    preflights.execute(run, preflights.cached_runtime(), wait_for_secrets=False)
    done = alice_client.get(report_url(run), HTTP_HX_REQUEST="true")
    assert 'id="preflight-report"' in html(done) and 'hx-trigger="every 2s"' not in html(done)


def test_another_users_report_is_a_404(bob_client, skewed):
    _, run = skewed
    assert bob_client.get(report_url(run)).status_code == 404
    assert bob_client.post(force_url(run), {"reason": REASON}).status_code == 404
    run.refresh_from_db()
    assert run.forced_at is None


def test_the_force_form_refuses_a_short_reason_next_to_the_field(alice_client, skewed):
    _, run = skewed
    page = html(alice_client.get(report_url(run)))
    assert f'action="{force_url(run)}"' in page  # a forceable deploy run offers the form

    response = alice_client.post(force_url(run), {"reason": "  "})
    assert response.status_code == 422
    field = re.search(r'<div class="field has-error" id="field-reason">(.*?)</div>', html(response), re.S)
    assert field, "the reason field is not marked as the one in error"
    assert 'aria-describedby="id_reason_error"' in field.group(1)
    assert '<p class="field-error" id="id_reason_error" role="alert">Say why it is safe to deploy anyway (at least 10 characters)' in field.group(1)
    run.refresh_from_db()
    assert run.forced_at is None and not AuditEntry.objects.filter(action="preflight.force").exists()


def test_forcing_goes_back_to_the_model_which_shows_who_forced_it(alice_client, alice, skewed):
    model, run = skewed
    response = alice_client.post(force_url(run), {"reason": REASON})
    assert response.status_code == 303
    assert response["Location"] == reverse("serving:detail", args=[model.model_key])

    run.refresh_from_db()
    assert run.forced_by == alice and run.force_reason == REASON and run.passed
    assert AuditEntry.objects.get(action="preflight.force").actor == alice

    model_page = html(alice_client.get(response["Location"]))
    line = re.search(r'<p class="help" id="preflight-line">(.*?)</p>', model_page, re.S).group(1)
    assert f"#{run.pk}" in line and "forced by alice" in line
    assert f"Preflight #{run.pk} forced" in model_page  # the flash message

    report = html(alice_client.get(report_url(run)))
    assert "Forced by <strong>alice</strong>" in report and "past “checkpoint ↔ runtime”" in report and REASON in report
    assert f'action="{force_url(run)}"' not in report  # forced once: the form is gone


def test_an_on_demand_run_offers_no_force_and_points_to_the_deploys(alice_client, skewed):
    """The deploy gate reads the deploy's own preflight: forcing an on-demand run would let nothing through."""
    model, deployed = skewed
    on_demand = preflights.run_on_demand(model.resolved_spec, owner=model.owner, trigger=PreflightRun.Trigger.PAGE, model=model)
    assert on_demand.can_be_forced
    page = html(alice_client.get(report_url(on_demand)))
    assert f'action="{force_url(on_demand)}"' not in page
    pointer = re.search(r'<p class="notice warn" id="force-elsewhere" role="alert">(.*?)</p>', page, re.S)
    assert pointer and f"preflight #{deployed.pk} ({report_url(deployed)})" in pointer.group(1)
    response = alice_client.post(force_url(on_demand), {"reason": REASON})
    assert response.status_code == 409 and 'id="force-elsewhere"' in html(response)
    on_demand.refresh_from_db()
    assert on_demand.forced_at is None


def test_the_run_preflight_button_runs_one_and_shows_its_report(alice_client, alice, skewed):
    model, _ = skewed
    response = alice_client.post(reverse("gates:preflight_model", args=[model.model_key]))
    assert response.status_code == 303
    run = PreflightRun.objects.get(trigger=PreflightRun.Trigger.PAGE)
    assert response["Location"] == report_url(run)
    assert run.model == model and run.owner == alice and run.generation == model.generation and run.status == "fail"
    assert run.resolved_spec == model.resolved_spec
    page = html(alice_client.get(reverse("serving:detail", args=[model.model_key])))
    assert "Checked since (from the model&#x27;s page): <a href=\"%s\">#%d</a>" % (report_url(run), run.pk) in page


def test_the_run_preflight_button_is_a_404_on_another_users_model(bob_client, skewed):
    model, _ = skewed
    assert bob_client.post(reverse("gates:preflight_model", args=[model.model_key])).status_code == 404
    assert not PreflightRun.objects.filter(trigger=PreflightRun.Trigger.PAGE).exists()


def test_the_run_preflight_button_checks_the_folder_is_still_the_users(alice_client, alice, roots):
    model = create_model(alice, "mine", source="$HOME/models/mine")
    folder = roots / "users" / "alice" / "models" / "mine"
    for child in folder.rglob("*"):
        if child.is_file():
            child.unlink()
    for child in sorted(folder.rglob("*"), reverse=True):
        child.rmdir()
    folder.rmdir()
    folder.symlink_to(roots / "users" / "bob" / "models" / "his")  # swapped for a link into bob's folder

    response = alice_client.post(reverse("gates:preflight_model", args=[model.model_key]), follow=True)
    assert response.redirect_chain[-1] == (reverse("serving:detail", args=[model.model_key]), 303)
    assert "Preflight not run:" in html(response) and "another user&#x27;s folder" in html(response)
    assert not PreflightRun.objects.exists()


def test_the_index_lists_the_users_runs_only(alice_client, alice, bob, skewed):
    _, alices = skewed
    bobs = deploy_run(create_model(bob, "his", source="$HOME/models/his"))
    page = html(alice_client.get(reverse("gates:index")))
    assert f'id="run-{alices.pk}"' in page and f'id="run-{bobs.pk}"' not in page
    assert ServeModel.objects.count() == 2
