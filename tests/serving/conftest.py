from __future__ import annotations

import pytest

from tests.serving.fake_serve import FakeServe, reset_shared, shared_fake


@pytest.fixture
def roots(settings, tmp_path):
    """Real folders: a shared HF root with a model, alice's and bob's own roots."""
    settings.GANTRY_HF_ROOT = tmp_path / "hf"
    settings.GANTRY_DATASETS_ROOT = tmp_path / "datasets"
    settings.GANTRY_USERS_ROOT = tmp_path / "users"
    for folder in ("hf/tiny-llama", "hf/other", "datasets/evals", "users/alice/models/mine", "users/bob/models/his"):
        (tmp_path / folder).mkdir(parents=True)
    return tmp_path


@pytest.fixture
def gpu_engine(settings):
    settings.GANTRY_ENGINE = "gpu"


@pytest.fixture
def fake_serve(settings) -> FakeServe:
    settings.GANTRY_SERVE_CLIENT = "tests.serving.fake_serve.shared_fake"
    return reset_shared(FakeServe(gpus=8))


@pytest.fixture(autouse=True)
def preflight_at_once(monkeypatch):
    """As tests/conftest.py's, reading a fake cluster's runtime (a healthy GPU cluster unless a test
    says otherwise): tests here build their own FakeServe where get_client() would be a real one."""
    from gates import preflights

    def run_now(run):
        from django.conf import settings

        client = shared_fake() if settings.GANTRY_SERVE_CLIENT.endswith("shared_fake") else FakeServe()
        preflights.run_for_deploy(run.pk, client)

    monkeypatch.setattr(preflights, "enqueue", run_now)
