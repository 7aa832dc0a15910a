from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from dashboard.readiness import check_broker, check_database, check_ray
from dashboard.roles import is_admin


def index(request: HttpRequest) -> HttpResponse:
    if not is_admin(request.user):
        raise PermissionDenied("The health panel is for admins.")
    checks = [check_database(), check_broker(), check_ray()]
    return render(request, "health/index.html", {"checks": checks})
