"""Each model's live engine figures, read from the Ray nodes' own metrics endpoints.

vLLM's Ray stat logger (LLMConfig.log_engine_metrics) records its Prometheus metrics through Ray,
and every Ray node serves them, with everything else Ray measures, at `<node>:<MetricsExportPort>/metrics`.
A scrape reads every node's endpoint over plain HTTP, keeps the vLLM families, and stores one
EngineMetricSample per model: gauges as read (summed over the model's replicas), and rates,
quantiles and means from the difference to an earlier sample — Prometheus' own rate() and
histogram_quantile() arithmetic, done here because a Gantry install need not run a Prometheus.

What Ray exports, and how often: serving/engine_export.py, which parses it into readings; the
arithmetic on them: serving/engine_figures.py. The web process never talks to Ray: pages and
/metrics read the rows (serving/live_metrics.py's live_view, serving/engine_gauges.py's
add_to_registry).
"""
from __future__ import annotations

import concurrent.futures
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from serving.cluster.connection import ServeUnavailable
from serving.engine_export import parse_export
from serving.engine_figures import EngineReading
from serving.models import EngineMetricSample, EngineMetricsScrape, ServeModel

log = logging.getLogger(__name__)

# The most a scrape reads from one node, so a wrong port cannot fill the worker's memory.
MAX_EXPORT_BYTES = 64 * 2**20


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

