from django.conf import settings

from dashboard.readiness import ray_status_cached
from dashboard.roles import is_admin, role_name


def gantry(request) -> dict:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"gantry_env": settings.GANTRY_ENV}
    return {
        "gantry_env": settings.GANTRY_ENV,
        "user_role": role_name(user),
        "user_is_admin": is_admin(user),
        # Pages keep working without Ray; they say so instead.
        "ray_reachability": ray_status_cached(),
        "ray_address": settings.RAY_ADDRESS,
    }
