"""gates.registry against a real MLflow, twice over: an sqlite backend in a temp dir and an
`mlflow server` process. Candidates are real logged runs; every "nothing changed" is registry_state
before == after; every crash is a real exception at the point where a worker could die."""
from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from dashboard.models import AuditEntry
from gates import registry
from gates.registry import RegistryError, RegistryUnreachable
from tests.gates.mlflow_fixtures import (  # noqa: F401 — fixtures
    mlflow_backend, model_folder, registry_at, sqlite_backend, sqlite_registry, write_model_folder,
)
from tests.ray_cluster import free_port

EVIDENCE = {"baseline_sha": "b" * 40, "eval_set_dvc_hash": "e" * 32, "result_sha256": "r" * 64}
ABSENT = {"exists": False, "tags": {}, "versions": {}, "aliases": {}}


def logged_run(folder: Path, **extra) -> str:
    return registry.log_candidate(folder, experiment="registry-tests", **extra)


class Killed(BaseException):
    """What a worker killed at that line looks like to the code after it: nothing more runs."""


def die_before_the_alias(monkeypatch) -> None:
    def killed(*args, **kwargs):
        raise Killed()

    monkeypatch.setattr(registry, "_wait_until_ready", killed)


# --- candidates ---------------------------------------------------------------------------------
def test_describe_run_reads_a_logged_run(registry_at, model_folder):
    run_id = logged_run(model_folder, params={"lr": "0.001"}, tags={"team": "nlp"})
    run = registry.describe_run(run_id)
    assert run.run_id == run_id and run.status == "FINISHED"
    assert run.params == {"lr": "0.001"} and run.tags["team"] == "nlp"
    assert run.experiment_id and run.artifact_uri


def test_an_experiment_gantry_creates_on_sqlite_keeps_artifacts_under_the_artifact_root(sqlite_registry, model_folder, tmp_path, monkeypatch):
    # (A server decides this itself, with --artifacts-destination.)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run_id = registry.log_candidate(model_folder, experiment=f"exp-{sqlite_registry.unique_name()}")
    uri = registry.describe_run(run_id).artifact_uri
    assert uri.startswith(sqlite_registry.artifacts.as_uri()), uri
    assert list(cwd.iterdir()) == []  # no ./mlruns, no ./mlflow.db


def test_download_candidate_returns_the_model_folder(registry_at, model_folder, tmp_path):
    run_id = logged_run(model_folder)
    folder = registry.download_candidate(run_id, "model", tmp_path / "dl")
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 128
    assert (folder / "model.safetensors").read_bytes() == (model_folder / "model.safetensors").read_bytes()
    assert (folder / "tokenizer" / "vocab.json").is_file()


def test_download_candidate_names_what_is_there_when_it_is_not_a_model(registry_at, model_folder, tmp_path):
    run_id = logged_run(model_folder)
    with pytest.raises(RegistryError) as no_config:
        registry.download_candidate(run_id, "model/tokenizer", tmp_path / "a")
    assert no_config.value.step == "fetch"
    assert "no config.json" in str(no_config.value) and "vocab.json" in str(no_config.value)
    with pytest.raises(RegistryError) as no_folder:
        registry.download_candidate(run_id, "weights", tmp_path / "b")
    assert "no artifact folder 'weights'" in str(no_folder.value) and "model/" in str(no_folder.value)


def test_a_missing_run_is_a_fetch_error_that_names_the_registry(registry_at):
    with pytest.raises(RegistryError) as caught:
        registry.describe_run("0123456789abcdef0123456789abcdef")
    assert caught.value.step == "fetch" and not isinstance(caught.value, RegistryUnreachable)
    assert str(caught.value) == f"MLflow run 0123456789abcdef0123456789abcdef does not exist at {registry_at.uri}."


def test_a_deleted_run_is_nobodys_candidate(registry_at, model_folder):
    run_id = logged_run(model_folder)
    registry._client().delete_run(run_id)  # what deleting it in MLflow's UI does
    with pytest.raises(RegistryError, match=f"MLflow run {run_id} at .* is deleted"):
        registry.describe_run(run_id)


# --- promote ------------------------------------------------------------------------------------
def test_promote_registers_the_version_with_its_evidence_then_sets_the_alias(registry_at, model_folder):
    name, run_id = registry_at.unique_name(), logged_run(model_folder)
    assert registry.registry_state(name) == ABSENT
    done = registry.promote(name, run_id, "model", "v1.4.0", gate_run_id=41, evidence=EVIDENCE)
    assert done == registry.Promotion(name, "1", "v1.4.0", "production", run_id)
    state = registry.registry_state(name)
    assert state["aliases"] == {"production": "1"}
    version = state["versions"]["1"]
    assert version["run_id"] == run_id and version["status"] == "READY" and version["source"] == f"runs:/{run_id}/model"
    assert version["tags"] == {
        "semver": "v1.4.0", "gantry.gate_run": "41", "gantry.env": "dev",
        "gantry.baseline_sha": "b" * 40, "gantry.eval_set_dvc_hash": "e" * 32, "gantry.result_sha256": "r" * 64,
    }


def test_a_second_promote_of_the_same_gate_run_completes_its_version_instead_of_adding_one(registry_at, model_folder, monkeypatch):
    name, run_id = registry_at.unique_name(), logged_run(model_folder)
    with monkeypatch.context() as crash:
        die_before_the_alias(crash)
        with pytest.raises(Killed):
            registry.promote(name, run_id, "model", "v1.0.0", gate_run_id=7, evidence=EVIDENCE)
    half = registry.registry_state(name)
    assert list(half["versions"]) == ["1"] and half["aliases"] == {}  # registered, not yet pointed at
    done = registry.promote(name, run_id, "model", "v1.0.0", gate_run_id=7, evidence=EVIDENCE)
    again = registry.promote(name, run_id, "model", "v1.0.0", gate_run_id=7, evidence=EVIDENCE)
    assert done.version == again.version == "1"
    state = registry.registry_state(name)
    assert list(state["versions"]) == ["1"] and state["aliases"] == {"production": "1"}


def test_a_semver_another_version_has_is_refused_and_the_registry_is_unchanged(registry_at, model_folder, tmp_path):
    name = registry_at.unique_name()
    registry.promote(name, logged_run(model_folder), "model", "v2.0.0", gate_run_id=1, evidence=EVIDENCE)
    before = registry.registry_state(name)
    other = logged_run(write_model_folder(tmp_path / "other", hidden_size=256))
    with pytest.raises(RegistryError) as caught:
        registry.promote(name, other, "model", "v2.0.0", gate_run_id=2, evidence=EVIDENCE)
    assert caught.value.step == "promote"
    assert "v2.0.0 is already version 1 of" in str(caught.value) and "gate run 1" in str(caught.value)
    assert registry.registry_state(name) == before


def test_a_gate_run_cannot_promote_a_second_candidate(registry_at, model_folder, tmp_path):
    name = registry_at.unique_name()
    registry.promote(name, logged_run(model_folder), "model", "v1.0.0", gate_run_id=3, evidence=EVIDENCE)
    before = registry.registry_state(name)
    other = logged_run(write_model_folder(tmp_path / "other"))
    with pytest.raises(RegistryError, match="Gate run 3 already registered version 1"):
        registry.promote(name, other, "model", "v1.1.0", gate_run_id=3, evidence=EVIDENCE)
    assert registry.registry_state(name) == before


def test_a_candidate_that_is_not_a_model_folder_is_refused_before_anything_is_written(registry_at, model_folder):
    name, run_id = registry_at.unique_name(), logged_run(model_folder)
    with pytest.raises(RegistryError, match="not a model folder"):
        registry.promote(name, run_id, "model/tokenizer", "v1.0.0", gate_run_id=5, evidence=EVIDENCE)
    assert registry.registry_state(name) == ABSENT


# --- crash recovery -----------------------------------------------------------------------------
def test_undo_removes_a_half_promotion_and_the_model_it_created(registry_at, model_folder, monkeypatch):
    name, run_id = registry_at.unique_name(), logged_run(model_folder)
    die_before_the_alias(monkeypatch)
    with pytest.raises(Killed):
        registry.promote(name, run_id, "model", "v1.0.0", gate_run_id=9, evidence=EVIDENCE)
    assert registry.registry_state(name)["versions"]
    assert registry.undo_partial_promotion(name, 9) == f"deleted version 1 and deleted the registered model {name}, which it had created"
    assert registry.registry_state(name) == ABSENT
    assert registry.undo_partial_promotion(name, 9) == "nothing to undo"


def test_undo_leaves_an_existing_model_as_it_was_and_a_finished_promotion_alone(registry_at, model_folder, tmp_path, monkeypatch):
    name = registry_at.unique_name()
    registry.promote(name, logged_run(model_folder), "model", "v1.0.0", gate_run_id=10, evidence=EVIDENCE)
    before = registry.registry_state(name)
    second = logged_run(write_model_folder(tmp_path / "second"))
    with monkeypatch.context() as crash:
        die_before_the_alias(crash)
        with pytest.raises(Killed):
            registry.promote(name, second, "model", "v1.1.0", gate_run_id=11, evidence=EVIDENCE)
    assert registry.undo_partial_promotion(name, 11) == "deleted version 2"
    assert registry.registry_state(name) == before
    assert registry.undo_partial_promotion(name, 10) == "nothing to undo: version 1 is already the target of production"
    assert registry.registry_state(name) == before


# --- resolve for serving ------------------------------------------------------------------------
def test_resolve_alias_downloads_the_version_once_and_reuses_the_copy(registry_at, model_folder, settings):
    name, run_id = registry_at.unique_name(), logged_run(model_folder)
    registry.promote(name, run_id, "model", "v1.2.0", gate_run_id=20, evidence=EVIDENCE)
    first = registry.resolve_alias(f"models:/{name}@production")
    assert (first.name, first.version, first.semver, first.env, first.run_id) == (name, "1", "v1.2.0", "dev", run_id)
    assert first.local_path == Path(settings.GANTRY_REGISTRY_DIR) / name / "1"
    assert (first.local_path / "model.safetensors").read_bytes() == (model_folder / "model.safetensors").read_bytes()
    assert [p.name for p in first.local_path.parent.iterdir()] == ["1"]  # the temp download was renamed, none left
    # With the run's artifacts gone from the store, only the local copy can answer.
    shutil.rmtree(registry_at.artifacts)
    again = registry.resolve_alias(f"models:/{name}@production")
    by_number = registry.resolve_alias(f"models:/{name}/1")
    assert again == first == by_number


def test_resolve_names_what_is_missing(registry_at, model_folder):
    name = registry_at.unique_name()
    with pytest.raises(RegistryError, match=f"has no model named {name}"):
        registry.resolve_alias(f"models:/{name}@production")
    registry.register_dev(logged_run(model_folder), name, "model", "v0.0.0-dev.1", user="alice")
    with pytest.raises(RegistryError) as no_alias:
        registry.resolve_alias(f"models:/{name}@production")
    assert no_alias.value.step == "resolve" and "has no alias 'production' (its aliases: dev → version 1)" in str(no_alias.value)
    with pytest.raises(RegistryError, match="has no version 5"):
        registry.resolve_alias(f"models:/{name}/5")
    with pytest.raises(RegistryError, match="not a registry model"):
        registry.resolve_alias(f"models:/{name}")


def test_prod_refuses_to_resolve_a_dev_version_and_downloads_nothing(registry_at, model_folder, settings):
    name = registry_at.unique_name()
    registry.register_dev(logged_run(model_folder), name, "model", "v0.0.0-dev.2", user="alice")
    settings.GANTRY_ENV = "prod"
    with pytest.raises(RegistryError) as caught:
        registry.resolve_alias(f"models:/{name}@dev")
    assert caught.value.step == "resolve" and "v0.0.0-dev.2, a development version" in str(caught.value)
    assert not (Path(settings.GANTRY_REGISTRY_DIR) / name).exists()


# --- the dev escape hatch -----------------------------------------------------------------------
def test_register_dev_tags_who_and_where_and_sets_only_the_dev_alias(registry_at, model_folder):
    name, run_id = registry_at.unique_name(), logged_run(model_folder)
    done = registry.register_dev(run_id, name, "model", "v0.0.0-dev.3", user="alice")
    assert done == registry.Promotion(name, "1", "v0.0.0-dev.3", "dev", run_id)
    state = registry.registry_state(name)
    assert state["aliases"] == {"dev": "1"}
    assert state["versions"]["1"]["tags"] == {"semver": "v0.0.0-dev.3", "gantry.env": "dev", "gantry.dev_promoted_by": "alice"}


def test_register_dev_is_refused_in_prod_and_for_release_semvers(registry_at, model_folder, settings):
    name, run_id = registry_at.unique_name(), logged_run(model_folder)
    with pytest.raises(RegistryError, match="not a development version"):
        registry.register_dev(run_id, name, "model", "v1.0.0", user="alice")
    settings.GANTRY_ENV = "prod"
    with pytest.raises(RegistryError) as caught:
        registry.register_dev(run_id, name, "model", "v0.0.0-dev.4", user="alice")
    assert caught.value.step == "dev" and "GANTRY_ENV=prod" in str(caught.value)
    assert registry.registry_state(name) == ABSENT


@pytest.mark.django_db
def test_the_register_dev_command_warns_registers_and_audits(sqlite_registry, model_folder, alice, capsys):
    name, run_id = sqlite_registry.unique_name(), logged_run(model_folder)
    call_command("register_dev", "--run-id", run_id, "--name", name, "--semver", "v0.0.0-dev.5", "--user", "alice")
    out = capsys.readouterr()
    assert "WARNING: register_dev is NOT the gate's path" in out.err
    assert f"models:/{name}@dev" in out.out
    assert registry.registry_state(name)["aliases"] == {"dev": "1"}
    entry = AuditEntry.objects.get(action="registry.register_dev")
    assert entry.actor == alice and entry.target == f"model {name} version 1" and "v0.0.0-dev.5" in entry.detail


@pytest.mark.django_db
def test_the_register_dev_command_exits_2_in_prod_with_the_reason(sqlite_registry, model_folder, alice, settings, capsys):
    name, run_id = sqlite_registry.unique_name(), logged_run(model_folder)
    settings.GANTRY_ENV = "prod"
    with pytest.raises(CommandError) as caught:
        call_command("register_dev", "--run-id", run_id, "--name", name, "--semver", "v0.0.0-dev.6", "--user", "alice")
    assert caught.value.returncode == 2  # what manage.py exits with
    assert "GANTRY_ENV=prod" in str(caught.value)
    assert "WARNING" in capsys.readouterr().err
    assert registry.registry_state(name) == ABSENT and not AuditEntry.objects.exists()


# --- rules that need no backend -----------------------------------------------------------------
@pytest.mark.parametrize("text", ["v1.2.3", "v0.0.0-dev", "v0.0.0-dev.3", "v10.20.30-rc.1+build.7", "v1.0.0+20261201"])
def test_semantic_versions_pass(text):
    assert registry.validate_semver(text) == text


@pytest.mark.parametrize("text", ["1.2.3", "v1.2", "v01.2.3", "v1.2.3-", "v1.2.3-01", "v1.2.3+", "", None, "v1.2.3 "])
def test_anything_else_is_refused_with_the_rule(text):
    with pytest.raises(ValueError, match="v \\+ MAJOR.MINOR.PATCH"):
        registry.validate_semver(text)


def test_an_mlflow_server_that_is_not_there_fails_in_seconds(settings):
    settings.MLFLOW_TRACKING_URI = uri = f"http://127.0.0.1:{free_port()}"  # nothing listens
    started = time.monotonic()
    with pytest.raises(RegistryUnreachable) as caught:
        registry.describe_run("0123456789abcdef0123456789abcdef")
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed
    assert caught.value.step == "fetch" and str(caught.value) == f"The MLflow registry at {uri} cannot be reached (connection refused); try again when it is up."


def test_an_mlflow_server_that_never_answers_fails_in_seconds(settings):
    # A socket that listens but never accepts: the connection is made, the answer never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(RegistryUnreachable, match=f"no answer within {settings.GANTRY_MLFLOW_TIMEOUT_S} s"):
            registry.resolve_alias("models:/tiny@production")
        elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed
    print(f"silent server: RegistryUnreachable after {elapsed:.1f} s")
