"""gunicorn and Celery stop on a bad setting as manage.py does: one sentence naming the variable, a
non-zero exit, no traceback. An operator reading `docker compose logs web` sees what to fix."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.ray_cluster import free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SENTENCE = "gantry: configuration error: GANTRY_ENV='bogus' must be one of: dev, prod."


def run(command: list[str], cwd: Path = ROOT, **overrides: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    environment.update(overrides, PYTHONPATH=str(ROOT))
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=60)


def gunicorn(*args: str) -> list[str]:
    return [str(BIN / "gunicorn"), *args, "--bind", f"127.0.0.1:{free_port()}", "dashboard.wsgi:application"]


def celery(*args: str) -> list[str]:
    return [str(BIN / "celery"), "-A", "dashboard", *args]


COMMANDS = {
    # As compose, the Dockerfile and `make run` start it: the master reads the settings before it forks.
    "gunicorn with its config": (gunicorn("-c", "gunicorn.conf.py"), 2),
    # By hand in the project folder, gunicorn finds ./gunicorn.conf.py itself.
    "gunicorn by hand": (gunicorn(), 2),
    "celery worker": (celery("worker", "--pool=solo", "-Q", "serve"), 2),
    "celery beat": (celery("beat"), 2),
    "celery inspect ping (the worker's healthcheck)": (celery("inspect", "ping", "--timeout", "1"), 2),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_a_bad_setting_stops_it_with_one_sentence_and_no_traceback(name):
    command, status = COMMANDS[name]
    result = run(command, GANTRY_ENV="bogus")
    assert result.returncode == status, (result.returncode, result.stderr[-2000:])
    assert result.stderr.count(SENTENCE) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout


def test_a_wsgi_server_without_gantrys_config_gets_the_sentence_from_the_worker(tmp_path):
    # Elsewhere than the project folder there is no gunicorn.conf.py: dashboard/wsgi.py says it, and
    # its exit status (gunicorn's "app failed to load") stops the master rather than a restart loop.
    result = run(gunicorn("--workers", "1"), cwd=tmp_path, GANTRY_ENV="bogus")
    assert result.returncode == 4, (result.returncode, result.stderr[-2000:])
    assert SENTENCE in result.stderr and "App failed to load." in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_gunicorn_names_whichever_variable_is_wrong():
    command, _ = COMMANDS["gunicorn with its config"]
    result = run(command, GANTRY_DEPLOY_TIMEOUT_S="soon")
    assert result.returncode == 2
    assert "gantry: configuration error: GANTRY_DEPLOY_TIMEOUT_S='soon' is not a whole number." in result.stderr
    assert "Traceback" not in result.stderr


def test_a_preflight_default_that_no_spec_could_hold_stops_start_up():
    done = run([sys.executable, "manage.py", "check"], GANTRY_PREFLIGHT_SECRETS="openai_key")
    assert done.returncode == 2
    assert "configuration error: GANTRY_PREFLIGHT_SECRETS:" in done.stderr and "'openai_key' is not a secret name" in done.stderr
    assert "Traceback" not in done.stderr
