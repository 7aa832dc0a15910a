"""Estimate vs actual after a deploy: VramObservation.record on NVML readings in the shape the GPU
agent returns (tests/health/gpu_readings.py's stand-in, this machine has no GPU), where the replica's
PIDs are known, and the model's page showing the error. The real measurement needs a GPU machine."""
from __future__ import annotations

import pytest

from serving.models import VramObservation
from serving.vram_fit import GIB
from tests.health.gpu_readings import gpu, node
from tests.serving.factories import create_model
from tests.serving.test_pages import text_of
from tests.serving.test_vram_fit import llama_8b, rows

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "fake_serve", "gpu_engine")]

NODE = "a" * 56
REPLICA, ENGINE, STRANGER = 4242, 4243, 5000


def reading(engine_bytes=73 * GIB + GIB // 2, *, figures=True):
    """One H100 (80 GiB) holding the replica's actor and vLLM engine, and a process that is neither."""
    processes = [
        {"pid": REPLICA, "name": "ray::ServeReplica:alice-big:LLMServer:alice-big", "used_bytes": GIB // 2 if figures else None, "kind": "compute"},
        {"pid": ENGINE, "name": "VLLM::EngineCore", "used_bytes": engine_bytes if figures else None, "kind": "compute"},
        {"pid": STRANGER, "name": "python3", "used_bytes": 1 * GIB, "kind": "compute"},
    ]
    return [node(NODE, gpus=[gpu(0, memory_used_bytes=75 * GIB, processes=processes)])]


@pytest.fixture
def model(alice, roots):
    llama_8b(roots / "hf" / "llama-8b")
    return create_model(alice, "big", source="$HOME/common/hf/llama-8b", gpus_per_replica=1,
                        engine_kwargs="{max_model_len: 8192, max_num_seqs: 16}")


def test_it_records_the_estimate_beside_what_the_replicas_processes_hold(model):
    observation = VramObservation.record(model, reading(), {(NODE, REPLICA), (NODE, ENGINE)})

    # The actor's 0.5 GiB + the engine's 73.5 GiB; the stranger's 1 GiB is not the replica's.
    assert observation.measured_bytes == 74 * GIB
    # vLLM's share, 0.92 × 80 GiB = 79,027,398,247 bytes, is above the 33.0 GiB need: it is the estimate.
    assert observation.estimated_bytes == 79_027_398_247 and observation.need_bytes == 35_387_875_328
    assert observation.error_percent == -0.5  # 73.6 / 74 − 1
    assert (observation.generation, observation.gpu_name, observation.gpu_total_bytes) == (model.generation, "NVIDIA H100 80GB HBM3", 80 * GIB)
    assert observation.terms["kv_cache"] == 16 * GIB and observation.terms["max_num_seqs"] == 16
    assert observation.gpus == [{"node_id": NODE, "index": 0, "measured_bytes": 74 * GIB}]


def test_the_first_observation_of_a_generation_stays(model):
    first = VramObservation.record(model, reading(), {(NODE, REPLICA), (NODE, ENGINE)})
    again = VramObservation.record(model, reading(engine_bytes=10 * GIB), {(NODE, REPLICA), (NODE, ENGINE)})
    assert again.pk == first.pk and again.measured_bytes == 74 * GIB
    assert VramObservation.objects.filter(model=model).count() == 1


def test_nothing_is_recorded_without_a_figure_for_the_replicas_processes(model):
    assert VramObservation.record(model, reading(figures=False), {(NODE, REPLICA), (NODE, ENGINE)}) is None
    assert VramObservation.record(model, reading(), {("another-node", ENGINE)}) is None
    assert not VramObservation.objects.exists()


def test_cpu_replicas_are_not_observed(alice, roots):
    llama_8b(roots / "hf" / "llama-8b")
    cpu = create_model(alice, "cpu", source="$HOME/common/hf/llama-8b", gpus_per_replica=0)
    assert VramObservation.record(cpu, reading(), {(NODE, ENGINE)}) is None


def test_the_models_page_shows_estimate_measured_and_the_error(alice_client, model):
    VramObservation.record(model, reading(), {(NODE, REPLICA), (NODE, ENGINE)})

    response = alice_client.get(f"/serving/{model.model_key}")

    assert response.status_code == 200
    assert "estimate vs measured" in text_of(response.text, "vram-observations-title")
    [row] = rows(response.text, "vram-observation-rows")
    assert row == [str(model.generation), "NVIDIA H100 80GB HBM3 (80.0 GiB)", "73.6 GiB", "74.0 GiB", "-0.5 %", "33.0 GiB"]


def test_a_model_without_observations_shows_no_table(alice_client, model):
    response = alice_client.get(f"/serving/{model.model_key}")
    assert response.status_code == 200 and 'id="vram-observations"' not in response.text


def test_the_replicas_processes_are_its_actors_their_placement_group_and_what_they_started():
    from serving.vram_fit import replica_processes

    actors = [
        {"node_id": NODE, "pid": REPLICA, "class_name": "ServeReplica:alice-big:LLMServer:alice-big", "placement_group_id": "pg1"},
        {"node_id": NODE, "pid": 6001, "class_name": "RayWorkerWrapper", "placement_group_id": "pg1"},  # a tensor-parallel worker
        {"node_id": NODE, "pid": 7000, "class_name": "ServeReplica:bob-other:LLMServer:bob-other", "placement_group_id": "pg2"},
    ]
    processes = [
        {"pid": ENGINE, "name": "VLLM::EngineCore", "used_bytes": 70 * GIB, "parents": [REPLICA, 100, 1]},
        {"pid": 6001, "name": "ray::RayWorkerWrapper", "used_bytes": 70 * GIB, "parents": [100]},
        {"pid": 7001, "name": "VLLM::EngineCore", "used_bytes": 70 * GIB, "parents": [7000, 100]},
        {"pid": STRANGER, "name": "python3", "used_bytes": 1 * GIB, "parents": [1]},
    ]
    nodes = [node(NODE, gpus=[gpu(0, processes=processes[:2]), gpu(1, processes=processes[2:])])]
    assert replica_processes("alice-big", actors, nodes) == {(NODE, ENGINE), (NODE, 6001)}
    # The same PID on another node is another process.
    assert replica_processes("alice-big", actors, [node("b" * 56, gpus=[gpu(0, processes=processes[:1])])]) == set()


def test_a_gpu_model_that_reaches_running_is_observed_off_the_tick(model, fake_serve, django_capture_on_commit_callbacks, monkeypatch):
    from serving import tasks
    from serving.choices import State
    from serving.reconciler import reconcile

    sent = []
    monkeypatch.setattr(tasks.observe_vram, "apply_async", lambda args, queue: sent.append((args, queue)))
    with django_capture_on_commit_callbacks(execute=True):
        reconcile(fake_serve)  # applies
        reconcile(fake_serve)  # Serve says RUNNING
    model.refresh_from_db()
    assert model.state == State.RUNNING
    assert sent == [((model.pk, model.generation), "health")], "the observation ran in the tick, or not at all"

    # What the health worker then does: Ray's actors, each node's GPU processes and NVML's reading.
    fake_serve.actors = [{"node_id": NODE, "pid": REPLICA, "class_name": f"ServeReplica:{model.model_key}:LLMServer", "placement_group_id": "pg1"}]
    fake_serve.process_readings = [{"node_id": NODE, "gpus": [{"index": 0, "processes": [
        {"pid": REPLICA, "parents": []}, {"pid": ENGINE, "parents": [REPLICA]}, {"pid": STRANGER, "parents": [1]},
    ]}]}]
    fake_serve.gpu_readings = reading()
    assert tasks.observe_vram.run(model.pk, model.generation) == {"model": model.pk, "observed": True}
    assert VramObservation.objects.get(model=model).measured_bytes == 74 * GIB


def test_a_cpu_model_that_reaches_running_is_not_observed(alice, roots, fake_serve, django_capture_on_commit_callbacks, monkeypatch, settings):
    from serving import tasks
    from serving.reconciler import reconcile

    settings.GANTRY_ENGINE = "cpu"
    llama_8b(roots / "hf" / "llama-8b")
    cpu = create_model(alice, "cpu", source="$HOME/common/hf/llama-8b", gpus_per_replica=0)
    sent = []
    monkeypatch.setattr(tasks.observe_vram, "apply_async", lambda args, queue: sent.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        reconcile(fake_serve)
        reconcile(fake_serve)
    cpu.refresh_from_db()
    assert cpu.state == "RUNNING" and sent == []
