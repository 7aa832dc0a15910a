"""What the health panel and `manage.py healthcheck` show, read from the checks' rows."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from health.choices import Status
from health.models import Flip, HealthCheck

FLIPS_PER_CHECK = 3
# Readings older than this many probe intervals mean the probes stopped: they vouch for nothing.
STALE_INTERVALS = 3


@dataclass
class CheckRow:
    check: HealthCheck
    flips: list[Flip] = field(default_factory=list)

    @property
    def reading_age_s(self) -> int | None:
        if self.check.last_reading_at is None:
            return None
        return int((timezone.now() - self.check.last_reading_at).total_seconds())

    @property
    def stale(self) -> bool:
        age = self.reading_age_s
        return age is None or age > STALE_INTERVALS * settings.GANTRY_HEALTH_INTERVAL_S


@dataclass(frozen=True)
class ProbeCost:
    kind: str
    checks: int
    cost_ms: float


@dataclass
class Panel:
    rows: list[CheckRow]
    costs: list[ProbeCost]
    counts: dict[str, int]

    @property
    def cycle_cost_ms(self) -> float:
        return round(sum(cost.cost_ms for cost in self.costs), 3)

    @property
    def core_share_percent(self) -> float:
        """The last cycle's CPU time as a share of one core at the probe interval."""
        return round(100 * self.cycle_cost_ms / (settings.GANTRY_HEALTH_INTERVAL_S * 1000), 3)


def health_panel() -> Panel:
    checks = list(HealthCheck.objects.all())
    recent: dict[str, list[Flip]] = defaultdict(list)
    # Each check's newest few flips in one query, however often any one of them flipped.
    newest_first = Window(RowNumber(), partition_by=[F("check_name")], order_by=[F("created_at").desc(), F("id").desc()])
    flips = Flip.objects.annotate(rank=newest_first).filter(rank__lte=FLIPS_PER_CHECK).order_by("check_name", "rank")
    for flip in flips:
        recent[flip.check_name].append(flip)
    by_kind: dict[str, list[HealthCheck]] = defaultdict(list)
    for check in checks:
        by_kind[check.kind].append(check)
    costs = [ProbeCost(kind, len(group), round(sum(c.cost_ms for c in group), 3)) for kind, group in sorted(by_kind.items())]
    counts = Counter(check.status for check in checks)
    return Panel(
        rows=[CheckRow(check, recent[check.name]) for check in checks],
        costs=costs,
        counts={status.value: counts[status.value] for status in Status if counts[status.value]},
    )
