from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from dashboard.roles import role_name


@require_GET
def me(request: HttpRequest) -> JsonResponse:
    """Who the API thinks you are: the quickest way for a script to check its token."""
    token = getattr(request, "api_token", None)
    return JsonResponse(
        {
            "username": request.user.username,
            "role": role_name(request.user),
            "token": token.name if token else None,
        }
    )


@require_GET
def openapi(request: HttpRequest) -> JsonResponse:
    from serving.openapi import document

    return JsonResponse(document())
