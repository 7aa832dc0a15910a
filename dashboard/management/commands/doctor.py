from django.conf import settings
from django.core.management.base import BaseCommand

from dashboard.readiness import check_broker, check_database, check_ray


class Command(BaseCommand):
    help = "Check that the configured dependencies answer; exits 1 when a required one does not."

    def add_arguments(self, parser):
        parser.add_argument("--require", action="append", default=None, choices=["database", "broker", "ray"],
                            help="Dependencies that must answer (default: database and broker).")

    def handle(self, *args, require=None, **options):
        required = set(require or ["database", "broker"])
        targets = {
            "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1] + " " + str(settings.DATABASES["default"].get("NAME", "")),
            "broker": settings.CELERY_BROKER_URL.split("@")[-1],
            "ray": settings.RAY_ADDRESS,
        }
        failed = []
        for check in (check_database(), check_broker(), check_ray()):
            mark = "✔" if check.ok else ("✖" if check.name in required else "!")
            self.stdout.write(f"{mark} {check.name:<8} {targets[check.name]}: {check.detail}")
            if not check.ok and check.name in required:
                failed.append(check.name)
        if failed:
            self.stderr.write(f"gantry: cannot start: {', '.join(failed)} unreachable; fix the settings above (see README, Settings).")
            raise SystemExit(1)
