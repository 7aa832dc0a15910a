"""Baselines: read an eval_baseline.json, propose it as a new version, approve or reject it, export it.

The seed's rules for changing a baseline: one reviewer beyond the author, a justification link, and
the previous baseline's sha kept as previous_baseline_sha. Here they are checked, not trusted: a
proposal names the current baseline_sha it replaces, approval refuses it if the current one has
changed since, and every step is a BaselineEvent and an AuditEntry. The file is read by
gates.baseline_files (the same reader the compare command uses), so a file the gate accepts is a
file a proposal accepts.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from dashboard.models import AuditEntry
from dashboard.roles import is_reviewer
from gates.baseline_files import CompareInputError, parse_baseline
from gates.dvc_hash import MD5_RE
from gates.models import (
    GATE_NAME_RULE,
    Baseline,
    BaselineChanged,
    BaselineEvent,
    BaselineEventKind,
    BaselineStatus,
    IllegalMove,
    validate_gate_name,
)

EXPORT_KEYS = ("eval_set_dvc_hash", "baseline_sha", "previous_baseline_sha", "tolerance_pp", "buckets")
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_NOTE = 4000
TOLERANCE_PLACES = 6  # Baseline.tolerance_pp's decimal_places
SHA_MAX = 128


class BaselineRefused(Exception):
    """A proposal or decision Gantry refuses, shaped like the API's errors; `field` names the key."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


@dataclass(frozen=True)
class Document:
    """An eval_baseline.json as Gantry keeps it: exact decimals, buckets by name."""

    eval_set_dvc_hash: str
    baseline_sha: str
    previous_baseline_sha: str | None
    tolerance_pp: Decimal
    buckets: dict[str, tuple[Decimal, int]]


# --- reading --------------------------------------------------------------------------------------
def _pairs_once(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice is not None:  # json's default keeps the last: a bucket written twice would vanish silently
        raise BaselineRefused(422, "invalid_baseline", f"The key {json.dumps(twice)} appears twice in one object.", twice)
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise BaselineRefused(422, "invalid_baseline", f"{name} is not a number a score can be.", "document")


def loads(text: str) -> Any:
    """JSON with exact decimals; BaselineRefused 400 naming the line for text that is not JSON."""
    if len(text.encode("utf-8")) > MAX_DOCUMENT_BYTES:
        raise BaselineRefused(400, "bad_json", f"The document is larger than {MAX_DOCUMENT_BYTES // 1024} KiB.", "document")
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_no_constant, object_pairs_hook=_pairs_once)
    except json.JSONDecodeError as exc:
        raise BaselineRefused(400, "bad_json", f"Not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}.", "document") from None
    except RecursionError:
        raise BaselineRefused(400, "bad_json", "The JSON is nested too deeply to be an eval_baseline.json.", "document") from None
    except ValueError:  # an integer past Python's 4,300-digit limit
        raise BaselineRefused(400, "bad_json", "The JSON holds a number too long to be a score.", "document") from None


def document_from_data(data: Any) -> Document:
    """The seed's keys, checked by the compare reader, plus what storing a version needs."""
    if isinstance(data, dict) and "items" in data:
        raise BaselineRefused(
            422, "invalid_baseline",
            "items (per-item results) are not kept with a baseline version: remove them and propose the per-bucket scores.", "items",
        )
    try:
        parsed = parse_baseline(data)
    except CompareInputError as exc:
        raise BaselineRefused(422, "invalid_baseline", f"{exc.path or 'The document'}: {exc.message}.", exc.path or "document") from None
    if not MD5_RE.fullmatch(parsed.eval_set_dvc_hash):
        raise BaselineRefused(
            422, "invalid_baseline",
            "eval_set_dvc_hash must be the 32 lowercase hex digits of the md5 in the eval set's .dvc file.", "eval_set_dvc_hash",
        )
    for key in ("baseline_sha", "previous_baseline_sha"):
        value = getattr(parsed, key)
        if value is not None and (len(value) > SHA_MAX or any(c.isspace() for c in value)):
            raise BaselineRefused(422, "invalid_baseline", f"{key} must be a sha: at most {SHA_MAX} characters, no spaces.", key)
    tolerance = parsed.tolerance_pp
    if tolerance != tolerance.quantize(Decimal(1).scaleb(-TOLERANCE_PLACES)):
        raise BaselineRefused(422, "invalid_baseline", f"tolerance_pp has more than {TOLERANCE_PLACES} decimal places.", "tolerance_pp")
    return Document(
        eval_set_dvc_hash=parsed.eval_set_dvc_hash,
        baseline_sha=parsed.baseline_sha,
        previous_baseline_sha=parsed.previous_baseline_sha,
        tolerance_pp=tolerance,
        buckets={name: (score.accuracy, score.n) for name, score in parsed.buckets.items()},
    )


def parse_document(text: str) -> Document:
    return document_from_data(loads(text))


# --- writing --------------------------------------------------------------------------------------
def decimal_text(value: Decimal) -> str:
    """One spelling per value (0.810 and 0.81 are one number), never an exponent."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def export_text(doc: Document) -> str:
    """The canonical eval_baseline.json: the seed's key order, buckets sorted by name one per line
    (a reviewer reads a diff of them), decimals as written. Its bytes are its content sha's input."""
    head = [f'  "eval_set_dvc_hash": {json.dumps(doc.eval_set_dvc_hash)}', f'  "baseline_sha": {json.dumps(doc.baseline_sha)}']
    if doc.previous_baseline_sha is not None:
        head.append(f'  "previous_baseline_sha": {json.dumps(doc.previous_baseline_sha)}')
    head.append(f'  "tolerance_pp": {decimal_text(doc.tolerance_pp)}')
    buckets = [
        f'    {json.dumps(name, ensure_ascii=False)}: {{"accuracy": {decimal_text(accuracy)}, "n": {n}}}'
        for name, (accuracy, n) in sorted(doc.buckets.items())
    ]
    body = ",\n".join(head + ['  "buckets": {\n' + ",\n".join(buckets) + "\n  }"])
    return "{\n" + body + "\n}\n"


def content_sha(doc: Document) -> str:
    return hashlib.sha256(export_text(doc).encode("utf-8")).hexdigest()


def document_of(baseline: Baseline) -> Document:
    return Document(
        eval_set_dvc_hash=baseline.eval_set_dvc_hash,
        baseline_sha=baseline.baseline_sha,
        previous_baseline_sha=baseline.previous_baseline_sha,
        tolerance_pp=Decimal(baseline.tolerance_pp),
        buckets=baseline.bucket_scores,
    )


def export_baseline(baseline: Baseline) -> str:
    return export_text(document_of(baseline))


# --- who may do what -------------------------------------------------------------------------------
def decision_refusal(user, baseline: Baseline) -> str:
    """Why `user` may not approve or reject `baseline`, or '' when they may."""
    if not baseline.is_open:
        return f"{baseline.label} is {baseline.status}: it was decided already."
    if baseline.author_id is not None and baseline.author_id == user.pk:
        return "You proposed this baseline: a reviewer other than you must decide on it (one reviewer beyond the author)."
    if not is_reviewer(user):
        return "Only a reviewer (permission gates.approve_baseline, group “reviewers”) may approve or reject a baseline."
    return ""


def current_for(name: str) -> Baseline | None:
    return Baseline.objects.filter(name=name, status=BaselineStatus.CURRENT).first()


def _check_url(url: Any) -> str:
    url = url.strip() if isinstance(url, str) else ""
    if not url:
        raise BaselineRefused(422, "invalid_justification", "A proposal needs a justification_url: a link to the experiment that set these numbers.", "justification_url")
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise BaselineRefused(422, "invalid_justification", "justification_url must be an http(s) link, e.g. to the MLflow run or the PR.", "justification_url") from None
    if len(url) > 2000 or not urlsplit(url).netloc:
        raise BaselineRefused(422, "invalid_justification", "justification_url must be an http(s) link of at most 2,000 characters.", "justification_url")
    return url


def _check_predecessor(name: str, doc: Document) -> None:
    current = current_for(name)
    if current is None and doc.previous_baseline_sha is not None:
        raise BaselineRefused(
            422, "wrong_previous",
            f"{name} has no current baseline yet, so previous_baseline_sha must be left out (it is {doc.previous_baseline_sha}).",
            "previous_baseline_sha",
        )
    if current is not None and doc.previous_baseline_sha != current.baseline_sha:
        raise BaselineRefused(
            422, "wrong_previous",
            f"The current {current.label} has baseline_sha {current.baseline_sha}: set previous_baseline_sha to it "
            f"(it is {doc.previous_baseline_sha or 'missing'}), so the history of baselines stays one chain.",
            "previous_baseline_sha",
        )


# --- the three steps -----------------------------------------------------------------------------
def propose(name: str, doc: Document, justification_url: Any, author) -> Baseline:
    """A new version of `name`, PROPOSED, against the current one; a BaselineEvent and an audit row."""
    try:
        validate_gate_name(name)
    except ValidationError:
        raise BaselineRefused(422, "invalid_name", GATE_NAME_RULE, "name") from None
    url = _check_url(justification_url)
    _check_predecessor(name, doc)
    by = getattr(author, "username", "") or "system"
    for _ in range(5):  # two proposals at once for one name: the loser of the version number retries
        try:
            with transaction.atomic():
                version = (Baseline.objects.filter(name=name).aggregate(v=Max("version"))["v"] or 0) + 1
                baseline = Baseline.objects.create(
                    name=name, version=version, eval_set_dvc_hash=doc.eval_set_dvc_hash, baseline_sha=doc.baseline_sha,
                    previous_baseline_sha=doc.previous_baseline_sha, tolerance_pp=doc.tolerance_pp,
                    buckets={k: {"accuracy": decimal_text(a), "n": n} for k, (a, n) in doc.buckets.items()},
                    content_sha=content_sha(doc), justification_url=url, author=author if getattr(author, "pk", None) else None,
                    author_name=by,
                )
                BaselineEvent.record(baseline, BaselineEventKind.PROPOSED, actor=author, note=url, to_status=BaselineStatus.PROPOSED)
                AuditEntry.record(author, "baseline.propose", f"baseline {baseline.label}", f"{len(doc.buckets)} buckets; justification {url}")
            return baseline
        except IntegrityError:
            continue
    raise BaselineRefused(409, "conflict", f"Other proposals for {name} keep arriving at the same moment; try again.")


def _decide(baseline: Baseline, user, note: str) -> str:
    refusal = decision_refusal(user, baseline)
    if refusal:
        status, code = (409, "already_decided") if not baseline.is_open else (403, "forbidden")
        raise BaselineRefused(status, code, refusal)
    if not isinstance(note, str):
        raise BaselineRefused(422, "invalid_note", "note must be text.", "note")
    note = note.strip()
    if len(note) > MAX_NOTE:
        raise BaselineRefused(422, "invalid_note", f"A note is at most {MAX_NOTE} characters.", "note")
    return note


def _refuse_if_stale(proposal: Baseline, current: Baseline | None) -> None:
    """The seed's third rule at the moment it matters: the new floor names the one it replaces."""
    expected = current.baseline_sha if current else None
    if proposal.previous_baseline_sha == expected:
        return
    against = proposal.previous_baseline_sha or "no baseline"
    now = f"{current.label} (baseline_sha {current.baseline_sha})" if current else "no current baseline"
    raise BaselineRefused(
        409, "stale_proposal",
        f"{proposal.label} was proposed against {against}, but the current baseline is now {now}. "
        f"It cannot be approved: reject it, and propose again with previous_baseline_sha {expected or 'left out'}.",
    )


def approve(baseline: Baseline, reviewer, note: str = "") -> Baseline:
    """PROPOSED → CURRENT, the current one → SUPERSEDED, if the proposal still names the current sha."""
    note = _decide(baseline, reviewer, note)
    try:
        with transaction.atomic():
            # Locked so two approvals of two proposals for one name are decided one after the other.
            proposal = Baseline.objects.select_for_update().get(pk=baseline.pk)
            current = Baseline.objects.select_for_update().filter(name=proposal.name, status=BaselineStatus.CURRENT).first()
            if not proposal.is_open:
                raise BaselineRefused(409, "already_decided", f"{proposal.label} is {proposal.status}: it was decided meanwhile.")
            _refuse_if_stale(proposal, current)
            by = getattr(reviewer, "username", "")
            decided = {"reviewer": reviewer, "reviewer_name": by, "decided_at": timezone.now(), "decision_note": note, "supersedes": current}
            try:
                if current is not None:
                    current.move_to(BaselineStatus.SUPERSEDED, BaselineEventKind.SUPERSEDED, actor=reviewer, note=f"superseded by {proposal.label}")
                proposal.move_to(BaselineStatus.CURRENT, BaselineEventKind.APPROVED, actor=reviewer, note=note, also=decided)
            except (BaselineChanged, IllegalMove) as exc:
                raise BaselineRefused(409, "conflict", str(exc)) from None
            replaced = f"supersedes {current.label}" if current else ""
            AuditEntry.record(reviewer, "baseline.approve", f"baseline {proposal.label}", "; ".join(filter(None, [note, replaced])))
    except IntegrityError:
        # No current row to lock yet: two first approvals meet at the one-current constraint instead.
        raise BaselineRefused(409, "conflict", f"Another {baseline.name} proposal became current at the same moment; reload to see which.") from None
    return proposal


def reject(baseline: Baseline, reviewer, note: str) -> Baseline:
    note = _decide(baseline, reviewer, note)
    if not note:
        raise BaselineRefused(422, "invalid_note", "Say why it is rejected: the author reads the note.", "note")
    with transaction.atomic():
        decided = {"reviewer": reviewer, "reviewer_name": getattr(reviewer, "username", ""), "decided_at": timezone.now(), "decision_note": note}
        try:
            baseline.move_to(BaselineStatus.REJECTED, BaselineEventKind.REJECTED, actor=reviewer, note=note, also=decided)
        except (BaselineChanged, IllegalMove) as exc:
            raise BaselineRefused(409, "already_decided", str(exc)) from None
        AuditEntry.record(reviewer, "baseline.reject", f"baseline {baseline.label}", note)
    return baseline


# --- the reviewer's view ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BucketChange:
    name: str
    old_accuracy: Decimal | None
    new_accuracy: Decimal | None
    old_n: int | None
    new_n: int | None

    @property
    def kind(self) -> str:
        if self.old_accuracy is None:
            return "added"
        if self.new_accuracy is None:
            return "removed"
        return "same" if (self.old_accuracy, self.old_n) == (self.new_accuracy, self.new_n) else "changed"

    @property
    def delta_pp(self) -> Decimal | None:
        """The change in percentage points (0.81 → 0.84 is +3)."""
        if self.old_accuracy is None or self.new_accuracy is None:
            return None
        return (self.new_accuracy - self.old_accuracy) * 100

    @property
    def delta_text(self) -> str:
        """'+3', '−0.5', '0': exact, so a drop of 2.04 pp is not shown as the tolerance's 2."""
        delta = self.delta_pp
        if delta is None:
            return ""
        text = decimal_text(abs(delta))
        return "0" if text == "0" else ("+" if delta > 0 else "−") + text


def bucket_diff(old: Baseline | None, new: Baseline) -> list[BucketChange]:
    """Every bucket of either side, by name: what a reviewer approves."""
    before, after = (old.bucket_scores if old else {}), new.bucket_scores
    changes = []
    for name in sorted(before.keys() | after.keys()):
        old_accuracy, old_n = before.get(name, (None, None))
        new_accuracy, new_n = after.get(name, (None, None))
        changes.append(BucketChange(name, old_accuracy, new_accuracy, old_n, new_n))
    return changes


def compared_with(baseline: Baseline) -> Baseline | None:
    """The version a baseline is read against: the current one while it is proposed; the one it
    replaced once approved; for a rejected one, the version its previous_baseline_sha named."""
    if baseline.is_open:
        return current_for(baseline.name)
    if baseline.status != BaselineStatus.REJECTED:
        return baseline.supersedes
    if baseline.previous_baseline_sha is None:
        return None
    return (
        Baseline.objects.filter(name=baseline.name, baseline_sha=baseline.previous_baseline_sha, version__lt=baseline.version)
        .filter(status__in=[BaselineStatus.CURRENT, BaselineStatus.SUPERSEDED])
        .order_by("-version")
        .first()
    )


def baseline_json(baseline: Baseline) -> dict:
    return {
        "id": baseline.pk,
        "name": baseline.name,
        "version": baseline.version,
        "status": baseline.status,
        "content_sha": baseline.content_sha,
        "document": json.loads(export_baseline(baseline)),
        "justification_url": baseline.justification_url,
        "author": baseline.author_name,
        "reviewer": baseline.reviewer_name or None,
        "decided_at": baseline.decided_at.isoformat() if baseline.decided_at else None,
        "decision_note": baseline.decision_note,
        "created_at": baseline.created_at.isoformat(),
    }
