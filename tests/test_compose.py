"""compose.yaml is the production shape: every piece there, healthchecked, GPUs and port 8000 on Ray."""
import re

import pytest
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


LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}


def published_ports(service: dict) -> list[tuple[str, str, str]]:
    """(host address, published port, container port) of every `ports` entry, short or long syntax."""
    found = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            found.append((str(entry.get("host_ip", "0.0.0.0")), str(entry.get("published", "")), str(entry["target"])))
            continue
        # "[HOST:][PUBLISHED:]TARGET[/PROTOCOL]"; no host means every interface.
        head, _, target = str(entry).split("/", 1)[0].rpartition(":")
        host, _, published = head.rpartition(":")
        found.append((host or "0.0.0.0", published or target, target))
    return found


def test_no_service_publishes_the_ray_dashboard_beyond_loopback():
    # Its Jobs API runs any code it is sent, without authentication (CVE-2023-48022).
    for name, service in SERVICES.items():
        for host, published, target in published_ports(service):
            if "8265" in (published, target):
                assert host in LOOPBACK, f"{name} publishes the Ray dashboard on {host}:{published}"


def test_the_port_parser_reads_each_syntax():
    assert published_ports({"ports": ["8265:8265"]}) == [("0.0.0.0", "8265", "8265")]
    assert published_ports({"ports": ["127.0.0.1:8265:8265"]}) == [("127.0.0.1", "8265", "8265")]
    assert published_ports({"ports": ["[::1]:8265:8265/tcp"]}) == [("[::1]", "8265", "8265")]
    assert published_ports({"ports": ["8265"]}) == [("0.0.0.0", "8265", "8265")]
    assert published_ports({"ports": [{"target": 8265, "published": 9000}]}) == [("0.0.0.0", "9000", "8265")]


def test_the_web_app_still_reaches_the_ray_dashboard_on_the_compose_network():
    assert COMPOSE["x-gantry"]["environment"]["RAY_DASHBOARD_URL"] == "http://ray-head:8265"
    assert "--dashboard-host=0.0.0.0" in SERVICES["ray-head"]["command"]


@pytest.mark.parametrize("name", ["ray-head", "mlflow"])
def test_the_containers_that_run_model_code_get_no_database_url_secret_key_or_secrets(name):
    service = SERVICES[name]
    environment = service.get("environment") or {}
    names = set(environment) if isinstance(environment, dict) else {item.split("=", 1)[0] for item in environment}
    assert not names & {"DATABASE_URL", "CELERY_BROKER_URL"}, names
    assert not any(n.startswith("SECRET_KEY") for n in names), names
    assert not service.get("secrets"), service.get("secrets")


def test_ray_head_keeps_what_serving_needs():
    ray = SERVICES["ray-head"]
    assert "models:/data" in ray["volumes"]  # the HF root and users' roots model_source points into
    assert ray["shm_size"] and ray["image"] == COMPOSE["x-gantry"]["image"]
    assert [target for _, _, target in published_ports(ray)] == ["8000"]
