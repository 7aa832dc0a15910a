"""The error a spec's user must fix, and how its messages quote what the user wrote.

Standard library only: the strict YAML reader (serving/spec/parsing.py) uses it, and that reader is
pure so that gates' hashing can read YAML without pulling in the rest of the spec.
"""
from __future__ import annotations

import reprlib
from typing import Any


class SpecError(Exception):
    """A spec the user must fix; the API renders it as {"error": {status, code, message, field}}."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def invalid_spec(field: str | None, message: str) -> SpecError:
    return SpecError(422, "invalid_spec", message, field)


def forbidden_path(message: str) -> SpecError:
    return SpecError(403, "forbidden_path", message, "model_source")


# Messages quote what the user wrote so they can find it, but never whole: a value pasted (or built
# from YAML aliases) to be huge would come back as a response as big as the spec, or far bigger.
ECHO_CHARS = 80
PATH_ECHO_CHARS = 240  # a real path can be long and its middle is what tells folders apart


def shown(value: Any, limit: int = ECHO_CHARS) -> str:
    """repr(value), cut in the middle ('abc...xyz') and bounded in depth and length for containers."""
    echo = reprlib.Repr()
    echo.maxstring = echo.maxother = echo.maxlong = limit
    echo.maxlevel = 3
    return echo.repr(value)


def clipped(text: str, limit: int = PATH_ECHO_CHARS) -> str:
    """Text that carries a user's value (a resolved path, a parser's complaint), kept to `limit`."""
    return text if len(text) <= limit else f"{text[: limit // 2]}…{text[-(limit // 2):]}"


def as_field(key: Any) -> str:
    # `field` names where the problem is; a key no field could have is named by its shortened echo.
    text = str(key)
    return text if len(text) <= ECHO_CHARS else shown(text)
