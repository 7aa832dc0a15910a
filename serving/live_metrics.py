"""The model page's live metrics card: the newest sample's figures, sparklines of the last
CHART_MINUTES, or why there are none, from the rows the scrape (serving/engine_metrics.py) stored;
the web process never talks to Ray."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from health.sparkline import sparkline
from serving.models import EngineMetricSample, EngineMetricsScrape

# How much history the model page draws.
CHART_MINUTES = 15


@dataclass(frozen=True)
class Chart:
    label: str
    unit: str
    lines: tuple  # (legend, health.sparkline.Sparkline), drawn on one scale
    last: tuple  # (legend, the newest value) of each line, in the same order

    @property
    def width(self) -> int:
        return self.lines[0][1].width

    @property
    def height(self) -> int:
        return self.lines[0][1].height

    @property
    def empty(self) -> bool:
        return not any(line.path for _, line in self.lines)


@dataclass(frozen=True)
class Figure:
    """One figure of the newest sample: its element id, the text shown, and the raw value (SI
    units) for a data attribute, so scripts and tests read the number rather than the words."""

    id: str
    label: str
    text: str
    value: float | None


@dataclass(frozen=True)
class LiveMetrics:
    fresh: bool
    reason: str  # why there are no (current) metrics; "" when fresh
    latest: object = None  # the newest EngineMetricSample, if any
    charts: tuple = ()
    interval_s: int = 10

    @property
    def figures(self) -> list[Figure]:
        s = self.latest
        if s is None:
            return []
        window = f"over the last {s.window_s:.0f} s" if s.window_s else "once a second sample arrives"

        def ms(value: float | None) -> str:
            return "—" if value is None else f"{value * 1000:.1f} ms"

        def number(value: float | None, digits: int = 1) -> str:
            return "—" if value is None else f"{value:.{digits}f}"

        return [
            Figure("ttft-mean", "Time to first token, mean", ms(s.ttft_mean), s.ttft_mean),
            Figure("ttft-p50", "Time to first token, p50", ms(s.ttft_p50), s.ttft_p50),
            Figure("ttft-p95", "Time to first token, p95", ms(s.ttft_p95), s.ttft_p95),
            Figure("itl-mean", "Inter-token latency, mean", ms(s.itl_mean), s.itl_mean),
            Figure("itl-p50", "Inter-token latency, p50", ms(s.itl_p50), s.itl_p50),
            Figure("itl-p95", "Inter-token latency, p95", ms(s.itl_p95), s.itl_p95),
            Figure("decode-tokens-per-s", "Tokens per second, per request (1 / mean ITL)", number(s.decode_tokens_per_s), s.decode_tokens_per_s),
            Figure("generation-tokens-per-s", "Tokens per second, all replicas", number(s.generation_tokens_per_s), s.generation_tokens_per_s),
            Figure("requests-running", "Requests running", number(s.running, 0), s.running),
            Figure("requests-waiting", "Requests waiting", number(s.waiting, 0), s.waiting),
            Figure("kv-cache", "KV cache in use", "—" if s.kv_cache is None else f"{s.kv_cache * 100:.1f} %", s.kv_cache),
            Figure("preemptions", f"Preemptions {window}", number(s.preemptions, 0), s.preemptions),
            Figure("requests-started", f"First tokens {window}", number(s.requests, 0), s.requests),
        ]



def live_view(model, now: datetime | None = None) -> LiveMetrics:
    """The model page's live metrics card: charts of the last CHART_MINUTES, or why there are none."""
    now = now or timezone.now()
    interval = settings.GANTRY_ENGINE_METRICS_INTERVAL_S
    samples = list(EngineMetricSample.objects.filter(model=model, at__gte=now - timedelta(minutes=CHART_MINUTES)).order_by("at", "id"))
    latest = samples[-1] if samples else EngineMetricSample.objects.filter(model=model).order_by("-at", "-id").first()
    fresh = latest is not None and latest.at >= now - timedelta(seconds=2 * interval)
    if not fresh:
        return LiveMetrics(False, why_no_metrics(model, latest, EngineMetricsScrape.current(), now), latest, interval_s=interval)
    start, end = (now - timedelta(minutes=CHART_MINUTES)).timestamp(), now.timestamp()

    def chart(label: str, unit: str, *fields: tuple[str, str], scale: float = 1.0, ceiling: float | None = None) -> Chart:
        # The lines of one chart share its scale, so p50 and p95 (or running and waiting) compare.
        series = [[(s.at.timestamp(), None if getattr(s, f) is None else getattr(s, f) * scale) for s in samples] for f, _ in fields]
        values = [v for points in series for _, v in points if v is not None]
        top = max([*values, ceiling or 0.0]) if values else ceiling
        lines = tuple((legend, sparkline(points, start=start, end=end, floor=0, ceiling=top)) for (_, legend), points in zip(fields, series))
        last = tuple((legend, None if getattr(latest, f) is None else getattr(latest, f) * scale) for f, legend in fields)
        return Chart(label, unit, lines, last)

    charts = (
        chart("Time to first token", "ms", ("ttft_p50", "p50"), ("ttft_p95", "p95"), scale=1000),
        chart("Inter-token latency", "ms", ("itl_p50", "p50"), ("itl_p95", "p95"), scale=1000),
        chart("Generated tokens per second", "tokens/s", ("generation_tokens_per_s", "all replicas")),
        chart("Requests", "", ("running", "running"), ("waiting", "waiting")),
        chart("KV cache in use", "%", ("kv_cache", "mean of replicas"), scale=100, ceiling=100),
        chart("Preemptions", "", ("preemptions", "in the window")),
    )
    return LiveMetrics(True, "", latest, charts, interval)


def why_no_metrics(model, latest, scrape, now: datetime) -> str:
    """Why a model has no sample within twice the scrape interval, in words a user can act on."""
    interval = settings.GANTRY_ENGINE_METRICS_INTERVAL_S
    since = f"no sample since {_clock(latest.at)}" if latest is not None else "no sample yet"
    if scrape is None or scrape.at is None:
        return f"{since} — Gantry has not read the engines' metrics yet (beat and a worker on the health queue do, every {interval} s)."
    if scrape.at < now - timedelta(seconds=2 * interval):
        return f"{since} — the last scrape ran at {_clock(scrape.at)}; is a worker on the health queue and beat running?"
    if scrape.error:
        return f"{since} — the last scrape, at {_clock(scrape.at)}, {scrape.error}"
    failed = [n for n in scrape.nodes if n.get("error")]
    if failed:
        named = "; ".join(f"node {n['endpoint']} failed: {n['error']}" for n in failed[:3])
        return f"{since} — the last scrape of {named}" + (f" (and {len(failed) - 3} more)" if len(failed) > 3 else "")
    if not scrape.nodes:
        return f"{since} — the Ray cluster lists no node with a metrics endpoint."
    if model.state != "RUNNING":
        return f"{since} — the model is {model.state}; its engine reports only while it runs."
    if latest is not None:
        return f"{since} — the nodes' exports no longer have this model's engine figures (a replica that stopped or restarted reports again after its first request)."
    return f"{since} — the engine has not reported yet (vLLM's figures reach Ray's metrics export within about 10 s of its first request)."


def _clock(moment: datetime) -> str:
    return f"{timezone.localtime(moment, timezone.get_fixed_timezone(0)):%H:%M:%S} UTC"
