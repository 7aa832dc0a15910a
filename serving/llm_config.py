"""The resolved spec -> the Ray Serve LLM config of that model's application. A pure function."""
from __future__ import annotations

from copy import deepcopy

# What ran on the CPU engine here (shared/DESIGN.md, "Runtime"); a user's engine_kwargs win.
CPU_ENGINE_DEFAULTS = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True, "max_num_seqs": 4}


def build_llm_config(resolved_spec: dict, *, engine: str, accelerator_type: str = "", hf_home: str = "") -> dict:
    """A plain dict with LLMConfig's field names: hashable, storable in a revision, and turned into
    a real LLMConfig only inside the Ray client."""
    gpus = int(resolved_spec["gpus_per_replica"])
    engine_kwargs = deepcopy(resolved_spec.get("engine_kwargs") or {})
    env_vars = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if hf_home:
        env_vars["HF_HOME"] = hf_home
    config: dict = {
        "model_loading_config": {"model_id": resolved_spec["model_id"], "model_source": resolved_spec["model_source"]},
        "deployment_config": {"num_replicas": int(resolved_spec["num_replicas"])},
        "runtime_env": {"env_vars": env_vars},
    }
    if engine == "cpu" or gpus == 0:
        config["engine_kwargs"] = {**CPU_ENGINE_DEFAULTS, **engine_kwargs, "tensor_parallel_size": 1}
        config["accelerator_config"] = {"kind": "cpu"}
        env_vars["VLLM_CPU_KVCACHE_SPACE"] = "1"
    else:
        # The spec guarantees tensor × pipeline == GPUs per replica.
        pipeline = int(engine_kwargs.get("pipeline_parallel_size", 1))
        config["engine_kwargs"] = {**engine_kwargs, "tensor_parallel_size": gpus // pipeline}
        # One bundle per GPU, packed on one node: tensor parallelism needs its GPUs together.
        config["placement_group_config"] = {"bundles": [{"GPU": 1, "CPU": 1} for _ in range(gpus)], "strategy": "STRICT_PACK"}
        if accelerator_type:
            config["accelerator_type"] = accelerator_type
    return config
