"""compose.yaml is the production shape: every piece there, healthchecked, GPUs and port 8000 on Ray."""
import re

import yaml

from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def test_it_has_the_production_pieces():
    assert {"postgres", "redis", "web", "worker", "beat", "ray-head", "mlflow"} <= set(SERVICES)


def test_long_running_services_have_healthchecks():
    for name in ("postgres", "redis", "web", "worker", "ray-head", "mlflow"):
        assert "test" in SERVICES[name]["healthcheck"], name


def test_the_app_waits_for_healthy_database_and_broker_and_a_finished_migration():
    shared = COMPOSE["x-gantry"]["depends_on"]
    assert shared["postgres"]["condition"] == shared["redis"]["condition"] == "service_healthy"
    for name in ("web", "worker", "beat"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_ray_head_owns_serves_port_and_reserves_the_gpus():
    ray = SERVICES["ray-head"]
    assert "8000:8000" in ray["ports"]
    device = ray["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "--port=6380" in ray["command"]


def test_every_variable_it_sets_is_one_the_settings_read():
    settings_source = (ROOT / "dashboard" / "settings.py").read_text()
    read = set(re.findall(r'env_\w+\("([A-Z_]+)"', settings_source))
    read |= {name + "_FILE" for name in re.findall(r'env_secret\("([A-Z_]+)"\)', settings_source)}
    assert set(COMPOSE["x-gantry"]["environment"]) <= read


def test_secrets_come_from_files_not_the_compose_file():
    assert COMPOSE["x-gantry"]["environment"]["SECRET_KEY_FILE"].startswith("/run/secrets/")
    assert "SECRET_KEY" not in COMPOSE["x-gantry"]["environment"]
