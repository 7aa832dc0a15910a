"""The VRAM fit guard: a replica's memory need against each GPU's free memory, as the health probe
recorded it, and what each preflight.vram_fit mode does with a shortfall. Model folders are written
by tests/serving/test_vram_fit.py's helpers (an 8B-shaped checkpoint over sparse files)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from gates import preflights
from gates.preflight import vram
from gates.preflight.base import FAIL, OK, WARN, Runtime, SecretNames
from gates.preflight.config import PreflightConfigError, effective_config, validate_block
from gates.preflight.runner import GUARDS, run_guards
from gates.preflight.vram import GpuMemory, VramContext
from health.probes.gpu_probe import record_nodes
from serving.vram_fit import GIB, serving_pids
from tests.health.gpu_readings import gpu, node
from tests.serving.test_vram_fit import llama_8b, write_config

SMALL_KV = {"max_model_len": 8192, "max_num_seqs": 16}  # one 8k sequence: 1 GiB of KV cache
NODE = "a" * 56


def context(folder, nodes=(), *, mode="warn", engine="gpu", gpus=1, replicas=1, engine_kwargs=SMALL_KV, note=""):
    readings = tuple(nodes)
    return VramContext(
        folder=folder, config=effective_config({"vram_fit": mode}, {}), runtime=Runtime("cluster", ()),
        secrets=SecretNames(set, "none"), engine=engine, gpus_per_replica=gpus,
        engine_kwargs=dict(engine_kwargs), num_replicas=replicas,
        gpu_memory=GpuMemory(readings, frozenset(serving_pids(readings)), "2026-12-01T15:00:00+00:00", note),
    )


def free_h100(used=1 * GIB, processes=()):
    return node(NODE, gpus=[gpu(0, memory_used_bytes=used, processes=list(processes))], address="10.0.0.1")


@pytest.fixture
def model(tmp_path):
    return llama_8b(tmp_path / "llama-8b")


def test_it_passes_with_the_numbers_when_the_replica_fits(model):
    result = vram.check(context(model, [free_h100()]))

    assert result.status == OK and result.remedy == ""
    assert result.summary.startswith("Fits: the GPUs have room for 1 replica(s), 1 replica(s) of 1 GPU(s) wanted. "
                                     "Fits on NVIDIA H100 80GB HBM3 of 80.0 GiB: the KV cache holds ")
    terms = {e.item: e.effective for e in result.evidence}
    assert terms["vLLM's share"] == "73.6 GiB" and terms["weights"] == "15.0 GiB"
    # vLLM takes 0.92 of the GPU at start, so that is what must be free: 73.6 GiB of the 79.0 free.
    assert terms["GPU 0 on node 10.0.0.1"] == "79.0 GiB free of 80.0 GiB"
    [gpu_data] = result.data["vram"]["gpus"]
    assert gpu_data["share_bytes"] == 79_027_398_247 and gpu_data["fits"] is True and result.data["vram"]["fits"] is True
    assert gpu_data["kv_tokens"] * 131_072 <= gpu_data["kv_available_bytes"] < (gpu_data["kv_tokens"] + 16) * 131_072


@pytest.mark.parametrize("mode, status", [("warn", WARN), ("fail", FAIL)])
def test_a_shortfall_warns_or_fails_by_mode_and_names_who_holds_the_memory(model, mode, status):
    stranger = {"pid": 4242, "name": "python3", "used_bytes": 6 * GIB, "kind": "compute"}
    replica = {"pid": 777, "name": "ray::ServeReplica:bob-202612011500-x:LLMServer", "used_bytes": 14 * GIB, "kind": "compute"}
    result = vram.check(context(model, [free_h100(used=20 * GIB, processes=[stranger, replica])], mode=mode))

    assert result.status == status and not result.forceable
    assert result.summary.startswith("Does not fit: the GPUs have room for 0 of 1 replica(s) of 1 GPU(s).")
    assert ("GPU 0 on node 10.0.0.1 has 60.0 GiB free of 80.0 GiB; vLLM asks for its share of 73.6 GiB at start and refuses "
            "with less free: 13.6 GiB short. PID 4242 (python3) holds 6.0 GiB and is not a replica; PID 777 "
            "(ray::ServeReplica:bob-202612011500-x:LLMServer) holds 14.0 GiB and is a Serve replica.") in result.summary
    # The model itself would start in the 60 GiB that are free: it is vLLM's 0.92 share that does not.
    assert result.remedy.startswith("Free the GPU memory that processes which are not replicas hold (PID 4242). "
                                    "gpu_memory_utilization: 0.75 asks only for what GPU 0 on node 10.0.0.1 has free")
    [line] = [e for e in result.evidence if e.item.startswith("GPU ")]
    assert line.status == status


def test_off_skips_the_check(model):
    result = vram.check(context(model, [free_h100(used=79 * GIB)], mode="off"))
    assert result.status == OK and result.summary.startswith("Off (preflight.vram_fit: off)")


def test_the_cpu_engine_needs_no_check_and_says_so(model):
    result = vram.check(context(model, [free_h100()], engine="cpu", gpus=0))
    assert result.status == OK and result.summary == "Not needed: the model runs on the CPU engine, which uses no GPU memory."


def test_without_a_gpu_reading_it_warns_not_checked_with_the_reason_even_in_fail_mode(model):
    result = vram.check(context(model, [], mode="fail", note="the health probe has read no GPU (no GPU node, or the probe has not run yet)"))
    assert result.status == WARN
    assert result.summary.startswith("Not checked: the health probe has read no GPU")
    # The estimate is still shown: 15.0 GiB of weights, 8,192 tokens × 128 KiB of KV cache.
    assert "By the folder alone, each replica needs 15.0 GiB of weights per GPU and 1.0 GiB of KV cache for one sequence of 8,192 tokens" in result.summary


@pytest.mark.parametrize("mode, status", [("warn", WARN), ("fail", FAIL)])
def test_a_folder_that_cannot_be_estimated_is_reported_by_mode(tmp_path, mode, status):
    folder = write_config(tmp_path / "bin-only", hidden_size=64, num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=64)
    result = vram.check(context(folder, [free_h100()], mode=mode))
    assert result.status == status and "no *.safetensors weights" in result.summary


def test_a_multi_gpu_replica_needs_its_gpus_on_one_node(model):
    one_each = [node(n * 56, gpus=[gpu(0, memory_used_bytes=0, processes=[])], address=f"10.0.0.{i}") for i, n in enumerate("ab")]
    result = vram.check(context(model, one_each, gpus=2, mode="fail"))
    assert result.status == FAIL and "room for 0 of 1 replica(s) of 2 GPU(s)" in result.summary


def test_it_runs_among_the_guards_before_prompts_and_secrets():
    assert GUARDS.index("vram") == GUARDS.index("cuda") + 1 and GUARDS[-1] == "secrets"


# --- the spec's block and the installation's default -----------------------------------------------

def test_the_block_takes_warn_fail_or_off_and_refuses_anything_else():
    assert validate_block({"vram_fit": "fail"}) == {"vram_fit": "fail"}
    with pytest.raises(PreflightConfigError) as refused:
        validate_block({"vram_fit": "strict"})
    assert refused.value.field == "preflight.vram_fit" and "warn | fail | off" in refused.value.message
    with pytest.raises(PreflightConfigError, match="Did you mean 'vram_fit'"):
        validate_block({"vram_fits": "warn"})


def test_the_default_comes_from_settings_and_the_spec_wins(settings):
    assert effective_config(None).vram_fit == "warn"
    settings.GANTRY_PREFLIGHT_VRAM_FIT = "fail"
    assert effective_config(None).vram_fit == "fail"
    assert effective_config({"vram_fit": "off"}).vram_fit == "off"
    assert effective_config(None).as_dict()["vram_fit"] == "fail"


# --- through a real preflight run, on the health probe's recorded readings -------------------------

def _spec(folder, **preflight):
    return {"model_id": "alice-202612011500-big", "model_source": str(folder), "num_replicas": 1, "gpus_per_replica": 1,
            "engine_kwargs": SMALL_KV, "preflight": preflight}


@pytest.mark.django_db
def test_a_run_compares_with_the_gpus_the_health_probe_recorded(model, alice, settings):
    settings.GANTRY_ENGINE = "gpu"
    stranger = {"pid": 4242, "name": "python3", "used_bytes": 20 * GIB, "kind": "compute"}
    record_nodes({"nodes": [free_h100(used=20 * GIB, processes=[stranger])], "error": ""})

    run = preflights.run_on_demand(_spec(model, vram_fit="fail"), owner=alice, trigger="api")

    [result] = [r for r in run.guard_results if r.guard == "vram"]
    assert result.status == FAIL and run.status == FAIL and not run.passed
    assert "PID 4242 (python3) holds 20.0 GiB and is not a replica" in result.summary
    assert run.config["vram_fit"] == "fail"


@pytest.mark.django_db
def test_a_stale_reading_is_not_used(model, alice, settings):
    settings.GANTRY_ENGINE = "gpu"
    long_ago = timezone.now() - timedelta(seconds=10 * settings.GANTRY_HEALTH_INTERVAL_S)
    record_nodes({"nodes": [free_h100(used=79 * GIB)], "error": ""}, now=long_ago)

    run = preflights.run_on_demand(_spec(model), owner=alice, trigger="api")

    [result] = [r for r in run.guard_results if r.guard == "vram"]
    assert result.status == WARN and "Not checked: the newest GPU reading" in result.summary and "is older than" in result.summary


@pytest.mark.django_db
def test_a_run_on_a_cluster_without_gpu_readings_says_not_checked(model, alice, settings):
    settings.GANTRY_ENGINE = "gpu"
    results = run_guards(preflights.context_for(preflights.new_run(_spec(model), trigger="api", owner=alice), Runtime("cluster", ()), wait_for_secrets=False))
    [result] = [r for r in results if r.guard == "vram"]
    assert result.status == WARN and "the health probe has read no GPU" in result.summary
