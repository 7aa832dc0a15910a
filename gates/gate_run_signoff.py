"""Who may sign off an INCONCLUSIVE gate run, and whether a sign-off still holds: one rule, asked
the same way by the page, the API and the promote step.
"""
from __future__ import annotations

from dashboard.roles import is_reviewer
from gates.models import GateRun, GateRunState


def signoff_refusal(run: GateRun, user) -> str:
    """Why `user` may not sign `run` off, or '' when they may."""
    if run.state != GateRunState.AWAITING_SIGNOFF:
        return f"Gate run {run.pk} is {run.get_state_display()}: only an INCONCLUSIVE run waits for a sign-off."
    if run.requested_by_id == user.pk:
        return "You asked for this run: a reviewer other than you must sign it off."
    if not is_reviewer(user):
        return "Only a reviewer (permission gates.approve_baseline, group “reviewers”) may sign off a gate run."
    return ""


def signoff_void_reason(run: GateRun) -> str:
    if not run.signed_off_at:
        return f"Gate run {run.pk} is {run.verdict} and nobody signed it off."
    if run.signoff_evidence != run.evidence:
        changed = sorted(k for k, v in run.evidence.items() if run.signoff_evidence.get(k) != v)
        return f"The sign-off by {run.signed_off_by_name} is void: {', '.join(changed)} changed since it was given."
    return ""
