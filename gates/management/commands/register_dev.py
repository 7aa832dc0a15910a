"""python manage.py register_dev --run-id … --name … --semver v0.0.0-dev.3 --user alice [--artifact-path model]

The development escape hatch: registers an MLflow run as a v0.0.0-dev… version behind the "dev"
alias without a gate run (no eval, no compare, no reviewer), tagged with the environment and the
user, and audited. Refused with exit 2 in GANTRY_ENV=prod, and for anything but a dev semver.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard.models import AuditEntry
from gates import registry

EXIT_REFUSED = 2
WARNING = (
    "WARNING: register_dev is NOT the gate's path. It puts a version in the registry with no eval, no "
    "comparison against the baseline and no reviewer. Use it for development only; a production "
    "version comes from a gate run that passed."
)


class Command(BaseCommand):
    help = "Register an MLflow run as a v0.0.0-dev… version behind the 'dev' alias, without a gate run (never in GANTRY_ENV=prod)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--run-id", required=True, help="the MLflow run whose artifacts hold the model folder")
        parser.add_argument("--name", required=True, help="the registered model's name")
        parser.add_argument("--artifact-path", default="model", help="the model folder inside the run's artifacts (default: model)")
        parser.add_argument("--semver", required=True, help="a development version: v0.0.0-dev, v0.0.0-dev.3, …")
        parser.add_argument("--user", required=True, help="the Gantry user who registers it (recorded on the version and in the audit log)")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stderr.write(self.style.WARNING(WARNING))
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"There is no Gantry user named {options['user']!r}; the version is recorded with who registered it.", returncode=EXIT_REFUSED)
        try:
            done = registry.register_dev(options["run_id"], options["name"], options["artifact_path"], options["semver"], user=user.username)
        except registry.RegistryError as exc:
            raise CommandError(exc.reason, returncode=EXIT_REFUSED) from None
        AuditEntry.record(
            user, "registry.register_dev", f"model {done.name} version {done.version}",
            f"{done.semver} from MLflow run {done.run_id} in GANTRY_ENV={settings.GANTRY_ENV}, alias {done.alias}, without a gate run",
        )
        self.stdout.write(f"Registered {done.name} version {done.version} ({done.semver}) from run {done.run_id}; alias {done.alias} → {done.version}.")
        self.stdout.write(f"Serve it with model_source: models:/{done.name}@{done.alias}")
