"""Eval sets: JSONL rows validated line by line, stored once by content, hashed the way DVC hashes.

A row is `{"id", "buckets": [..], "messages" | "prompt", "expected", "match"?, "meta"?}`. `match`
says how an answer is graded against `expected`: `exact` (the default) after trimming and
case-folding both, `contains` (the same, as a substring), `regex` (re.search on the trimmed answer:
anchor it with ^…$ to match the whole).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from dashboard.models import AuditEntry
from gates.dvc_hash import DvcFileError, bytes_md5, matches_dvc_file
from gates.models import GATE_NAME_RULE, EvalSet, validate_gate_name

MATCH_MODES = ("exact", "contains", "regex")
ROLES = ("system", "user", "assistant")
ROW_KEYS = ("id", "buckets", "messages", "prompt", "expected", "match", "meta")
MAX_EVALSET_BYTES = 32 * 1024 * 1024
MAX_ERRORS = 20  # enough to fix a file in one go, few enough to read


class EvalSetError(Exception):
    """An eval set Gantry refuses; `errors` are 'line N: …' sentences, each about one row."""

    def __init__(self, status: int, code: str, errors: list[str], field: str = "file"):
        self.status, self.code, self.errors, self.field = status, code, errors, field
        self.message = errors[0] if len(errors) == 1 else f"{len(errors)} problems: " + "; ".join(errors)
        super().__init__(self.message)


@dataclass(frozen=True)
class EvalRow:
    id: str | int
    buckets: tuple[str, ...]
    messages: tuple[dict, ...] | None
    prompt: str | None
    expected: str
    match: str = "exact"

    def is_correct(self, answer: str) -> bool:
        if self.match == "regex":
            return re.search(self.expected, answer.strip()) is not None
        got, want = answer.strip().casefold(), self.expected.strip().casefold()
        return got == want if self.match == "exact" else want in got


@dataclass(frozen=True)
class ParsedEvalSet:
    rows: tuple[EvalRow, ...]
    bucket_counts: dict[str, int]


def _row_problem(raw: Any) -> str:
    """What is wrong with one decoded row, or ''. Checks in the order a person would fix them."""
    if not isinstance(raw, dict):
        return "a row must be a JSON object"
    unknown = [k for k in raw if k not in ROW_KEYS]
    if unknown:
        return f"unknown key {json.dumps(unknown[0])} (a row has {', '.join(ROW_KEYS)}; put extras under meta)"
    row_id = raw.get("id")
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)) or row_id == "" or (isinstance(row_id, str) and not row_id.strip()):
        return "id must be a non-empty string or an integer"
    buckets = raw.get("buckets")
    if not isinstance(buckets, list) or not buckets:
        return "buckets must be a non-empty list of bucket names"
    if not all(isinstance(b, str) and b.strip() and b == b.strip() for b in buckets):
        return "every bucket must be a non-empty string without surrounding spaces"
    if len(set(buckets)) != len(buckets):
        return "buckets names the same bucket twice"
    has_messages, has_prompt = "messages" in raw, "prompt" in raw
    if has_messages == has_prompt:
        return "a row has exactly one of messages (a chat) or prompt (a completion)"
    if has_prompt and (not isinstance(raw["prompt"], str) or not raw["prompt"].strip()):
        return "prompt must be non-empty text"
    if has_messages:
        problem = _messages_problem(raw["messages"])
        if problem:
            return problem
    if not isinstance(raw.get("expected"), str):
        return "expected must be a string (the answer graded against)"
    match = raw.get("match", "exact")
    if match not in MATCH_MODES:
        return f"match must be one of {', '.join(MATCH_MODES)}, not {json.dumps(match)}"
    if match == "regex":
        try:
            re.compile(raw["expected"])
        except re.error as exc:
            return f"expected is not a regular expression Python compiles: {exc}"
    if "meta" in raw and not isinstance(raw["meta"], dict):
        return "meta must be a JSON object"
    return ""


def _messages_problem(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list of {role, content}"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            return f"messages[{i}] must be {{\"role\": one of {', '.join(ROLES)}, \"content\": text}}"
    return ""


def parse_rows(data: bytes) -> ParsedEvalSet:
    """Every row of a JSONL eval set, or EvalSetError listing the lines at fault (up to MAX_ERRORS)."""
    if len(data) > MAX_EVALSET_BYTES:
        raise EvalSetError(413, "too_large", [f"The eval set is {len(data) / 2**20:.1f} MiB; the limit is {MAX_EVALSET_BYTES // 2**20} MiB."])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise EvalSetError(400, "bad_encoding", [f"line {line}: not UTF-8 text (byte {exc.start}); save the file as UTF-8."]) from None
    errors: list[str] = []
    rows: list[EvalRow] = []
    seen: dict[str | int, int] = {}
    # split("\n"), not splitlines(): U+2028 and friends may sit raw inside a JSON string.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not JSON ({exc.msg} at column {exc.colno})")
        except ValueError:  # an integer past Python's 4,300-digit limit
            errors.append(f"line {number}: holds a number too long to read")
        else:
            problem = _row_problem(raw)
            if not problem and raw["id"] in seen:
                problem = f"id {json.dumps(raw['id'])} is already used on line {seen[raw['id']]}"
            if problem:
                errors.append(f"line {number}: {problem}")
            else:
                seen[raw["id"]] = number
                rows.append(_row(raw))
        if len(errors) >= MAX_ERRORS:
            errors.append("(stopped after 20 problems)")
            break
    if errors:
        raise EvalSetError(422, "invalid_rows", errors)
    if not rows:
        raise EvalSetError(422, "invalid_rows", ["The eval set has no rows: one JSON object per line."])
    counts = Counter(b for row in rows for b in row.buckets)
    return ParsedEvalSet(rows=tuple(rows), bucket_counts=dict(sorted(counts.items())))


def _row(raw: dict) -> EvalRow:
    messages = raw.get("messages")
    return EvalRow(
        id=raw["id"],
        buckets=tuple(raw["buckets"]),
        messages=tuple(messages) if messages is not None else None,
        prompt=raw.get("prompt"),
        expected=raw["expected"],
        match=raw.get("match", "exact"),
    )


# --- storage ------------------------------------------------------------------------------------
def store_dir() -> Path:
    return Path(settings.VAR_DIR) / "evalsets"


def path_for(md5: str) -> Path:
    return store_dir() / f"{md5}.jsonl"


def _write_once(data: bytes, md5: str) -> Path:
    """The file at its content address, read-only. Written to a temporary name and renamed, so a
    reader never sees half a file, and an address already taken is left as it is (same md5)."""
    target = path_for(md5)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_rows(eval_set: EvalSet) -> ParsedEvalSet:
    return parse_rows(path_for(eval_set.md5).read_bytes())


def upload(name: str, data: bytes, actor, *, dvc_file: str | None = None) -> tuple[EvalSet, bool]:
    """Validate and store an eval set under `name`; True when it is new (the same name and content
    again returns the row already there). With `dvc_file`, its md5 must be this file's."""
    try:
        validate_gate_name(name)
    except ValidationError:
        raise EvalSetError(422, "invalid_name", [GATE_NAME_RULE], "name") from None
    parsed = parse_rows(data)
    md5, legacy_md5 = bytes_md5(data), bytes_md5(data, legacy=True)
    if dvc_file is not None:
        try:
            same, recorded = matches_dvc_file(data, dvc_file)
        except DvcFileError as exc:
            raise EvalSetError(422, "invalid_dvc_file", [str(exc)], "dvc_file") from None
        if not same:
            raise EvalSetError(
                422, "dvc_mismatch",
                [f"The .dvc file records md5 {recorded}, but this file hashes to {md5} (DVC 3) / {legacy_md5} (DVC 2): "
                 "it is not the eval set that .dvc file tracks. Run `dvc pull` and upload that file."],
                "dvc_file",
            )
    existing = EvalSet.objects.filter(name=name, md5=md5).first()
    if existing:
        return existing, False
    _write_once(data, md5)
    by = getattr(actor, "username", "") or "system"
    try:
        with transaction.atomic():
            eval_set = EvalSet.objects.create(
                name=name, md5=md5, legacy_md5=legacy_md5, size_bytes=len(data), rows=len(parsed.rows),
                buckets=parsed.bucket_counts, uploaded_by=actor if getattr(actor, "pk", None) else None, uploaded_by_name=by,
            )
            AuditEntry.record(actor, "evalset.upload", f"eval set {name} ({md5})", f"{len(parsed.rows)} rows, {len(parsed.bucket_counts)} buckets")
    except IntegrityError:  # the same upload, from another request, a moment earlier
        return EvalSet.objects.get(name=name, md5=md5), False
    return eval_set, True


def eval_set_json(eval_set: EvalSet) -> dict:
    return {
        "id": eval_set.pk,
        "name": eval_set.name,
        "md5": eval_set.md5,
        "legacy_md5": eval_set.legacy_md5,
        "rows": eval_set.rows,
        "size_bytes": eval_set.size_bytes,
        "buckets": dict(eval_set.bucket_rows),
        "uploaded_by": eval_set.uploaded_by_name,
        "created_at": eval_set.created_at.isoformat(),
    }
