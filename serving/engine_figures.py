"""A model's engine figures from readings of its engines: the reading types a scrape stores (one
engine's series, its histograms) and Prometheus' own rate() and histogram_quantile() arithmetic on
them, done here because a Gantry install need not run a Prometheus.

Standard library only, and no models, so both sides use it without importing each other: the parser
(serving/engine_export.py) builds the readings, serving/models.py stores them and the figures taken
from them, and the scrape (serving/engine_metrics.py) hands the one to the other.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


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
