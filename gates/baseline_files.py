"""`eval_baseline.json` and `candidate_eval.json`, read and validated strictly, numbers kept exact.

Accuracies and the tolerance are Decimals taken from the JSON text (`parse_float=Decimal`): the
seed's rule is decided on the numbers as written, so 0.81 − 0.02 is 0.79, not 0.7900000000000001,
and a drop of exactly the tolerance passes. Every error names the key it is about, because the
person reading a failed CI step has to find it in a file they did not write.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Mapping

BASELINE_REQUIRED = ("eval_set_dvc_hash", "baseline_sha", "tolerance_pp", "buckets")
BASELINE_OPTIONAL = ("previous_baseline_sha", "items")
CANDIDATE_REQUIRED = ("eval_set_dvc_hash", "buckets")
CANDIDATE_OPTIONAL = ("items",)
BUCKET_KEYS = ("accuracy", "n")
ITEM_KEYS = ("id", "bucket", "correct")


class CompareInputError(ValueError):
    """An input the gate cannot decide on. `path` names the key (`buckets["verb.go"].n`), or is
    empty when the whole file is at fault (unreadable, not JSON)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class BucketScore:
    accuracy: Decimal
    n: int


@dataclass(frozen=True)
class ItemResult:
    id: str | int
    bucket: str
    correct: bool


@dataclass(frozen=True)
class Baseline:
    eval_set_dvc_hash: str
    baseline_sha: str
    tolerance_pp: Decimal  # a fraction: the seed's 0.02 means 2 percentage points
    buckets: Mapping[str, BucketScore]
    previous_baseline_sha: str | None = None
    items: tuple[ItemResult, ...] | None = None


@dataclass(frozen=True)
class Candidate:
    eval_set_dvc_hash: str
    buckets: Mapping[str, BucketScore]
    items: tuple[ItemResult, ...] | None = None


def _no_constants(name: str) -> Any:
    raise CompareInputError("", f"{name} is not a number a score can be (JSON allows only finite numbers)")


def loads(text: str) -> Any:
    """JSON with every non-integer number as a Decimal from its own text."""
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_no_constants)
    except CompareInputError:
        raise
    except json.JSONDecodeError as exc:
        raise CompareInputError("", f"is not valid JSON ({exc})") from None
    except ValueError:  # an integer past Python's 4,300-digit limit
        raise CompareInputError("", "holds a number too long to be a score") from None


def read_json_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CompareInputError("", f"cannot be read ({exc})") from None
    return loads(text)


def parse_baseline(data: Any) -> Baseline:
    """An eval_baseline.json document: exactly the seed's keys, plus `previous_baseline_sha` and `items`."""
    _keys(data, BASELINE_REQUIRED, BASELINE_OPTIONAL, "")
    buckets = _buckets(data["buckets"])
    previous = data.get("previous_baseline_sha")
    return Baseline(
        eval_set_dvc_hash=_text(data["eval_set_dvc_hash"], "eval_set_dvc_hash"),
        baseline_sha=_text(data["baseline_sha"], "baseline_sha"),
        tolerance_pp=_in_tolerance_range(_number(data["tolerance_pp"], "tolerance_pp"), "tolerance_pp"),
        buckets=buckets,
        # The first baseline of a set has no predecessor; an exporter may say so with null.
        previous_baseline_sha=None if previous is None else _text(previous, "previous_baseline_sha"),
        items=_items(data["items"], buckets) if "items" in data else None,
    )


def parse_candidate(data: Any) -> Candidate:
    """A candidate_eval.json document: the eval set's hash, per-bucket scores, optional per-item results."""
    _keys(data, CANDIDATE_REQUIRED, CANDIDATE_OPTIONAL, "")
    buckets = _buckets(data["buckets"])
    return Candidate(
        eval_set_dvc_hash=_text(data["eval_set_dvc_hash"], "eval_set_dvc_hash"),
        buckets=buckets,
        items=_items(data["items"], buckets) if "items" in data else None,
    )


def parse_tolerance(value: Any, path: str = "tolerance") -> Decimal:
    """A tolerance given apart from a file (`--tolerance 0.02`, a number or its text): a fraction in [0, 1)."""
    if isinstance(value, str):  # from the command line; in a file a number must be a JSON number
        try:
            value = Decimal(value.strip())
        except InvalidOperation:
            raise CompareInputError(path, f"{value!r} is not a number: write 2 percentage points as 0.02") from None
    return _in_tolerance_range(_number(value, path), path)


def as_json(doc: Baseline | Candidate) -> dict[str, Any]:
    """The document as a JSON-ready dict that parses back to an equal one (floats print their
    shortest form, so 0.81 is written 0.81)."""
    out: dict[str, Any] = {"eval_set_dvc_hash": doc.eval_set_dvc_hash}
    if isinstance(doc, Baseline):
        out |= {"baseline_sha": doc.baseline_sha, "tolerance_pp": float(doc.tolerance_pp)}
        if doc.previous_baseline_sha is not None:
            out["previous_baseline_sha"] = doc.previous_baseline_sha
    out["buckets"] = {name: {"accuracy": float(s.accuracy), "n": s.n} for name, s in doc.buckets.items()}
    if doc.items is not None:
        out["items"] = [{"id": i.id, "bucket": i.bucket, "correct": i.correct} for i in doc.items]
    return out


# --- validation -----------------------------------------------------------------------------------

def _in_tolerance_range(tolerance: Decimal, path: str) -> Decimal:
    # 2 meant as "2 pp" would silently allow any drop: refused, not guessed at.
    if not Decimal(0) <= tolerance < Decimal(1):
        raise CompareInputError(path, f"{tolerance} is not in [0, 1): a fraction, 2 percentage points is 0.02")
    return tolerance


def _keys(data: Any, required: tuple[str, ...], optional: tuple[str, ...], path: str) -> None:
    where = path or "the document"
    if not isinstance(data, dict):
        raise CompareInputError(path, f"{where} must be a JSON object with {', '.join(required)}")
    # Unknown keys first: a misspelt key is also a missing one, and its own name is the better clue.
    for key in data:
        if key not in required and key not in optional:
            allowed = ", ".join(required + optional)
            raise CompareInputError(_join(path, str(key)), f"is not a key this file may have (allowed: {allowed})")
    for key in required:
        if key not in data:
            raise CompareInputError(_join(path, key), "is missing")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _bucket_path(name: str) -> str:
    return f"buckets[{json.dumps(name)}]"  # bucket names hold dots (`verb.go`), so no dotted path


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CompareInputError(path, "must be a non-empty string")
    return value


def _number(value: Any, path: str) -> Decimal:
    # bool is an int in Python; `true` as an accuracy is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise CompareInputError(path, f"must be a number, not {json.dumps(value, default=str)}")
    number = value if isinstance(value, Decimal) else Decimal(repr(value))
    if not number.is_finite():
        raise CompareInputError(path, f"must be a finite number, not {value}")
    return number


def _buckets(value: Any) -> dict[str, BucketScore]:
    if not isinstance(value, dict) or not value:
        raise CompareInputError("buckets", "must be an object of {name: {accuracy, n}} with at least one bucket")
    buckets: dict[str, BucketScore] = {}
    for name, raw in value.items():
        path = _bucket_path(str(name))
        if not isinstance(name, str) or not name.strip():
            raise CompareInputError(path, "a bucket needs a name")
        _keys(raw, BUCKET_KEYS, (), path)
        accuracy = _number(raw["accuracy"], f"{path}.accuracy")
        if not Decimal(0) <= accuracy <= Decimal(1):
            raise CompareInputError(f"{path}.accuracy", f"{raw['accuracy']} is not in [0, 1] (a fraction: 81 % is 0.81)")
        n = raw["n"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise CompareInputError(f"{path}.n", f"must be a positive whole number of items, not {json.dumps(n, default=str)}")
        buckets[name] = BucketScore(accuracy=accuracy, n=n)
    return buckets


def _items(value: Any, buckets: Mapping[str, BucketScore]) -> tuple[ItemResult, ...]:
    if not isinstance(value, list):
        raise CompareInputError("items", "must be a list of {id, bucket, correct}")
    seen: dict[str, set[str | int]] = {name: set() for name in buckets}
    items: list[ItemResult] = []
    for index, raw in enumerate(value):
        path = f"items[{index}]"
        _keys(raw, ITEM_KEYS, (), path)
        bucket, item_id, correct = raw["bucket"], raw["id"], raw["correct"]
        if not isinstance(bucket, str) or bucket not in buckets:
            raise CompareInputError(f"{path}.bucket", f"{json.dumps(bucket, default=str)} is not one of this file's buckets")
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or item_id == "":
            raise CompareInputError(f"{path}.id", "must be a non-empty string or an integer")
        if item_id in seen[bucket]:
            raise CompareInputError(f"{path}.id", f"{json.dumps(item_id)} appears twice in bucket {json.dumps(bucket)}")
        if not isinstance(correct, bool):
            raise CompareInputError(f"{path}.correct", f"must be true or false, not {json.dumps(correct, default=str)}")
        seen[bucket].add(item_id)
        items.append(ItemResult(id=item_id, bucket=bucket, correct=correct))
    for name, score in buckets.items():
        mine = [i for i in items if i.bucket == name]
        if len(mine) != score.n:
            raise CompareInputError("items", f"bucket {json.dumps(name)} has {len(mine)} items but its n is {score.n}")
        right = sum(i.correct for i in mine)
        # The accuracy may be rounded, but never by more than half an item: |right/n − accuracy| ≤ 1/(2n).
        if abs(2 * right - 2 * score.accuracy * score.n) > 1:
            raise CompareInputError(
                f"{_bucket_path(name)}.accuracy",
                f"is {score.accuracy} but its items give {right}/{score.n}: the scores and the items disagree",
            )
    return tuple(items)
