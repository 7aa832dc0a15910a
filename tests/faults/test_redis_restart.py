"""Redis (the broker; the topology's own, without persistence) stops and comes back empty.

Meanwhile the pages and the API keep serving from PostgreSQL, /readyz says 503 on every web
process, and a change a user submits is accepted and recorded even though its reconcile message
cannot be sent. After Redis returns — empty: every queued message is gone — beat's periodic
reconcile applies that change, exactly once.
"""
from __future__ import annotations

import signal
import time

import pytest

from tests.faults.topology import MODELS, elapsed
from tests.ray_cluster import wait_for

pytestmark = [pytest.mark.slow]


def test_changes_made_while_redis_is_down_are_applied_once_after_it_returns(topology, model):
    key = model["key"]
    topology.kill("redis", signal.SIGKILL)
    stopped = time.monotonic()

    for web in (0, 1):
        assert topology.request("GET", MODELS, web=web).status == 200
        assert topology.request("GET", f"{MODELS}/{key}", web=web).status == 200
        ready = topology.request("GET", "/readyz", web=web, token=False)
        assert ready.status == 503 and ready.json()["checks"]["broker"] == {"ok": False}, ready
        assert ready.json()["checks"]["database"] == {"ok": True}
    asked = time.monotonic()
    generation = topology.scale(key, 2)  # 202, not a 500: the enqueue failing loses nothing
    print(f"PATCH while Redis is down answered in {elapsed(asked)}")
    assert topology.model(key)["num_replicas"] == 2
    time.sleep(3)  # long enough for a message, had one been sent, to be applied
    assert topology.applies_per_generation(key).get(generation, 0) == 0

    topology.cluster("up")  # starts the one piece that is down, on its old port
    print(f"Redis down for {elapsed(stopped)}")
    for web in (0, 1):
        wait_for("/readyz to say ready again", lambda: topology.request("GET", "/readyz", web=web, token=False).status == 200, 60)

    back = time.monotonic()
    wait_for("the change to be applied", lambda: topology.applies_per_generation(key).get(generation), 180, 1)
    print(f"applied {elapsed(back)} after Redis returned")
    assert topology.serve_target(model["model_id"]) == 2  # Serve has it (a replica starts: minutes here)
    counts = topology.count_changes(key, [generation])
    assert counts["lost"] == 0 and counts["duplicated"] == 0 and counts["applied"] == 1

    # Back to one replica for the next test, through the broker as usual.
    again = topology.scale(key, 1)
    topology.settle(key, again, 1)
    assert topology.count_changes(key, [generation, again])["lost"] == 0
