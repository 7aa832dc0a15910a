"""The resolved spec -> the Ray Serve LLM config of that model's application. A pure function."""
from __future__ import annotations

from copy import deepcopy

# What ran on the CPU engine here (shared/DESIGN.md, "Runtime"); a user's engine_kwargs win.
CPU_ENGINE_DEFAULTS = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True, "max_num_seqs": 4}
# A secret's value never enters a config (configs are stored in revisions and hashed): the config
# carries this placeholder, and the Ray client puts the value in its place at apply time.
SECRET_PLACEHOLDER = "gantry-secret:"


def secret_placeholder(name: str) -> str:
    return f"{SECRET_PLACEHOLDER}{name}"


def with_secrets(config: dict, secrets: dict[str, str]) -> dict:
    """A copy of `config` with each secret placeholder replaced by its value: what Serve is given at
    apply time, and never stored. A placeholder without a value is an error naming the secret."""
    filled = deepcopy(config)
    env_vars = filled.get("runtime_env", {}).get("env_vars", {})
    for name, value in list(env_vars.items()):
        if isinstance(value, str) and value == secret_placeholder(name):
            if name not in secrets:
                raise LookupError(f"the secret {name} the spec requires is not set; set it on the Secrets page and retry")
            env_vars[name] = secrets[name]
    return filled


def deployment_config(resolved_spec: dict) -> dict:
    """Serve's deployment options: a fixed replica count, or the bounds Serve's autoscaler keeps to
    (it counts ongoing requests per replica; the two delays are its stabilization window)."""
    autoscaling = resolved_spec.get("autoscaling")
    if not autoscaling:
        return {"num_replicas": int(resolved_spec["num_replicas"])}
    return {
        "autoscaling_config": {
            "min_replicas": int(autoscaling["min_replicas"]),
            "initial_replicas": int(autoscaling["min_replicas"]),
            "max_replicas": int(autoscaling["max_replicas"]),
            "target_ongoing_requests": float(autoscaling["target_ongoing_requests"]),
            "upscale_delay_s": float(autoscaling["upscale_delay_s"]),
            "downscale_delay_s": float(autoscaling["downscale_delay_s"]),
        }
    }


def build_llm_config(
    resolved_spec: dict, *, engine: str, accelerator_type: str = "", hf_home: str = "", secret_names: tuple[str, ...] = ()
) -> dict:
    """A plain dict with LLMConfig's field names: hashable, storable in a revision, and turned into
    a real LLMConfig only inside the Ray client."""
    gpus = int(resolved_spec["gpus_per_replica"])
    engine_kwargs = deepcopy(resolved_spec.get("engine_kwargs") or {})
    env_vars = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if hf_home:
        env_vars["HF_HOME"] = hf_home
    for name in secret_names:
        env_vars[name] = secret_placeholder(name)
    config: dict = {
        "model_loading_config": {"model_id": resolved_spec["model_id"], "model_source": resolved_spec["model_source"]},
        "deployment_config": deployment_config(resolved_spec),
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
