"""Real MLflow for the registry's tests: an sqlite backend in a temp dir, and an `mlflow server`
process on a free port (started once per module that asks for it, stopped with everything it
started). Import the fixtures a module needs:

    from tests.gates.mlflow_fixtures import mlflow_backend, registry_at, model_folder  # noqa: F401

`mlflow_backend` is parametrized over both ("sqlite", "server"), so a test that takes it runs
against each; `registry_at` points Gantry's settings at it for one test, with its own
GANTRY_REGISTRY_DIR (`sqlite_backend` / `sqlite_registry`: the sqlite one alone). Candidates are logged through gates.registry.log_candidate, the same helper
the demo uses, so the tests import no mlflow themselves.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ray_cluster import free_port, wait_for

MLFLOW = Path(sys.executable).with_name("mlflow")
SERVER_START_S = 240  # ~10 s alone; minutes when engine tests load both cores


@dataclass(frozen=True)
class Backend:
    kind: str  # "sqlite" or "server"
    uri: str
    artifacts: Path  # where the backend keeps artifacts on disk, for tests that look there

    def unique_name(self, stem: str = "tiny") -> str:
        # One backend serves a whole module: each test registers its own model name.
        return f"{stem}-{uuid.uuid4().hex[:8]}"


def write_model_folder(folder: Path, *, hidden_size: int = 128) -> Path:
    """A folder shaped like a Hugging Face model (config.json, tokenizer files, a weights file):
    what the registry moves around. Nothing here loads it."""
    (folder / "tokenizer").mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": hidden_size, "num_hidden_layers": 2}))
    (folder / "model.safetensors").write_bytes(os.urandom(2048))
    (folder / "tokenizer" / "vocab.json").write_text('{"a": 0}')
    return folder


@pytest.fixture
def model_folder(tmp_path) -> Path:
    return write_model_folder(tmp_path / "candidate")


def _start_server(base: Path) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    artifacts = base / "artifacts"
    log = (base / "server.log").open("wb")
    command = [
        str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{base / 'server.db'}", "--artifacts-destination", str(artifacts),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # Its own session, so the uvicorn worker and job runner it forks are stopped with it; its own cwd,
    # so nothing it writes by default lands in the repository.
    process = subprocess.Popen(command, cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return process, f"http://127.0.0.1:{port}", artifacts


def _healthy(uri: str) -> bool:
    with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
        return response.status == 200


def _stop(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 2), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            # The leader gone is not enough: a worker it forked may still hold the port.
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _sqlite(base: Path) -> Backend:
    return Backend("sqlite", f"sqlite:///{base / 'mlflow.db'}", base / "artifacts")


@pytest.fixture(scope="module")
def sqlite_backend(tmp_path_factory) -> Backend:
    return _sqlite(tmp_path_factory.mktemp("mlflow-sqlite"))


@pytest.fixture(scope="module", params=["sqlite", "server"])
def mlflow_backend(request, tmp_path_factory) -> Backend:
    base = tmp_path_factory.mktemp(f"mlflow-{request.param}")
    if request.param == "sqlite":
        yield _sqlite(base)
        return
    # No skip: mlflow is in requirements.txt, so its command is in every venv `make test` builds, and
    # a server that does not start is a failure to see, not a case to pass over.
    assert MLFLOW.exists(), f"no mlflow command at {MLFLOW}: requirements.txt installs it"
    process, uri, artifacts = _start_server(base)
    def up() -> str | bool:
        return "exited" if process.poll() is not None else _healthy(uri) and "up"

    try:
        try:
            state = wait_for("mlflow server /health", up, SERVER_START_S, every_s=0.25)
        except AssertionError as exc:
            state = str(exc)
        if state != "up":
            tail = (base / "server.log").read_text(errors="replace")[-1500:]
            pytest.fail(f"the mlflow server did not start ({state}); its log ends:\n{tail}")
        yield Backend("server", uri, artifacts)
    finally:
        _stop(process)


def _point_settings_at(backend: Backend, settings, tmp_path: Path) -> Backend:
    settings.MLFLOW_TRACKING_URI = backend.uri
    settings.MLFLOW_ARTIFACT_ROOT = str(backend.artifacts)
    settings.GANTRY_REGISTRY_DIR = tmp_path / "registry"
    settings.GANTRY_ENV = "dev"
    # The bound on a request that fails is pinned by its own tests, at the default; here a server
    # slowed by a busy test machine must not read as one that is down.
    settings.GANTRY_MLFLOW_TIMEOUT_S = 20
    return backend


@pytest.fixture
def registry_at(mlflow_backend, settings, tmp_path) -> Backend:
    """Gantry's settings pointed at each backend in turn for one test (dev environment, fresh local
    copies)."""
    return _point_settings_at(mlflow_backend, settings, tmp_path)


@pytest.fixture
def sqlite_registry(sqlite_backend, settings, tmp_path) -> Backend:
    """The same, on the sqlite backend only: for what does not depend on the backend (a command's
    output, serving's use of the registry), so the server is not started for it."""
    return _point_settings_at(sqlite_backend, settings, tmp_path)
