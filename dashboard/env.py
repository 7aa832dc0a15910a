"""Strict readers for the environment: the one place settings come from.

Every reader raises ConfigError with the variable's name and what was wrong, so a bad value stops
start-up with one clear sentence instead of a traceback deep inside Django.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(Exception):
    """A setting that Gantry cannot start with."""


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off.")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number.") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum of {minimum}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_secret(name: str) -> str:
    """A secret from NAME, or from the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    path = os.environ.get(f"{name}_FILE", "").strip()
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path!r} cannot be read: {exc.strerror}.") from None
    return os.environ.get(name, "").strip()


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default).lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of: {', '.join(choices)}.")
    return value


def stop_for(exc: "ConfigError", status: int = 2) -> NoReturn:
    """A bad setting is the operator's to fix: one sentence naming it and an exit status, the same
    from manage.py, gunicorn, Celery and the WSGI app — never a traceback."""
    sys.stderr.write(f"gantry: configuration error: {exc}\n")
    sys.exit(status)


def load_settings_or_stop() -> None:
    """Read Django's settings now (the first read loads dashboard/settings.py), stopping on a bad one."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    from django.conf import settings

    try:
        settings.INSTALLED_APPS  # noqa: B018
    except ConfigError as exc:
        stop_for(exc)
