"""The gates app's models, one module per part: secrets (and the app's permissions), preflight runs,
eval sets, baselines with their history, gate runs."""
from gates.models.baselines import (
    ALLOWED_MOVES as BASELINE_MOVES,
    Baseline,
    BaselineChanged,
    BaselineEvent,
    BaselineStatus,
    EventKind as BaselineEventKind,
    IllegalMove,
)
from gates.models.gate_runs import GateRun, GateRunState, GateStep, Step, StepStatus
from gates.models.evals import GATE_NAME, GATE_NAME_RULE, EvalSet, validate_gate_name
from gates.models.preflight import PreflightRun, RuntimeReading, spec_digest
from gates.models.secrets import SECRET_NAME, SECRET_NAME_RULE, GatePermissions, Secret, validate_secret_name

__all__ = [
    "BASELINE_MOVES",
    "Baseline",
    "BaselineChanged",
    "BaselineEvent",
    "BaselineEventKind",
    "BaselineStatus",
    "EvalSet",
    "GATE_NAME",
    "GateRun",
    "GateRunState",
    "GateStep",
    "GATE_NAME_RULE",
    "GatePermissions",
    "IllegalMove",
    "PreflightRun",
    "RuntimeReading",
    "SECRET_NAME",
    "SECRET_NAME_RULE",
    "Secret",
    "Step",
    "StepStatus",
    "spec_digest",
    "validate_gate_name",
    "validate_secret_name",
]
