"""The Ray head of the two-node cluster crashes (SIGKILL of its whole process tree) while a model
runs on the second node, and comes back on the same ports.

Without GCS fault tolerance a restarted head is a new cluster: every Serve application is gone and
the old second node cannot join it, so bin/gantry-cluster up starts the head and a fresh node
(as an operator's `ray start --address` on that machine would). Meanwhile the pages keep serving,
each reconcile tick says Serve is unreachable and changes nothing, and a change a user submits is
recorded. Once the head is back, the workers' Ray drivers reconnect, Serve and the router start
on the same port, the reconciler applies the model (with the change made meanwhile, exactly once),
and the replica lands on the new node and answers through the router.
"""
from __future__ import annotations

import signal
import time

import pytest

from tests.faults.topology import MODELS, elapsed
from tests.ray_cluster import wait_for

pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(1800)  # a new cluster, then a replica started from nothing: minutes on 2 cores
def test_a_restarted_head_loses_serve_and_gantry_applies_the_model_again_with_the_change_made_meanwhile(topology, model):
    key, model_id = model["key"], model["model_id"]
    assert topology.replica_nodes(model_id) == ["ray-node-1"]
    (old_node,) = topology.node_ids("ray-node-1")
    since = topology.last_event_id()

    killed_pids = topology.kill("ray-head", signal.SIGKILL)
    killed = time.monotonic()

    # Down: the pages serve from PostgreSQL, a change is accepted, every tick says why it waits.
    for web in (0, 1):
        assert topology.request("GET", MODELS, web=web).status == 200
    generation = topology.scale(key, 2)
    wait_for(
        "a tick to say Serve is unreachable",
        lambda: any(kind == "SERVE_UNAVAILABLE" for _, kind, _ in topology.events(key, since)), 180, 1,
    )
    print(f"head killed ({len(killed_pids)} processes); SERVE_UNAVAILABLE after {elapsed(killed)}")
    assert topology.applies_per_generation(key).get(generation, 0) == 0
    assert topology.model(key)["state"] == "RUNNING"  # nothing Gantry knows has changed yet

    up = time.monotonic()
    topology.cluster("up")  # the head on its old ports, and the node with it
    (new_node,) = topology.node_ids("ray-node-1")
    assert new_node != old_node
    print(f"head and node back {elapsed(up)} after `up` ({elapsed(killed)} after the kill)")

    wait_for("the change to be applied on the new cluster", lambda: topology.applies_per_generation(key).get(generation), 600, 1)
    print(f"generation {generation} applied {elapsed(up)} after the head returned")
    assert topology.serve_target(model_id) == 2

    back = topology.scale(key, 1)
    topology.settle(key, back, 1, timeout_s=900)
    print(f"{model_id} RUNNING with one replica {elapsed(up)} after the head returned")
    assert topology.replica_nodes(model_id) == ["ray-node-1"]
    assert topology.chat(model_id, "Back?") is not None

    events = topology.printed_events(key, since)
    kinds = [kind for _, kind, _ in events]
    assert "SERVE_UNAVAILABLE" in kinds and kinds[-1] == "RUNNING", kinds
    counts = topology.count_changes(key, [generation, back])
    assert counts == {"submitted": 2, "applied": 2, "lost": 0, "duplicated": 0}
