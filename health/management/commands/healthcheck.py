from django.core.management.base import BaseCommand, CommandError

from health.choices import Status
from health.panel import health_panel

MARKS = {Status.OK: "✔", Status.WARN: "!", Status.UNKNOWN: "!", Status.CRITICAL: "✖"}


class Command(BaseCommand):
    help = "Print every health check as the probes last read it; exit 1 when any is critical (for cron)."

    def handle(self, *args, **options):
        rows = health_panel().rows
        if not rows:
            raise CommandError("no health readings yet: are beat and a worker on the health queue running?", returncode=1)
        critical = []
        for row in rows:
            check = row.check
            status, note = check.status, ""
            if row.stale:
                # A reading nobody refreshes vouches for nothing.
                status, note = Status.CRITICAL, f" (not refreshed for {row.reading_age_s} s: the probes are not running)"
            self.stdout.write(f"{MARKS[Status(status)]} {check.name:<28} {check.status:<8} {check.detail}{note}")
            if status == Status.CRITICAL:
                critical.append(check.name)
        if critical:
            raise CommandError(f"{len(critical)} check{'s' if len(critical) > 1 else ''} critical: {', '.join(critical)}", returncode=1)
