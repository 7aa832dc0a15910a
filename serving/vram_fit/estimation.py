"""Whether one replica starts on a GPU of a given size, by the rule vLLM itself applies, term by term.

Pure: files and the figures it is handed, no Ray, no database, no torch. The rule, read from vLLM 0.32
(vllm/v1/worker/gpu_worker.py `determine_available_memory`, vllm/v1/worker/utils.py `request_memory`,
vllm/v1/core/kv_cache_utils.py `check_enough_kv_cache_memory`), per GPU of the replica:

1. At start a worker asks for its **share**, ceil(gpu_memory_utilization × the GPU's total), and
   refuses to start when less than that is free ("Free memory on device … is less than desired GPU
   memory utilization"). That is the only place free memory matters (report.py compares it).
2. Inside the share it loads the **weights** (safetensors headers: float tensors in the serving dtype,
   the rest as stored, split over tensor × pipeline ranks), measures what the instance added outside
   PyTorch (**non-torch**: cuBLAS workspaces; NCCL's and the custom all-reduce's buffers when tensor
   parallel), runs one forward pass at max_num_batched_tokens and one sampler pass over max_num_seqs
   rows of logits (**activations**, their peak), and since vLLM 0.21 profiles the **CUDA graphs** it
   will capture (unless enforce_eager).
3. What is left is the **KV cache**. vLLM refuses to start when it cannot hold one sequence of
   max_model_len tokens ("To serve at least one request with the model's max seq len …", or "No
   available memory for the cache blocks" when nothing is left); otherwise it logs "GPU KV cache size:
   N tokens" and "Maximum concurrency for max_model_len tokens per request: N / max_model_len".

So a replica never needs max_num_seqs × max_model_len of KV cache: sequences share the cache, and
max_num_seqs only sizes the sampler's pass. The activation, non-torch and CUDA-graph terms are modelled
from the model's shapes and the engine options with the constants below; each constant says where it
comes from, and tests/serving/vram_reference/ holds the public vLLM logs the whole rule is checked
against. What vLLM treats specially and the estimate does not model is named (`not_modelled`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from serving.vram_fit.checkpoint import VramEstimateError, Weights, read_config, read_weights
from serving.vram_fit.shapes import Shapes, read_shapes

GIB = 1024**3
MIB = 1024**2
# vLLM 0.32's CacheConfig default (vllm/config/cache.py); older releases used 0.9, so a spec that
# must mean the same across versions sets gpu_memory_utilization.
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
# vLLM's default KV block on CUDA (CacheConfig.block_size): the cache is counted in whole blocks.
KV_BLOCK_TOKENS = 16

# Serving dtypes (engine_kwargs `dtype`, config.json's torch_dtype/dtype) -> bytes per element.
SERVING_DTYPE_BYTES = {"float16": 2, "half": 2, "bfloat16": 2, "float32": 4, "float": 4}
# kv_cache_dtype values the spec allows beside "auto" (which follows the serving dtype).
KV_CACHE_DTYPE_BYTES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}

# --- The modelled terms: constants and where they come from -------------------------------------------
# The shapes are read from vLLM's code; the constants from public vLLM logs, collected with their sources
# in tests/serving/vram_reference/ (the README there says which case informed which constant; the other
# cases check them).
#
# Non-torch memory the instance adds after the CUDA context: cuBLAS/cuBLASLt workspaces and the like,
# logged as 0.35 GiB on an RTX 3090 by vLLM 0.6.4 (vllm issue #10517).
NON_TORCH_BYTES = 350 * MIB
# Tensor parallel adds NCCL's buffers and the custom all-reduce's IPC buffers on every GPU: 1.79 GiB more
# non-torch memory at TP 2 on H100 in vLLM 0.6.5 (PR #10511); the llm-d 0.19 sweep's TP 2 and TP 4 runs
# leave 1.9-2.1 GiB once weights, KV cache, the sampler and NON_TORCH_BYTES are taken out.
TENSOR_PARALLEL_BUFFERS_BYTES = 2 * GIB
# The forward pass's peak at T tokens (max_num_batched_tokens), per GPU: T × dtype bytes × (3 × the MLP
# width / tensor parallel: gate and up, then their product, alive together + 2 × hidden: the residual
# stream and the normed copy). vLLM 0.6.4 profiled 20,000 and 29,000 tokens of Llama-3.1-8B at 2.07 and
# 2.99 GiB (issue #10517: peak_torch_memory less the weights), 111 KB a token; this gives 102 KB.
MLP_WIDTH_COPIES = 3
HIDDEN_COPIES = 2
# The sampler's pass over max_num_seqs rows of vocab logits: float32 logits and top-k/top-p's sort of
# them. In the llm-d 0.19 sweep (H100, 1,024 rows) Llama-3.1-8B, Qwen2.5-7B and Qwen3-8B leave 14.6,
# 14.5 and 14.6 bytes per logit once weights, KV cache and NON_TORCH_BYTES are taken out of the share.
SAMPLER_BYTES_PER_LOGIT = 14.5
# CUDA graphs, profiled inside the share since vLLM 0.21 (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS):
# vLLM logged "Estimated CUDA graph memory: 0.17 GiB total" for a 64-layer model at TP 4 (club-3090
# issue #127), ~2.7 MiB per layer and GPU; the graphs' private pool scales with the layers captured.
CUDA_GRAPH_BYTES_PER_LAYER = 3 * MIB


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def vllm_batch_defaults(gpu_total_bytes: int = 0, gpu_name: str = "") -> tuple[int, int]:
    """vLLM's (max_num_seqs, max_num_batched_tokens) when the spec sets neither, for the OpenAI server
    usage context Ray Serve LLM starts the engine with (EngineArgs.get_batch_defaults,
    vllm/engine/arg_utils.py, vLLM 0.32): (1024, 16384) on GPUs of 160 GiB and more; (1024, 8192) on
    70 GiB and more except A100s; (256, 2048) on the rest and on an unknown GPU."""
    if gpu_total_bytes >= 160 * GIB:
        return 1024, 16384
    if gpu_total_bytes >= 70 * GIB and "a100" not in gpu_name.lower():
        return 1024, 8192
    return 256, 2048


def serving_dtype(config: dict, engine_kwargs: dict) -> str:
    """The dtype vLLM holds float weights and activations in on a GPU."""
    asked = str(engine_kwargs.get("dtype") or "auto").lower()
    if asked != "auto":
        return {"half": "float16", "float": "float32"}.get(asked, asked)
    stored = str(config.get("torch_dtype") or config.get("dtype") or "float32").lower().removeprefix("torch.")
    # vLLM's "auto" downcasts float32 checkpoints to the GPU's preferred 16-bit type.
    return "bfloat16" if stored == "float32" else stored


def _kv_dtype(engine_kwargs: dict, dtype: str) -> tuple[str, int]:
    kv_dtype = str(engine_kwargs.get("kv_cache_dtype") or "auto")
    if kv_dtype == "auto":
        return dtype, SERVING_DTYPE_BYTES[dtype]
    if kv_dtype in KV_CACHE_DTYPE_BYTES:
        return kv_dtype, KV_CACHE_DTYPE_BYTES[kv_dtype]
    raise VramEstimateError(f"kv_cache_dtype {kv_dtype!r} is not one the estimate knows ({', '.join(['auto', *KV_CACHE_DTYPE_BYTES])}).")


def _whole(engine_kwargs: dict, key: str) -> int | None:
    value = engine_kwargs.get(key)
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise VramEstimateError(f"engine_kwargs {key} is {value!r}, not a whole number.") from None
    if number <= 0:
        raise VramEstimateError(f"engine_kwargs {key} is {number}; it must be positive.")
    return number


# --- One GPU's budget ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    """One replica on one GPU of `total_bytes`: each term vLLM takes from its share, and the KV cache
    that is left. Built by Estimate.on_gpu."""

    estimate: "Estimate"
    total_bytes: int
    gpu_name: str
    max_num_seqs: int
    max_num_seqs_from: str
    max_num_batched_tokens: int
    max_num_batched_tokens_from: str
    non_torch_bytes: int
    activation_bytes: int
    cuda_graph_bytes: int

    @property
    def share_bytes(self) -> int:
        return math.ceil(self.total_bytes * self.estimate.gpu_memory_utilization)

    @property
    def weights_bytes(self) -> int:
        return self.estimate.weights_per_gpu

    @property
    def non_kv_bytes(self) -> int:
        return self.weights_bytes + self.non_torch_bytes + self.activation_bytes + self.cuda_graph_bytes

    @property
    def kv_available_bytes(self) -> int:
        return self.share_bytes - self.non_kv_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return self.estimate.kv_bytes_per_token

    @property
    def kv_tokens(self) -> int:
        """The tokens the cache holds, in whole blocks (≈ vLLM's "GPU KV cache size: N tokens")."""
        block = self.kv_bytes_per_token * KV_BLOCK_TOKENS
        return max(0, self.kv_available_bytes // block) * KV_BLOCK_TOKENS

    @property
    def one_sequence_bytes(self) -> int:
        return math.ceil(self.estimate.max_model_len / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS * self.kv_bytes_per_token

    @property
    def need_bytes(self) -> int:
        """The smallest share vLLM starts with: everything but the KV cache, and one full sequence."""
        return self.non_kv_bytes + self.one_sequence_bytes

    @property
    def fits(self) -> bool:
        return self.kv_available_bytes > 0 and self.kv_tokens >= self.estimate.max_model_len

    @property
    def concurrency(self) -> float:
        """Sequences of max_model_len tokens the cache holds at once (vLLM's "Maximum concurrency")."""
        return self.kv_tokens / self.estimate.max_model_len

    @property
    def largest_max_model_len(self) -> int:
        """The longest max_model_len this GPU starts with, as the options stand otherwise; 0 for none."""
        return min(self.kv_tokens, self.estimate.shapes.max_position_embeddings)

    @property
    def utilization_that_fits(self) -> float:
        """The smallest gpu_memory_utilization that would start (may be above what is sensible)."""
        return math.ceil(100 * self.need_bytes / self.total_bytes) / 100

    def verdict(self) -> str:
        e = self.estimate
        on = f"{self.gpu_name or 'a GPU'} of {gib(self.total_bytes)}"
        if self.fits:
            return (f"Fits on {on}: the KV cache holds {self.kv_tokens:,} tokens, {self.concurrency:.2f} sequences of "
                    f"{e.max_model_len:,} tokens at once.")
        if self.kv_available_bytes <= 0:
            return (f"Does not fit on {on}: weights and the engine's own memory take {gib(self.non_kv_bytes)} of vLLM's "
                    f"{gib(self.share_bytes)} share, so no memory is left for the KV cache.")
        return (f"Does not fit on {on}: one sequence of {e.max_model_len:,} tokens needs {gib(self.one_sequence_bytes)} of KV "
                f"cache and {gib(self.kv_available_bytes)} is left; the largest max_model_len that fits is "
                f"{self.largest_max_model_len:,}.")

    def terms(self) -> list[tuple[str, str, str]]:
        """(term, GiB per GPU, how it was reached), for a page or a report."""
        e = self.estimate
        split = f" ÷ {e.gpus_per_replica} GPUs" if e.gpus_per_replica > 1 else ""
        checkpoint = ", ".join(f"{d} {gib(b)}" for d, b in e.weights.checkpoint_bytes_by_dtype.items())
        tp = f" + tensor-parallel buffers {gib(TENSOR_PARALLEL_BUFFERS_BYTES)}" if e.tensor_parallel > 1 else ""
        return [
            ("vLLM's share", gib(self.share_bytes), f"gpu_memory_utilization {e.gpu_memory_utilization} ({e.gpu_memory_utilization_from}) × {gib(self.total_bytes)}"),
            ("weights", gib(self.weights_bytes), f"{e.weights.tensors} tensors in {len(e.weights.files)} file(s) ({checkpoint}), float tensors as {e.dtype}{split}"),
            ("non-torch", gib(self.non_torch_bytes), f"cuBLAS workspaces and the like {gib(NON_TORCH_BYTES)}{tp}"),
            ("activations", gib(self.activation_bytes),
             f"the larger of the profiling forward pass at {self.max_num_batched_tokens:,} tokens ({self.max_num_batched_tokens_from}) "
             f"and the sampler over {self.max_num_seqs} × {e.shapes.vocab:,} logits ({self.max_num_seqs_from})"),
            ("CUDA graphs", gib(self.cuda_graph_bytes), "none: enforce_eager" if e.enforce_eager else f"{e.shapes.layers} layers × {CUDA_GRAPH_BYTES_PER_LAYER // MIB} MiB"),
            ("KV cache", gib(max(0, self.kv_available_bytes)),
             f"what is left: {self.kv_tokens:,} tokens of {self.kv_bytes_per_token:,} B ({e.kv_dtype}); one sequence of "
             f"{e.max_model_len:,} tokens ({e.max_model_len_from}) needs {gib(self.one_sequence_bytes)}"),
        ]


# --- The estimate: a model folder and a spec's engine options -----------------------------------------------

@dataclass(frozen=True)
class Estimate:
    weights: Weights
    shapes: Shapes
    dtype: str  # the serving dtype of float weights
    kv_dtype: str
    kv_dtype_bytes: int
    gpus_per_replica: int
    tensor_parallel: int
    pipeline_parallel: int
    max_model_len: int
    max_model_len_from: str  # "engine_kwargs" | "config.json max_position_embeddings"
    gpu_memory_utilization: float
    gpu_memory_utilization_from: str  # "engine_kwargs" | "vLLM's default"
    max_num_seqs: int | None = None  # the spec's; None: vLLM's default for the GPU
    max_num_batched_tokens: int | None = None
    enforce_eager: bool = False
    # vLLM before 0.21 captured CUDA graphs after sizing the KV cache, outside the share.
    cuda_graphs_in_share: bool = True
    not_modelled: tuple[str, ...] = field(default=())

    @property
    def weights_bytes(self) -> int:
        return self.weights.served_bytes(SERVING_DTYPE_BYTES[self.dtype])

    @property
    def weights_per_gpu(self) -> int:
        return math.ceil(self.weights_bytes / self.gpus_per_replica)

    @property
    def kv_bytes_per_token(self) -> int:
        return self.shapes.kv_bytes_per_token(self.kv_dtype_bytes, self.tensor_parallel, self.pipeline_parallel)

    def on_gpu(self, total_bytes: int, name: str = "") -> Budget:
        default_seqs, default_batched = vllm_batch_defaults(total_bytes, name)
        default_from = "vLLM's default for this GPU" if total_bytes else "vLLM's default (GPU unknown)"
        batched = self.max_num_batched_tokens or default_batched
        seqs = self.max_num_seqs or min(default_seqs, batched)
        s, tp = self.shapes, self.tensor_parallel
        dtype_bytes = SERVING_DTYPE_BYTES[self.dtype]
        forward = batched * dtype_bytes * (MLP_WIDTH_COPIES * s.intermediate // tp + HIDDEN_COPIES * s.hidden)
        sampler = int(seqs * s.vocab * SAMPLER_BYTES_PER_LOGIT)
        graphs = 0 if self.enforce_eager or not self.cuda_graphs_in_share else -(-s.layers // self.pipeline_parallel) * CUDA_GRAPH_BYTES_PER_LAYER
        return Budget(
            self, total_bytes, name, seqs, "engine_kwargs" if self.max_num_seqs else default_from,
            batched, "engine_kwargs" if self.max_num_batched_tokens else default_from,
            NON_TORCH_BYTES + (TENSOR_PARALLEL_BUFFERS_BYTES if tp > 1 else 0), max(forward, sampler), graphs,
        )

    def with_changes(self, *, max_model_len: int | None = None, gpus_per_replica: int | None = None) -> "Estimate":
        """The same model and options with another max_model_len or GPUs per replica (what-if advice)."""
        changed = self
        if max_model_len is not None:
            changed = replace(changed, max_model_len=max_model_len, max_model_len_from="what-if")
        if gpus_per_replica is not None:
            changed = replace(changed, gpus_per_replica=gpus_per_replica, tensor_parallel=max(1, gpus_per_replica // self.pipeline_parallel))
        return changed

    def with_utilization(self, utilization: float) -> "Estimate":
        return replace(self, gpu_memory_utilization=utilization, gpu_memory_utilization_from="what-if")

    def with_fp8_kv(self) -> "Estimate":
        return replace(self, kv_dtype="fp8", kv_dtype_bytes=KV_CACHE_DTYPE_BYTES["fp8"])

    def smallest_gpus_per_replica(self, total_bytes: int, name: str = "", most: int = 8) -> int | None:
        """The fewest GPUs per replica (tensor parallel: a power of two dividing the attention heads, as
        vLLM requires) with which the replica starts on GPUs of this size; None up to `most`."""
        tp = 1
        while tp * self.pipeline_parallel <= most:
            if self.shapes.heads % tp == 0 and self.with_changes(gpus_per_replica=tp * self.pipeline_parallel).on_gpu(total_bytes, name).fits:
                return tp * self.pipeline_parallel
            tp *= 2
        return None


def estimate(model_dir: Path | str, engine_kwargs: dict | None, gpus_per_replica: int) -> Estimate:
    """The estimate for one replica of this folder with these engine options; VramEstimateError when
    the folder cannot tell."""
    folder, engine_kwargs = Path(model_dir), dict(engine_kwargs or {})
    config = read_config(folder)
    weights = read_weights(folder)  # first: a folder without weights says so before any config field
    dtype = serving_dtype(config, engine_kwargs)
    if dtype not in SERVING_DTYPE_BYTES:
        raise VramEstimateError(f"The model's dtype {dtype!r} is not one vLLM serves in ({', '.join(sorted(SERVING_DTYPE_BYTES))}).")
    shapes = read_shapes(config)
    kv_dtype, kv_bytes = _kv_dtype(engine_kwargs, dtype)
    gpus = max(1, int(gpus_per_replica))
    pipeline = max(1, _whole(engine_kwargs, "pipeline_parallel_size") or 1)
    max_model_len = _whole(engine_kwargs, "max_model_len")
    utilization = engine_kwargs.get("gpu_memory_utilization")
    return Estimate(
        weights=weights,
        shapes=shapes,
        dtype=dtype,
        kv_dtype=kv_dtype,
        kv_dtype_bytes=kv_bytes,
        gpus_per_replica=gpus,
        tensor_parallel=max(1, gpus // pipeline),
        pipeline_parallel=pipeline,
        max_model_len=max_model_len or shapes.max_position_embeddings,
        max_model_len_from="engine_kwargs" if max_model_len else "config.json max_position_embeddings",
        gpu_memory_utilization=float(utilization) if utilization else VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
        gpu_memory_utilization_from="engine_kwargs" if utilization else "vLLM's default",
        max_num_seqs=_whole(engine_kwargs, "max_num_seqs"),
        max_num_batched_tokens=_whole(engine_kwargs, "max_num_batched_tokens"),
        enforce_eager=bool(engine_kwargs.get("enforce_eager")),
        not_modelled=shapes.not_modelled,
    )
