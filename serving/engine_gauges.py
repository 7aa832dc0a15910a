"""Each model's engine figures on Gantry's /metrics (health/metrics.py), from the samples the scrape
(serving/engine_metrics.py) stored; the web process never talks to Ray."""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from prometheus_client import Gauge
from prometheus_client.core import CounterMetricFamily

from serving.models import EngineMetricSample


def add_to_registry(registry) -> None:
    """Each model's newest figures as Gantry's own Prometheus gauges, from samples still fresh
    (within twice the scrape interval): a model whose engine stopped reporting has no current figure."""
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
