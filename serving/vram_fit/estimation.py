"""How much GPU memory one replica needs, and whether each node's GPUs have that much free.

Pure: files and the NVML readings it is handed, no Ray, no database, no torch. The estimate has three
terms, each kept so a page can show it:

- **Weights**, from the safetensors headers alone (an 8-byte little-endian length, then that many
  bytes of JSON; the tensors are never read). Float tensors (F64/F32/F16/BF16) are held in the dtype
  vLLM serves in: engine_kwargs `dtype`, else the config's, with float32 checkpoints downcast to 16
  bits as vLLM's "auto" does on GPUs (`_resolve_auto_dtype`, vllm/config/model.py). Every other dtype
  (F8_*, I8, U8, the I32 packs of GPTQ/AWQ) weighs what the header says: a quantized checkpoint is
  what it weighs.
- **KV cache**: layers × KV heads × head dim × 2 (K and V) × dtype bytes × max_model_len ×
  max_num_seqs — room for every sequence slot at full length, the worst case the spec allows.
- **Engine overhead**: ENGINE_OVERHEAD_BYTES per GPU, below.

Tensor and pipeline parallelism split a replica over `gpus_per_replica` GPUs of one node: the weights
evenly, the KV cache by layers (pipeline) and KV heads (tensor; a rank keeps at least one head,
so tensor parallel wider than the KV heads replicates them). `need` is one GPU's share.

What vLLM itself does decides the comparison. At start each worker takes
ceil(gpu_memory_utilization × the GPU's total) and refuses to start when the GPU has less free
(`request_memory`, vllm/v1/worker/utils.py); it then fills what weights and activations leave with
KV blocks. So a GPU holds a replica when its free memory covers
    required = max(need, gpu_memory_utilization × total)
— below the second term vLLM does not start; when `need` is the larger, vLLM starts but is allowed
only its share and cannot keep max_num_seqs full-length sequences at once, which the report says
(`GpuFit.capped`) with the gpu_memory_utilization that would. A replica's GPUs are on one node
(STRICT_PACK, serving/gpu_fit.py), and Ray gives a replica whole GPUs, so a GPU holds at most one.

The package keeps each reason to change in its own module: serving/vram_fit/checkpoint.py reads the
model folder (safetensors headers, config.json), this module turns what it read and the spec into the
estimate, and serving/vram_fit/report.py compares an estimate with NVML readings and measures deploys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from serving.vram_fit.checkpoint import VramEstimateError, Weights, read_config, read_weights

GIB = 1024**3
# Per GPU, beyond weights and KV cache: the CUDA context with cuBLAS/NCCL workspaces (~0.5-0.8 GiB on
# Hopper with CUDA 12), the activations of vLLM's profiling forward pass at max_num_batched_tokens
# (~0.3-1 GiB for models up to ~8B) and CUDA graphs (~0.2-0.5 GiB unless enforce_eager). 2 GiB covers
# their sum for the models these clusters serve; it is a constant, not a measurement of this model:
# VramObservation records what deploys really hold so the constant can be corrected from evidence.
ENGINE_OVERHEAD_BYTES = 2 * GIB
# vLLM 0.32's CacheConfig default (vllm/config/cache.py); set gpu_memory_utilization in the spec to
# pin it across vLLM versions (older releases used 0.9).
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.92

# Serving dtypes (engine_kwargs `dtype`, config.json's torch_dtype/dtype) -> bytes per element.
SERVING_DTYPE_BYTES = {"float16": 2, "half": 2, "bfloat16": 2, "float32": 4, "float": 4}
# kv_cache_dtype values the spec allows beside "auto" (which follows the serving dtype).
KV_CACHE_DTYPE_BYTES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


# --- vLLM's defaults that depend on the GPU ---------------------------------------------------------

def vllm_default_max_num_seqs(gpu_total_bytes: int = 0, gpu_name: str = "", max_num_batched_tokens: int | None = None) -> int:
    """vLLM's max_num_seqs when the spec sets none, for the OpenAI server usage context Ray Serve LLM
    starts the engine with (ray/llm/_internal/serve/engines/vllm/vllm_engine.py): 1024 on GPUs of 160 GiB
    and more, and of 70 GiB and more except A100s; 256 on the rest (EngineArgs.get_batch_defaults,
    vllm/engine/arg_utils.py, vLLM 0.32). vLLM then caps it at max_num_batched_tokens (8192 on the
    big GPUs, 2048 on the rest, unless the spec sets it). An unknown GPU gets the smaller default."""
    if gpu_total_bytes >= 160 * GIB:
        seqs, batched = 1024, 16384
    elif gpu_total_bytes >= 70 * GIB and "a100" not in gpu_name.lower():
        seqs, batched = 1024, 8192
    else:
        seqs, batched = 256, 2048
    return min(seqs, max_num_batched_tokens or batched)


# --- KV cache: config.json + engine_kwargs ------------------------------------------------------------

@dataclass(frozen=True)
class KvCache:
    layers: int
    kv_heads: int
    head_dim: int
    dtype: str  # what the KV cache is stored in, e.g. "bfloat16" or "fp8"
    dtype_bytes: int
    max_model_len: int
    max_num_seqs: int
    max_model_len_from: str  # "engine_kwargs" | "config.json max_position_embeddings"
    max_num_seqs_from: str  # "engine_kwargs" | "vLLM's default for this GPU" | "vLLM's default (GPU unknown)"

    @property
    def bytes_per_token(self) -> int:
        return self.layers * self.kv_heads * self.head_dim * 2 * self.dtype_bytes

    @property
    def bytes(self) -> int:
        return self.bytes_per_token * self.max_model_len * self.max_num_seqs

    def per_gpu(self, tensor_parallel: int, pipeline_parallel: int) -> int:
        layers = math.ceil(self.layers / pipeline_parallel)
        heads = max(1, self.kv_heads // tensor_parallel)
        return layers * heads * self.head_dim * 2 * self.dtype_bytes * self.max_model_len * self.max_num_seqs


def _positive_int(config: dict, key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise VramEstimateError(f"config.json's {key} is {value!r}, not a positive whole number: the KV cache cannot be sized.")
    return value


def serving_dtype(config: dict, engine_kwargs: dict) -> str:
    """The dtype vLLM holds float weights and activations in on a GPU."""
    asked = str(engine_kwargs.get("dtype") or "auto").lower()
    if asked != "auto":
        return {"half": "float16", "float": "float32"}.get(asked, asked)
    stored = str(config.get("torch_dtype") or config.get("dtype") or "float32").lower().removeprefix("torch.")
    # vLLM's "auto" downcasts float32 checkpoints to the GPU's preferred 16-bit type.
    return "bfloat16" if stored == "float32" else stored


def kv_cache(config: dict, engine_kwargs: dict, dtype: str) -> KvCache:
    layers = _positive_int(config, "num_hidden_layers")
    heads = _positive_int(config, "num_attention_heads")
    kv_heads = _positive_int(config, "num_key_value_heads") if config.get("num_key_value_heads") is not None else heads
    if config.get("head_dim") is not None:
        head_dim = _positive_int(config, "head_dim")
    else:
        head_dim = _positive_int(config, "hidden_size") // heads
    kv_dtype = str(engine_kwargs.get("kv_cache_dtype") or "auto")
    if kv_dtype == "auto":
        kv_dtype, kv_bytes = dtype, SERVING_DTYPE_BYTES[dtype]
    elif kv_dtype in KV_CACHE_DTYPE_BYTES:
        kv_bytes = KV_CACHE_DTYPE_BYTES[kv_dtype]
    else:
        raise VramEstimateError(f"kv_cache_dtype {kv_dtype!r} is not one the estimate knows ({', '.join(['auto', *KV_CACHE_DTYPE_BYTES])}).")
    if engine_kwargs.get("max_model_len"):
        max_model_len, len_from = int(engine_kwargs["max_model_len"]), "engine_kwargs"
    else:
        max_model_len, len_from = _positive_int(config, "max_position_embeddings"), "config.json max_position_embeddings"
    if engine_kwargs.get("max_num_seqs"):
        seqs, seqs_from = int(engine_kwargs["max_num_seqs"]), "engine_kwargs"
    else:
        seqs, seqs_from = vllm_default_max_num_seqs(max_num_batched_tokens=engine_kwargs.get("max_num_batched_tokens")), "vLLM's default (GPU unknown)"
    return KvCache(layers, kv_heads, head_dim, kv_dtype, kv_bytes, max_model_len, seqs, len_from, seqs_from)


# --- The estimate ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    weights: Weights
    kv: KvCache
    dtype: str  # the serving dtype of float weights
    gpus_per_replica: int
    tensor_parallel: int
    pipeline_parallel: int
    gpu_memory_utilization: float
    gpu_memory_utilization_from: str  # "engine_kwargs" | "vLLM's default"
    overhead_bytes: int = ENGINE_OVERHEAD_BYTES
    max_num_batched_tokens: int | None = None  # the spec's, which caps vLLM's default max_num_seqs

    @property
    def weights_bytes(self) -> int:
        return self.weights.served_bytes(SERVING_DTYPE_BYTES[self.dtype])

    @property
    def weights_per_gpu(self) -> int:
        return math.ceil(self.weights_bytes / self.gpus_per_replica)

    @property
    def kv_per_gpu(self) -> int:
        return self.kv.per_gpu(self.tensor_parallel, self.pipeline_parallel)

    @property
    def need_per_gpu(self) -> int:
        return self.weights_per_gpu + self.kv_per_gpu + self.overhead_bytes

    def vllm_share(self, total_bytes: int) -> int:
        return math.ceil(total_bytes * self.gpu_memory_utilization)

    def required_per_gpu(self, total_bytes: int) -> int:
        return max(self.need_per_gpu, self.vllm_share(total_bytes))

    def for_gpu(self, total_bytes: int, name: str = "") -> "Estimate":
        """This estimate on a given GPU: vLLM's default max_num_seqs depends on the GPU."""
        if self.kv.max_num_seqs_from == "engine_kwargs":
            return self
        seqs = vllm_default_max_num_seqs(total_bytes, name, self.max_num_batched_tokens)
        return replace(self, kv=replace(self.kv, max_num_seqs=seqs, max_num_seqs_from="vLLM's default for this GPU"))

    def terms(self) -> list[tuple[str, str, str]]:
        """(term, GiB per GPU, how it was reached), for a page or a report."""
        kv, split = self.kv, f" ÷ {self.gpus_per_replica} GPUs" if self.gpus_per_replica > 1 else ""
        checkpoint = ", ".join(f"{d} {gib(b)}" for d, b in self.weights.checkpoint_bytes_by_dtype.items())
        return [
            ("weights", gib(self.weights_per_gpu), f"{self.weights.tensors} tensors in {len(self.weights.files)} file(s) ({checkpoint}), float tensors as {self.dtype}{split}"),
            ("KV cache", gib(self.kv_per_gpu),
             f"{kv.layers} layers × {kv.kv_heads} KV heads × {kv.head_dim} head dim × 2 × {kv.dtype_bytes} B ({kv.dtype}) × "
             f"{kv.max_model_len} tokens ({kv.max_model_len_from}) × {kv.max_num_seqs} sequences ({kv.max_num_seqs_from}){split}"),
            ("engine overhead", gib(self.overhead_bytes), "CUDA context, activations, CUDA graphs (a fixed allowance)"),
        ]


def estimate(model_dir: Path | str, engine_kwargs: dict | None, gpus_per_replica: int) -> Estimate:
    """The memory one replica needs per GPU; VramEstimateError when the folder cannot tell."""
    folder, engine_kwargs = Path(model_dir), dict(engine_kwargs or {})
    config = read_config(folder)
    dtype = serving_dtype(config, engine_kwargs)
    if dtype not in SERVING_DTYPE_BYTES:
        raise VramEstimateError(f"The model's dtype {dtype!r} is not one vLLM serves in ({', '.join(sorted(SERVING_DTYPE_BYTES))}).")
    gpus = max(1, int(gpus_per_replica))
    pipeline = max(1, int(engine_kwargs.get("pipeline_parallel_size") or 1))
    utilization = engine_kwargs.get("gpu_memory_utilization")
    return Estimate(
        weights=read_weights(folder),
        kv=kv_cache(config, engine_kwargs, dtype),
        dtype=dtype,
        gpus_per_replica=gpus,
        tensor_parallel=max(1, gpus // pipeline),
        pipeline_parallel=pipeline,
        gpu_memory_utilization=float(utilization) if utilization else VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
        gpu_memory_utilization_from="engine_kwargs" if utilization else "vLLM's default",
        max_num_batched_tokens=engine_kwargs.get("max_num_batched_tokens"),
    )
