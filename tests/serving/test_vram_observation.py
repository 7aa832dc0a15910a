"""Estimate vs actual after a deploy (serving/vram_observations.py): each term the estimate gives scored
against what vLLM logged when the replica started (a real vLLM 0.19 log from the reference cases), and
NVML's reading of the replica's processes (in the shape the GPU agent returns; tests/health/
gpu_readings.py's stand-in, this machine has no GPU) beside vLLM's share, which is all it can check."""
from __future__ import annotations

import pytest

import json
from pathlib import Path

from serving.models import VramObservation
from serving.vram_fit import GIB
from serving.vram_observations import record
from tests.health.gpu_readings import gpu, node
from tests.serving.factories import create_model
from tests.serving.test_pages import text_of
from tests.serving.test_vram_fit import llama_8b, rows

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "fake_serve", "gpu_engine")]

NODE = "a" * 56
REPLICA, ENGINE, STRANGER = 4242, 4243, 5000


# vLLM 0.19 starting Llama-3.1-8B-Instruct on an H100 of 79.19 GiB at gpu_memory_utilization 0.95 and
# max_model_len 8192 (the case cites the log: llm-d-planner PR #205).
CASE = json.loads((Path(__file__).parent / "vram_reference" / "cases" / "llama-3.1-8b-instruct-h100-tp1-v0.19.json").read_text())
H100_TOTAL = int(CASE["gpu"]["total_gib"] * GIB)
STARTUP_LOG = "INFO 04-14 10:00:00 [core.py:93] Initializing a V1 LLM engine (v0.19.0)\n" + CASE["quote"] + "\nINFO Application startup complete.\n"


def reading(engine_bytes=73 * GIB + GIB // 2, *, figures=True):
    """One H100 (79.19 GiB) holding the replica's actor and vLLM engine, and a process that is neither."""
    processes = [
        {"pid": REPLICA, "name": "ray::ServeReplica:alice-big:LLMServer:alice-big", "used_bytes": GIB // 2 if figures else None, "kind": "compute"},
        {"pid": ENGINE, "name": "VLLM::EngineCore", "used_bytes": engine_bytes if figures else None, "kind": "compute"},
        {"pid": STRANGER, "name": "python3", "used_bytes": 1 * GIB, "kind": "compute"},
    ]
    return [node(NODE, gpus=[gpu(0, memory_total_bytes=H100_TOTAL, memory_used_bytes=75 * GIB, processes=processes)])]


@pytest.fixture
def model(alice, roots):
    llama_8b(roots / "hf" / "llama-8b")
    return create_model(alice, "big", source="$HOME/common/hf/llama-8b", gpus_per_replica=1,
                        engine_kwargs="{max_model_len: 8192, gpu_memory_utilization: 0.95}")


def test_it_scores_the_weights_and_kv_terms_against_what_vllm_logged(model):
    observation = record(model, reading(), {(NODE, REPLICA), (NODE, ENGINE)}, STARTUP_LOG)

    assert observation.logged == {"weights_bytes": round(14.99 * GIB), "kv_available_bytes": round(58.11 * GIB), "kv_tokens": 476_016,
                                  "max_model_len": 8192, "concurrency": 58.11, "device": "GPU"}
    weights, memory, tokens = observation.scores
    assert (weights["term"], weights["estimated"], weights["logged"]) == ("weights", "15.0 GiB", "15.0 GiB")
    assert weights["error_percent"] == -0.2  # the headers' 14.96 GiB against vLLM's 14.99
    assert memory["term"] == "KV cache memory" and tokens["term"] == "KV cache tokens" and tokens["logged"] == "476,016"
    # vLLM 0.19 captured CUDA graphs outside the share; the 0.32 rule takes them from it: 96 MiB, 0.2 %.
    assert -1.0 < tokens["error_percent"] < 0
    assert observation.terms["kv_tokens"] == int(tokens["estimated"].replace(",", ""))


def test_nvml_is_compared_with_vllms_share_not_with_the_terms(model):
    observation = record(model, reading(), {(NODE, REPLICA), (NODE, ENGINE)}, STARTUP_LOG)

    # The actor's 0.5 GiB + the engine's 73.5 GiB; the stranger's 1 GiB is not the replica's.
    assert observation.measured_bytes == 74 * GIB
    assert observation.estimated_bytes == -(-H100_TOTAL * 95 // 100)  # ceil(0.95 × total): what vLLM takes
    assert observation.share_error_percent == round(100 * (observation.estimated_bytes - 74 * GIB) / (74 * GIB), 1)
    assert (observation.generation, observation.gpu_name, observation.gpu_total_bytes) == (model.generation, "NVIDIA H100 80GB HBM3", H100_TOTAL)
    assert observation.gpus == [{"node_id": NODE, "index": 0, "measured_bytes": 74 * GIB}]


def test_without_vllms_start_in_the_log_nothing_is_scored(model):
    observation = record(model, reading(), {(NODE, REPLICA), (NODE, ENGINE)}, "INFO Application startup complete.\n")
    assert observation.logged == {} and observation.scores == []


def test_the_first_observation_of_a_generation_stays(model):
    first = record(model, reading(), {(NODE, REPLICA), (NODE, ENGINE)}, STARTUP_LOG)
    again = record(model, reading(engine_bytes=10 * GIB), {(NODE, REPLICA), (NODE, ENGINE)}, "")
    assert again.pk == first.pk and again.measured_bytes == 74 * GIB
    assert VramObservation.objects.filter(model=model).count() == 1


def test_nothing_is_recorded_without_a_figure_for_the_replicas_processes(model):
    assert record(model, reading(figures=False), {(NODE, REPLICA), (NODE, ENGINE)}) is None
    assert record(model, reading(), {("another-node", ENGINE)}) is None
    assert not VramObservation.objects.exists()


def test_cpu_replicas_are_not_observed(alice, roots):
    llama_8b(roots / "hf" / "llama-8b")
    cpu = create_model(alice, "cpu", source="$HOME/common/hf/llama-8b", gpus_per_replica=0)
    assert record(cpu, reading(), {(NODE, ENGINE)}) is None


def test_the_models_page_shows_each_term_beside_what_vllm_logged(alice_client, model):
    observation = record(model, reading(), {(NODE, REPLICA), (NODE, ENGINE)}, STARTUP_LOG)

    response = alice_client.get(f"/serving/{model.model_key}")

    assert response.status_code == 200
    assert "estimate vs what vLLM logged" in text_of(response.text, "vram-observations-title")
    weights, memory, tokens, nvml = rows(response.text, "vram-observation-rows")
    gpu_cell = "NVIDIA H100 80GB HBM3 (79.2 GiB)"
    assert weights == [str(model.generation), gpu_cell, "weights", "15.0 GiB", "15.0 GiB", "-0.2 %"]
    assert tokens[:3] == [str(model.generation), gpu_cell, "KV cache tokens"] and tokens[4] == "476,016"
    assert nvml[2:5] == ["NVML, all processes", "75.2 GiB (vLLM's share)", "74.0 GiB"]
    assert nvml[5] == f"{observation.share_error_percent:+.1f} %"


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
    fake_serve.engine_logs[model.model_key] = STARTUP_LOG  # what the replica logged at start
    assert tasks.observe_vram.run(model.pk, model.generation) == {"model": model.pk, "observed": True}
    observation = VramObservation.objects.get(model=model)
    assert observation.measured_bytes == 74 * GIB and observation.logged["kv_tokens"] == 476_016


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
