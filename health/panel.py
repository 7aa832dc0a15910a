"""What the health panel and `manage.py healthcheck` show, read from the checks' rows."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from health import xid
from health.choices import STALE_INTERVALS, Status, worst
from health.models import Flip, GpuSample, HealthCheck
from health.reaping import recent_reaps
from health.probes import multinode, zombies
from health.probes.gpu_probe import CLUSTER_CHECK, check_name
from health.probes.gpu_probe import KIND as GPU_KIND
from health.sparkline import Sparkline, sparkline

FLIPS_PER_CHECK = 3
XIDS_PER_GPU = 5


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


@dataclass(frozen=True)
class HeardXid:
    at: object  # a datetime
    xid: xid.Xid


@dataclass
class GpuCard:
    """One GPU on the panel: its check, its newest sample and the window's charts and XIDs."""

    node_id: str
    index: int
    latest: GpuSample
    check: HealthCheck | None
    utilization: Sparkline
    memory: Sparkline
    temperature: Sparkline
    xids: list[HeardXid] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.check.status if self.check is not None else Status.UNKNOWN

    @property
    def details(self) -> dict:
        return self.latest.details or {}

    @property
    def stale(self) -> bool:
        age = (timezone.now() - self.latest.at).total_seconds()
        return age > STALE_INTERVALS * settings.GANTRY_HEALTH_INTERVAL_S

    @property
    def ecc_text(self) -> str:
        value = self.details.get("ecc_uncorrected")
        return "n/a" if value is None else str(value)


@dataclass(frozen=True)
class ZombieNode:
    """One node's zombies and orphan segments, as its zombies check last found them."""

    check: HealthCheck

    @property
    def node_id(self) -> str:
        return self.check.findings.get("node_id", "")

    @property
    def address(self) -> str:
        return self.check.findings.get("address", "")

    @property
    def zombies(self) -> list[dict]:
        return self.check.findings.get("zombies", [])

    @property
    def segments(self) -> list[dict]:
        return self.check.findings.get("segments", [])


@dataclass(frozen=True)
class Readiness:
    """The multi-node readiness card: each check, and one table of every node's values."""

    checks: list[HealthCheck]
    nodes: list[str]
    rows: list[dict]

    @property
    def status(self) -> str:
        return worst(*(c.status for c in self.checks)) if self.checks else Status.UNKNOWN


@dataclass
class Panel:
    rows: list[CheckRow]
    costs: list[ProbeCost]
    counts: dict[str, int]
    gpus: list[GpuCard] = field(default_factory=list)
    gpu_reading: HealthCheck | None = None  # the GPU probe's own check: why there are no GPUs, say
    zombie_nodes: list[ZombieNode] = field(default_factory=list)
    zombie_reading: HealthCheck | None = None
    readiness: Readiness | None = None
    reaps: list = field(default_factory=list)  # the newest reap attempts' AuditEntry rows

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
    by_name = {check.name: check for check in checks}
    return Panel(
        rows=[CheckRow(check, recent[check.name]) for check in checks],
        costs=costs,
        counts={status.value: counts[status.value] for status in Status if counts[status.value]},
        gpus=gpu_cards(by_name),
        gpu_reading=by_name.get(CLUSTER_CHECK),
        zombie_nodes=[ZombieNode(c) for c in by_kind[zombies.KIND] if c.name != zombies.CLUSTER_CHECK and c.findings],
        zombie_reading=by_name.get(zombies.CLUSTER_CHECK),
        readiness=readiness(by_name),
        reaps=recent_reaps(),
    )


def readiness(checks: dict[str, HealthCheck]) -> Readiness | None:
    """The readiness checks with their values per node in one table; None before any reading."""
    found = [checks[name] for name, _ in multinode.ASSESSMENTS if name in checks]
    if not found:
        return None
    nodes = next((c.findings["nodes"] for c in found if c.findings.get("nodes")), [])
    rows = [row for check in found for row in check.findings.get("rows", [])]
    return Readiness(found, nodes, rows)


@dataclass(frozen=True)
class Summary:
    """For the home page: checks by status, and the GPUs (their checks) by status."""

    checks: dict[str, int]
    gpus: dict[str, int]


def health_summary() -> Summary:
    """One query: the checks counted by kind and status."""
    from django.db.models import Count, Q

    checks: Counter = Counter()
    gpus: Counter = Counter()
    one_per_gpu = Q(kind=GPU_KIND) & ~Q(name=CLUSTER_CHECK)
    grouped = HealthCheck.objects.order_by().values("status").annotate(n=Count("id"), gpus=Count("id", filter=one_per_gpu))
    for row in grouped:
        checks[row["status"]] += row["n"]
        gpus[row["status"]] += row["gpus"]
    return Summary(
        checks={status.value: checks[status.value] for status in Status if checks[status.value]},
        gpus={status.value: gpus[status.value] for status in Status if gpus[status.value]},
    )


def gpu_cards(checks: dict[str, HealthCheck]) -> list[GpuCard]:
    """Every GPU with a sample in the window, in three queries whatever the number of GPUs: the
    window's figures (no JSON), each GPU's newest sample, and the samples that heard an XID."""
    from health.samples import window_start

    now = timezone.now()
    start = window_start(now)
    window = GpuSample.objects.filter(at__gte=start)
    series: dict[tuple[str, int], list[tuple]] = defaultdict(list)
    figures = window.order_by("node_id", "gpu_index", "at").values_list(
        "node_id", "gpu_index", "at", "utilization_percent", "memory_used_bytes", "memory_total_bytes", "temperature_c"
    )
    for node_id, index, at, utilization, used, total, temperature in figures:
        memory = round(100 * used / total, 1) if total and used is not None else None
        series[(node_id, index)].append((at.timestamp(), utilization, memory, temperature))
    newest_first = Window(RowNumber(), partition_by=[F("node_id"), F("gpu_index")], order_by=[F("at").desc(), F("id").desc()])
    latest = {(s.node_id, s.gpu_index): s for s in window.annotate(rank=newest_first).filter(rank=1)}
    heard: dict[tuple[str, int], list[HeardXid]] = defaultdict(list)
    for node_id, index, at, events in window.exclude(xids=[]).order_by("-at").values_list("node_id", "gpu_index", "at", "xids")[:200]:
        for event in events:
            if len(heard[(node_id, index)]) < XIDS_PER_GPU:
                heard[(node_id, index)].append(HeardXid(at, xid.describe(event["xid"])))
    # Charts share one time axis: from the oldest sample shown (at most the window's start) to now.
    t0 = min((points[0][0] for points in series.values() if points), default=start.timestamp())
    t1 = now.timestamp()
    cards = []
    for key in sorted(latest):
        points = series.get(key, [])
        cards.append(GpuCard(
            node_id=key[0],
            index=key[1],
            latest=latest[key],
            check=checks.get(check_name(*key)),
            utilization=sparkline([(t, u) for t, u, _, _ in points], start=t0, end=t1, floor=0, ceiling=100),
            memory=sparkline([(t, m) for t, _, m, _ in points], start=t0, end=t1, floor=0, ceiling=100),
            temperature=sparkline([(t, c) for t, _, _, c in points], start=t0, end=t1),
            xids=heard.get(key, []),
        ))
    return cards
