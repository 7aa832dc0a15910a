import pytest


@pytest.fixture
def gantry(ray_head, tiny_model, settings, tmp_path):
    """Gantry pointed at the session's private Ray head with the real CPU engine and the tiny model
    in the shared HF root: what the end-to-end tests deploy through."""
    settings.GANTRY_SERVE_CLIENT = "serving.cluster.RayServeClient"
    settings.GANTRY_ENGINE = "cpu"
    settings.GANTRY_HF_ROOT = tiny_model.parent
    settings.GANTRY_USERS_ROOT = tmp_path / "users"
    settings.GANTRY_DATASETS_ROOT = tmp_path / "datasets"
    return ray_head
