"""The health panel with 8 GPUs × 24 h of samples, against the empty panel in the same run; and
what one probe cycle costs in CPU (the figure the probes record for themselves) with 8 GPUs.

Fills a scratch database with what GANTRY_HEALTH_GPU_SAMPLES_HOURS keeps at the default interval
(every 15 s sample of the last hour, then one per 5 minutes: 516 per GPU), times GET /health/
(full page and the htmx partial) for an admin through Django's test client, counts its queries,
and prints the ratio to the empty panel. Then runs the real probe cycle (disk, TCP, Celery,
progress and the GPU probe, whose nodes come from tests' FakeServe with 8 GPU readings) and
prints each probe's CPU time and the cycle's share of one core at the interval.

    .venv/bin/python bench/health_panel.py                      # scratch SQLite
    DATABASE_URL=postgres://postgres@127.0.0.1/gantry_bench .venv/bin/python bench/health_panel.py
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from list_queries import measure, setup_django  # noqa: E402 — needs the path above

GPUS = 8


def fill(hours: int, interval_s: int) -> int:
    """Samples as the window keeps them, ending now, for GPUS GPUs on two nodes."""
    from django.utils import timezone

    from health.models import GpuSample
    from health.probes.gpu_probe import record_nodes
    from tests.health.gpu_readings import gpu, node

    now = timezone.now()
    nodes = [node(n * 56, [gpu(i) for i in range(GPUS // 2)], address=f"10.0.0.{k}") for k, n in enumerate("ab", 1)]
    record_nodes({"nodes": nodes, "error": ""}, now)  # the checks, and each GPU's newest sample
    template = GpuSample.objects.first()
    ages = [timedelta(seconds=s) for s in range(interval_s, 3600 + 1, interval_s)]
    ages += [timedelta(minutes=m) for m in range(65, hours * 60 + 1, 5)]
    rows = [
        GpuSample(
            node_id=n["node_id"], gpu_index=g["index"], uuid=g["uuid"], name=g["name"], at=now - age,
            utilization_percent=(k * 7) % 100, memory_used_bytes=g["memory_used_bytes"], memory_total_bytes=g["memory_total_bytes"],
            temperature_c=40 + k % 40, power_w=300 + k % 300, details=template.details, xids=[{"xid": 13, "at": 0.0}] if k == 100 else [],
        )
        for n in nodes for g in n["gpus"] for k, age in enumerate(ages)
    ]
    GpuSample.objects.bulk_create(rows, batch_size=2000)
    return GpuSample.objects.count()


def cycle_costs(cycles: int) -> tuple[dict[str, list[float]], list[float]]:
    from django.conf import settings

    from health.cycle import all_probes, run_cycle
    from tests.health.gpu_readings import gpu, node
    from tests.serving.fake_serve import reset_shared

    settings.GANTRY_SERVE_CLIENT = "tests.serving.fake_serve.shared_fake"
    fake = reset_shared()
    fake.gpu_readings = [node(n * 56, [gpu(i) for i in range(GPUS // 2)]) for n in "ab"]
    by_kind: dict[str, list[float]] = defaultdict(list)
    totals = []
    for _ in range(cycles):
        results = run_cycle(all_probes())
        kinds: dict[str, float] = defaultdict(float)
        for result in results:
            kinds[result.probe.kind] += result.cost_ms
        for kind, cost in kinds.items():
            by_kind[kind].append(cost)
        totals.append(sum(kinds.values()))
    return by_kind, totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cycles", type=int, default=10)
    args = parser.parse_args()
    setup_django(os.environ.get("DATABASE_URL"))

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    admin = get_user_model().objects.create_user("bench-admin", password="x", is_staff=True)
    client = Client()
    client.force_login(admin)
    hours, interval = settings.GANTRY_HEALTH_GPU_SAMPLES_HOURS, settings.GANTRY_HEALTH_INTERVAL_S
    print(f"database: {connection.vendor}; {args.repeats} requests per figure; the ratio is against the empty panel\n")
    print(f"{'panel':<44} {'samples':>8} {'queries':>8} {'bytes':>9} {'p50 ms':>8} {'p95 ms':>8} {'ratio':>7}")
    pages = {"/health/ (page)": {}, "/health/ (htmx partial)": {"HTTP_HX_REQUEST": "true"}}
    baseline = {}
    for label, headers in pages.items():
        client.get("/health/", **headers)
    for label, headers in pages.items():
        client.defaults.update(headers)
        queries, size, p50, p95 = measure(client, "/health/", args.repeats)
        baseline[label] = p50
        print(f"{'empty, ' + label:<44} {0:>8} {queries:>8} {size:>9} {p50:>8.1f} {p95:>8.1f} {1:>6.2f}x")
        for key in headers:
            client.defaults.pop(key)
    samples = fill(hours, interval)
    for label, headers in pages.items():
        client.defaults.update(headers)
        queries, size, p50, p95 = measure(client, "/health/", args.repeats)
        print(f"{f'{GPUS} GPUs x {hours} h, ' + label:<44} {samples:>8} {queries:>8} {size:>9} {p50:>8.1f} {p95:>8.1f} {p50 / baseline[label]:>6.2f}x")
        for key in headers:
            client.defaults.pop(key)

    started = time.process_time()
    by_kind, totals = cycle_costs(args.cycles)
    wall_cpu = (time.process_time() - started) * 1000 / args.cycles
    print(f"\nprobe cycle, {args.cycles} cycles, {GPUS} GPUs on 2 nodes (FakeServe), CPU time as the probes record it:")
    for kind, costs in sorted(by_kind.items()):
        print(f"  {kind:<10} median {statistics.median(costs):8.2f} ms")
    median = statistics.median(totals)
    print(f"  {'cycle':<10} median {median:8.2f} ms = {100 * median / (interval * 1000):.3f} % of one core every {interval} s")
    print(f"  (this process's CPU per cycle, threads and recording included: {wall_cpu:.2f} ms)")


if __name__ == "__main__":
    main()
