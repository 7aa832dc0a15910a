"""One production topology (bin/gantry-cluster) for the whole folder, one model served on it.

Bringing the topology up costs a minute or two and a model reaching RUNNING another one or two on
this machine, so the folder shares both and runs as one story, in the order below: the topology
test deploys the model, each fault test breaks one piece and leaves the model RUNNING with one
replica, and the topology's delete test ends it. The cluster is torn down whatever happened.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from tests.faults.topology import MODELS, SERVE_CALL_TIMEOUT_S, Topology
from tests.ray_cluster import engine_shared_memory, unused_shared_memory

# The story's order (module, then the topology's delete test last of all).
ORDER = [
    "test_topology.py",
    "test_redis_restart.py",
    "test_worker_killed.py",
    "test_task_redelivered.py",
    "test_postgres_restart.py",
    "test_ray_node_lost.py",
    "test_ray_head_restart.py",
]


def pytest_collection_modifyitems(items):
    def position(item):
        path = Path(str(item.fspath))
        if path.parent != Path(__file__).parent:
            return (-1, 0)  # not ours: left where it was, before ours
        last = path.name == "test_topology.py" and item.name.startswith("test_deleting")
        return (len(ORDER) if last else ORDER.index(path.name) if path.name in ORDER else len(ORDER) - 1, 0)

    ours = [item for item in items if Path(str(item.fspath)).parent == Path(__file__).parent]
    if ours:
        others = [item for item in items if item not in ours]
        items[:] = others + sorted(ours, key=position)


@pytest.fixture(scope="session")
def topology(tiny_model):
    """bin/gantry-cluster up in a fresh directory (short: Ray's socket paths live under it); down
    at the end. The model folder lies on this machine, so both Ray nodes read it as the shared HF root."""
    directory = Path(tempfile.mkdtemp(prefix="gf-", dir=os.environ.get("GANTRY_FAULTS_TMP", "/tmp")))
    env = {
        **os.environ,
        "GANTRY_HF_ROOT": str(tiny_model.parent),
        "GANTRY_USERS_ROOT": str(directory / "users"),
        "GANTRY_DATASETS_ROOT": str(directory / "datasets"),
        "GANTRY_ENGINE": "cpu",
        # Production's error pages, not Django's debug traceback.
        "DEBUG": "0",
        # The lease outlives 2 × this + 30 s: a worker killed holding it blocks the others for 120 s,
        # not production's 150 s. Not lower: a fresh worker process's first apply imports vLLM,
        # which takes 20-40 s on a loaded 2-core machine.
        "GANTRY_SERVE_CALL_TIMEOUT_S": str(SERVE_CALL_TIMEOUT_S),
        "GANTRY_SERVE_CLIENT": "tests.faults.pausable_client.PausableApplyClient",
        "GANTRY_FAULTS_PAUSE_FILE": str(directory / "pause-apply"),
    }
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "RAY_ADDRESS", "RAY_DASHBOARD_URL", "GANTRY_SERVE_PORT", "MLFLOW_TRACKING_URI", "GANTRY_VAR_DIR"):
        env.pop(name, None)  # the cluster's own, never the machine's shared services
    topo = Topology(directory, env)
    shared_memory_before = engine_shared_memory()
    started = time.monotonic()
    try:
        print(topo.cluster("up"))
        print(f"topology up in {time.monotonic() - started:.1f} s")
        out = topo.manage(
            "shell", "-c",
            "from django.contrib.auth.models import User; from dashboard.models import ApiToken; "
            "u = User.objects.create_user('faults', 'faults@example.test', 'correct-horse-battery-staple'); "
            "print('TOKEN', ApiToken.issue(u, 'faults')[1])",
        )
        topo.token = next(line.split()[1] for line in out.splitlines() if line.startswith("TOKEN "))
        yield topo
    finally:
        stopped = time.monotonic()
        print(topo.cluster("down") if (directory / "cluster.json").exists() else "nothing to stop")
        # vLLM leaves its shared-memory ring buffers behind when a replica is killed (as RayHead.stop).
        for segment in unused_shared_memory(engine_shared_memory() - shared_memory_before):
            segment.unlink(missing_ok=True)
        print(f"topology down in {time.monotonic() - stopped:.1f} s; {time.monotonic() - started:.1f} s in all; logs in {directory / 'log'}")


@pytest.fixture(scope="session")
def served(topology):
    """The tiny model, created through the first gunicorn and RUNNING (as the second one reports)
    with one replica; the topology test checks where it runs and the last test deletes it."""
    started = time.monotonic()
    spec = "model_id: faults\nmodel_source: $HOME/common/hf/tiny-llama\nnum_replicas: 1\n"
    response = topology.request("POST", MODELS, spec, web=0)
    assert response.status == 202, response
    created = response.json()
    model = topology.wait_for_state(created["model_key"], "RUNNING", num_replicas=1)
    print(f"{created['model_id']} RUNNING {time.monotonic() - started:.1f} s after it was created")
    return {"key": created["model_key"], "model_id": created["model_id"], "created_generation": created["generation"], "first": model}


@pytest.fixture
def model(topology, served):
    """The served model as it is now; each fault test must leave it RUNNING with one replica."""
    yield served
    # The next test starts from a RUNNING model with one replica, whatever this one left: one that
    # failed midway may have left its change behind, which nobody else would undo.
    if topology.model(served["key"])["num_replicas"] != 1:
        topology.scale(served["key"], 1)
    topology.wait_for_state(served["key"], "RUNNING", num_replicas=1)
