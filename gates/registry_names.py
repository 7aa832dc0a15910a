"""What the model registry accepts, checked before anything asks MLflow: model names, aliases, run
ids, artifact paths, semvers and `models:/` URIs, and the RegistryError every refusal comes out as.

Apart from gates/registry.py (the one module that imports mlflow) so that a gate request and a
serving spec are validated without importing mlflow, and so that these rules change on their own
(a new naming rule) without touching the code that talks to MLflow.
"""
from __future__ import annotations

import re

from django.conf import settings

STEPS = ("fetch", "promote", "resolve", "dev")
DEV_PREFIX = "v0.0.0-dev"

# SemVer 2.0's own regex (semver.org), with the leading "v" Gantry's tags carry.
SEMVER_RE = re.compile(
    r"v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
DEV_SEMVER_RE = re.compile(r"v0\.0\.0-dev[.\-+a-zA-Z0-9]*")
# Stricter than MLflow's own rule (no "/" or ":"): the name is also a folder under GANTRY_REGISTRY_DIR
# and a quoted value in MLflow's search filters.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ALIAS_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MODELS_URI_RE = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[1-9][0-9]*))")


class RegistryError(Exception):
    """A registry step that did not happen; `reason` says why in words a user understands."""

    def __init__(self, step: str, reason: str):
        assert step in STEPS, step
        super().__init__(reason)
        self.step = step
        self.reason = reason


class RegistryUnreachable(RegistryError):
    """MLflow did not answer: nothing was decided, and the same request may work later."""


def validate_semver(text: object) -> str:
    """`text` when it is v + a SemVer 2.0 version (v1.4.0, v2.0.0-rc.1+build.7); ValueError otherwise."""
    if not isinstance(text, str) or not SEMVER_RE.fullmatch(text):
        shown = repr(text)[:80]
        raise ValueError(
            f"{shown} is not a semantic version: write v + MAJOR.MINOR.PATCH, optionally with "
            "-prerelease and +build (v1.4.0, v2.0.0-rc.1, v0.0.0-dev.3), without leading zeros."
        )
    return text


def is_dev_semver(semver: str) -> bool:
    return semver.startswith(DEV_PREFIX)


def _checked(step: str, value: object, rule: re.Pattern, what: str, example: str) -> str:
    if not isinstance(value, str) or not rule.fullmatch(value):
        raise RegistryError(step, f"{what} {repr(value)[:80]} is not valid: use letters, digits, '.', '_' or '-' (e.g. {example}).")
    return value


def check_name(step: str, name: object) -> str:
    return _checked(step, name, NAME_RE, "The model name", "tiny-llama")


def check_run_id(step: str, run_id: object) -> str:
    return _checked(step, run_id, RUN_ID_RE, "The MLflow run id", "the 32 hex digits MLflow shows")


def check_semver(step: str, semver: object) -> str:
    try:
        return validate_semver(semver)
    except ValueError as exc:
        raise RegistryError(step, str(exc)) from None


def check_artifact_path(step: str, path: object) -> str:
    parts = path.split("/") if isinstance(path, str) else []
    if not parts or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise RegistryError(step, f"The artifact path {repr(path)[:80]} must be a folder inside the run's artifacts, such as 'model'.")
    return path


def check_alias(step: str, alias: object) -> str:
    alias = _checked(step, alias, ALIAS_RE, "The alias", "production")
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise RegistryError(step, f"The alias {alias!r} is reserved by MLflow; choose another name.")
    return alias


def refuse_dev_in_prod(step: str, semver: str, what: str) -> None:
    if settings.GANTRY_ENV == "prod" and is_dev_semver(semver):
        raise RegistryError(step, f"{what} is {semver}, a development version; GANTRY_ENV=prod never {'deploys' if step == 'resolve' else 'promotes'} {DEV_PREFIX}… versions. Promote a release version through a gate run.")


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of models:/<name>@<alias> or models:/<name>/<version>."""
    match = MODELS_URI_RE.fullmatch(uri) if isinstance(uri, str) else None
    if not match:
        raise RegistryError("resolve", f"{repr(uri)[:120]} is not a registry model: write models:/<name>@<alias> (models:/tiny-llama@production) or models:/<name>/<version>.")
    name = check_name("resolve", match["name"])
    alias = check_alias("resolve", match["alias"]) if match["alias"] else None
    return name, alias, match["version"]
