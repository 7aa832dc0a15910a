from django.apps import AppConfig
from django.db.models.signals import post_migrate


class GatesConfig(AppConfig):
    name = "gates"
    verbose_name = "Gates"

    def ready(self) -> None:
        from dashboard.roles import ensure_roles

        # After auth has created this app's permissions, attach them to the reviewers group.
        post_migrate.connect(lambda **kwargs: ensure_roles(), sender=self, weak=False)
