"""Gate runs without a cluster: what a request must carry, how a step's lease and attempts behave,
what the comparison decides, and who may sign off an INCONCLUSIVE run on which evidence. The whole
run through MLflow and the real engine is tests/integration/test_gate_run_end_to_end.py."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from dashboard.models import ApiToken, AuditEntry
from gates import baselines, evalsets, gate_runs
from gates.models import GateRun, GateRunState, GateStep, Step, StepStatus

pytestmark = pytest.mark.django_db

ROWS = [{"id": i, "buckets": ["a" if i < 10 else "b"], "prompt": f"q{i}", "expected": f"a{i}"} for i in range(20)]


@pytest.fixture
def gate(alice, rita):
    data = ("\n".join(json.dumps(r) for r in ROWS) + "\n").encode()
    eval_set, _ = evalsets.upload("unit-set", data, alice)
    doc = baselines.document_from_data({
        "eval_set_dvc_hash": eval_set.md5, "baseline_sha": "b1", "tolerance_pp": 0.02,
        "buckets": {"a": {"accuracy": 0.9, "n": 10}, "b": {"accuracy": 0.9, "n": 10}},
    })
    baselines.approve(baselines.propose("tutor", doc, "https://example.test/run/1", alice), rita)
    return "tutor"


def new_run(user, gate: str, **extra) -> GateRun:
    fields = {"gate": gate, "mlflow_run_id": "0123456789abcdef0123456789abcdef", "semver": "v0.3.1", **extra}
    return gate_runs.request(user, **fields)


def at_compare(run: GateRun, right_a: int, right_b: int) -> GateRun:
    """The run as the evaluate step leaves it: answers graded, the candidate document written."""
    rows = evalsets.read_rows(run.eval_set).rows
    answers = [{"id": r.id, "answer": "x", "correct": (r.id < right_a) if r.id < 10 else (r.id - 10 < right_b)} for r in rows]
    candidate = gate_runs.candidate_document(run.baseline.eval_set_dvc_hash, rows, answers)
    GateRun.objects.filter(pk=run.pk).update(state=GateRunState.RUNNING, step=Step.COMPARE, answers=answers, candidate=candidate)
    return GateRun.objects.get(pk=run.pk)


# --- asking ------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,field,words", [
    ({"gate": "nope"}, "gate", "has no current baseline"),
    ({"semver": "0.3.1"}, "semver", "v"),
    ({"semver": "v0.0.0-dev.1"}, "semver", "register_dev"),
    ({"mlflow_run_id": "../../etc"}, "mlflow_run_id", "run id"),
    ({"artifact_path": "../model"}, "artifact_path", "no '..'"),
    ({"registered_model": "has space"}, "registered_model", "registered model"),
])
def test_a_request_the_gate_cannot_take_is_refused_naming_the_field(gate, bob, extra, field, words):
    with pytest.raises(gate_runs.GateRunRefused) as refused:
        new_run(bob, **({"gate": gate} | extra))
    assert (refused.value.status, refused.value.field) == (422, field)
    assert words in refused.value.message
    assert not GateRun.objects.exists()


def test_a_gate_whose_eval_set_was_never_uploaded_is_refused(alice, rita, bob):
    doc = baselines.document_from_data({"eval_set_dvc_hash": "0" * 32, "baseline_sha": "b", "tolerance_pp": 0.02, "buckets": {"a": {"accuracy": 0.5, "n": 4}}})
    baselines.approve(baselines.propose("lonely", doc, "https://example.test/x", alice), rita)
    with pytest.raises(gate_runs.GateRunRefused, match="never uploaded"):
        new_run(bob, "lonely")


def test_a_request_is_queued_against_the_current_baseline_and_audited(gate, bob, django_capture_on_commit_callbacks, monkeypatch):
    sent = []
    monkeypatch.setattr(gate_runs, "enqueue", lambda pk, countdown=0: sent.append(pk))
    with django_capture_on_commit_callbacks(execute=True):
        run = new_run(bob, gate)
    assert (run.state, run.step, run.registered_model, run.environment) == (GateRunState.QUEUED, Step.FETCH, "tutor", "dev")
    assert run.baseline == baselines.current_for(gate) and run.eval_set.md5 == run.baseline.eval_set_dvc_hash
    assert sent == [run.pk]
    assert AuditEntry.objects.filter(action="gate.run", target=f"gate run {run.pk}", actor=bob).exists()


# --- steps, leases and attempts ------------------------------------------------------------------------
def test_a_step_left_running_by_a_dead_worker_is_marked_interrupted_and_run_again(gate, bob):
    run = new_run(bob, gate)
    GateRun.objects.filter(pk=run.pk).update(state=GateRunState.RUNNING, step=Step.CLEANUP,
                                             lease_token="dead", lease_until=timezone.now() + timedelta(seconds=30))
    GateStep.objects.create(run=run, name=Step.CLEANUP)  # RUNNING: its worker never came back
    assert gate_runs.advance(run.pk) is None, "a live lease was taken over"
    assert run.steps.get().status == StepStatus.RUNNING

    GateRun.objects.filter(pk=run.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert gate_runs.advance(run.pk) == 0.0
    attempts = list(run.steps.values_list("attempt", "status"))
    assert attempts == [(1, StepStatus.INTERRUPTED), (2, StepStatus.OK)]
    run.refresh_from_db()
    assert (run.step, run.lease_token, run.lease_until) == (Step.COMPARE, "", None)


def test_a_stalled_run_is_found_for_beat_to_send_again(gate, bob):
    run = new_run(bob, gate)
    assert gate_runs.stalled() == [run.pk]
    GateRun.objects.filter(pk=run.pk).update(lease_token="t", lease_until=timezone.now() + timedelta(seconds=30))
    assert gate_runs.stalled() == []
    GateRun.objects.filter(pk=run.pk).update(state=GateRunState.PROMOTED, lease_until=None)
    assert gate_runs.stalled() == []


def test_a_fraction_right_is_kept_exactly_enough_to_give_the_count_back():
    for n in (3, 7, 60, 240, 400, 997):
        for right in (0, 1, n // 3, n - 1, n):
            from decimal import Decimal
            assert round(Decimal(gate_runs._fraction_text(right, n)) * n) == right


# --- the comparison decides; only PASS goes on by itself ------------------------------------------------
def test_pass_goes_on_to_promote(gate, bob):
    run = at_compare(new_run(bob, gate), 10, 9)
    assert gate_runs.advance(run.pk) == 0.0
    run.refresh_from_db()
    assert (run.verdict, run.state, run.step) == ("PASS", GateRunState.RUNNING, Step.PROMOTE)
    assert len(run.result_sha256) == 64 and run.comparison["buckets"][0]["bucket"] == "a"


def test_fail_ends_the_run_before_the_registry_is_reached(gate, bob):
    run = at_compare(new_run(bob, gate), 10, 2)
    assert gate_runs.advance(run.pk) is None
    run.refresh_from_db()
    assert (run.verdict, run.state, run.failed_step) == ("FAIL", GateRunState.FAILED, Step.COMPARE)
    assert "b:" in run.error and "The registry was not touched" in run.error
    assert not run.steps.filter(name=Step.PROMOTE).exists()


def test_inconclusive_waits_for_a_sign_off(gate, bob):
    run = at_compare(new_run(bob, gate), 10, 8)  # 0.8 vs 0.9 of 10: beyond 2 pp, not significant
    assert gate_runs.advance(run.pk) is None
    run.refresh_from_db()
    assert (run.verdict, run.state, run.step) == ("INCONCLUSIVE", GateRunState.AWAITING_SIGNOFF, Step.PROMOTE)
    assert gate_runs.advance(run.pk) is None, "an INCONCLUSIVE run moved on without a sign-off"
    assert gate_runs.stalled() == []


# --- sign-off ------------------------------------------------------------------------------------
@pytest.fixture
def inconclusive(gate, bob):
    run = at_compare(new_run(bob, gate), 10, 8)
    gate_runs.advance(run.pk)
    return GateRun.objects.select_related("baseline", "eval_set").get(pk=run.pk)


def test_the_requester_cannot_sign_off_their_own_run(inconclusive, bob, rita):
    bob.groups.add(*rita.groups.all())  # even as a reviewer
    with pytest.raises(gate_runs.GateRunRefused, match="other than you") as refused:
        gate_runs.sign_off(inconclusive, bob, result_sha256=inconclusive.result_sha256, note="fine")
    assert refused.value.status == 403
    inconclusive.refresh_from_db()
    assert inconclusive.state == GateRunState.AWAITING_SIGNOFF and not inconclusive.signed_off_at


def test_only_a_reviewer_signs_off(inconclusive, alice):
    with pytest.raises(gate_runs.GateRunRefused, match="Only a reviewer"):
        gate_runs.sign_off(inconclusive, alice, result_sha256=inconclusive.result_sha256, note="fine")


def test_a_sign_off_names_the_result_it_saw_and_says_why(inconclusive, rita):
    with pytest.raises(gate_runs.GateRunRefused) as stale:
        gate_runs.sign_off(inconclusive, rita, result_sha256="0" * 64, note="fine")
    assert stale.value.status == 409
    with pytest.raises(gate_runs.GateRunRefused) as bare:
        gate_runs.sign_off(inconclusive, rita, result_sha256=inconclusive.result_sha256, note="  ")
    assert (bare.value.status, bare.value.field) == (422, "note")


def test_a_sign_off_binds_the_evidence_and_sends_the_run_to_promote(inconclusive, rita, monkeypatch):
    sent = []
    monkeypatch.setattr(gate_runs, "enqueue", lambda pk, countdown=0: sent.append(pk))
    gate_runs.sign_off(inconclusive, rita, result_sha256=inconclusive.result_sha256, note="bucket b is 10 items; checked by hand")
    run = GateRun.objects.get(pk=inconclusive.pk)
    assert (run.state, run.step, run.signed_off_by_name) == (GateRunState.RUNNING, Step.PROMOTE, "rita")
    assert run.signoff_evidence == run.evidence and run.signoff_evidence["result_sha256"] == run.result_sha256
    assert gate_runs.signoff_void_reason(run) == ""
    assert AuditEntry.objects.filter(action="gate.sign_off", actor=rita).exists()


def test_a_sign_off_is_void_once_its_evidence_changed(inconclusive, rita):
    gate_runs.sign_off(inconclusive, rita, result_sha256=inconclusive.result_sha256, note="ok")
    GateRun.objects.filter(pk=inconclusive.pk).update(result_sha256="f" * 64)
    assert gate_runs.advance(inconclusive.pk) is None
    run = GateRun.objects.get(pk=inconclusive.pk)
    assert (run.state, run.failed_step) == (GateRunState.FAILED, Step.PROMOTE)
    assert "void: result_sha256 changed" in run.error and "registry was not touched" in run.error


def test_a_new_baseline_voids_the_comparison_before_promotion(gate, bob, alice, rita):
    run = at_compare(new_run(bob, gate), 10, 10)
    gate_runs.advance(run.pk)  # PASS, promote next
    old = baselines.current_for(gate)
    doc = baselines.document_from_data({
        "eval_set_dvc_hash": old.eval_set_dvc_hash, "baseline_sha": "b2", "previous_baseline_sha": "b1", "tolerance_pp": 0.02,
        "buckets": {"a": {"accuracy": 0.95, "n": 10}, "b": {"accuracy": 0.95, "n": 10}},
    })
    baselines.approve(baselines.propose(gate, doc, "https://example.test/run/2", alice), rita)
    assert gate_runs.advance(run.pk) is None
    run.refresh_from_db()
    assert run.state == GateRunState.FAILED and "no longer" in run.error


# --- API, pages, CLI -----------------------------------------------------------------------------
def auth(user) -> dict:
    _, raw = ApiToken.issue(user, "t")
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_the_api_starts_a_run_and_reads_it_back(client, gate, bob, monkeypatch):
    monkeypatch.setattr(gate_runs, "enqueue", lambda pk, countdown=0: None)
    headers = auth(bob)
    body = {"gate": gate, "mlflow_run_id": "a" * 32, "semver": "v1.0.0"}
    response = client.post("/api/v2/gates/runs", json.dumps(body), content_type="application/json", **headers)
    assert response.status_code == 202, response.content
    run = response.json()
    assert (run["state"], run["gate"], run["registered_model"], run["steps"]) == ("queued", gate, gate, [])
    got = client.get(f"/api/v2/gates/runs/{run['id']}", **headers).json()
    assert got["id"] == run["id"] and got["may_sign_off"] is False
    assert [r["id"] for r in client.get("/api/v2/gates/runs?state=queued", **headers).json()["items"]] == [run["id"]]


@pytest.mark.parametrize("body,status,field", [
    ({"gate": "tutor", "mlflow_run_id": "a" * 32}, 422, "semver"),
    ({"gate": "tutor", "mlflow_run_id": "a" * 32, "semver": "v1.0.0", "force": True}, 422, "force"),
])
def test_the_api_refuses_a_bad_request_naming_the_key(client, gate, bob, body, status, field):
    response = client.post("/api/v2/gates/runs", json.dumps(body), content_type="application/json", **auth(bob))
    assert response.status_code == status and response.json()["error"]["field"] == field


def test_the_api_answers_400_to_bad_json_and_404_to_an_unknown_run(client, gate, bob):
    headers = auth(bob)
    assert client.post("/api/v2/gates/runs", "{nope", content_type="application/json", **headers).status_code == 400
    assert client.get("/api/v2/gates/runs/999999", **headers).status_code == 404


def test_the_form_shows_the_refusal_beside_the_field(client, gate, bob):
    client.force_login(bob)
    response = client.post("/gates/runs/", {"gate": gate, "mlflow_run_id": "a" * 32, "semver": "1.0", "artifact_path": "model"})
    assert response.status_code == 422
    assert b'id="semver-errors"' in response.content


def test_the_run_page_polls_while_the_run_moves_and_stops_when_it_ends(client, gate, bob, monkeypatch):
    monkeypatch.setattr(gate_runs, "enqueue", lambda pk, countdown=0: None)
    client.force_login(bob)
    run = new_run(bob, gate)
    page = client.get(f"/gates/runs/{run.pk}/").content.decode()
    assert 'hx-trigger="every 2s"' in page
    partial = client.get(f"/gates/runs/{run.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert partial.lstrip().startswith("<div id=\"gate-run-live\"") and "<html" not in partial
    GateRun.objects.filter(pk=run.pk).update(state=GateRunState.FAILED, failed_step="fetch", error="no such run")
    page = client.get(f"/gates/runs/{run.pk}/").content.decode()
    assert 'hx-trigger' not in page and "no such run" in page


def test_the_requester_sees_no_sign_off_button_and_a_forged_post_is_refused(client, inconclusive, bob):
    client.force_login(bob)
    page = client.get(f"/gates/runs/{inconclusive.pk}/").content.decode()
    assert 'id="sign-off"' not in page and "other than you" in page
    forged = client.post(f"/gates/runs/{inconclusive.pk}/signoff", {"note": "mine", "result_sha256": inconclusive.result_sha256})
    assert forged.status_code == 403
    assert GateRun.objects.get(pk=inconclusive.pk).state == GateRunState.AWAITING_SIGNOFF


def test_a_reviewer_signs_off_in_the_page(client, inconclusive, rita, monkeypatch):
    monkeypatch.setattr(gate_runs, "enqueue", lambda pk, countdown=0: None)
    client.force_login(rita)
    page = client.get(f"/gates/runs/{inconclusive.pk}/").content.decode()
    assert 'id="sign-off"' in page and inconclusive.result_sha256 in page
    response = client.post(f"/gates/runs/{inconclusive.pk}/signoff", {"note": "reviewed", "result_sha256": inconclusive.result_sha256})
    assert response.status_code == 303
    assert GateRun.objects.get(pk=inconclusive.pk).signed_off_by_name == "rita"


def test_the_cli_exits_2_for_a_request_the_gate_refuses(gate, bob, capsys):
    with pytest.raises(SystemExit) as exit_:
        call_command("gate_run", "--gate", gate, "--run-id", "a" * 32, "--semver", "v0.0.0-dev.1", "--user", "bob")
    assert exit_.value.code == 2
    assert "--semver" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        call_command("gate_run", "--gate", gate, "--run-id", "a" * 32, "--semver", "v1.0.0", "--user", "nobody")
    assert exit_.value.code == 2


def test_the_cli_waits_and_exits_as_compare_baseline_does(gate, bob, capsys, monkeypatch):
    monkeypatch.setattr(gate_runs, "enqueue", lambda pk, countdown=0: None)
    original = gate_runs.request

    def request_then_fail_compare(*args, **kwargs):
        run = original(*args, **kwargs)
        gate_runs.advance(at_compare(run, 10, 2).pk)  # what the workers would do meanwhile
        return run

    monkeypatch.setattr(gate_runs, "request", request_then_fail_compare)
    with pytest.raises(SystemExit) as exit_:
        call_command("gate_run", "--gate", gate, "--run-id", "a" * 32, "--semver", "v1.0.0", "--user", "bob", "--wait", "--timeout", "5")
    assert exit_.value.code == 1
    out = capsys.readouterr()
    assert "✖ compare" in out.out and "NOT PROMOTED" in out.err
