"""python manage.py compare_baseline --candidate candidate_eval.json --baseline eval_baseline.json [--tolerance 0.02] [--json]

The eval gate's comparison as a CI step: a per-bucket table and the verdict. Exit 0 PASS, 1 FAIL,
3 INCONCLUSIVE (a reviewer's sign-off is needed before promotion), 2 for a file it cannot read or
that is not valid (the file and the key are named). It reads two files and nothing else: no
database, no MLflow, so it runs in a CI job that has neither.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gates.baseline_files import CompareInputError, parse_baseline, parse_candidate, parse_tolerance, read_json_file
from gates.compare import (
    EXIT_INVALID, FAIL, INCONCLUSIVE, MCNEMAR, PASS, TWO_PROPORTION, BucketComparison, Comparison, compare_buckets, pp_text,
)

MARKS = {PASS: "✔", FAIL: "✖", INCONCLUSIVE: "?"}
TESTS = {TWO_PROPORTION: "2-prop z", MCNEMAR: "McNemar"}
T = TypeVar("T")
COLUMNS = ("bucket", "n", "baseline", "candidate", "Δ pp", "candidate 95% CI", "test", "p", "outcome")


class Command(BaseCommand):
    help = "Compare a candidate's per-bucket eval scores with eval_baseline.json (exit 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 invalid input)."
    # Django's system checks are about the web app; a CI step comparing two files must not fail on them.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--candidate", required=True, type=Path, help="the candidate's scores (candidate_eval.json)")
        parser.add_argument("--baseline", required=True, type=Path, help="the committed baseline (eval_baseline.json)")
        parser.add_argument("--tolerance", help="overrides the baseline's tolerance_pp; a fraction: 0.02 is 2 pp")
        parser.add_argument("--json", action="store_true", help="print one JSON document with the verdict and every bucket")

    def handle(self, *args: Any, **options: Any) -> None:
        baseline = _load(options["baseline"], parse_baseline)
        candidate = _load(options["candidate"], parse_candidate)
        tolerance = None
        if options["tolerance"] is not None:
            try:
                tolerance = parse_tolerance(options["tolerance"], "--tolerance")
            except CompareInputError as exc:
                raise CommandError(str(exc), returncode=EXIT_INVALID) from None
        comparison = compare_buckets(baseline, candidate, tolerance=tolerance)
        if options["json"]:
            self.stdout.write(json.dumps(comparison.as_json(), indent=2, ensure_ascii=False))
        else:
            self._print(comparison, options["baseline"], options["candidate"])
        if comparison.exit_code:
            sys.exit(comparison.exit_code)

    # --- output -----------------------------------------------------------------------------------

    def _print(self, c: Comparison, baseline_path: Path, candidate_path: Path) -> None:
        self.stdout.write(f"Candidate {candidate_path} against baseline {baseline_path} (baseline_sha {c.baseline_sha})")
        where = "from --tolerance" if c.tolerance_source == "override" else "the baseline's tolerance_pp"
        self.stdout.write(f"  tolerance {pp_text(c.tolerance_pp * 100)} pp ({where}), α = {c.alpha} one-sided")
        if c.buckets:
            rows = [COLUMNS] + [_row(b) for b in c.buckets]
            widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
            for row in rows:
                self.stdout.write("  " + "  ".join(cell.ljust(w) if i in (0, 6, 8) else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
            for b in c.buckets:
                if b.warning:
                    self.stdout.write(f"  ⚠ {b.bucket}: {b.warning}")
        for name, score in c.extra_buckets.items():
            self.stdout.write(f"  + {name}: in the candidate only ({float(score.accuracy) * 100:.2f} %, n {score.n}); not compared")
        for b in c.buckets:
            if b.outcome != PASS:
                self.stdout.write(f"  {MARKS[b.outcome]} {b.bucket}: {b.note}")
        if not c.buckets:  # the eval set differs: no bucket was compared
            for reason in c.reasons:
                self.stdout.write(f"  {MARKS[FAIL]} {reason}")
        next_step = {
            PASS: "every bucket holds: may be promoted.",
            FAIL: "not promoted: fix the buckets above (or the eval set) and evaluate again.",
            INCONCLUSIVE: "a drop beyond the tolerance that these items cannot confirm: promotion needs a reviewer's sign-off on this result.",
        }[c.verdict]
        self.stdout.write(f"Verdict: {c.verdict} — {next_step}")
        self.stdout.write(f"result_sha256 {c.result_sha256}")


def _load(path: Path, parse: Callable[[Any], T]) -> T:
    """The file, parsed and validated, or exit 2 naming the file and the key at fault."""
    try:
        return parse(read_json_file(path))
    except CompareInputError as exc:
        where = f"{path}: {exc.path}" if exc.path else str(path)
        raise CommandError(f"{where} {exc.message}", returncode=EXIT_INVALID) from None


def _row(b: BucketComparison) -> tuple[str, ...]:
    cand = b.candidate
    n = str(b.baseline.n) if cand is None or cand.n == b.baseline.n else f"{b.baseline.n}→{cand.n}"
    ci = "—" if b.candidate_ci is None else f"[{b.candidate_ci[0] * 100:.1f}, {b.candidate_ci[1] * 100:.1f}] %"
    return (
        b.bucket, n, f"{float(b.baseline.accuracy) * 100:.2f} %",
        "missing" if cand is None else f"{float(cand.accuracy) * 100:.2f} %",
        "—" if b.delta_pp is None else f"{float(b.delta_pp):+.2f}", ci,
        "—" if b.test is None else TESTS.get(b.test, b.test), "—" if b.p_value is None else f"{b.p_value:.3g}",
        f"{MARKS[b.outcome]} {b.outcome}" + (" ⚠" if b.warning else ""),
    )
