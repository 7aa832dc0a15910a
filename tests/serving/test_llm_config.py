"""A resolved spec becomes the Ray Serve LLM config of that model's application, and Ray accepts it."""
from __future__ import annotations

import pytest

from serving.llm_config import CPU_ENGINE_DEFAULTS, build_llm_config


def resolved(**fields) -> dict:
    return {
        "suffix": "demo",
        "model_id": "alice-202611250000-demo",
        "model_source": "/srv/hf/tiny-llama",
        "num_replicas": 1,
        "gpus_per_replica": 1,
        "engine_kwargs": {},
        **fields,
    }


def gpu_config(gpus: int = 1, **fields) -> dict:
    return build_llm_config(resolved(gpus_per_replica=gpus, **fields), engine="gpu", accelerator_type="H100", hf_home="/srv/hf")


def cpu_config(**fields) -> dict:
    return build_llm_config(resolved(gpus_per_replica=0, **fields), engine="cpu", hf_home="/srv/hf")


def test_it_names_the_model_by_its_public_id_and_source():
    config = gpu_config()
    assert config["model_loading_config"] == {"model_id": "alice-202611250000-demo", "model_source": "/srv/hf/tiny-llama"}


def test_it_asks_for_the_spec_replica_count():
    assert gpu_config(num_replicas=3)["deployment_config"] == {"num_replicas": 3}


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_gpus_per_replica_sets_tensor_parallelism_and_one_packed_bundle_per_gpu(gpus):
    config = gpu_config(gpus)
    assert config["engine_kwargs"]["tensor_parallel_size"] == gpus
    assert config["placement_group_config"] == {"bundles": [{"GPU": 1, "CPU": 1}] * gpus, "strategy": "STRICT_PACK"}


def test_pipeline_parallelism_splits_the_gpus_with_tensor_parallelism():
    config = gpu_config(4, engine_kwargs={"pipeline_parallel_size": 2})
    assert config["engine_kwargs"]["tensor_parallel_size"] == 2
    assert config["engine_kwargs"]["pipeline_parallel_size"] == 2
    assert len(config["placement_group_config"]["bundles"]) == 4


def test_accelerator_type_comes_from_settings_on_the_gpu_engine_only():
    assert gpu_config()["accelerator_type"] == "H100"
    no_type = build_llm_config(resolved(), engine="gpu", accelerator_type="", hf_home="/srv/hf")
    assert "accelerator_type" not in no_type
    cpu = build_llm_config(resolved(gpus_per_replica=0), engine="cpu", accelerator_type="H100", hf_home="/srv/hf")
    assert "accelerator_type" not in cpu


def test_replicas_run_offline_against_the_shared_hf_cache():
    env = gpu_config()["runtime_env"]["env_vars"]
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["HF_HOME"] == "/srv/hf"
    assert "HF_HOME" not in build_llm_config(resolved(), engine="gpu")["runtime_env"]["env_vars"]


@pytest.mark.parametrize("engine,gpus", [("cpu", 0), ("cpu", 1), ("gpu", 0)])
def test_the_cpu_engine_or_zero_gpus_gets_the_cpu_settings_that_ran_here(engine, gpus):
    config = build_llm_config(resolved(gpus_per_replica=gpus), engine=engine, hf_home="/srv/hf")
    assert config["accelerator_config"] == {"kind": "cpu"}
    assert config["engine_kwargs"] == {**CPU_ENGINE_DEFAULTS, "tensor_parallel_size": 1}
    assert config["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert "placement_group_config" not in config


def test_a_users_engine_kwargs_win_over_the_cpu_defaults():
    config = cpu_config(engine_kwargs={"max_model_len": 512, "dtype": "bfloat16"})
    assert config["engine_kwargs"]["max_model_len"] == 512
    assert config["engine_kwargs"]["dtype"] == "bfloat16"
    assert config["engine_kwargs"]["enforce_eager"] is True  # the defaults the user did not touch stay


def test_it_does_not_change_the_spec_it_was_given():
    spec = resolved(engine_kwargs={"max_model_len": 512})
    build_llm_config(spec, engine="cpu")
    assert spec["engine_kwargs"] == {"max_model_len": 512}


# The configs above are plain dicts; these check that Ray's own LLMConfig takes them as they are.
# Constructing one needs vLLM importable but no GPU: validation does not look for devices.

@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_ray_accepts_the_gpu_config(gpus):
    from ray.serve.llm import LLMConfig

    llm_config = LLMConfig(**gpu_config(gpus))
    assert llm_config.model_id == "alice-202611250000-demo"
    assert llm_config.accelerator_type == "H100"
    assert llm_config.engine_kwargs["tensor_parallel_size"] == gpus
    # Ray turns the bundles into the placement group the replica's engine runs in: one GPU each.
    bundles = llm_config.get_engine_config().placement_bundles
    assert [b["GPU"] for b in bundles] == [1] * gpus


def test_ray_accepts_the_cpu_config():
    from ray.serve.llm import LLMConfig

    llm_config = LLMConfig(**cpu_config())
    assert llm_config.accelerator_config.kind == "cpu"
    assert llm_config.runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    # The model page's live metrics read vLLM's metrics from the Ray nodes' metrics export: Ray's
    # default turns them on. Left to the default, not written into the config, because a new key
    # would change every stored config's hash and redeploy every running model once on upgrade.
    assert llm_config.log_engine_metrics is True
    assert not any(b.get("GPU") for b in llm_config.get_engine_config().placement_bundles)


def test_ray_refuses_a_field_it_does_not_know():
    from pydantic import ValidationError
    from ray.serve.llm import LLMConfig

    with pytest.raises(ValidationError):
        LLMConfig(**{**cpu_config(), "replicas": 2})
