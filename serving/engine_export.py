"""Ray's Prometheus export of one node, parsed into one reading per vLLM engine (pure).

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
"""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from serving.engine_figures import EngineReading, Histogram

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
