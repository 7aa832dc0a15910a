"""The preflight as one of serving's apply gates (serving/apply_gates.py; registered in gates/apps.py).

The reconciler asks serving's hook, never gates' preflight runs directly: preflight runs resume a
forced deploy through serving, so a direct import back would close a cycle between the two apps.
"""
from __future__ import annotations

from gates import preflights
from serving.apply_gates import PASSED, ApplyVerdict


def preflight_verdict(model) -> ApplyVerdict:
    """preflights.verdict_for_apply in serving's words: the state and message, and on a pass the
    engine the CUDA probe chose, with the guard's summary as the reason."""
    verdict = preflights.verdict_for_apply(model)
    if verdict.state != PASSED:
        return ApplyVerdict(verdict.state, verdict.message)
    run = verdict.run
    note = ""
    if run.engine:
        cuda = next((r for r in run.guard_results if r.guard == "cuda"), None)
        note = cuda.summary if cuda else "the CUDA probe asked for it"
    return ApplyVerdict(PASSED, engine=run.engine, engine_note=note, source=f"preflight #{run.pk}")
