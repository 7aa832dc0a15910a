"""How often the eval gate says PASS, INCONCLUSIVE or FAIL, beside the seed's point rule.

For one bucket of 60, 240 and 400 items (the seed's sizes) at baseline accuracy 0.75 and the seed's
tolerance 0.02, simulates a candidate that is truly equal and one that is truly 2, 5 and 10 pp
worse, 10,000 runs each, and reports how often each rule answers what. Both the baseline's and the
candidate's scores are measured on the eval set, so both carry noise. Three ways the files can be:

- independent: the two counts are independent binomials (what the two-proportion test assumes);
  the files carry accuracies only.
- paired: per-item results on the same items. Each item's baseline result is right with p0; the
  candidate agrees with the baseline except on a share q of items it gains (baseline wrong,
  candidate right) and a share q + drop it loses (baseline right, candidate wrong), so its accuracy
  is p0 − drop and the two agree on 1 − 2q − drop of the items (90 % for an equal candidate at the
  default q = 0.05, as two checkpoints of one model family roughly do). The files carry the items:
  exact McNemar.
- paired, no items: the same correlated items, but the files carry accuracies only (today's seed
  files): the two-proportion test, which ignores the correlation.

Then the whole seed baseline (its ten buckets at their accuracies and sizes): an equal candidate,
and the seed's own example, past participle 8 pp worse. The verdicts come from
gates.compare.compare_bucket itself, once per distinct outcome of the counts (the counts are drawn
with numpy, seeded), so what is measured is the gate's code, not a copy of it.

    .venv/bin/python bench/gate_verdicts.py                  # ~1 min on 2 busy cores
    .venv/bin/python bench/gate_verdicts.py --runs 2000 --seed 7 --discordance 0.08
"""
from __future__ import annotations

import argparse
import sys
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gates.baseline_files import BucketScore  # noqa: E402
from gates.compare import FAIL, INCONCLUSIVE, ItemCounts, compare_bucket  # noqa: E402

SIZES = (60, 240, 400)
DROPS_PP = (0, 2, 5, 10)
P0 = 0.75
TOLERANCE = Decimal("0.02")
MODES = ("independent", "paired", "paired, no items")
SEED_BUCKETS = {  # the seed's eval_baseline.json
    "tense.present_simple": (0.81, 240), "tense.past_simple": (0.77, 240), "tense.past_participle": (0.72, 240),
    "tense.simple_future": (0.78, 240), "tense.infinitive": (0.88, 240), "person.1sg": (0.82, 400),
    "person.2sg": (0.79, 400), "person.3sg": (0.71, 400), "verb.go": (0.74, 60), "verb.be": (0.69, 60),
}
# Outcome codes, so a run's buckets are an integer array.
PASS_CODE, WARN_CODE, INCONCLUSIVE_CODE, FAIL_CODE = 0, 1, 2, 3


def draw(rng: np.random.Generator, mode: str, n: int, p0: float, drop: float, q: float, runs: int) -> np.ndarray:
    """(runs, 4) int array: baseline right, candidate right, b (lost), c (gained); b, c = -1 when unpaired."""
    if mode == "independent":
        kb, kc = rng.binomial(n, p0, runs), rng.binomial(n, p0 - drop, runs)
        none = np.full(runs, -1)
        return np.stack([kb, kc, none, none], axis=1)
    # Items: both right, lost (b), gained (c), both wrong.
    cells = rng.multinomial(n, [p0 - q - drop, q + drop, q, 1 - p0 - q], size=runs)
    both, lost, gained = cells[:, 0], cells[:, 1], cells[:, 2]
    counts = np.stack([both + lost, both + gained, lost, gained], axis=1)
    if mode == "paired, no items":
        counts[:, 2:] = -1
    return counts


_cache: dict[tuple[int, ...], int] = {}


def gate_code(n: int, kb: int, kc: int, b: int, c: int) -> int:
    key = (n, kb, kc, b, c)
    if key not in _cache:
        items = ItemCounts(kb, kc, b, c) if b >= 0 else None
        result = compare_bucket(
            "bucket", BucketScore(Decimal(kb) / n, n), BucketScore(Decimal(kc) / n, n), TOLERANCE, items=items,
        )
        _cache[key] = {FAIL: FAIL_CODE, INCONCLUSIVE: INCONCLUSIVE_CODE}.get(result.outcome, WARN_CODE if result.warning else PASS_CODE)
    return _cache[key]


def gate_codes(n: int, counts: np.ndarray) -> np.ndarray:
    unique, inverse = np.unique(counts, axis=0, return_inverse=True)
    codes = np.array([gate_code(n, *map(int, row)) for row in unique])
    return codes[inverse.reshape(-1)]


def point_rule_fails(n: int, counts: np.ndarray) -> np.ndarray:
    """The seed's rule, exactly: kc/n < kb/n − tolerance  ⇔  den·kc < den·kb − num·n."""
    tol = Fraction(TOLERANCE)
    return tol.denominator * counts[:, 1] < tol.denominator * counts[:, 0] - tol.numerator * n


def share(mask: np.ndarray) -> str:
    return f"{100 * mask.mean():.1f} %"


def one_bucket_table(rng: np.random.Generator, runs: int, q: float) -> list[str]:
    rows = ["| files | n | true drop | point rule FAIL | gate PASS (⚠ of them) | gate INCONCLUSIVE | gate FAIL |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for mode in MODES:
        for n in SIZES:
            for drop in DROPS_PP:
                counts = draw(rng, mode, n, P0, drop / 100, q, runs)
                codes = gate_codes(n, counts)
                passed = codes <= WARN_CODE
                rows.append(
                    f"| {mode} | {n} | {drop} pp | {share(point_rule_fails(n, counts))} | "
                    f"{share(passed)} ({share(codes == WARN_CODE)}) | {share(codes == INCONCLUSIVE_CODE)} | {share(codes == FAIL_CODE)} |"
                )
    return rows


def seed_table(rng: np.random.Generator, runs: int, q: float) -> list[str]:
    rows = ["| files | candidate | point rule FAIL | gate PASS | gate INCONCLUSIVE | gate FAIL |", "| --- | --- | --- | --- | --- | --- |"]
    for mode in MODES:
        for label, drops in (("equal", {}), ("past participle −8 pp", {"tense.past_participle": 0.08})):
            worst = np.zeros(runs, dtype=int)
            point = np.zeros(runs, dtype=bool)
            for name, (p0, n) in SEED_BUCKETS.items():
                counts = draw(rng, mode, n, p0, drops.get(name, 0.0), q, runs)
                codes = gate_codes(n, counts)
                codes[codes == WARN_CODE] = PASS_CODE  # a warning does not change the verdict
                worst = np.maximum(worst, codes)  # FAIL outranks INCONCLUSIVE outranks PASS
                point |= point_rule_fails(n, counts)
            rows.append(f"| {mode} | {label} | {share(point)} | {share(worst == PASS_CODE)} | "
                        f"{share(worst == INCONCLUSIVE_CODE)} | {share(worst == FAIL_CODE)} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000, help="simulated evaluations per row (default 10,000)")
    parser.add_argument("--seed", type=int, default=20261201, help="the RNG's seed: the same seed prints the same table")
    parser.add_argument("--discordance", type=float, default=0.05, help="paired: share q of items an equal candidate gains (and loses)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print(f"One bucket, baseline accuracy {P0}, tolerance {TOLERANCE}, α 0.05, {args.runs:,} runs a row, "
          f"seed {args.seed}, paired discordance q = {args.discordance}\n")
    print("\n".join(one_bucket_table(rng, args.runs, args.discordance)))
    print("\nThe seed's ten buckets at once (the verdict of the whole gate)\n")
    print("\n".join(seed_table(rng, args.runs, args.discordance)))
    print(f"\n{len(_cache):,} distinct bucket outcomes decided by gates.compare; {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
