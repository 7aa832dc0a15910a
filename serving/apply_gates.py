"""What must say yes before the reconciler applies a new spec to Serve.

Serving owns the question; other apps answer it. gates registers its preflight here
(gates/apps.py), so the reconciler asks "may this spec be applied?" without importing gates'
preflight runs, which themselves deploy through serving: the arrow points one way only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PASSED, PENDING, FAILED = "passed", "pending", "failed"


@dataclass(frozen=True)
class ApplyVerdict:
    state: str  # PASSED, PENDING (ask again on a later tick) or FAILED (refused, with the reason)
    message: str = ""
    # The engine the gate found this spec must run on ("" the cluster's own, "cpu" the CPU engine),
    # or None when the gate has no opinion; `source` names the run that decided, `engine_note` why.
    engine: str | None = None
    engine_note: str = ""
    source: str = ""


ApplyGate = Callable[[object], ApplyVerdict]
_gates: list[ApplyGate] = []


def register(gate: ApplyGate) -> None:
    """Add a gate every apply of a new spec must pass (once per process: AppConfig.ready)."""
    if gate not in _gates:
        _gates.append(gate)


def registered() -> tuple[ApplyGate, ...]:
    return tuple(_gates)


def verdict_for_apply(model) -> ApplyVerdict:
    """The first verdict that is not a pass, else a pass carrying the last engine a gate chose.

    With no gate registered this refuses: the preflight is a promise the README makes, and a process
    that somehow started without it must not deploy unchecked specs."""
    if not _gates:
        return ApplyVerdict(FAILED, "No apply gate is registered in this process (is the gates app installed?); nothing is deployed unchecked.")
    passed = ApplyVerdict(PASSED)
    for gate in _gates:
        verdict = gate(model)
        if verdict.state != PASSED:
            return verdict
        if verdict.engine is not None:
            passed = verdict
    return passed
