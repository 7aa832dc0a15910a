"""A gate run's evaluation through the data plane: every row of the eval set asked of the candidate
through the router's OpenAI API, graded, and written as candidate_eval.json (the candidate
document), which gates/compare.py reads beside the baseline's.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from django.conf import settings

from gates.baseline_files import Baseline as BaselineDoc
from gates.baseline_files import BucketScore, Candidate, ItemResult
from gates.evalsets import EvalRow
from gates.models import Baseline


def ask_every_row(model_id: str, rows: tuple[EvalRow, ...], *, renew) -> list[dict]:
    """Each row asked once through the router's OpenAI API, greedy; a few rows at a time."""
    from serving.serializers import openai_base_url

    url = openai_base_url() + "/chat/completions"

    def ask(row: EvalRow) -> dict:
        messages = list(row.messages) if row.messages else [{"role": "user", "content": row.prompt}]
        body = {"model": model_id, "messages": messages, "temperature": 0, "max_tokens": settings.GANTRY_GATE_MAX_TOKENS}
        try:
            answer = _post_json(url, body)["choices"][0]["message"]["content"] or ""
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            return {"id": row.id, "error": _call_error(exc)}
        return {"id": row.id, "answer": answer, "correct": row.is_correct(answer)}

    answers: list[dict] = []
    with ThreadPoolExecutor(max_workers=settings.GANTRY_GATE_EVAL_CONCURRENCY) as pool:
        for answer in pool.map(ask, rows):
            answers.append(answer)
            if len(answers) % 16 == 0:
                renew()  # a long eval keeps its lease; a lost lease stops it here
    renew()
    return answers


def _post_json(url: str, body: dict) -> dict:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=settings.GANTRY_GATE_CALL_TIMEOUT_S) as response:  # noqa: S310 — our own router
        return json.loads(response.read())


def _call_error(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        try:
            text = exc.read()[:300].decode("utf-8", "replace")
        except OSError:
            text = ""
        return f"HTTP {exc.code}: {text}"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def candidate_document(eval_set_dvc_hash: str, rows: tuple[EvalRow, ...], answers: list[dict]) -> dict:
    """candidate_eval.json: per bucket the exact fraction right (as decimal text) and n, and the
    per-item results (so a baseline that carries items gets the paired test)."""
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    items = []
    for row, answer in zip(rows, answers, strict=True):
        for bucket in row.buckets:
            total[bucket] = total.get(bucket, 0) + 1
            right[bucket] = right.get(bucket, 0) + bool(answer["correct"])
            items.append({"id": row.id, "bucket": bucket, "correct": bool(answer["correct"])})
    buckets = {name: {"accuracy": _fraction_text(right[name], n), "n": n} for name, n in total.items()}
    return {"eval_set_dvc_hash": eval_set_dvc_hash, "buckets": buckets, "items": items}


def _fraction_text(right: int, n: int) -> str:
    # Twelve places: round(accuracy × n) gives back `right` for any n a bucket can have.
    return format((Decimal(right) / Decimal(n)).quantize(Decimal("1e-12")).normalize(), "f")


def candidate_from(doc: dict) -> Candidate:
    return Candidate(
        eval_set_dvc_hash=doc["eval_set_dvc_hash"],
        buckets={name: BucketScore(Decimal(b["accuracy"]), int(b["n"])) for name, b in doc["buckets"].items()},
        items=tuple(ItemResult(i["id"], i["bucket"], bool(i["correct"])) for i in doc.get("items", [])) or None,
    )


def baseline_document(baseline: Baseline) -> BaselineDoc:
    return BaselineDoc(
        eval_set_dvc_hash=baseline.eval_set_dvc_hash, baseline_sha=baseline.baseline_sha,
        tolerance_pp=Decimal(baseline.tolerance_pp), previous_baseline_sha=baseline.previous_baseline_sha,
        buckets={name: BucketScore(acc, n) for name, (acc, n) in baseline.bucket_scores.items()},
    )
