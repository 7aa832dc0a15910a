"""Gantry in its production shape — own PostgreSQL and Redis, MLflow on PostgreSQL, two gunicorn
processes, two Celery workers, beat, a two-node Ray cluster — deploys the demo model through the API
of one web process, reports it through the other, places its replica on the second Ray node (the
head is too small for one, as a GPU-less head would be), answers through Serve's OpenAI endpoint,
and deletes it. The fault tests run in between (tests/faults/conftest.py orders them)."""
from __future__ import annotations

import json
import urllib.request

import pytest

from tests.faults.topology import MODELS

pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(900)  # the topology (or a model on a replaced node) takes minutes on a loaded machine
def test_every_piece_answers(topology):
    info = topology.info
    assert set(info["pieces"]) == {"postgres", "redis", "mlflow", "ray-head", "ray-node-1", "web-1", "web-2", "worker-1", "worker-2", "beat"}
    assert len({piece["pid"] for piece in info["pieces"].values()}) == 10, info["pieces"]
    assert topology.web[0] != topology.web[1]
    for web in (0, 1):
        ready = topology.request("GET", "/readyz", web=web, token=False)
        assert ready.status == 200 and ready.json()["status"] == "ready", ready
    with urllib.request.urlopen(f"{info['env']['MLFLOW_TRACKING_URI']}/health", timeout=10) as response:
        assert response.status == 200
    assert sorted(topology.node_names().values()) == ["gantry-head", "ray-node-1"]
    # Re-running `up` on a running cluster changes nothing.
    before = {name: piece["pid"] for name, piece in info["pieces"].items()}
    topology.cluster("up")
    assert {name: piece["pid"] for name, piece in topology.info["pieces"].items()} == before


@pytest.mark.timeout(1200)  # the topology (or a model on a replaced node) takes minutes on a loaded machine
def test_the_demo_model_deploys_on_the_second_node_and_answers(topology, served):
    key, model_id = served["key"], served["model_id"]
    # Created through web-1; web-2 (another gunicorn, the same database) reports it RUNNING.
    seen = topology.model(key, web=1)
    assert seen["state"] == "RUNNING" and seen["model_id"] == model_id
    assert seen["serve_status"]["deployments"], seen["serve_status"]
    listed = topology.request("GET", MODELS, web=0).json()["items"]
    assert [m["model_key"] for m in listed] == [key]

    nodes = topology.replica_nodes(model_id)
    print(f"{model_id}: replica(s) on {nodes}")
    assert nodes == ["ray-node-1"], nodes

    assert topology.chat(model_id, "Hello") is not None
    counts = topology.count_changes(key, [served["created_generation"]])
    assert counts == {"submitted": 1, "applied": 1, "lost": 0, "duplicated": 0}


def test_deleting_the_model_ends_with_deleted_and_serve_without_it(topology, served):
    key, model_id = served["key"], served["model_id"]
    # The whole story's count: each fault test settled every change it made, so every generation a
    # user submitted was applied, and none twice, whatever broke meanwhile.
    generation = topology.model(key)["generation"]
    counts = topology.count_changes(key, list(range(served["created_generation"], generation + 1)))
    assert counts["lost"] == 0 and counts["duplicated"] == 0, counts

    response = topology.request("DELETE", f"{MODELS}/{key}", web=0)
    assert response.status == 202, response
    topology.wait_for_state(key, "DELETED", timeout_s=180)
    with urllib.request.urlopen(f"{topology.serve_url}/models", timeout=30) as answer:
        listed = [m["id"] for m in json.load(answer)["data"]]
    assert model_id not in listed
    assert topology.replica_nodes(model_id) == []
    print("delete: submitted=1 applied=1 lost=0 (DELETED, and Serve lists it nowhere)")
