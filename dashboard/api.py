"""The JSON API's shared shape: errors a script can branch on and a person can act on."""
from __future__ import annotations

from django.http import JsonResponse


def json_error(status: int, code: str, message: str, field: str | None = None) -> JsonResponse:
    error: dict = {"status": status, "code": code, "message": message}
    if field:
        error["field"] = field
    return JsonResponse({"error": error}, status=status)


def is_api_path(path: str) -> bool:
    return path.startswith("/api/")
