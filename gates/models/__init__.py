"""The gates app's models, one module per part: secrets (and the app's permissions), preflight runs."""
from gates.models.preflight import PreflightRun, RuntimeReading, spec_digest
from gates.models.secrets import SECRET_NAME, SECRET_NAME_RULE, GatePermissions, Secret, validate_secret_name

__all__ = [
    "GatePermissions",
    "PreflightRun",
    "RuntimeReading",
    "SECRET_NAME",
    "SECRET_NAME_RULE",
    "Secret",
    "spec_digest",
    "validate_secret_name",
]
