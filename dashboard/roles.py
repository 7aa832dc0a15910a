"""The three roles: user (own objects), reviewer (approves baselines), admin (is_staff)."""
from __future__ import annotations

REVIEWERS_GROUP = "reviewers"
APPROVE_BASELINE = "gates.approve_baseline"


def ensure_roles() -> None:
    """Create the reviewers group with its permission; safe to run any number of times."""
    from django.contrib.auth.models import Group, Permission
    from django.contrib.contenttypes.models import ContentType

    app_label, codename = APPROVE_BASELINE.split(".")
    content_type, _ = ContentType.objects.get_or_create(app_label=app_label, model="gatepermissions")
    permission, _ = Permission.objects.get_or_create(
        content_type=content_type,
        codename=codename,
        defaults={"name": "Can approve or reject a proposed eval baseline"},
    )
    group, _ = Group.objects.get_or_create(name=REVIEWERS_GROUP)
    group.permissions.add(permission)


def is_admin(user) -> bool:
    return bool(user.is_authenticated and user.is_active and user.is_staff)


def is_reviewer(user) -> bool:
    return bool(user.is_authenticated and user.has_perm(APPROVE_BASELINE))


def role_name(user) -> str:
    if is_admin(user):
        return "admin"
    if is_reviewer(user):
        return "reviewer"
    return "user"
