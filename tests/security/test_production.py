"""With GANTRY_ENV=prod, as an operator starts it behind a TLS-terminating proxy: Django's deployment
checks find nothing to warn about, and the demo accounts cannot be made. Each runs manage.py in a
fresh process, so what is checked is what settings.py builds from that environment."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROD_SECRET_KEY = "kq3Zr9-wTn5vXp2Lb8Yc4Md6Fs1Gh7Jx0Ae3Ri9Uo5Ty2We8Qz4Sx6Dc1Fv7Gb3Hn"


def manage(var_dir: Path, *args: str, **overrides: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_ALLOW", "SECURE_"))}
    environment.update(
        GANTRY_ENV="prod",
        SECRET_KEY=PROD_SECRET_KEY,
        ALLOWED_HOSTS="gantry.example.com",
        CSRF_TRUSTED_ORIGINS="https://gantry.example.com",
        GANTRY_VAR_DIR=str(var_dir),
        DATABASE_URL=f"sqlite:///{var_dir / 'gantry.sqlite3'}",
        **overrides,
    )
    environment.pop("DEBUG", None)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize(
    "setting,value,warning",
    [("SECURE_HSTS_SECONDS", "0", "security.W004"), ("SECURE_HSTS_INCLUDE_SUBDOMAINS", "0", "security.W005"), ("GANTRY_HTTPS", "0", "security.W008")],
)
def test_each_hardening_is_configurable_and_switching_it_off_is_what_check_deploy_flags(tmp_path, setting, value, warning):
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **{setting: value})
    assert result.returncode != 0 and warning in result.stdout + result.stderr


def test_seed_demo_refuses_to_run_in_prod(tmp_path):
    result = manage(tmp_path, "seed_demo")
    assert result.returncode == 1
    assert "seed_demo refuses to run with GANTRY_ENV=prod" in result.stderr
    assert "password:" not in result.stdout
    assert not (tmp_path / "demo-passwords.json").exists() and not (tmp_path / "gantry.sqlite3").exists()
