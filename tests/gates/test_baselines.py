"""Baseline rules (gates.baselines): the seed's eval_baseline.json in and out, byte for byte; a
reviewer other than the author approves; approval supersedes the current version only if the
proposal names it; history is rows that are never edited or deleted."""
from __future__ import annotations

import hashlib
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from dashboard.models import AuditEntry
from gates import baselines as service
from gates.baselines import BaselineRefused
from gates.models import Baseline, BaselineEvent, IllegalMove
from tests.gates.seed_baseline import BASELINE_SHA, EVAL_SET_MD5, SEED_BASELINE

pytestmark = pytest.mark.django_db

EVAL_MD5, SHA_V1, SEED = EVAL_SET_MD5, BASELINE_SHA, SEED_BASELINE
URL = "https://mlflow.example.test/#/experiments/20/runs/abc123"

# What the seed's example exports as: the seed's keys in its order, buckets sorted, one per line.
SEED_EXPORT = """{
  "eval_set_dvc_hash": "%s",
  "baseline_sha": "%s",
  "tolerance_pp": 0.02,
  "buckets": {
    "person.1sg": {"accuracy": 0.82, "n": 400},
    "person.2sg": {"accuracy": 0.79, "n": 400},
    "person.3sg": {"accuracy": 0.71, "n": 400},
    "tense.infinitive": {"accuracy": 0.88, "n": 240},
    "tense.past_participle": {"accuracy": 0.72, "n": 240},
    "tense.past_simple": {"accuracy": 0.77, "n": 240},
    "tense.present_simple": {"accuracy": 0.81, "n": 240},
    "tense.simple_future": {"accuracy": 0.78, "n": 240},
    "verb.be": {"accuracy": 0.69, "n": 60},
    "verb.go": {"accuracy": 0.74, "n": 60}
  }
}
""" % (EVAL_MD5, SHA_V1)

SEED_BUCKETS = {
    "tense.present_simple": ("0.81", 240), "tense.past_simple": ("0.77", 240), "tense.past_participle": ("0.72", 240),
    "tense.simple_future": ("0.78", 240), "tense.infinitive": ("0.88", 240), "person.1sg": ("0.82", 400),
    "person.2sg": ("0.79", 400), "person.3sg": ("0.71", 400), "verb.go": ("0.74", 60), "verb.be": ("0.69", 60),
}


def doc(*, sha: str = SHA_V1, previous: str | None = None, **buckets) -> service.Document:
    scores = {k: (Decimal(a), n) for k, (a, n) in SEED_BUCKETS.items()}
    scores.update({k.replace("__", "."): (Decimal(a), n) for k, (a, n) in buckets.items()})
    return service.Document(EVAL_MD5, sha, previous, Decimal("0.02"), scores)


def current_v1(author, reviewer) -> Baseline:
    return service.approve(service.propose("grammar-tutor", doc(), URL, author), reviewer)


# --- the file ------------------------------------------------------------------------------------
def test_the_seeds_example_round_trips_byte_for_byte(alice):
    parsed = service.parse_document(SEED)
    assert {k: (str(a), n) for k, (a, n) in parsed.buckets.items()} == SEED_BUCKETS
    assert (parsed.tolerance_pp, parsed.previous_baseline_sha) == (Decimal("0.02"), None)
    baseline = service.propose("grammar-tutor", parsed, URL, alice)
    exported = service.export_baseline(Baseline.objects.get(pk=baseline.pk))
    assert exported == SEED_EXPORT
    assert service.parse_document(exported) == parsed
    assert service.export_text(service.parse_document(exported)) == exported
    assert baseline.content_sha == hashlib.sha256(exported.encode()).hexdigest()


def test_the_export_keeps_previous_baseline_sha_and_one_spelling_per_number():
    text = service.export_text(service.Document(EVAL_MD5, "b" * 40, "a" * 40, Decimal("0.0200"), {"x": (Decimal("0.810"), 5), "y": (Decimal("1"), 2)}))
    assert '"baseline_sha": "%s",\n  "previous_baseline_sha": "%s",\n  "tolerance_pp": 0.02,' % ("b" * 40, "a" * 40) in text
    assert '"x": {"accuracy": 0.81, "n": 5}' in text and '"y": {"accuracy": 1, "n": 2}' in text
    # The same numbers written differently are the same baseline: one content sha.
    same = service.Document(EVAL_MD5, "b" * 40, "a" * 40, Decimal("0.02"), {"y": (Decimal("1.00"), 2), "x": (Decimal("0.81"), 5)})
    assert service.export_text(same) == text


@pytest.mark.parametrize("text, status, field, words", [
    ('{"eval_set_dvc_hash": "x",\n  "buckets": }', 400, "document", "line 2"),
    (SEED.replace('  "tolerance_pp": 0.02,\n', ""), 422, "tolerance_pp", "missing"),
    (SEED.replace('"verb.be":              {"accuracy": 0.69', '"verb.be": {"accuracy": 1.69'), 422, 'buckets["verb.be"].accuracy', "not in [0, 1]"),
    (SEED.replace('"n":  60}\n  }', '"n":  0}\n  }'), 422, 'buckets["verb.be"].n', "positive whole number"),
    (SEED.replace(EVAL_MD5, "..."), 422, "eval_set_dvc_hash", "32 lowercase hex"),
    (SEED.replace('"tolerance_pp": 0.02', '"tolerance_pp": 0.0212345678'), 422, "tolerance_pp", "decimal places"),
    (SEED.replace('"tolerance_pp": 0.02', '"tolerance_pp": 2'), 422, "tolerance_pp", "[0, 1)"),
    (SEED.replace('"verb.be"', '"verb.go"'), 422, "verb.go", "appears twice"),
    (SEED.replace('"tolerance_pp"', '"items": [], "tolerance_pp"'), 422, "items", "not kept"),
    (SEED.replace('"tolerance_pp"', '"owner": "me", "tolerance_pp"'), 422, "owner", "not a key"),
    (SEED.replace("0.02", "NaN"), 422, "document", "NaN"),
])
def test_a_bad_document_is_refused_naming_the_line_or_key(text, status, field, words):
    with pytest.raises(BaselineRefused) as caught:
        service.parse_document(text)
    assert (caught.value.status, caught.value.field) == (status, field)
    assert words in caught.value.message


# --- proposing -----------------------------------------------------------------------------------
def test_a_proposal_is_a_versioned_row_an_event_and_an_audit_entry(alice):
    baseline = service.propose("grammar-tutor", doc(), URL, alice)
    assert (baseline.version, baseline.status, baseline.author_name, baseline.justification_url) == (1, "proposed", "alice", URL)
    event = BaselineEvent.objects.get()
    assert (event.baseline, event.kind, event.actor_name, event.to_status) == (baseline, "proposed", "alice", "proposed")
    assert AuditEntry.objects.filter(action="baseline.propose", actor=alice, target="baseline grammar-tutor v1").exists()
    assert service.propose("grammar-tutor", doc(), URL, alice).version == 2
    assert service.propose("other-gate", doc(), URL, alice).version == 1


@pytest.mark.parametrize("url", ["", "   ", "mlflow run 12", "javascript:alert(1)", "ftp://files.example.test/x", "http://"])
def test_a_proposal_needs_an_http_justification_link(alice, url):
    with pytest.raises(BaselineRefused) as caught:
        service.propose("grammar-tutor", doc(), url, alice)
    assert (caught.value.status, caught.value.field) == (422, "justification_url")
    assert not Baseline.objects.exists() and not BaselineEvent.objects.exists()


def test_a_proposal_must_name_the_current_baseline_sha_as_its_previous(alice, rita):
    with pytest.raises(BaselineRefused, match="no current baseline yet") as caught:
        service.propose("grammar-tutor", doc(previous="f" * 40), URL, alice)
    assert caught.value.field == "previous_baseline_sha"
    current_v1(alice, rita)
    for previous in (None, "f" * 40):
        with pytest.raises(BaselineRefused, match=f"has baseline_sha {SHA_V1}"):
            service.propose("grammar-tutor", doc(sha="c" * 40, previous=previous), URL, alice)
    assert Baseline.objects.count() == 1


def test_a_bad_name_is_refused(alice):
    with pytest.raises(BaselineRefused) as caught:
        service.propose("grammar tutor/../x", doc(), URL, alice)
    assert caught.value.field == "name"


# --- deciding ----------------------------------------------------------------------------------
def assert_still_proposed(baseline: Baseline) -> None:
    fresh = Baseline.objects.get(pk=baseline.pk)
    assert (fresh.status, fresh.reviewer, fresh.decided_at) == ("proposed", None, None)
    assert list(fresh.events.values_list("kind", flat=True)) == ["proposed"]
    assert not AuditEntry.objects.filter(action__in=["baseline.approve", "baseline.reject"]).exists()


def test_the_author_cannot_approve_or_reject_their_own_proposal_even_as_reviewer_or_admin(rita, admin):
    for author in (rita, admin):
        proposal = service.propose("grammar-tutor", doc(), URL, author)
        assert "You proposed this baseline" in service.decision_refusal(author, proposal)
        for decide in (service.approve, service.reject):
            with pytest.raises(BaselineRefused) as caught:
                decide(proposal, author, "looks fine to me")
            assert caught.value.status == 403
        assert_still_proposed(proposal)


def test_a_user_without_the_permission_cannot_decide(alice, bob):
    proposal = service.propose("grammar-tutor", doc(), URL, alice)
    assert "Only a reviewer" in service.decision_refusal(bob, proposal)
    with pytest.raises(BaselineRefused) as caught:
        service.approve(proposal, bob)
    assert caught.value.status == 403
    assert_still_proposed(proposal)


def test_approval_makes_it_current_and_supersedes_the_previous_one(alice, rita, admin):
    v1 = current_v1(alice, rita)
    assert (v1.status, v1.reviewer_name, v1.supersedes) == ("current", "rita", None)
    v2 = service.propose("grammar-tutor", doc(sha="c" * 40, previous=SHA_V1, verb__go=("0.80", 60)), URL, alice)
    approved = service.approve(v2, admin, "new floor from run abc123")
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.status, v2.status) == ("superseded", "current")
    assert (v2.reviewer_name, v2.decision_note, v2.supersedes) == ("admin", "new floor from run abc123", v1)
    assert approved.pk == v2.pk and v2.decided_at is not None
    assert service.current_for("grammar-tutor") == v2
    assert list(BaselineEvent.objects.order_by("id").values_list("version", "kind", "actor_name")) == [
        (1, "proposed", "alice"), (1, "approved", "rita"), (2, "proposed", "alice"), (1, "superseded", "admin"), (2, "approved", "admin"),
    ]
    assert AuditEntry.objects.filter(action="baseline.approve", actor=admin, detail__contains="supersedes grammar-tutor v1").exists()


def test_a_proposal_made_against_an_older_current_is_refused_at_approval(alice, bob, rita):
    current_v1(alice, rita)
    late = service.propose("grammar-tutor", doc(sha="a" * 40, previous=SHA_V1), URL, alice)
    first = service.propose("grammar-tutor", doc(sha="b" * 40, previous=SHA_V1), URL, bob)
    service.approve(first, rita)
    with pytest.raises(BaselineRefused) as caught:
        service.approve(late, rita)
    assert (caught.value.status, caught.value.code) == (409, "stale_proposal")
    assert f"proposed against {SHA_V1}" in caught.value.message and "grammar-tutor v3" in caught.value.message
    assert "b" * 40 in caught.value.message  # the sha to propose against instead
    late.refresh_from_db()
    assert late.status == "proposed"
    assert service.current_for("grammar-tutor").pk == first.pk


def test_the_database_itself_refuses_a_second_current_baseline(alice, rita):
    # Two first approvals at once have no current row to lock: this constraint decides between them.
    current_v1(alice, rita)
    other = service.propose("grammar-tutor", doc(sha="d" * 40, previous=SHA_V1), URL, alice)
    with pytest.raises(IntegrityError), transaction.atomic():
        Baseline.objects.filter(pk=other.pk).update(status="current")


def test_a_rejection_needs_a_note_and_is_final(alice, rita):
    proposal = service.propose("grammar-tutor", doc(), URL, alice)
    with pytest.raises(BaselineRefused) as caught:
        service.reject(proposal, rita, "  ")
    assert caught.value.field == "note"
    assert_still_proposed(proposal)
    service.reject(proposal, rita, "the run used the old eval set")
    proposal.refresh_from_db()
    assert (proposal.status, proposal.reviewer_name, proposal.decision_note) == ("rejected", "rita", "the run used the old eval set")
    with pytest.raises(BaselineRefused) as caught:
        service.approve(proposal, rita)
    assert caught.value.status == 409
    assert service.current_for("grammar-tutor") is None
    assert AuditEntry.objects.filter(action="baseline.reject", actor=rita).count() == 1


def test_status_moves_only_along_the_allowed_ones(alice, rita):
    v1 = current_v1(alice, rita)
    for to in ("proposed", "rejected", "current"):
        with pytest.raises(IllegalMove):
            v1.move_to(to, "approved", actor=rita)
    assert Baseline.objects.get(pk=v1.pk).status == "current"


# --- nothing is overwritten or deleted -------------------------------------------------------------
def test_baselines_and_their_history_are_never_edited_or_deleted(alice, rita):
    v1 = current_v1(alice, rita)
    v1.buckets = {"verb.go": {"accuracy": "0.99", "n": 60}}
    with pytest.raises(ValueError, match="never edited"):
        v1.save()
    with pytest.raises(ValueError, match="never deleted"):
        v1.delete()
    with pytest.raises(ValueError, match="never deleted"):
        Baseline.objects.filter(name="grammar-tutor").delete()
    event = BaselineEvent.objects.first()
    with pytest.raises(ValueError, match="append-only"):
        event.delete()
    event.note = "rewritten"
    with pytest.raises(ValueError, match="append-only"):
        event.save()
    fresh = Baseline.objects.get(pk=v1.pk)
    assert fresh.buckets["verb.go"] == {"accuracy": "0.74", "n": 60} and BaselineEvent.objects.count() == 2


# --- the reviewer's diff ----------------------------------------------------------------------
def test_the_diff_shows_every_bucket_with_its_change_in_points(alice, rita):
    v1 = current_v1(alice, rita)
    scores = {k: (Decimal(a), n) for k, (a, n) in SEED_BUCKETS.items() if k != "verb.be"}
    scores["verb.go"] = (Decimal("0.8004"), 80)
    scores["verb.have"] = (Decimal("0.7"), 60)
    v2 = service.propose("grammar-tutor", service.Document(EVAL_MD5, "c" * 40, SHA_V1, Decimal("0.02"), scores), URL, alice)
    assert service.compared_with(v2) == v1
    diff = {c.name: c for c in service.bucket_diff(v1, v2)}
    assert len(diff) == 11
    go = diff["verb.go"]
    assert (go.kind, go.old_accuracy, go.new_accuracy, go.delta_pp, go.delta_text, go.old_n, go.new_n) == (
        "changed", Decimal("0.74"), Decimal("0.8004"), Decimal("6.04"), "+6.04", 60, 80)
    assert (diff["verb.be"].kind, diff["verb.be"].new_accuracy) == ("removed", None)
    assert (diff["verb.have"].kind, diff["verb.have"].old_accuracy) == ("added", None)
    assert diff["person.1sg"].kind == "same" and diff["person.1sg"].delta_text == "0"
    service.approve(v2, rita)
    assert service.compared_with(Baseline.objects.get(pk=v2.pk)) == v1  # once decided, what it replaced
