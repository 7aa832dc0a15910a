"""Bad configuration stops Gantry with one clear sentence, never a traceback."""
import os
import secrets
import subprocess
import sys

import pytest

from dashboard import env
from tests.conftest import ROOT


def run_manage(*args: str, **overrides: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    environment.update(overrides)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def test_a_bad_database_url_is_a_clear_message():
    result = run_manage("check", DATABASE_URL="mongodb://db/gantry")
    assert result.returncode == 2
    assert "configuration error: DATABASE_URL='mongodb://db/gantry' is not a database URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_database_stops_start_up_with_a_message(tmp_path):
    result = run_manage("doctor", DATABASE_URL="postgres://gantry@127.0.0.1:1/gantry")
    assert result.returncode == 1
    assert "✖ database" in result.stdout and "cannot start: database unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_production_refuses_to_start_without_a_secret_key():
    overrides = {"GANTRY_ENV": "prod", "SECRET_KEY": "", "ALLOWED_HOSTS": "gantry.example"}
    result = run_manage("check", **overrides)
    assert result.returncode == 2
    assert "SECRET_KEY is not set and GANTRY_ENV=prod" in result.stderr
    assert "Traceback" not in result.stderr


def test_production_takes_the_secret_key_from_a_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(secrets.token_urlsafe(50))
    result = run_manage("check", "--deploy", GANTRY_ENV="prod", SECRET_KEY_FILE=str(secret), ALLOWED_HOSTS="gantry.example")
    assert result.returncode == 0, result.stderr


def test_an_unknown_gantry_env_is_refused():
    result = run_manage("check", GANTRY_ENV="staging")
    assert result.returncode == 2 and "GANTRY_ENV='staging' must be one of: dev, prod" in result.stderr


@pytest.mark.parametrize("raw,expected", [("1", True), ("yes", True), ("off", False), ("", False)])
def test_env_bool_reads_the_usual_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("GANTRY_FLAG", raw)
    assert env.env_bool("GANTRY_FLAG") is expected


def test_env_bool_refuses_anything_else(monkeypatch):
    monkeypatch.setenv("GANTRY_FLAG", "maybe")
    with pytest.raises(env.ConfigError, match="GANTRY_FLAG='maybe' is not a boolean"):
        env.env_bool("GANTRY_FLAG")


def test_env_int_refuses_words_and_values_below_the_minimum(monkeypatch):
    monkeypatch.setenv("GANTRY_N", "ten")
    with pytest.raises(env.ConfigError, match="is not a whole number"):
        env.env_int("GANTRY_N", 1)
    monkeypatch.setenv("GANTRY_N", "-1")
    with pytest.raises(env.ConfigError, match="below the minimum of 0"):
        env.env_int("GANTRY_N", 1, minimum=0)


def test_env_secret_prefers_the_file_and_says_when_it_cannot_read_it(monkeypatch, tmp_path):
    monkeypatch.setenv("GANTRY_S", "from-env")
    assert env.env_secret("GANTRY_S") == "from-env"
    (tmp_path / "s").write_text("from-file\n")
    monkeypatch.setenv("GANTRY_S_FILE", str(tmp_path / "s"))
    assert env.env_secret("GANTRY_S") == "from-file"
    monkeypatch.setenv("GANTRY_S_FILE", str(tmp_path / "missing"))
    with pytest.raises(env.ConfigError, match="GANTRY_S_FILE=.* cannot be read"):
        env.env_secret("GANTRY_S")
