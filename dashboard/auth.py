"""Bearer-token authentication for the JSON API, and JSON 401s instead of login redirects there."""
from __future__ import annotations

from dashboard.api import is_api_path, json_error
from dashboard.models import ApiToken


class BearerTokenMiddleware:
    """`Authorization: Bearer <token>` logs a request in as the token's owner, for this request only.

    Sits after AuthenticationMiddleware and before LoginRequiredMiddleware, so anonymous API calls get
    a JSON 401 here instead of the login page's redirect.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            token = ApiToken.authenticate(raw.strip())
            if token is None:
                return json_error(
                    401, "invalid_token", "This API token is unknown or revoked; create a new one under Settings → API tokens."
                )
            request.user = token.user
            request.api_token = token
            # A bearer token is not ambient authority a browser sends by itself: CSRF does not apply.
            request._dont_enforce_csrf_checks = True
        if is_api_path(request.path) and not request.user.is_authenticated:
            response = json_error(
                401, "unauthenticated", "Log in, or send 'Authorization: Bearer <token>' with an API token."
            )
            response["WWW-Authenticate"] = 'Bearer realm="gantry"'
            return response
        return self.get_response(request)
