"""/api/v2/secrets: list names, set (PUT) and delete a secret. Write-only: no call returns a value.
Authentication is the project's (dashboard.auth: bearer token or session; anonymous is a JSON 401)."""
from __future__ import annotations

import json
from functools import wraps

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods

from dashboard.api import json_error
from gates import secrets as store
from gates.models import Secret

# A 64 KiB value JSON-escapes to at most six times its size (\uXXXX per byte); room for the braces.
MAX_BODY = 6 * store.MAX_VALUE_BYTES + 1024


def secret_json(secret: Secret) -> dict:
    return {"name": secret.name, "updated_at": secret.updated_at.isoformat()}


def api_errors(view):
    """The store's refusals as the API's JSON errors, in one place."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except store.SecretError as exc:
            return json_error(exc.status, exc.code, exc.message, exc.field)
        except Secret.DoesNotExist:
            return json_error(404, "not_found", "No such secret (or it is not yours).")

    return wrapper


@sensitive_variables("data")
def _value_from_body(request: HttpRequest) -> str:
    if len(request.body) > MAX_BODY:
        raise store.SecretError(400, "bad_request", f"The body is larger than {MAX_BODY // 1024} KiB; a value is at most 64 KiB.")
    try:
        data = json.loads(request.body.decode("utf-8") or "null")
    except UnicodeDecodeError:
        raise store.SecretError(400, "bad_json", "The body is not UTF-8 text.") from None
    except json.JSONDecodeError as exc:  # exc.msg and the position only: the body is the secret
        raise store.SecretError(400, "bad_json", f"The body is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from None
    except ValueError:  # json lets Python's limit escape: an integer of more than 4,300 digits
        raise store.SecretError(400, "bad_json", "The body holds a number too long to be one Gantry takes.") from None
    if not isinstance(data, dict) or "value" not in data:
        raise store.SecretError(422, "invalid_value", 'Send {"value": "..."} as a JSON object.', "value")
    if len(data) > 1:  # the other keys are not named: a pasted secret can sit in a key as well as a value
        raise store.SecretError(422, "invalid_value", f'Send only {{"value": "..."}}; the body has {len(data) - 1} other key(s).', "value")
    return data["value"]


@require_GET
def secrets_collection(request: HttpRequest) -> JsonResponse:
    rows = Secret.objects.filter(owner=request.user).only("name", "updated_at")
    return JsonResponse({"items": [secret_json(s) for s in rows]})


@require_http_methods(["PUT", "DELETE"])
@api_errors
@sensitive_variables("value")  # innermost: it hides the locals of the function it wraps directly
def secret_item(request: HttpRequest, name: str) -> HttpResponse:
    store.check_name(name)  # first: a bad name is the answer whatever the body says
    if request.method == "DELETE":
        store.delete_secret(request.user, name, request.user)
        return HttpResponse(status=204)
    value = _value_from_body(request)
    secret, created = store.set_secret(request.user, name, value, request.user)
    return JsonResponse({**secret_json(secret), "created": created}, status=201 if created else 200)
