"""The second Ray node — the one hosting the model's replica — is lost (SIGKILL of its whole
process tree, as a machine that dies), and a replacement joins (`ray start --address`, as a new
machine would; bin/gantry-cluster up starts it).

Serve notices the replica is gone and reports the application UNHEALTHY; Gantry moves the model
from RUNNING to DEPLOYING and says so in its events, naming the machine that went (NODE_LOST).
The head has too few CPUs for a replica, so it waits for the replacement node; Serve places the
replica there itself, and the model returns to RUNNING with nothing re-applied by Gantry and no
change lost.
"""
from __future__ import annotations

import signal
import time

import pytest

from tests.faults.topology import elapsed
from tests.ray_cluster import wait_for

pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(1500)  # the topology (or a model on a replaced node) takes minutes on a loaded machine
def test_losing_the_node_that_hosts_the_replica_and_replacing_it_brings_the_model_back(topology, model):
    key, model_id = model["key"], model["model_id"]
    assert topology.replica_nodes(model_id) == ["ray-node-1"]
    (lost,) = topology.node_ids("ray-node-1")
    revisions = topology.sql("SELECT count(*) FROM serving_serverevision WHERE model_key = %s", key)[0][0]
    since = topology.last_event_id()

    topology.kill("ray-node-1", signal.SIGKILL)
    killed = time.monotonic()
    topology.wait_for_state(key, "DEPLOYING", timeout_s=180)
    print(f"Gantry says DEPLOYING {elapsed(killed)} after the node was killed")

    topology.cluster("up")  # the replacement node
    # Serve can call the replica unhealthy before Ray declares its node dead (missed heartbeats):
    # the lost node may still be listed ALIVE beside its replacement for a while (seen in CI).
    wait_for("the replacement node to be listed", lambda: topology.node_ids("ray-node-1") - {lost}, 120, 1)
    (replacement,) = topology.node_ids("ray-node-1") - {lost}
    print(f"replacement node joined {elapsed(killed)} after the kill")

    topology.wait_for_state(key, "RUNNING", num_replicas=1, timeout_s=600)
    print(f"{model_id} RUNNING again {elapsed(killed)} after the kill")
    assert topology.replica_nodes(model_id) == ["ray-node-1"]
    assert topology.chat(model_id, "Still there?") is not None

    events = topology.printed_events(key, since)
    kinds = [kind for _, kind, _ in events]
    left = next(i for i, (_, kind, message) in enumerate(events) if kind == "SERVE_STATUS" and "UNHEALTHY" in message)
    assert "RUNNING" in kinds[left:], kinds
    # The machine is named, from Ray's own record of the dead node (not Serve's "a replica died").
    (said,) = [message for _, kind, message in events if kind == "NODE_LOST"]
    assert "Ray lost node ray-node-1" in said and lost[:12] in said, said
    assert topology.sql("SELECT count(*) FROM serving_serverevision WHERE model_key = %s", key)[0][0] == revisions
    print("submitted=0 applied=0 lost=0 (Serve rescheduled the replica; Gantry re-applied nothing)")
