"""What replicas leave behind on a real Ray head: shared memory in /dev/shm that reap_shared_memory
removes on every node, and a log whose last words failure_cause reads when a deploy fails.

One failing deploy for the module (a folder without weights: vLLM gives up within a minute or two
on two cores); the shared-memory segments are made here, named psm_gantrytest_…, so the test never
depends on what an engine leaked before.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from serving.cluster import RayServeClient
from serving.shm_sweep import reap_shared_memory
from tests.integration.test_ray_serve import llm_config
from tests.ray_cluster import wait_for

pytestmark = pytest.mark.slow

SHM = Path("/dev/shm")
# A process holding a segment the way vLLM's engine does (multiprocessing.shared_memory, mapped).
HOLD_SEGMENT = textwrap.dedent(
    """
    import sys
    from multiprocessing import resource_tracker, shared_memory
    segment = shared_memory.SharedMemory(name=sys.argv[1], create=True, size=1 << 20)
    resource_tracker.unregister(segment._name, "shared_memory")
    print("ready", flush=True)
    sys.stdin.read()
    """
)


@pytest.fixture(scope="module")
def client(ray_head) -> RayServeClient:
    return RayServeClient()


def make_old(path: Path, age_s: float = 300) -> None:
    then = time.time() - age_s
    os.utime(path, (then, then))


@pytest.fixture
def segments():
    """An orphan and a held segment in /dev/shm, both past the grace period; removed afterwards."""
    prefix = f"psm_gantrytest_{uuid.uuid4().hex[:8]}"
    orphan, held = SHM / f"{prefix}_orphan", SHM / f"{prefix}_held"
    orphan.write_bytes(b"\0" * 65536)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SEGMENT, held.name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        make_old(orphan)
        make_old(held)
        yield prefix, orphan, held
    finally:
        holder.kill()
        holder.wait(timeout=10)
        orphan.unlink(missing_ok=True)
        held.unlink(missing_ok=True)


def test_reaping_removes_the_orphan_on_the_node_and_leaves_the_held_segment(client, segments):
    prefix, orphan, held = segments
    started = time.monotonic()
    removed = reap_shared_memory(client)
    print(f"\nreap_shared_memory: {time.monotonic() - started:.2f} s, removed {[item['name'] for item in removed]}")

    (node,) = [n["node_id"] for n in client.cluster_resources().nodes]
    mine = [item for item in removed if item["name"].startswith(prefix)]
    assert [(item["node_id"], item["name"], item["bytes"]) for item in mine] == [(node, orphan.name, 65536)]
    assert mine[0]["age_s"] >= 299
    assert not orphan.exists()
    assert held.exists()
    assert not [item for item in reap_shared_memory(client) if item["name"] == held.name]
    assert held.exists()


@pytest.fixture(scope="module")
def failed_deploy(client, tiny_model):
    """A model whose folder has a config and a tokenizer but no weights, deployed until Serve says
    DEPLOY_FAILED (one replica start: the test needs one failure, not Serve's three tries)."""
    broken = tiny_model.parent / f"no-weights-{uuid.uuid4().hex[:6]}"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model / name, broken / name)
    key = f"alice-202612010000-broken-{uuid.uuid4().hex[:6]}"
    config = llm_config(key, broken)
    config["deployment_config"]["max_constructor_retry_count"] = 1
    client.apply_model(key, config)

    def failed():
        app = client.status().get(key)
        assert app is None or app.status != "RUNNING", "a model without weights started"
        return app if app is not None and app.status == "DEPLOY_FAILED" else None

    app = wait_for(f"{key} DEPLOY_FAILED", failed, 400, every_s=2)
    yield key, broken, app
    client.delete_model(key)
    wait_for(f"{key} gone from Serve", lambda: key not in client.status(), 60, every_s=0.5)


def test_a_failed_deploy_names_the_engines_real_cause(client, failed_deploy):
    key, broken, app = failed_deploy
    # What Serve itself says points elsewhere: the cause is only in the replica's log.
    assert "See root cause above" in app.messages and "model weights" not in app.messages

    started = time.monotonic()
    cause = client.failure_cause(key)
    took = time.monotonic() - started
    print(f"\nfailure_cause in {took:.2f} s: {cause!r}")

    assert cause == f"RuntimeError: Cannot find any model weights with `{broken}`"
    assert took < RayServeClient.FAILURE_CAUSE_TIMEOUT_S
    assert client.failure_cause(key, limit=20) == cause[:19] + "…"


def test_a_model_serve_does_not_know_has_no_cause(client, ray_head):
    assert client.failure_cause("nobody-202612010000-never-deployed") == ""


def test_an_unreachable_cluster_has_no_cause_and_says_so_quickly(settings, caplog):
    from tests.ray_cluster import free_port

    settings.RAY_ADDRESS = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    assert RayServeClient().failure_cause("any-model") == ""
    assert time.monotonic() - started < 5
    assert "could not read why any-model failed" in caplog.text
