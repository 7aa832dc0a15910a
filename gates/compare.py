"""The eval gate's decision: every bucket of the baseline against the candidate, and one verdict.

Pure (no models, no mlflow, no scipy): the CI command, the gate run and the bench call the same
functions. The seed's rule stays the core — candidate ≥ baseline − tolerance, per bucket, in exact
decimals — and each bucket also gets a one-sided test of its drop, because at the seed's bucket
sizes (60–400 items) a point estimate moves by more than the tolerance on noise alone:

- beyond the tolerance and significant (p < α) → FAIL
- beyond the tolerance, not significant       → INCONCLUSIVE (too few items to tell; a reviewer decides)
- within the tolerance                         → PASS, with a warning when the drop is significant

The test is exact McNemar when both files carry per-item results on the same ids (pairing removes
the items both models get right or wrong alike, most of the noise), a pooled two-proportion z-test
on counts = round(accuracy × n) otherwise.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Mapping

from gates.baseline_files import Baseline, BucketScore, Candidate, ItemResult, parse_tolerance

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
EXIT_CODES = {PASS: 0, FAIL: 1, INCONCLUSIVE: 3}
EXIT_INVALID = 2
ALPHA = 0.05
Z_95 = 1.959963984540054  # Φ⁻¹(0.975): a two-sided 95 % interval
MCNEMAR, TWO_PROPORTION = "mcnemar-exact", "two-proportion-z"
# Hashed with every result: a change of the rule must change the hash a sign-off is bound to.
RULE_VERSION = "gantry.compare/1"


# --- statistics (math only) --------------------------------------------------------------------

def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval; unlike p ± z·se it stays inside [0, 1] and is honest at 0 % and 100 %."""
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0/n and n/n the exact bound is 0 or 1; rounding would leave 1e-17 or 0.9999999999999999.
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def mcnemar_exact_p(b: int, c: int) -> float:
    """P(X ≥ b), X ~ Bin(b + c, ½): how likely this many losses (b: baseline right, candidate wrong)
    among the discordant pairs are if the two models were equally good. Exact integer arithmetic."""
    m = b + c
    if m == 0:
        return 1.0  # the models agree on every item: no evidence of a drop
    return float(Fraction(sum(math.comb(m, k) for k in range(b, m + 1)), 2**m))


def two_proportion_p(base_correct: int, base_n: int, cand_correct: int, cand_n: int) -> float:
    """One-sided pooled z-test of H1: the candidate's accuracy is below the baseline's."""
    pooled = (base_correct + cand_correct) / (base_n + cand_n)
    variance = pooled * (1 - pooled) * (1 / base_n + 1 / cand_n)
    if variance <= 0:
        return 1.0  # both 0 % or both 100 %: nothing dropped
    z = (base_correct / base_n - cand_correct / cand_n) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


# --- per bucket --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ItemCounts:
    """One bucket's items matched by id on both sides."""

    baseline_correct: int
    candidate_correct: int
    b: int  # baseline right, candidate wrong
    c: int  # baseline wrong, candidate right


@dataclass(frozen=True)
class BucketComparison:
    bucket: str
    outcome: str  # PASS, FAIL or INCONCLUSIVE
    baseline: BucketScore
    candidate: BucketScore | None  # None: missing from the candidate (FAIL)
    delta_pp: Decimal | None  # candidate − baseline, in percentage points
    baseline_ci: tuple[float, float]
    candidate_ci: tuple[float, float] | None
    test: str | None  # MCNEMAR or TWO_PROPORTION
    p_value: float | None
    items: ItemCounts | None  # when the test was McNemar
    beyond_tolerance: bool
    significant: bool
    note: str  # why this outcome, in words
    warning: str = ""


def paired_counts(baseline: tuple[ItemResult, ...] | None, candidate: tuple[ItemResult, ...] | None, bucket: str) -> ItemCounts | None:
    """The bucket's discordant pairs, or None unless both sides scored exactly the same item ids."""
    if baseline is None or candidate is None:
        return None
    base = {i.id: i.correct for i in baseline if i.bucket == bucket}
    cand = {i.id: i.correct for i in candidate if i.bucket == bucket}
    if base.keys() != cand.keys():
        return None
    return ItemCounts(
        baseline_correct=sum(base.values()),
        candidate_correct=sum(cand.values()),
        b=sum(1 for k, right in base.items() if right and not cand[k]),
        c=sum(1 for k, right in base.items() if not right and cand[k]),
    )


def correct_count(score: BucketScore) -> int:
    return int(round(score.accuracy * score.n))  # Decimal's round: half to even, exact


def compare_bucket(
    name: str, baseline: BucketScore, candidate: BucketScore | None, tolerance: Decimal,
    *, items: ItemCounts | None = None, alpha: float = ALPHA,
) -> BucketComparison:
    base_ci = wilson_interval(items.baseline_correct if items is not None else correct_count(baseline), baseline.n)
    if candidate is None:
        return BucketComparison(
            name, FAIL, baseline, candidate=None, delta_pp=None, baseline_ci=base_ci, candidate_ci=None, test=None,
            p_value=None, items=None, beyond_tolerance=False, significant=False,
            note="missing from the candidate: every bucket of the baseline must be evaluated",
        )
    delta_pp = (candidate.accuracy - baseline.accuracy) * 100
    beyond = candidate.accuracy < baseline.accuracy - tolerance
    if items is not None:
        test, p, cand_right = MCNEMAR, mcnemar_exact_p(items.b, items.c), items.candidate_correct
        evidence = f"McNemar p = {p:.3g}, {items.b} lost / {items.c} gained"
    else:
        cand_right = correct_count(candidate)
        test, p = TWO_PROPORTION, two_proportion_p(correct_count(baseline), baseline.n, cand_right, candidate.n)
        evidence = f"two-proportion p = {p:.3g}"
    significant = p < alpha
    drop, tol_pp = f"{pp_text(-delta_pp)} pp below the baseline", pp_text(tolerance * 100)
    warnings = []
    if beyond and significant:
        outcome, note = FAIL, f"{drop}, beyond the {tol_pp} pp tolerance, and significant ({evidence})"
    elif beyond:
        outcome = INCONCLUSIVE
        note = f"{drop}, beyond the {tol_pp} pp tolerance, but {candidate.n} items cannot tell it from noise ({evidence})"
    else:
        sign = "+" if delta_pp >= 0 else "−"
        outcome, note = PASS, f"within the {tol_pp} pp tolerance ({sign}{pp_text(abs(delta_pp))} pp)"
        if significant:
            warnings.append(f"a significant drop within the tolerance ({evidence}): watch this bucket")
    if candidate.n != baseline.n:
        # Same eval set, other n: the candidate did not score every item (or scored extra ones).
        warnings.append(f"n is {candidate.n} here but {baseline.n} in the baseline")
    return BucketComparison(
        name, outcome, baseline, candidate, delta_pp, base_ci, wilson_interval(cand_right, candidate.n),
        test, p, items, beyond, significant, note, "; ".join(warnings),
    )


# --- the whole comparison ----------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    verdict: str
    reasons: tuple[str, ...]  # why the verdict is not PASS (empty for PASS)
    tolerance_pp: Decimal
    tolerance_source: str  # "baseline" (its tolerance_pp) or "override" (--tolerance)
    alpha: float
    baseline_eval_set_dvc_hash: str
    candidate_eval_set_dvc_hash: str
    baseline_sha: str
    buckets: tuple[BucketComparison, ...]  # in the baseline's order; empty when the hash differs
    extra_buckets: Mapping[str, BucketScore]  # in the candidate only: reported, never a failure
    result_sha256: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict, "exit_code": self.exit_code, "result_sha256": self.result_sha256,
            "reasons": list(self.reasons), "tolerance_pp": float(self.tolerance_pp),
            "tolerance_source": self.tolerance_source, "alpha": self.alpha, "baseline_sha": self.baseline_sha,
            "eval_set_dvc_hash": {"baseline": self.baseline_eval_set_dvc_hash, "candidate": self.candidate_eval_set_dvc_hash},
            "buckets": [_bucket_json(b) for b in self.buckets],
            "extra_buckets": [{"bucket": k, "accuracy": float(s.accuracy), "n": s.n} for k, s in self.extra_buckets.items()],
        }


def compare_buckets(baseline: Baseline, candidate: Candidate, *, tolerance: Decimal | None = None, alpha: float = ALPHA) -> Comparison:
    """The gate's comparison. `tolerance` overrides the baseline's tolerance_pp (a fraction)."""
    tol = baseline.tolerance_pp if tolerance is None else parse_tolerance(tolerance, "tolerance")
    extra = {k: s for k, s in candidate.buckets.items() if k not in baseline.buckets}
    buckets: tuple[BucketComparison, ...] = ()
    if baseline.eval_set_dvc_hash != candidate.eval_set_dvc_hash:
        # Scores on another eval set say nothing about this one: decided before any bucket.
        verdict = FAIL
        reasons: tuple[str, ...] = (
            f"the candidate was evaluated on another eval set (eval_set_dvc_hash {candidate.eval_set_dvc_hash}, "
            f"the baseline's is {baseline.eval_set_dvc_hash}): evaluate it on the baseline's set",
        )
    else:
        buckets = tuple(
            compare_bucket(name, score, candidate.buckets.get(name), tol,
                           items=paired_counts(baseline.items, candidate.items, name), alpha=alpha)
            for name, score in baseline.buckets.items()
        )
        outcomes = {b.outcome for b in buckets}
        verdict = FAIL if FAIL in outcomes else INCONCLUSIVE if INCONCLUSIVE in outcomes else PASS
        reasons = tuple(f"{b.bucket}: {b.note}" for b in buckets if b.outcome != PASS)
    source = "baseline" if tolerance is None else "override"
    digest = result_sha256(baseline, candidate, tol, source, alpha, buckets, verdict)
    return Comparison(verdict, reasons, tol, source, alpha, baseline.eval_set_dvc_hash,
                      candidate.eval_set_dvc_hash, baseline.baseline_sha, buckets, extra, digest)


def result_sha256(baseline: Baseline, candidate: Candidate, tolerance: Decimal, source: str, alpha: float,
                  buckets: tuple[BucketComparison, ...], verdict: str) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, decimals normalised, items sorted) of the
    inputs and each bucket's outcome. Equal inputs give equal hashes whatever the files' key order
    or number spelling (0.810 = 0.81). p-values and intervals are not hashed: they follow from the
    inputs and the rule version, and libm may differ in their last bit between machines."""
    document = {
        "rule": RULE_VERSION, "alpha": repr(alpha), "tolerance_pp": _dec(tolerance), "tolerance_source": source,
        "baseline": _canonical(baseline), "candidate": _canonical(candidate), "verdict": verdict,
        "buckets": [
            {"bucket": b.bucket, "outcome": b.outcome, "test": b.test, "beyond_tolerance": b.beyond_tolerance,
             "significant": b.significant, "delta_pp": None if b.delta_pp is None else _dec(b.delta_pp)}
            for b in buckets
        ],
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _dec(value: Decimal) -> str:
    return "0" if value == 0 else format(value.normalize(), "f")


def pp_text(value: Decimal) -> str:
    """Percentage points for people: 2.00 → 2, 8.3333… → 8.33."""
    return _dec(value.quantize(Decimal("0.01")))


def _canonical(doc: Baseline | Candidate) -> dict[str, Any]:
    out: dict[str, Any] = {
        "eval_set_dvc_hash": doc.eval_set_dvc_hash,
        "buckets": {k: {"accuracy": _dec(s.accuracy), "n": s.n} for k, s in doc.buckets.items()},
        "items": None if doc.items is None else [
            [i.bucket, i.id, i.correct] for i in sorted(doc.items, key=lambda i: (i.bucket, type(i.id).__name__, str(i.id)))
        ],
    }
    if isinstance(doc, Baseline):
        out |= {"baseline_sha": doc.baseline_sha, "tolerance_pp": _dec(doc.tolerance_pp),
                "previous_baseline_sha": doc.previous_baseline_sha}
    return out


def _bucket_json(b: BucketComparison) -> dict[str, Any]:
    cand = b.candidate
    return {
        "bucket": b.bucket, "outcome": b.outcome, "note": b.note, "warning": b.warning,
        "baseline_accuracy": float(b.baseline.accuracy), "baseline_n": b.baseline.n,
        "candidate_accuracy": None if cand is None else float(cand.accuracy), "n": None if cand is None else cand.n,
        "delta_pp": None if b.delta_pp is None else float(b.delta_pp),
        "baseline_ci": list(b.baseline_ci), "candidate_ci": None if b.candidate_ci is None else list(b.candidate_ci),
        "test": b.test, "p_value": b.p_value, "significant": b.significant, "beyond_tolerance": b.beyond_tolerance,
        "discordant": None if b.items is None else {"b": b.items.b, "c": b.items.c},
    }
