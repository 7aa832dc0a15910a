from django.apps import AppConfig
from django.db.models.signals import post_migrate


class GatesConfig(AppConfig):
    name = "gates"
    verbose_name = "Gates"

    def ready(self) -> None:
        from dashboard.roles import ensure_roles
        from gates.apply_gate import preflight_verdict
        from serving import apply_gates

        # Every apply of a new spec waits for the preflight (serving asks through its own hook).
        apply_gates.register(preflight_verdict)

        # After auth has created this app's permissions, attach them to the reviewers group.
        post_migrate.connect(lambda **kwargs: ensure_roles(), sender=self, weak=False)
