"""The topology's PostgreSQL crashes (SIGKILL of its whole process tree) and starts again.

While it is down every request that needs it gets a clean 503 — JSON under /api/, a short page
elsewhere, never a 500 or a traceback — /readyz says 503 and /healthz still 200 (the process is
alive; a load balancer must not restart it). A change asked for meanwhile is refused, so nothing
is half-recorded. Once it is back, the same gunicorn and Celery processes — none restarted — answer
every request (kept connections are health-checked before use) and the reconciler ticks again.

The worst moment for it is mid-apply: Serve has the change, the database is gone before the tick
records it. That tick cannot release the reconciler's lease while the database is down; it keeps
trying and lets go once it is back, so the change is recorded on beat's next tick rather than a
lease TTL (2 min) later, once.
"""
from __future__ import annotations

import signal
import time

import pytest

from tests.faults.topology import LEASE_TTL_S, MODELS, elapsed
from tests.ray_cluster import process_tree, wait_for

pytestmark = [pytest.mark.slow]

GANTRY_PROCESSES = ("web-1", "web-2", "worker-1", "worker-2", "beat")


def test_requests_during_a_database_outage_get_503_and_gantry_recovers_without_restarting(topology, model):
    key = model["key"]
    generation = topology.model(key)["generation"]
    pids = {name: topology.pid(name) for name in GANTRY_PROCESSES}
    for web in (0, 1):  # every gunicorn process holds kept connections now
        assert topology.request("GET", MODELS, web=web).status == 200

    topology.kill("postgres", signal.SIGKILL)
    down = time.monotonic()
    refused = 0
    for web in (0, 1):
        for path in (MODELS, f"{MODELS}/{key}"):
            response = topology.request("GET", path, web=web)
            assert response.status == 503, response
            assert response.json()["error"]["code"] == "database_unavailable"
        page = topology.request("GET", "/serving/", web=web)
        assert page.status == 503 and "Traceback" not in str(page.body) and "Database unavailable" in str(page.body), page
        ready = topology.request("GET", "/readyz", web=web, token=False)
        assert ready.status == 503 and ready.json()["checks"]["database"] == {"ok": False}
        assert topology.request("GET", "/healthz", web=web, token=False).status == 200
        change = topology.request("PATCH", f"{MODELS}/{key}", {"num_replicas": 2}, web=web)
        assert change.status == 503, change
        refused += 1

    topology.cluster("up")  # PostgreSQL alone is down: only it starts
    print(f"PostgreSQL down for {elapsed(down)}")
    back = time.monotonic()
    for web in (0, 1):
        statuses = [topology.request("GET", MODELS, web=web).status for _ in range(12)]
        assert statuses == [200] * 12, statuses  # the first request after the outage included
    assert topology.request("GET", "/readyz", web=0, token=False).status == 200

    def ticked() -> bool:
        (read_at,) = topology.sql("SELECT read_at >= now() - interval '5 seconds' FROM serving_clustersnapshot")[0]
        return read_at
    wait_for("a reconcile tick after the outage", ticked, 90, 1)
    print(f"reconciler ticking again {elapsed(back)} after PostgreSQL returned")
    assert {name: topology.pid(name) for name in GANTRY_PROCESSES} == pids, "a Gantry process was restarted"
    current = topology.model(key)
    assert current["generation"] == generation and current["num_replicas"] == 1, "a refused change was recorded"
    print(f"submitted=0 (refused with 503: {refused}) applied=0 lost=0")


def test_postgresql_dying_mid_apply_costs_the_outage_not_a_lease_ttl_and_the_change_is_applied_once(topology, model):
    key = model["key"]
    pause = topology.dir / "pause-apply"  # tests/faults/pausable_client.py holds the apply there
    pause.write_text("")
    try:
        generation = topology.scale(key, 2)
        wait_for("a worker to be mid-apply", lambda: pause.read_text().strip(), 120, 0.1)
        pid = int(pause.read_text())
        assert any(pid in process_tree(topology.pid(name)) for name in ("worker-1", "worker-2"))
        topology.kill("postgres", signal.SIGKILL)
        down = time.monotonic()
    finally:
        pause.unlink(missing_ok=True)  # the apply goes on and meets the database gone
    time.sleep(5)
    topology.cluster("up")
    print(f"PostgreSQL killed mid-apply (worker pid {pid}), down for {elapsed(down)}")
    back = time.monotonic()

    wait_for("the change to be applied", lambda: topology.applies_per_generation(key).get(generation), LEASE_TTL_S + 120, 1)
    took = time.monotonic() - back
    print(f"applied {took:.1f} s after PostgreSQL returned (lease TTL {LEASE_TTL_S} s)")
    assert took < LEASE_TTL_S - 30, "the lease the cut-short tick held was waited out"
    assert topology.serve_target(model["model_id"]) == 2

    restored = topology.scale(key, 1)  # back to one replica rather than wait for a second to start
    topology.settle(key, restored, 1)
    counts = topology.count_changes(key, [generation, restored])
    assert counts == {"submitted": 2, "applied": 2, "lost": 0, "duplicated": 0}
