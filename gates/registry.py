"""Gantry's model registry: MLflow, at MLFLOW_TRACKING_URI. The only module that imports mlflow.

A candidate is an MLflow run whose artifacts hold a model folder (config.json and the weights). A
gate run promotes it as the very last step: the version is registered with its evidence as tags,
waited for until READY, and only then does the alias move, so a reader of `models:/<name>@production`
never sees a version whose registration did not finish. Every MLflow failure comes out as a
RegistryError naming the step and the reason in words; an MLflow server that does not answer fails
in seconds (GANTRY_MLFLOW_TIMEOUT_S, GANTRY_MLFLOW_RETRIES), not after MLflow's four minutes of
retries. Serving specs name `models:/<name>@<alias>`; resolve_alias downloads that version once into
GANTRY_REGISTRY_DIR, and that copy is what the model's config serves.

What needs no MLflow lives beside it, so that it is checked and read without importing mlflow: the
rules for names, semvers and `models:/` URIs (gates/registry_names.py) and the local copies with
their markers (gates/registry_copies.py).
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import mlflow.artifacts
import requests
from django.conf import settings
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException, RestException

from gates.registry_copies import ResolvedModel, local_copy, registered_copy, resolved
from gates.registry_names import (
    DEV_PREFIX, DEV_SEMVER_RE, RegistryError, RegistryUnreachable, check_alias, check_artifact_path, check_name, check_run_id,
    check_semver, is_dev_semver, parse_models_uri, refuse_dev_in_prod, validate_semver,
)

# Callers and tests name these as gates.registry's; they live where their reason to change is.
__all__ = [
    "CandidateRun", "Promotion", "RegistryError", "RegistryUnreachable", "ResolvedModel", "describe_run", "download_candidate",
    "is_dev_semver", "log_candidate", "parse_models_uri", "promote", "register_dev", "registered_copy", "registry_state",
    "resolve_alias", "tracking_uri", "undo_partial_promotion", "validate_semver",
]

PRODUCTION_ALIAS = "production"
DEV_ALIAS = "dev"
GATE_RUN_TAG = "gantry.gate_run"
ENV_TAG = "gantry.env"
SEMVER_TAG = "semver"
DEV_USER_TAG = "gantry.dev_promoted_by"
# On the registered model: which gate run created it, so undoing that run's version can also undo the
# model itself and leave the registry exactly as it was.
CREATED_BY_TAG = "gantry.created_by_gate_run"
RESERVED_TAGS = (GATE_RUN_TAG, ENV_TAG, SEMVER_TAG, DEV_USER_TAG)


@dataclass(frozen=True)
class CandidateRun:
    run_id: str
    experiment_id: str
    artifact_uri: str
    status: str
    tags: dict
    params: dict


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    semver: str
    alias: str
    run_id: str


# --- talking to MLflow --------------------------------------------------------------------------
def tracking_uri() -> str:
    return settings.MLFLOW_TRACKING_URI


def _where() -> str:
    uri = tracking_uri()
    parts = urlsplit(uri)
    if parts.password:  # the URI may carry credentials: never echo them
        uri = uri.replace(f":{parts.password}@", ":***@")
    return uri


def _client() -> MlflowClient:
    # MLflow reads these at every request; its defaults (120 s timeout, 7 retries with backoff) turn an
    # unreachable server into minutes of silence in a gate step or a web request.
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(settings.GANTRY_MLFLOW_TIMEOUT_S)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.GANTRY_MLFLOW_RETRIES)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0.5"
    uri = tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def _unreachable_reason(exc: BaseException) -> str | None:
    """Why MLflow did not answer, when that is what happened; None when it answered with a refusal."""
    if isinstance(exc, RestException):
        return None
    seen = exc
    while seen is not None:
        # After its retries urllib3 reports a read timeout as a ConnectionError; the words tell them apart.
        if isinstance(seen, requests.exceptions.Timeout) or "timed out" in str(seen).lower():
            return f"no answer within {settings.GANTRY_MLFLOW_TIMEOUT_S} s"
        if isinstance(seen, requests.exceptions.ConnectionError):
            return "connection refused" if "refused" in str(seen).lower() else "cannot connect"
        if isinstance(seen, requests.exceptions.RequestException):
            return type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    if "API request to" in text and "failed" in text:
        return "the request failed"
    return None


@contextmanager
def _talking(step: str) -> Iterator[None]:
    """MLflow's exceptions as RegistryError: whatever MLflow said, with where it was said."""
    try:
        yield
    except RegistryError:
        raise
    except (MlflowException, requests.exceptions.RequestException) as exc:
        unreachable = _unreachable_reason(exc)
        if unreachable:
            raise RegistryUnreachable(step, f"The MLflow registry at {_where()} cannot be reached ({unreachable}); try again when it is up.") from None
        message = exc.message if isinstance(exc, MlflowException) else str(exc)
        raise RegistryError(step, f"MLflow at {_where()} refused: {_first_line(message)}") from None
    except OSError as exc:
        raise RegistryError(step, f"Reading or writing model files failed: {exc}") from None


def _first_line(text: str, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else "no reason given"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _get_run(client: MlflowClient, step: str, run_id: str):
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if _not_found(exc) or exc.error_code == "INVALID_PARAMETER_VALUE":
            raise RegistryError(step, f"MLflow run {run_id} does not exist at {_where()}.") from None
        raise
    if run.info.lifecycle_stage == "deleted":  # still readable in MLflow's trash, but nobody's candidate
        raise RegistryError(step, f"MLflow run {run_id} at {_where()} is deleted; restore it or name another run.")
    return run


def _registered_model(client: MlflowClient, name: str):
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def _versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    found: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(f"name='{name}'", page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return sorted(found, key=lambda v: int(v.version))


def _aliases(model) -> dict[str, str]:
    # The SQL store says 1, the REST store "1": one spelling, so snapshots compare.
    return {alias: str(version) for alias, version in (model.aliases or {}).items()} if model else {}


def _listing(client: MlflowClient, run_id: str, path: str | None) -> list[str]:
    return sorted(_basename(info.path) + ("/" if info.is_dir else "") for info in client.list_artifacts(run_id, path))


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _require_model_folder(client: MlflowClient, step: str, run_id: str, artifact_path: str) -> None:
    """The run's `artifact_path` is a folder with config.json: checked before anything is written."""
    inside = _listing(client, run_id, artifact_path)
    if "config.json" in inside:
        return
    if not inside:
        top = _listing(client, run_id, None)
        holds = ", ".join(top) if top else "no artifacts at all"
        raise RegistryError(step, f"MLflow run {run_id} has no artifact folder {artifact_path!r}; its artifacts are: {holds}.")
    raise RegistryError(step, f"{artifact_path!r} in MLflow run {run_id} is not a model folder: it has no config.json, only {', '.join(inside)}.")


# --- candidates ---------------------------------------------------------------------------------
def describe_run(run_id: str) -> CandidateRun:
    run_id = check_run_id("fetch", run_id)
    with _talking("fetch"):
        run = _get_run(_client(), "fetch", run_id)
    info, data = run.info, run.data
    return CandidateRun(info.run_id, str(info.experiment_id), info.artifact_uri, info.status, dict(data.tags), dict(data.params))


def download_candidate(run_id: str, artifact_path: str, dest: Path) -> Path:
    """The run's model folder, downloaded under `dest`; it must hold config.json."""
    run_id = check_run_id("fetch", run_id)
    artifact_path = check_artifact_path("fetch", artifact_path)
    with _talking("fetch"):
        client = _client()
        _get_run(client, "fetch", run_id)
        _require_model_folder(client, "fetch", run_id, artifact_path)
        Path(dest).mkdir(parents=True, exist_ok=True)
        folder = Path(client.download_artifacts(run_id, artifact_path, dst_path=str(dest)))
    if not (folder / "config.json").is_file():
        holds = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "nothing"
        raise RegistryError("fetch", f"The download of {artifact_path!r} from run {run_id} has no config.json; it holds {holds}.")
    return folder


def log_candidate(folder: Path, *, experiment: str = "gantry-candidates", artifact_path: str = "model",
                  params: dict | None = None, tags: dict | None = None) -> str:
    """Log a local model folder as a finished MLflow run (the demo, the tests, a team without a
    training pipeline of its own); returns the run id. An experiment Gantry creates on a local
    backend keeps its artifacts under MLFLOW_ARTIFACT_ROOT: MLflow's own default, ./mlruns, is
    relative to whatever directory the process happened to start in."""
    artifact_path = check_artifact_path("fetch", artifact_path)
    if not (Path(folder) / "config.json").is_file():
        raise RegistryError("fetch", f"{folder} is not a model folder: it has no config.json.")
    with _talking("fetch"):
        client = _client()
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            location = None
            if urlsplit(tracking_uri()).scheme in ("sqlite", "file", ""):
                location = _local_artifact_location(experiment)
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        run = client.create_run(experiment_id, tags=dict(tags or {}))
        run_id = run.info.run_id
        for key, value in (params or {}).items():
            client.log_param(run_id, key, value)
        client.log_artifacts(run_id, str(folder), artifact_path)
        client.set_terminated(run_id)
    return run_id


def _local_artifact_location(experiment: str) -> str:
    root = settings.MLFLOW_ARTIFACT_ROOT
    if urlsplit(root).scheme:  # already a URI (s3://…, file:///…): MLflow takes it as it is
        return f"{root.rstrip('/')}/{experiment}"
    return (Path(root).resolve() / experiment).as_uri()


# --- the registry's state -----------------------------------------------------------------------
def registry_state(name: str) -> dict:
    """What the registry holds for `name`, in a form that compares with ==: a failed gate run must
    leave this exactly as it was."""
    name = check_name("promote", name)
    with _talking("promote"):
        client = _client()
        model = _registered_model(client, name)
        if model is None:
            return {"exists": False, "tags": {}, "versions": {}, "aliases": {}}
        versions = {
            str(v.version): {"run_id": v.run_id, "source": v.source, "status": v.status, "tags": dict(v.tags)}
            for v in _versions(client, name)
        }
        return {"exists": True, "tags": dict(model.tags), "versions": versions, "aliases": _aliases(model)}


def _wait_until_ready(client: MlflowClient, step: str, name: str, version: str) -> None:
    deadline = time.monotonic() + settings.GANTRY_MLFLOW_READY_TIMEOUT_S
    while True:
        current = client.get_model_version(name, version)
        if current.status == "READY":
            return
        if current.status == "FAILED_REGISTRATION":
            raise RegistryError(step, f"MLflow could not register version {version} of {name}: {current.status_message or 'no reason given'}.")
        if time.monotonic() > deadline:
            raise RegistryError(step, f"Version {version} of {name} is still {current.status} after {settings.GANTRY_MLFLOW_READY_TIMEOUT_S} s; the alias was not moved.")
        time.sleep(0.5)


def _semver_clash(versions: list[ModelVersion], semver: str, mine: ModelVersion | None, name: str) -> str | None:
    for v in versions:
        if v.tags.get(SEMVER_TAG) == semver and (mine is None or v.version != mine.version):
            by = f" (gate run {v.tags[GATE_RUN_TAG]})" if GATE_RUN_TAG in v.tags else ""
            return f"{semver} is already version {v.version} of {name}{by}; a semver names one version only, so pick the next one."
    return None


def _register(client: MlflowClient, step: str, name: str, run_id: str, artifact_path: str, tags: dict,
              model_tags: dict, description: str) -> str:
    """Create the registered model when it is missing, then the version; returns its number."""
    if _registered_model(client, name) is None:
        try:
            client.create_registered_model(name, tags=model_tags)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # created meanwhile by someone else: use it
                raise
    version = client.create_model_version(
        name, f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=tags, description=description, await_creation_for=0,
    )
    return str(version.version)


def _evidence_tags(evidence: dict) -> dict[str, str]:
    tags = {}
    for key, value in (evidence or {}).items():
        key = key if str(key).startswith("gantry.") else f"gantry.{key}"
        if key in RESERVED_TAGS or key == CREATED_BY_TAG:
            raise RegistryError("promote", f"The evidence may not set {key}: Gantry writes that tag itself.")
        tags[key] = str(value)
    return tags


def promote(name: str, run_id: str, artifact_path: str, semver: str, *, gate_run_id: int, evidence: dict,
            alias: str = PRODUCTION_ALIAS) -> Promotion:
    """Register the candidate as a version of `name`, tagged with the gate run and its evidence, wait
    until MLflow says READY, then move `alias` to it — last, so nothing points at a half-made version.
    Calling it again for the same gate run finishes that run's version instead of making another."""
    name, run_id = check_name("promote", name), check_run_id("promote", run_id)
    artifact_path, semver, alias = check_artifact_path("promote", artifact_path), check_semver("promote", semver), check_alias("promote", alias)
    if not isinstance(gate_run_id, int) or isinstance(gate_run_id, bool) or gate_run_id < 1:
        raise RegistryError("promote", f"gate_run_id must be a gate run's number; got {gate_run_id!r}.")
    refuse_dev_in_prod("promote", semver, "The candidate's semver")
    tags = {GATE_RUN_TAG: str(gate_run_id), ENV_TAG: settings.GANTRY_ENV, SEMVER_TAG: semver, **_evidence_tags(evidence)}
    with _talking("promote"):
        client = _client()
        versions = _versions(client, name) if _registered_model(client, name) else []
        mine = next((v for v in versions if v.tags.get(GATE_RUN_TAG) == str(gate_run_id)), None)
        if mine is not None and (mine.run_id != run_id or mine.tags.get(SEMVER_TAG) != semver):
            raise RegistryError("promote", f"Gate run {gate_run_id} already registered version {mine.version} of {name} from run {mine.run_id} as {mine.tags.get(SEMVER_TAG)}; it cannot promote another candidate.")
        clash = _semver_clash(versions, semver, mine, name)
        if clash:
            raise RegistryError("promote", clash)
        if mine is None:
            _get_run(client, "promote", run_id)
            _require_model_folder(client, "promote", run_id, artifact_path)
            version = _register(client, "promote", name, run_id, artifact_path, tags, {CREATED_BY_TAG: str(gate_run_id)},
                                f"Promoted by Gantry gate run {gate_run_id} ({semver}).")
        else:
            version = str(mine.version)
            for key, value in tags.items():  # a run killed mid-promote may have left a tag out
                if mine.tags.get(key) != value:
                    client.set_model_version_tag(name, version, key, value)
        _wait_until_ready(client, "promote", name, version)
        client.set_registered_model_alias(name, alias, version)
    return Promotion(name, version, semver, alias, run_id)


def undo_partial_promotion(name: str, gate_run_id: int) -> str:
    """Crash recovery: the version this gate run registered, if no alias points at it yet, is deleted
    (and the registered model too when this run created it and it is left empty). Says what it did."""
    name = check_name("promote", name)
    with _talking("promote"):
        client = _client()
        model = _registered_model(client, name)
        if model is None:
            return "nothing to undo"
        mine = next((v for v in _versions(client, name) if v.tags.get(GATE_RUN_TAG) == str(gate_run_id)), None)
        if mine is not None:
            pointing = sorted(a for a, v in _aliases(model).items() if v == str(mine.version))
            if pointing:
                return f"nothing to undo: version {mine.version} is already the target of {', '.join(pointing)}"
            client.delete_model_version(name, str(mine.version))
        done = [f"deleted version {mine.version}"] if mine is not None else []
        if model.tags.get(CREATED_BY_TAG) == str(gate_run_id) and not _versions(client, name):
            client.delete_registered_model(name)
            done.append(f"deleted the registered model {name}, which it had created")
        return " and ".join(done) or "nothing to undo"


def register_dev(run_id: str, name: str, artifact_path: str, semver: str, *, user: str) -> Promotion:
    """The development escape hatch: a v0.0.0-dev… version registered without a gate run, recorded
    with the environment and who did it, behind the "dev" alias only. Never in GANTRY_ENV=prod."""
    if settings.GANTRY_ENV == "prod":
        raise RegistryError("dev", "GANTRY_ENV=prod: versions are registered only by a gate run that passed; the dev escape hatch is closed here.")
    name, run_id, artifact_path = check_name("dev", name), check_run_id("dev", run_id), check_artifact_path("dev", artifact_path)
    semver = check_semver("dev", semver)
    if not DEV_SEMVER_RE.fullmatch(semver):
        raise RegistryError("dev", f"{semver} is not a development version: the escape hatch registers only {DEV_PREFIX}… (e.g. v0.0.0-dev.3); anything else goes through a gate run.")
    if not isinstance(user, str) or not user.strip():
        raise RegistryError("dev", "Say who registers this development version (user).")
    tags = {SEMVER_TAG: semver, ENV_TAG: settings.GANTRY_ENV, DEV_USER_TAG: user}
    with _talking("dev"):
        client = _client()
        versions = _versions(client, name) if _registered_model(client, name) else []
        clash = _semver_clash(versions, semver, None, name)
        if clash:
            raise RegistryError("dev", clash)
        _get_run(client, "dev", run_id)
        _require_model_folder(client, "dev", run_id, artifact_path)
        version = _register(client, "dev", name, run_id, artifact_path, tags, {},
                            f"Development version {semver} registered by {user} without a gate run.")
        _wait_until_ready(client, "dev", name, version)
        client.set_registered_model_alias(name, DEV_ALIAS, version)
    return Promotion(name, version, semver, DEV_ALIAS, run_id)


# --- resolving models:/ for serving -------------------------------------------------------------
def resolve_alias(uri: str) -> ResolvedModel:
    """The version `uri` names today, with a local copy of its model folder under GANTRY_REGISTRY_DIR
    (downloaded once; later calls reuse it). In GANTRY_ENV=prod a v0.0.0-dev… version is refused."""
    name, alias, number = parse_models_uri(uri)
    with _talking("resolve"):
        client = _client()
        model = _registered_model(client, name)
        if model is None:
            raise RegistryError("resolve", f"{uri}: the registry at {_where()} has no model named {name}.")
        if alias is not None:
            aliases = _aliases(model)
            if alias not in aliases:
                has = ", ".join(f"{a} → version {v}" for a, v in sorted(aliases.items())) or "none"
                raise RegistryError("resolve", f"{uri}: model {name} has no alias {alias!r} (its aliases: {has}).")
            number = aliases[alias]
        try:
            version = client.get_model_version(name, number)
        except MlflowException as exc:
            if _not_found(exc):
                raise RegistryError("resolve", f"{uri}: model {name} has no version {number}.") from None
            raise
        if version.status != "READY":
            raise RegistryError("resolve", f"{uri}: version {number} of {name} is {version.status}, not READY.")
        semver = version.tags.get(SEMVER_TAG, "")
        refuse_dev_in_prod("resolve", semver, f"{uri} (version {number} of {name})")
        marker = {"name": name, "version": str(version.version), "semver": semver, "env": version.tags.get(ENV_TAG, ""),
                  "run_id": version.run_id or "", "source": version.source}
        folder = _local_copy(client, marker)
    return resolved(marker, folder)


def _local_copy(client: MlflowClient, marker: dict) -> Path:
    def download(dest: Path) -> Path:
        uri = tracking_uri()
        source = client.get_model_version_download_uri(marker["name"], marker["version"])
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=uri, registry_uri=uri))

    return local_copy(marker, download)
