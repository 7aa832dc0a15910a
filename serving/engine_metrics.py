"""Each model's live engine figures, read from the Ray nodes' own metrics endpoints.

vLLM's Ray stat logger (LLMConfig.log_engine_metrics) records its Prometheus metrics through Ray,
and every Ray node serves them, with everything else Ray measures, at `<node>:<MetricsExportPort>/metrics`.
A scrape reads every node's endpoint over plain HTTP, keeps the vLLM families, and stores one
EngineMetricSample per model: gauges as read (summed over the model's replicas), and rates,
quantiles and means from the difference to an earlier sample — Prometheus' own rate() and
histogram_quantile() arithmetic, done here because a Gantry install need not run a Prometheus.

What Ray 2.60 exports, seen on a real node (tests/serving/engine_metrics_export.txt):
- names: vLLM's "vllm:time_to_first_token_seconds" becomes "ray_vllm_time_to_first_token_seconds"
  (vLLM replaces ":" for OpenTelemetry, Ray prefixes "ray_"); counters end in "_total";
- labels: model_name (the served model id, which is Gantry's model_key and the Serve application's
  name), ReplicaId, engine, plus Ray's NodeAddress, WorkerId, SessionName, Component, Version;
- histograms are bucket counts only: Ray rebuilds `_sum` from bucket midpoints
  (ray/_private/telemetry/open_telemetry_metric_recorder.py), so a mean is as coarse as vLLM's
  buckets — an inter-token latency under 10 ms always reads 5 ms;
- a node pushes its figures to the export every metrics_report_interval_ms (10 s by default), so
  two scrapes 10 s apart may see zero or two pushes between them: rates are taken over
  GANTRY_ENGINE_METRICS_WINDOW_S (several pushes), not between neighbouring scrapes;
- a replica's series appear only once its engine has recorded something, and a counter that was
  never incremented (preemptions) is absent, which reads as 0.

The web process never talks to Ray: pages and /metrics read the rows (live_view, add_to_registry).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

PREFIX = "ray_vllm_"
RUNNING = "ray_vllm_num_requests_running"
WAITING = "ray_vllm_num_requests_waiting"
KV_CACHE = "ray_vllm_kv_cache_usage_perc"
GENERATION_TOKENS = "ray_vllm_generation_tokens"  # a counter: the parser names its family without "_total"
PREEMPTIONS = "ray_vllm_num_preemptions"
TTFT = "ray_vllm_time_to_first_token_seconds"
ITL = "ray_vllm_inter_token_latency_seconds"
# A node's whole export is ~900 kB of Ray's own metrics; only these lines are parsed.
_KEPT_PREFIXES = (PREFIX, f"# HELP {PREFIX}", f"# TYPE {PREFIX}")
# The most a scrape reads from one node, so a wrong port cannot fill the worker's memory.
MAX_EXPORT_BYTES = 64 * 2**20
# How much history the model page draws.
CHART_MINUTES = 15


# --- Histograms, as Prometheus computes with them -------------------------------------------------

@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts by upper bound (math.inf included), with `_sum` and `_count`."""

    buckets: dict[float, float] = field(default_factory=dict)
    sum: float = 0.0
    count: float = 0.0

    def since(self, earlier: "Histogram | None") -> "Histogram":
        """What was observed after `earlier`; all of it when there is no earlier reading or the
        series restarted meanwhile (its count went down: a new engine process), as rate() does."""
        if earlier is None or self.count < earlier.count:
            return self
        return Histogram(
            {le: n - earlier.buckets.get(le, 0.0) for le, n in self.buckets.items()},
            self.sum - earlier.sum,
            self.count - earlier.count,
        )

    def plus(self, other: "Histogram") -> "Histogram":
        bounds = set(self.buckets) | set(other.buckets)
        return Histogram({le: self.buckets.get(le, 0.0) + other.buckets.get(le, 0.0) for le in bounds}, self.sum + other.sum, self.count + other.count)

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile(): linear interpolation inside the bucket the rank falls
        in, the lowest bucket starting at 0, and a rank in the +Inf bucket answered with the highest
        finite bound. None when nothing was observed (Prometheus says NaN)."""
        bounds = sorted(self.buckets)
        if len(bounds) < 2 or not math.isinf(bounds[-1]):
            return None
        counts, highest = [], 0.0
        for le in bounds:  # cumulative counts can dip by float error; Prometheus evens them out too
            highest = max(highest, self.buckets[le])
            counts.append(highest)
        total = counts[-1]
        if total <= 0:
            return None
        rank = q * total
        b = next(i for i, n in enumerate(counts) if n >= rank)
        if b == len(bounds) - 1:
            return bounds[-2]
        if b == 0 and bounds[0] <= 0:
            return bounds[0]
        start, end, below = (0.0 if b == 0 else bounds[b - 1]), bounds[b], (0.0 if b == 0 else counts[b - 1])
        in_bucket = counts[b] - below
        return start + (end - start) * ((rank - below) / in_bucket) if in_bucket > 0 else end

    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def as_dict(self) -> dict:
        return {"buckets": [[_bound_text(le), n] for le, n in sorted(self.buckets.items())], "sum": self.sum, "count": self.count}

    @classmethod
    def from_dict(cls, data: dict) -> "Histogram":
        return cls({float(le): float(n) for le, n in data.get("buckets", [])}, float(data.get("sum", 0)), float(data.get("count", 0)))


def _bound_text(le: float) -> str:
    return "+Inf" if math.isinf(le) else repr(le)


# --- One engine's series, as one node exports them -----------------------------------------------

@dataclass
class EngineReading:
    """One vLLM engine (a replica's engine index) of one model, as one node's export shows it."""

    model: str
    endpoint: str
    replica: str
    running: float = 0.0
    waiting: float = 0.0
    kv_cache: float | None = None
    generation_tokens: float = 0.0
    preemptions: float = 0.0
    ttft: Histogram = field(default_factory=Histogram)
    itl: Histogram = field(default_factory=Histogram)

    @property
    def key(self) -> str:
        """The series' identity across scrapes: a replica that restarts gets a new ReplicaId."""
        return f"{self.endpoint}|{self.replica}"

    def as_dict(self) -> dict:
        return {
            "endpoint": self.endpoint, "replica": self.replica, "running": self.running, "waiting": self.waiting,
            "kv_cache": self.kv_cache, "generation_tokens": self.generation_tokens, "preemptions": self.preemptions,
            "ttft": self.ttft.as_dict(), "itl": self.itl.as_dict(),
        }

    @classmethod
    def from_dict(cls, model: str, data: dict) -> "EngineReading":
        return cls(
            model, data["endpoint"], data["replica"], data.get("running", 0.0), data.get("waiting", 0.0), data.get("kv_cache"),
            data.get("generation_tokens", 0.0), data.get("preemptions", 0.0),
            Histogram.from_dict(data.get("ttft", {})), Histogram.from_dict(data.get("itl", {})),
        )


def parse_export(text: str, endpoint: str) -> list[EngineReading]:
    """The vLLM engines in one node's Prometheus export, one reading per (model, replica, engine)."""
    kept = "\n".join(line for line in text.splitlines() if line.startswith(_KEPT_PREFIXES))
    readings: dict[tuple[str, str], EngineReading] = {}
    histograms: dict[tuple[str, str, str], dict] = {}

    def reading(labels: dict) -> EngineReading:
        model = labels.get("model_name", "")
        replica = f"{labels.get('ReplicaId', '')}/{labels.get('engine', '0')}"
        return readings.setdefault((model, replica), EngineReading(model, endpoint, replica))

    for family in text_string_to_metric_families(kept):
        for sample in family.samples:
            labels = sample.labels
            if not labels.get("model_name"):
                continue
            name = family.name
            if name in (RUNNING, WAITING, KV_CACHE, GENERATION_TOKENS, PREEMPTIONS) and sample.name in (name, f"{name}_total"):
                engine = reading(labels)
                attribute = {RUNNING: "running", WAITING: "waiting", KV_CACHE: "kv_cache", GENERATION_TOKENS: "generation_tokens", PREEMPTIONS: "preemptions"}[name]
                setattr(engine, attribute, float(sample.value))
            elif name in (TTFT, ITL):
                engine = reading(labels)
                parts = histograms.setdefault((engine.model, engine.replica, name), {"buckets": {}, "sum": 0.0, "count": 0.0})
                if sample.name == f"{name}_bucket":
                    parts["buckets"][float(labels["le"])] = float(sample.value)
                elif sample.name == f"{name}_sum":
                    parts["sum"] = float(sample.value)
                elif sample.name == f"{name}_count":
                    parts["count"] = float(sample.value)
    for (model, replica, name), parts in histograms.items():
        setattr(readings[(model, replica)], "ttft" if name == TTFT else "itl", Histogram(parts["buckets"], parts["sum"], parts["count"]))
    return list(readings.values())


# --- A model's figures from two readings of its engines ------------------------------------------

@dataclass(frozen=True)
class Figures:
    """A model's figures at one scrape; the rates, quantiles and means cover `window_s` before it
    (None without an earlier sample to compare with)."""

    replicas: int
    running: float
    waiting: float
    kv_cache: float | None  # the replicas' mean use of their KV cache, 0..1
    window_s: float | None = None
    generation_tokens_per_s: float | None = None  # all of the model's replicas together
    decode_tokens_per_s: float | None = None  # one request's decode speed: 1 / mean inter-token latency
    preemptions: float | None = None
    requests: float | None = None  # first tokens produced in the window
    ttft_p50: float | None = None
    ttft_p95: float | None = None
    ttft_mean: float | None = None
    itl_p50: float | None = None
    itl_p95: float | None = None
    itl_mean: float | None = None


def figures(current: list[EngineReading], earlier: dict[str, EngineReading] | None, earlier_endpoints: set[str], window_s: float | None) -> Figures:
    """One model's figures from its engines now and, for the rates, as an earlier sample stored them.

    Counters and histograms are differenced per series and then summed, so a replica that started
    in the window counts from zero and one that restarted counts from its restart, as rate() does.
    A series the earlier sample lacks counts from zero only if its node was read then too;
    otherwise its past would be taken for the window's work.
    """
    kv = [r.kv_cache for r in current if r.kv_cache is not None]
    now = Figures(
        replicas=len(current),
        running=sum(r.running for r in current),
        waiting=sum(r.waiting for r in current),
        kv_cache=sum(kv) / len(kv) if kv else None,
    )
    if earlier is None or not window_s or window_s <= 0:
        return now
    tokens = preempted = 0.0
    ttft, itl = Histogram(), Histogram()
    for reading in current:
        before = earlier.get(reading.key)
        if before is None and reading.endpoint not in earlier_endpoints:
            continue
        tokens += _increase(reading.generation_tokens, before.generation_tokens if before else None)
        preempted += _increase(reading.preemptions, before.preemptions if before else None)
        ttft = ttft.plus(reading.ttft.since(before.ttft if before else None))
        itl = itl.plus(reading.itl.since(before.itl if before else None))
    itl_mean = itl.mean()
    return dataclasses.replace(
        now,
        window_s=window_s,
        generation_tokens_per_s=tokens / window_s,
        decode_tokens_per_s=1 / itl_mean if itl_mean else None,
        preemptions=preempted,
        requests=ttft.count,
        ttft_p50=ttft.quantile(0.5),
        ttft_p95=ttft.quantile(0.95),
        ttft_mean=ttft.mean(),
        itl_p50=itl.quantile(0.5),
        itl_p95=itl.quantile(0.95),
        itl_mean=itl_mean,
    )


def _increase(value: float, before: float | None) -> float:
    if before is None or value < before:  # new, or restarted: all of it is new
        return value
    return value - before


# --- Reading the nodes -------------------------------------------------------------------------

@dataclass
class NodeScrape:
    endpoint: str
    node_id: str = ""
    readings: list[EngineReading] = field(default_factory=list)
    error: str = ""


def read_endpoint(endpoint: str, timeout_s: float) -> str:
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=timeout_s) as response:
        return response.read(MAX_EXPORT_BYTES).decode("utf-8", errors="replace")


def scrape_nodes(endpoints: list[dict], timeout_s: float) -> list[NodeScrape]:
    """Every node's export at once, each bounded by `timeout_s`; a node that fails says why."""
    nodes = [NodeScrape(f"{e['address']}:{e['port']}", e.get("node_id", "")) for e in endpoints]
    if not nodes:
        return []

    def scrape(node: NodeScrape) -> NodeScrape:
        try:
            node.readings = parse_export(read_endpoint(node.endpoint, timeout_s), node.endpoint)
        except urllib.error.HTTPError as exc:
            node.error = f"HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            node.error = str(getattr(exc.reason, "strerror", None) or exc.reason)
        except (OSError, ValueError) as exc:  # a timeout mid-read, a reset, text that is not Prometheus'
            node.error = str(exc) or type(exc).__name__
        if node.error:
            log.warning("engine metrics: the scrape of node %s failed: %s", node.endpoint, node.error)
        return node

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(nodes), 16), thread_name_prefix="gantry-engine-metrics") as pool:
        return list(pool.map(scrape, nodes))


def scrape(client, *, now: datetime | None = None) -> dict:
    """One scrape: list the nodes' endpoints through the Serve client, read them, store a sample
    for every model that reported, note how each node's read went, prune old samples."""
    from serving.client import ServeUnavailable
    from serving.models import EngineMetricSample, EngineMetricsScrape, ServeModel

    now = now or timezone.now()
    try:
        endpoints = client.metrics_endpoints()
    except ServeUnavailable as exc:
        EngineMetricsScrape.note(now, error=f"could not list the Ray nodes: {exc}", nodes=[])
        return {"nodes": 0, "samples": 0, "error": str(exc)}
    nodes = scrape_nodes(endpoints, settings.GANTRY_ENGINE_METRICS_TIMEOUT_S)
    ok = {n.endpoint for n in nodes if not n.error}
    by_model: dict[str, list[EngineReading]] = {}
    for node in nodes:
        for reading in node.readings:
            by_model.setdefault(reading.model, []).append(reading)
    known = {m.model_key: m for m in ServeModel.objects.filter(model_key__in=list(by_model)).reconcilable()}
    stored = 0
    with transaction.atomic():
        for key, readings in by_model.items():
            model = known.get(key)
            if model is None:
                continue  # an application Gantry does not manage: the cluster page reports those
            EngineMetricSample.record(model, readings, ok, now)
            stored += 1
        EngineMetricsScrape.note(now, error="", nodes=[{"endpoint": n.endpoint, "node_id": n.node_id, "error": n.error, "models": sorted({r.model for r in n.readings})} for n in nodes])
    EngineMetricSample.objects.filter(at__lt=now - timedelta(minutes=settings.GANTRY_ENGINE_METRICS_KEEP_MINUTES)).delete()
    return {"nodes": len(nodes), "failed": len(nodes) - len(ok), "samples": stored}


# --- What the page shows ----------------------------------------------------------------------

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
    from health.sparkline import sparkline
    from serving.models import EngineMetricSample, EngineMetricsScrape

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


# --- /metrics ---------------------------------------------------------------------------------

def add_to_registry(registry) -> None:
    """Each model's newest figures as Gantry's own Prometheus gauges, from samples still fresh
    (within twice the scrape interval): a model whose engine stopped reporting has no current figure."""
    from prometheus_client import Gauge
    from prometheus_client.core import CounterMetricFamily

    from serving.models import EngineMetricSample

    fresh = timezone.now() - timedelta(seconds=2 * settings.GANTRY_ENGINE_METRICS_INTERVAL_S)
    latest = EngineMetricSample.latest_per_model(since=fresh)

    def gauge(name: str, text: str, labels=("model",)) -> Gauge:
        return Gauge(name, text, list(labels), registry=registry)

    ttft = gauge("gantry_model_ttft_seconds", "Time to first token over the rate window, by quantile (vLLM's histogram).", ("model", "quantile"))
    ttft_mean = gauge("gantry_model_ttft_mean_seconds", "Mean time to first token over the rate window (Ray rebuilds the sum from bucket midpoints).")
    itl = gauge("gantry_model_itl_seconds", "Inter-token latency over the rate window, by quantile.", ("model", "quantile"))
    itl_mean = gauge("gantry_model_itl_mean_seconds", "Mean inter-token latency over the rate window.")
    tokens = gauge("gantry_model_generation_tokens_per_second", "Tokens generated per second by all the model's replicas, over the rate window.")
    decode = gauge("gantry_model_decode_tokens_per_second", "One request's decode speed: 1 / mean inter-token latency.")
    requests = gauge("gantry_model_requests", "Requests in the model's engines now, by state.", ("model", "state"))
    kv = gauge("gantry_model_kv_cache_usage_ratio", "Mean KV-cache use of the model's replicas, 0 to 1.")
    replicas = gauge("gantry_model_engine_replicas", "Replicas whose engines reported in the newest sample.")
    age = gauge("gantry_model_metrics_age_seconds", "Seconds since the model's newest sample.")
    preemptions = CounterMetricFamily("gantry_model_preemptions", "Requests the engines preempted, summed over the replicas reporting now.", labels=["model"])
    generated = CounterMetricFamily("gantry_model_generation_tokens", "Tokens generated, summed over the replicas reporting now.", labels=["model"])
    now = timezone.now()
    for sample in latest:
        model = sample.model_key
        for quantile, value in (("0.5", sample.ttft_p50), ("0.95", sample.ttft_p95)):
            if value is not None:
                ttft.labels(model=model, quantile=quantile).set(value)
        for quantile, value in (("0.5", sample.itl_p50), ("0.95", sample.itl_p95)):
            if value is not None:
                itl.labels(model=model, quantile=quantile).set(value)
        for metric, value in ((ttft_mean, sample.ttft_mean), (itl_mean, sample.itl_mean), (tokens, sample.generation_tokens_per_s),
                              (decode, sample.decode_tokens_per_s), (kv, sample.kv_cache), (replicas, sample.replicas)):
            if value is not None:
                metric.labels(model=model).set(value)
        requests.labels(model=model, state="running").set(sample.running)
        requests.labels(model=model, state="waiting").set(sample.waiting)
        age.labels(model=model).set(max((now - sample.at).total_seconds(), 0.0))
        engines = sample.engines()
        preemptions.add_metric([model], sum(e.preemptions for e in engines))
        generated.add_metric([model], sum(e.generation_tokens for e in engines))

    class Totals:
        def collect(self):
            return [preemptions, generated]

    registry.register(Totals())
