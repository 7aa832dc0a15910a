"""A Celery worker is SIGKILLed mid-apply: after Serve took the change, before the database
recorded it — the worst moment (tests/faults/pausable_client.py holds the apply there, at the
client's edge, so the kill lands there every run).

The dead worker still holds the reconciler's lease, so nobody else may apply until it expires
(2 × GANTRY_SERVE_CALL_TIMEOUT_S + 30 s); then the other worker's next tick (beat sends one every
10 s) takes the lease, finds the model's applied config stale, applies it again — a no-op for
Serve, which has it — and records it. The change is applied once, the model is not left DEPLOYING.
"""
from __future__ import annotations

import time

import pytest

from tests.faults.topology import LEASE_TTL_S, elapsed
from tests.ray_cluster import process_tree, wait_for

pytestmark = [pytest.mark.slow]


def test_a_worker_killed_mid_apply_is_taken_over_after_the_lease_and_applies_once(topology, model):
    key = model["key"]
    target = 2  # from one replica (the fixture leaves it so): applying it takes milliseconds
    pause = topology.dir / "pause-apply"
    pause.write_text("")
    try:
        generation = topology.scale(key, target)
        wait_for("a worker to be mid-apply", lambda: pause.read_text().strip(), 120, 0.1)
        pid = int(pause.read_text())
        (worker,) = [name for name in ("worker-1", "worker-2") if pid in process_tree(topology.pid(name))]
        killed = topology.kill(worker)
        killed_at = time.monotonic()
    finally:
        pause.unlink(missing_ok=True)
    holder = topology.sql("SELECT holder FROM serving_lease")[0][0]
    print(f"killed {worker} ({len(killed)} processes) while pid {pid} held the lease ({holder}) mid-apply")
    assert f":{pid}:" in holder
    # Serve took the change before the pause (the scale call returned); its details can show the
    # new target a little later on a loaded machine (seen in CI: the old one right after the kill).
    wait_for("Serve to report the change it took", lambda: topology.serve_target(model["model_id"]) == target, 60, 1)
    assert topology.applies_per_generation(key).get(generation, 0) == 0, "the apply was recorded before the kill"
    assert topology.model(key)["generation"] == generation

    wait_for("another worker to apply the change", lambda: topology.applies_per_generation(key).get(generation), LEASE_TTL_S + 120, 1)
    took_over = time.monotonic() - killed_at
    new_holder = topology.sql("SELECT holder FROM serving_lease")[0][0]
    print(f"taken over and applied {took_over:.1f} s after the kill (lease TTL {LEASE_TTL_S} s)")
    assert took_over > LEASE_TTL_S - 30, "someone applied while the dead worker's lease was still valid"
    assert f":{pid}:" not in new_holder
    assert topology.serve_target(model["model_id"]) == target

    # Back to one replica (not waiting minutes for the second to start): the model ends RUNNING.
    back = topology.scale(key, 1)
    topology.settle(key, back, 1)
    counts = topology.count_changes(key, [generation, back])
    assert counts == {"submitted": 2, "applied": 2, "lost": 0, "duplicated": 0}
    stuck = topology.sql("SELECT model_key FROM serving_servemodel WHERE state IN ('DEPLOYING', 'QUEUED')")
    assert stuck == []

    # The killed worker is started again: the topology has two workers for the next test.
    started = time.monotonic()
    topology.cluster("up")
    print(f"{worker} restarted in {elapsed(started)}")
