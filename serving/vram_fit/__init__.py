"""How much GPU memory one replica needs, and whether each node's GPUs have that much free: the rule
is in serving/vram_fit/estimation.py's docstring. Today's names, re-exported for the modules that
import them from here; new code imports the module that holds the name."""
from serving.vram_fit.checkpoint import (
    CAST_DTYPES,
    DTYPE_BITS,
    MAX_HEADER_BYTES,
    MAX_SHARDS,
    VramEstimateError,
    Weights,
    read_config,
    read_header,
    read_weights,
    weight_files,
)
from serving.vram_fit.estimation import (
    ENGINE_OVERHEAD_BYTES,
    GIB,
    KV_CACHE_DTYPE_BYTES,
    SERVING_DTYPE_BYTES,
    VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
    Estimate,
    KvCache,
    estimate,
    gib,
    kv_cache,
    serving_dtype,
    vllm_default_max_num_seqs,
)
from serving.vram_fit.report import (
    SERVING_PROCESS_PREFIXES,
    FitReport,
    GpuFit,
    Holder,
    Measured,
    NodeFit,
    fit,
    measure,
    node_name,
    replica_processes,
    serving_pids,
)

__all__ = [
    "CAST_DTYPES", "DTYPE_BITS", "MAX_HEADER_BYTES", "MAX_SHARDS", "VramEstimateError", "Weights",
    "read_config", "read_header", "read_weights", "weight_files", "ENGINE_OVERHEAD_BYTES", "GIB",
    "KV_CACHE_DTYPE_BYTES", "SERVING_DTYPE_BYTES", "VLLM_DEFAULT_GPU_MEMORY_UTILIZATION",
    "Estimate", "KvCache", "estimate", "gib", "kv_cache", "serving_dtype",
    "vllm_default_max_num_seqs", "SERVING_PROCESS_PREFIXES", "FitReport", "GpuFit", "Holder",
    "Measured", "NodeFit", "fit", "measure", "node_name", "replica_processes", "serving_pids",
]
